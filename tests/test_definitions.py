"""The code location: it loads, has the documented graph, and respects the dependency rule."""

import ast
import datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import ASSETS
from tvq_assets.definitions import defs
from tvq_assets.partitions import catalog, run, sleeve, sleeve_run

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_location_loads():
    dg.Definitions.validate_loadable(defs)


def test_the_graph_has_the_documented_assets_and_partitions():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    # The meta-portfolio across sleeves is partitioned by the run date alone.
    assert keys == {*ASSETS, "meta_portfolio"}
    assert graph.get(dg.AssetKey("meta_portfolio")).partitions_def == run
    assert graph.get(dg.AssetKey("bars")).partitions_def == sleeve
    for name in ASSETS[1:]:
        assert graph.get(dg.AssetKey(name)).partitions_def == sleeve_run
    assert (
        sleeve.get_partition_keys() == list(catalog.sleeves) == ["crypto", "tradfi", "binance_perp"]
    )


def test_every_asset_has_partition_scoped_checks_and_a_docstring():
    graph = defs.resolve_asset_graph()
    for name in [*ASSETS, "meta_portfolio"]:
        node = graph.get(dg.AssetKey(name))
        assert node.description, name
        specs = list(node.assets_def.check_specs)
        assert specs, f"{name} has no checks"
        assert all(spec.partitions_def == node.partitions_def for spec in specs), name


def test_blocking_checks_guard_every_stage_boundary():
    graph = defs.resolve_asset_graph()
    for name in [*ASSETS, "meta_portfolio"]:
        specs = graph.get(dg.AssetKey(name)).assets_def.check_specs
        assert any(spec.blocking for spec in specs), f"{name} has no blocking check"


def test_multi_partition_keys_read_run_then_sleeve():
    key = sleeve_run.get_partition_keys()[0]
    assert key.keys_by_dimension["sleeve"] in catalog.sleeves
    assert str(key).startswith(key.keys_by_dimension["run"] + "|")


def _imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package.replace(".", "/")).rglob("*.py"):
        modules = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
                modules |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules |= {node.module.split(".")[0], node.module}
        found[str(path.relative_to(ROOT))] = modules
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("tvq_assets.quant", {"dagster", "mlflow", "ray", "pandera", "dagster_pandera"}),
        ("tvq_resources", {"tvq_assets", "tvq_checks"}),
    ],
)
def test_the_dependency_rule_holds(package, forbidden):
    offenders = {
        path: mods & forbidden for path, mods in _imports(package).items() if mods & forbidden
    }
    assert not offenders


def test_checks_import_only_the_engine_of_tvq_assets():
    # Contracts and check glue must not reach into assets, partitions or definitions (Dagster-facing
    # modules that themselves import tvq_checks): only the pure engine and the catalog.
    allowed = ("tvq_assets.quant", "tvq_assets.catalog")
    offenders = {
        path: sorted(m for m in mods if m.startswith("tvq_assets.") and not m.startswith(allowed))
        for path, mods in _imports("tvq_checks").items()
    }
    assert not {path: mods for path, mods in offenders.items() if mods}


RESOURCE_CONSTRUCTORS = {"Definitions", "ParquetLake", "ParquetIOManager", "MarketData"}


def test_only_definitions_binds_resources():
    binders = set()
    for package in ("tvq_assets", "tvq_checks"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                    if name in RESOURCE_CONSTRUCTORS:
                        binders.add(str(path.relative_to(ROOT)))
    assert binders == {"tvq_assets/definitions.py"}


def test_the_self_dependencies_read_the_previous_week_of_runs_of_the_same_sleeve():
    from tvq_assets.partitions import PREVIOUS_RUN_DAYS, PREVIOUS_RUN_MAPPING, previous_run_keys

    graph = defs.resolve_asset_graph()
    for name in ("weights", "backtest", "portfolio"):
        node = graph.get(dg.AssetKey(name))
        assert dg.AssetKey(name) in node.parent_keys
        mapping = node.assets_def.get_partition_mapping(dg.AssetKey(name))
        assert mapping == PREVIOUS_RUN_MAPPING
        downstream = dg.MultiPartitionKey({"run": "2026-06-30", "sleeve": "crypto"})
        upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
            sleeve_run.subset_with_partition_keys([downstream]), sleeve_run, sleeve_run
        ).partitions_subset.get_partition_keys()
        # One rule: the keys `previous_run_keys` names (the summary, the diff and the soak read
        # by them) are the partitions Dagster maps a run to (its lineage, its backfill order).
        assert sorted(str(k) for k in upstream) == previous_run_keys(str(downstream))
        assert len(upstream) == PREVIOUS_RUN_DAYS and "2026-06-29|crypto" in upstream
    # The dangling edge from backtest to weights is gone.
    assert dg.AssetKey("weights") not in graph.get(dg.AssetKey("backtest")).parent_keys


