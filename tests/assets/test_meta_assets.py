"""The meta_portfolio asset: its fan-in in the graph, the missing-sleeve rule, its contract, and a
two-date backfill through Dagster's own machinery."""

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from tests.conftest import evaluations, metadata, resources_for, start_daemon, stop
from tvq_assets import meta as meta_assets
from tvq_assets.catalog import CatalogError, MetaLimit, parse_catalog
from tvq_assets.definitions import ASSETS
from tvq_assets.partitions import catalog, run, run_key, sleeve_run
from tvq_assets.quant import policy
from tvq_assets.quant.meta import BASELINE, META, MetaRecord
from tvq_resources.lake import ParquetLake

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
AS_OF = "2026-06-30"
CHAMPION = "log_mps/risk_parity"


def sleeve_records(sleeve: str, as_of: str, seed: int):
    """A stored backtest (the champion's out-of-sample returns on the sleeve's calendar) and
    portfolio of one sleeve × run, as the sleeve's assets store them."""
    random = np.random.default_rng(seed)
    days = pd.date_range(end=as_of, periods=200, freq="D")
    if catalog.sleeve(sleeve).calendar == "weekday":
        days = days[days.dayofweek < 5]
    returns = pd.DataFrame(
        {CHAMPION: random.normal(0.001, 0.02, len(days)), "baseline_universe": 0.0}, index=days
    )
    record = policy.TournamentRecord(
        returns=returns,
        turnover=pd.DataFrame({CHAMPION: [0.5]}, index=days[:1]),
        metrics=pd.DataFrame({"sharpe": [1.0]}, index=pd.Index([CHAMPION], name="policy")),
        verdict=pd.DataFrame([{"champion": CHAMPION, "challenger": CHAMPION}]),
        champion_weights=pd.DataFrame({"weight": [0.5, 0.5]}, index=["A", "B"]),
        targets=pd.DataFrame({"policy": [CHAMPION], "window": [0], "symbol": ["A"], "weight": [1]}),
    )
    book = pd.Series({f"{sleeve}_A": 0.25, f"{sleeve}_B": 0.25, f"{sleeve}_C": 0.5})
    return record, policy.portfolio_record(book.rename("weight").rename_axis("symbol"), None)


def store_sleeves(lake: ParquetLake, as_of: str, sleeves=("crypto", "tradfi")) -> None:
    for seed, sleeve in enumerate(sleeves):
        record, book = sleeve_records(sleeve, as_of, seed)
        lake.write(["backtest"], run_key(as_of, sleeve), record)
        lake.write(["portfolio"], run_key(as_of, sleeve), book)


def run_meta(lake_root: str, instance, as_of: str = AS_OF):
    defs = dg.Definitions(
        assets=ASSETS,
        jobs=[meta_assets.meta_job],
        resources=resources_for(lake_root),
    )
    return defs.resolve_job_def("meta_portfolio_job").execute_in_process(
        partition_key=as_of, instance=instance, raise_on_error=False
    )


@pytest.fixture
def meta_rule(monkeypatch):
    def change(**fields):
        changed = dataclasses.replace(catalog.meta, **fields)
        monkeypatch.setattr(meta_assets, "catalog", dataclasses.replace(catalog, meta=changed))

    return change


def test_the_graph_fans_every_sleeves_backtest_and_portfolio_into_meta_portfolio():
    from tvq_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("meta_portfolio"))
    assert node.parent_keys == {dg.AssetKey("backtest"), dg.AssetKey("portfolio")}
    for parent in ("backtest", "portfolio"):
        mapping = graph.get_partition_mapping(dg.AssetKey("meta_portfolio"), dg.AssetKey(parent))
        assert isinstance(mapping, dg.MultiToSingleDimensionPartitionMapping)
        upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
            run.empty_subset().with_partition_keys([AS_OF]), run, sleeve_run
        ).partitions_subset.get_partition_keys()
        assert sorted(upstream) == sorted(run_key(AS_OF, s) for s in catalog.sleeves)
    # It is not in the per-sleeve daily job (other partitioning) but in its own.
    assert "meta_portfolio" not in {
        k.to_user_string() for k in defs.resolve_job_def("daily").asset_layer.executable_asset_keys
    }


def test_meta_portfolio_allocates_across_the_sleeves_and_passes_its_contract(lake_root, instance):
    lake = ParquetLake(root=lake_root)
    store_sleeves(lake, AS_OF)
    result = run_meta(lake_root, instance)
    assert result.success
    checks = evaluations(result)
    assert checks["meta_holdings_contract"].passed and checks["meta_sleeves_present"].passed
    stored: MetaRecord = lake.read(["meta_portfolio"], AS_OF)
    assert stored.holdings["weight"].sum() == pytest.approx(1.0, abs=1e-9)
    assert set(stored.holdings["sleeve"]) == {"crypto", "tradfi"}
    for sleeve, row in stored.sleeves.iterrows():
        assert row["floor"] - 1e-9 <= row["weight"] <= row["cap"] + 1e-9, sleeve
    assert list(stored.metrics.index) == [META, BASELINE]
    shown = metadata(result, "meta_portfolio")
    assert shown["sleeves_missing"] == "none" and shown["periods_per_year"] == 252
    # Tracked like a sleeve run: its own experiment, params, metrics, tables and a tear sheet.
    from tvq_resources.tracking import MlflowTracker

    tracker = MlflowTracker()
    [tracked] = tracker.search(tracker.experiment_id("tvq-meta"), {"dagster.run_id": result.run_id})
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["meta.profile"] == "risk_parity"
    assert tracked.data.metrics["meta.sharpe"] == pytest.approx(stored.metrics.loc[META, "sharpe"])
    assert "baseline.max_drawdown" in tracked.data.metrics
    artifacts = {
        a.path for a in tracker.client.list_artifacts(tracked.info.run_id, "meta_portfolio")
    }
    assert {"meta_portfolio/holdings.csv", "meta_portfolio/equity_vs_baseline.png"} <= artifacts


