"""An asset is listed once, in the definitions: the tracked stage order, the describers and the
tests' lists follow from it, and a new asset is materialised and tracked with no other list."""

import dagster as dg
import pandas as pd

from tests.conftest import AS_OF, ASSETS, resources_for, synthetic_source
from tests.tracking.test_tracking import parent_runs
from tvq_assets import definitions
from tvq_assets.partitions import sleeve_run
from tvq_assets.tracking import diff, replay
from tvq_assets.tracking.describe import describe_default, describer_of
from tvq_assets.tracking.stages import stage_order
from tvq_assets.tracking.values import StageRecord
from tvq_resources.lake import ParquetLake
from tvq_resources.tracking import MlflowTracker

KEY = f"{AS_OF}|crypto"


@dg.asset(partitions_def=sleeve_run)
def momentum(returns) -> pd.DataFrame:
    """A small extra sleeve × run asset: each symbol's mean daily return over the window."""
    return returns.returns.mean().rename("mean_return").to_frame()


def describe_momentum(stage, value, sleeve, as_of) -> StageRecord:
    """Beside its asset, as a describer of a new asset would be."""
    return StageRecord(
        metrics={"momentum.symbols": len(value), "momentum.best": float(value.max().iloc[0])},
        tags={"tvq.momentum.leader": str(value["mean_return"].idxmax())},
    )


def test_the_tracked_stage_order_is_the_graph_order_of_the_definitions_sleeve_run_assets():
    assert stage_order(definitions.ASSETS) == definitions.STAGES
    assert tuple(a for a in ASSETS if a != "bars") == definitions.STAGES  # bars: by sleeve only
    assert stage_order(reversed(definitions.ASSETS)).index("returns") == 0
    for reader, read in (
        ("features", "returns"),
        ("weights", "selection"),
        ("portfolio", "weights"),
    ):
        assert definitions.STAGES.index(read) < definitions.STAGES.index(reader)


def test_the_tests_list_of_assets_is_the_definitions_list():
    assert tuple(a.key.to_user_string() for a in definitions.SLEEVE_ASSETS) == ASSETS


def test_every_asset_links_to_its_source_code():
    for asset in definitions.ASSETS:
        [(key, spec)] = [(s.key, s) for s in asset.specs]
        [reference] = spec.metadata["dagster/code_references"].code_references
        assert reference.file_path.endswith(".py") and reference.line_number > 0, key


def test_a_describer_beside_its_asset_is_found_and_any_other_asset_has_the_default():
    import sys

    here = sys.modules[__name__]
    assert describer_of("momentum", here) is describe_momentum
    assert describer_of("momentum") is describe_default
    assert describer_of("backtest", here).__module__ == "tvq_assets.tracking.describe"
    assert diff.STAGES == ("selection", "weights", "backtest", "portfolio")


def test_a_new_asset_is_materialised_tracked_and_replayed_with_no_list_edited(
    instance, lake_root, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'tracked.db'}")
    assets = [*definitions.ASSETS, momentum]
    assert stage_order(assets)[-1] == "momentum"
    resources = resources_for(lake_root, crypto=synthetic_source())
    by_name = {a.key.to_user_string(): a for a in assets}
    assert dg.materialize(
        [by_name["bars"]], partition_key="crypto", resources=resources, instance=instance
    ).success
    result = dg.materialize(
        assets,
        partition_key=KEY,
        selection=[by_name["returns"].key, momentum.key],
        resources=resources,
        instance=instance,
    )
    assert result.success
    [event] = result.asset_materializations_for_node("momentum")
    assert "mlflow_run" in event.metadata
    [run] = parent_runs(MlflowTracker())
    stored = ParquetLake(root=lake_root).read(["momentum"], KEY)
    assert run.data.tags["tvq.stage.momentum"] == result.run_id
    assert run.data.metrics["momentum.symbols"] == len(stored)
    assert run.data.tags["tvq.momentum.leader"] == stored["mean_return"].idxmax()

    # Replayed into an empty store, with the definitions' assets plus the new one.
    elsewhere = MlflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'replayed.db'}")
    lake = ParquetLake(root=lake_root)
    recorded = replay.replay(elsewhere, instance, lake, "crypto", AS_OF, AS_OF, assets=assets)
    assert recorded == [(KEY, ["returns", "momentum"])]
    [replayed] = parent_runs(elsewhere)
    assert replayed.data.metrics["momentum.symbols"] == len(stored)