def test_contracts_import_no_dagster():
    contracts = {p: m for p, m in _imports("tvq_checks").items() if "contracts" in p}
    assert contracts and not {p: m & {"dagster"} for p, m in contracts.items() if "dagster" in m}


@pytest.mark.parametrize(
    ("mode", "executor_name"), [("local", "in_process"), ("production", "in_process")]
)
def test_tv_orch_mode_selects_the_executor(monkeypatch, mode, executor_name):
    from tvq_assets.definitions import executor

    monkeypatch.setenv("TV_ORCH_MODE", mode)
    assert executor().name == executor_name


def test_an_unknown_orchestration_mode_is_refused_with_the_choices(monkeypatch):
    from tvq_assets.definitions import executor

    monkeypatch.setenv("TV_ORCH_MODE", "cluster")
    with pytest.raises(ValueError, match="'local' or 'production'"):
        executor()


def test_the_daily_schedule_refreshes_the_bars_of_every_sleeve():
    from tvq_assets.jobs import daily_schedule

    context = dg.build_schedule_context(
        scheduled_execution_time=datetime.datetime(2026, 11, 27, 0, 15)
    )
    requests = list(daily_schedule(context))
    assert [r.partition_key for r in requests] == list(catalog.sleeves)
    assert len({r.run_key for r in requests}) == len(requests)


def test_the_partition_key_format_has_one_home_that_agrees_with_dagster():
    from tvq_assets.partitions import run_key, sleeve_run, split_run_key

    keys = sleeve_run.get_partition_keys()
    made = run_key("2026-06-30", "crypto")
    assert made in keys
    assert split_run_key(made) == (pd.Timestamp("2026-06-30"), "crypto")
    with pytest.raises(ValueError, match="sleeve × run partition key"):
        split_run_key("crypto")


def test_the_previous_run_read_is_the_newest_stored_in_the_week_before(tmp_path):
    from tvq_assets.partitions import previous_stored_run, run_key
    from tvq_resources.lake import ParquetLake

    monday = run_key("2026-06-29", "tradfi")
    lake = ParquetLake(root=str(tmp_path / "lake"))
    assert previous_stored_run(lake, "portfolio", monday) is None  # a first run
    friday, earlier = run_key("2026-06-26", "tradfi"), run_key("2026-06-25", "tradfi")
    for key in (earlier, friday, run_key("2026-06-26", "crypto")):
        lake.write(["portfolio"], key, pd.DataFrame({"weight": [1.0]}))
    assert previous_stored_run(lake, "portfolio", monday) == friday  # over the weekend
    # Friday's state is not carried past a week (the run then starts afresh and says so).
    assert previous_stored_run(lake, "portfolio", run_key("2026-07-03", "tradfi")) == friday
    assert previous_stored_run(lake, "portfolio", run_key("2026-07-04", "tradfi")) is None


def test_the_readers_and_the_engine_share_the_bar_columns():
    # The dependency rule keeps tvq_resources from importing the engine, so the readers restate
    # the bar layout; this is what keeps the two statements one definition.
    from tvq_assets.quant.bars import BAR_COLUMNS
    from tvq_resources.files import BAR_COLUMNS as READER_COLUMNS

    assert READER_COLUMNS == BAR_COLUMNS
