"""The alpha layer through Dagster: features, inference, clusters and selection per partition."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from tests.conftest import (
    AS_OF,
    evaluations,
    materialised,
    metadata,
    resources_for,
    synthetic_source,
)
from tvq_assets import allocation, alpha, data
from tvq_assets.partitions import catalog
from tvq_assets.quant.features import FEATURE_COLUMNS
from tvq_assets.quant.selection import economic_identity
from tvq_resources.lake import ParquetLake

KEY = f"{AS_OF}|crypto"
ALPHA = [alpha.features, alpha.inference, alpha.clusters, alpha.selection]
DOWNSTREAM = [*ALPHA, allocation.weights, allocation.backtest]
ALPHA_CHECKS = {
    alpha.FEATURES_CONTRACT,
    alpha.INFERENCE_CONTRACT,
    alpha.CLUSTERS_CONTRACT,
    alpha.SELECTION_CONTRACT,
    alpha.WINNER_COUNT,
}


def materialise(instance, resources, *, partition=KEY, targets=(data.returns, *ALPHA)):
    """Refresh the sleeve's bars, then materialise ``targets`` for one sleeve × run partition."""
    bars_result = dg.materialize(
        [data.bars],
        partition_key=partition.split("|")[-1],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert bars_result.success
    return dg.materialize(
        [data.bars, data.returns, *DOWNSTREAM],
        partition_key=partition,
        selection=[a.key for a in targets],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def stalled_in_bars(bars: pd.DataFrame, as_of: str, stall_bars: int = 3) -> set[str]:
    """Reference: symbols whose last ``stall_bars`` closes up to ``as_of`` are identical."""
    stalled = set()
    for symbol, group in bars[bars["date"] <= pd.Timestamp(as_of)].groupby("symbol"):
        closes = group.sort_values("date")["close"].tail(stall_bars)
        if len(closes) == stall_bars and closes.nunique() == 1:
            stalled.add(symbol)
    return stalled


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """One clean 30-symbol crypto run, shared by the read-only tests of this module."""
    root = str(tmp_path_factory.mktemp("alpha") / "lake")
    with dg.DagsterInstance.ephemeral() as instance:
        result = materialise(instance, resources_for(root, crypto=synthetic_source(symbols=30)))
        lake = ParquetLake(root=root)
        yield (
            result,
            {
                name: lake.read([name], KEY)
                for name in ("returns", "features", "inference", "clusters", "selection")
            },
        )


def test_a_clean_sleeve_materialises_the_alpha_layer_with_every_check_passing(clean_run):
    result, _ = clean_run
    assert result.success
    assert materialised(result) == {"returns", "features", "inference", "clusters", "selection"}
    found = evaluations(result)
    assert set(found) >= ALPHA_CHECKS
    for evaluation in found.values():
        assert evaluation.passed, (evaluation.check_name, evaluation.description)
        assert evaluation.partition == KEY
    assert found[alpha.WINNER_COUNT].severity == dg.AssetCheckSeverity.WARN
    assert found[alpha.SELECTION_CONTRACT].severity == dg.AssetCheckSeverity.ERROR


def test_features_have_one_row_per_returns_symbol_and_the_contract_columns(clean_run):
    _, values = clean_run
    table, window = values["features"], values["returns"].returns
    assert table.index.name == "symbol"
    assert list(table.index) == list(window.columns)
    assert set(FEATURE_COLUMNS) | {"stalled", "volume_spike"} <= set(table.columns)
    assert table["stalled"].dtype == bool and table["volume_spike"].dtype == bool


def test_features_are_computed_from_the_last_feature_lookback_rows_of_returns(clean_run):
    _, values = clean_run
    table, window = values["features"], values["returns"].returns
    lookback = catalog.sleeve("crypto").policy.feature_lookback
    for symbol in window.columns:
        recent = window[symbol].iloc[-lookback:].dropna()
        assert table.loc[symbol, "momentum"] == pytest.approx(recent.mean() * 365, rel=1e-9)
        assert table.loc[symbol, "volatility"] == pytest.approx(
            recent.std(ddof=1) * np.sqrt(365), rel=1e-9
        )
        assert table.loc[symbol, "history"] == window[symbol].notna().sum()


def test_inference_scores_every_featured_symbol_in_the_half_open_unit_interval(clean_run):
    _, values = clean_run
    scores = values["inference"]
    assert list(scores.index) == list(values["features"].index)
    for column in ("score", "challenger_score"):
        assert ((scores[column] > 0) & (scores[column] <= 1)).all(), column
    probabilities = scores.filter(like="p_")
    assert not probabilities.empty
    assert ((probabilities >= 0.01) & (probabilities <= 1)).all().all()
    assert set(scores["model"]) == {"log_mps"}


def test_every_returns_symbol_is_in_exactly_one_cluster(clean_run):
    _, values = clean_run
    labels = values["clusters"]["cluster"]
    assert not labels.index.has_duplicates
    assert set(labels.index) == set(values["returns"].returns.columns)
    assert labels.notna().all() and (labels >= 1).all()
    assert labels.nunique() <= catalog.sleeve("crypto").policy.max_clusters


def test_each_winner_is_within_bounds_and_its_stage_and_reason_are_in_the_audit(clean_run):
    _, values = clean_run
    winners, audit = values["selection"].winners, values["selection"].audit
    policy = catalog.sleeve("crypto").policy
    assert policy.min_winners <= len(winners) <= policy.max_winners
    admitted = audit[audit["decision"] == "admitted"].set_index("symbol")
    assert sorted(admitted.index) == sorted(winners.index)
    for symbol, winner in winners.iterrows():
        assert admitted.loc[symbol, "stage"] == winner["stage"]
        assert admitted.loc[symbol, "detail"] == winner["reason"]
        assert winner["reason"].startswith(f"stage {winner['stage']} ({winner['stage_name']})")
    clusters = values["clusters"]["cluster"]
    assert (winners["cluster"] == clusters.reindex(winners.index)).all()
    # At most top_n per cluster when no stage beyond the relaxed one was needed.
    if (winners["stage"] <= 2).all():
        assert winners["cluster"].value_counts().max() <= policy.top_n


def test_a_toxic_spike_under_policy_fail_stores_nothing_from_returns_on(instance, lake_root):
    resources = resources_for(lake_root, crypto=synthetic_source(faults=[{"kind": "toxic_spike"}]))
    result = materialise(instance, resources, targets=(data.returns, *DOWNSTREAM))
    assert not result.success
    assert materialised(result) == set()
    assert not evaluations(result)[data.RETURNS_CONTRACT].passed
    lake = ParquetLake(root=lake_root)
    for asset in (data.returns, *DOWNSTREAM):
        assert not lake.exists([asset.key.path[-1]], KEY)


def test_a_quarantined_symbol_is_not_a_winner_and_is_excluded_in_the_audit(
    instance, lake_root, sleeve_policy
):
    sleeve_policy("crypto", toxic_policy="quarantine")
    resources = resources_for(lake_root, crypto=synthetic_source(faults=[{"kind": "toxic_spike"}]))
    result = materialise(instance, resources)
    assert result.success
    [symbol] = evaluations(result)[data.RETURNS_CONTRACT].metadata["quarantined_symbols"].value
    selection = ParquetLake(root=lake_root).read(["selection"], KEY)
    assert symbol not in selection.winners.index
    rows = selection.audit[selection.audit["symbol"] == symbol]
    assert list(rows["decision"]) == ["excluded"]
    assert "toxic_return" in rows["detail"].iloc[0]
    assert evaluations(result)[alpha.SELECTION_CONTRACT].passed


def test_a_stalled_symbol_is_listed_in_features_metadata_and_never_a_winner(instance, lake_root):
    resources = resources_for(lake_root, crypto=synthetic_source(faults=[{"kind": "stall"}]))
    result = materialise(instance, resources)
    assert result.success
    lake = ParquetLake(root=lake_root)
    expected = stalled_in_bars(lake.read(["bars"], "crypto").bars, AS_OF)
    assert expected, "the stall fault should stall one symbol"
    assert set(metadata(result, "features")["stalled"]) == expected
    features = lake.read(["features"], KEY)
    assert expected <= set(features.index)
    assert set(features.index[features["stalled"]]) == expected
    selection = lake.read(["selection"], KEY)
    assert not expected & set(selection.winners.index)
    vetoes = selection.audit.query("rule == 'stalled' and decision == 'vetoed'")
    assert set(vetoes["symbol"]) == expected


def test_min_winners_above_the_universe_selects_everything_and_warns_without_failing(
    instance, lake_root, sleeve_policy
):
    sleeve_policy("crypto", policy={"min_winners": 25, "max_winners": 40})
    resources = resources_for(lake_root, crypto=synthetic_source(symbols=20))
    result = materialise(instance, resources, targets=(data.returns, *ALPHA, allocation.weights))
    assert result.success
    lake = ParquetLake(root=lake_root)
    features = lake.read(["features"], KEY)
    selection = lake.read(["selection"], KEY)
    winners = selection.winners
    # Every eligible economic identity is selected exactly once (twins share one identity),
    # except the illiquid ones: the friction rule is a safety veto even in the global fill.
    illiquid = set(selection.audit.query("rule == 'friction'")["symbol"])
    assert not illiquid & set(winners.index)
    identities = {economic_identity(s) for s in features.index if s not in illiquid}
    assert len(winners) == len(identities) < 25
    assert {economic_identity(s) for s in winners.index} == identities
    found = evaluations(result)
    warning = found[alpha.WINNER_COUNT]
    assert not warning.passed and warning.severity == dg.AssetCheckSeverity.WARN
    assert f"{len(winners)} winners, outside [25, 40]" in warning.description
    assert "eligible universe" in warning.description
    assert found[alpha.SELECTION_CONTRACT].passed
    assert "weights" in materialised(result)


def test_scores_and_winners_of_run_d_ignore_bars_that_arrive_after_d(instance, lake_root):
    lake = ParquetLake(root=lake_root)
    early = resources_for(lake_root, crypto=synthetic_source(end=AS_OF))
    assert materialise(instance, early).success
    before = {
        name: lake.read([name], KEY) for name in ("features", "inference", "selection", "clusters")
    }
    later_end = f"{pd.Timestamp(AS_OF) + pd.Timedelta(days=45):%Y-%m-%d}"
    later = resources_for(lake_root, crypto=synthetic_source(end=later_end))
    assert materialise(instance, later).success
    assert lake.read(["bars"], "crypto").bars["date"].max() == pd.Timestamp(later_end)
    after = {
        name: lake.read([name], KEY) for name in ("features", "inference", "selection", "clusters")
    }
    pd.testing.assert_frame_equal(before["features"], after["features"])
    pd.testing.assert_frame_equal(before["inference"], after["inference"])
    pd.testing.assert_frame_equal(before["clusters"], after["clusters"])
    pd.testing.assert_frame_equal(before["selection"].winners, after["selection"].winners)
    pd.testing.assert_frame_equal(before["selection"].audit, after["selection"].audit)