def test_a_missing_sleeve_fails_clearly_under_fail(lake_root, instance, meta_rule):
    meta_rule(missing_sleeve="fail")
    store_sleeves(ParquetLake(root=lake_root), AS_OF, sleeves=("crypto",))
    result = run_meta(lake_root, instance)
    assert not result.success
    [failure] = result.get_step_failure_events()
    message = failure.step_failure_data.error.to_string()
    assert "meta_portfolio[2026-06-30]" in message and "['tradfi']" in message
    assert "'fail'" in message
    assert not ParquetLake(root=lake_root).exists(["meta_portfolio"], AS_OF)


def test_a_missing_sleeve_is_named_in_a_warn_under_allocate_present(lake_root, instance, meta_rule):
    meta_rule(missing_sleeve="allocate_present", limits={"crypto": MetaLimit(cap=1.0, floor=0.2)})
    store_sleeves(ParquetLake(root=lake_root), AS_OF, sleeves=("crypto",))
    result = run_meta(lake_root, instance)
    assert result.success
    warned = evaluations(result)["meta_sleeves_present"]
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert "tradfi" in warned.description
    assert evaluations(result)["meta_holdings_contract"].passed
    assert metadata(result, "meta_portfolio")["sleeves_missing"] == "tradfi"
    stored = ParquetLake(root=lake_root).read(["meta_portfolio"], AS_OF)
    assert stored.sleeves.loc["crypto", "weight"] == pytest.approx(1.0)
    assert "allocate_present" in stored.sleeves.loc["tradfi", "missing_reason"]


def test_the_catalog_meta_section_is_validated_naming_each_problem():
    synthetic = {"kind": "synthetic"}
    sleeves = {
        "crypto": {"calendar": "crypto", "source": synthetic},
        "tradfi": {"calendar": "weekday", "source": synthetic},
    }
    with pytest.raises(CatalogError) as raised:
        parse_catalog(
            {
                "sleeves": sleeves,
                "meta": {
                    "profil": "hrp",
                    "missing_sleeve": "skip",
                    "lookback": 1,
                    "sleeves": ["crypto", "rates"],
                },
            }
        )
    text = str(raised.value)
    assert "meta: unknown key 'profil' (did you mean 'profile'?)" in text
    assert "meta.missing_sleeve = 'skip'" in text
    assert "meta.lookback = 1: breaks the rule value >= 2" in text
    assert "meta.sleeves: 'rates' is not a sleeve" in text
    with pytest.raises(CatalogError, match=r"caps of \['crypto', 'tradfi'\] sum to 0.9"):
        parse_catalog(
            {
                "sleeves": sleeves,
                "meta": {"limits": {"crypto": {"cap": 0.4}, "tradfi": {"cap": 0.5}}},
            }
        )
    with pytest.raises(CatalogError, match=r"floor = 0.6 > cap = 0.5"):
        parse_catalog(
            {"sleeves": sleeves, "meta": {"limits": {"crypto": {"cap": 0.5, "floor": 0.6}}}}
        )
    defaults = parse_catalog({"sleeves": sleeves})
    assert defaults.meta.profile == "risk_parity" and defaults.meta.missing_sleeve == "fail"
    assert defaults.meta_sleeves == ("crypto", "tradfi")


@pytest.mark.slow
def test_a_two_date_backfill_materialises_both_dates(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    lake = ParquetLake(root=str(home / "lake"))
    dates = ("2026-06-29", "2026-06-30")
    for date in dates:
        store_sleeves(lake, date)
    environment = {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    environment.pop("TVQ_LAKE", None)
    # The two runs may start together: create the MLflow store (and experiment) before, so they
    # never race to create its tables.
    from tvq_resources.tracking import MlflowTracker

    environment["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowTracker(tracking_uri=environment["MLFLOW_TRACKING_URI"]).experiment_id("tvq-meta")
    subprocess.run(
        [
            *(str(BIN / "dagster"), "job", "backfill", "-w", "workspace.yaml"),
            *("-j", "meta_portfolio_job", "--partitions", ",".join(dates), "--noprompt"),
        ],
        env=environment,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    daemon = start_daemon(environment)
    try:
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 600
            # A run whose process dies (a start timeout on a loaded machine) is retried once by
            # the instance (dagster.yaml run_retries): wait for a success per date.
            while time.monotonic() < deadline:
                runs = [r for r in instance.get_runs() if r.tags.get("dagster/backfill")]
                succeeded = {
                    r.tags["dagster/partition"]
                    for r in runs
                    if r.status == dg.DagsterRunStatus.SUCCESS
                }
                if succeeded == set(dates):
                    break
                time.sleep(3)
            statuses = {
                date: dg.DagsterRunStatus.SUCCESS if date in succeeded else "not succeeded"
                for date in dates
            }
            errors = [
                event.message
                for r in runs
                for event in instance.all_logs(r.run_id)
                if event.dagster_event and event.dagster_event.is_failure
            ]
    finally:
        stop(daemon)
    assert statuses == {date: dg.DagsterRunStatus.SUCCESS for date in dates}, errors
    for date in dates:
        assert lake.exists(["meta_portfolio"], date)
