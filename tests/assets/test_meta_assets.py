"""The meta_portfolio asset: its fan-in in the graph, each sleeve's latest successful decision
at or before the date (weekends, Mondays, the day after a failed run, a first run, a gap), the
missing-sleeve rule, its contract, its sensors, and a two-date backfill through Dagster's own
machinery.

The sleeves' runs are real Dagster runs on the test's instance: stand-ins for the sleeves' last
two assets (the same keys, ``backtest`` and ``portfolio``, the same sleeve × run partitions) store
small synthetic records through the lake's IO manager, or fail, so Dagster records exactly what
a daily run would (materialisations, planned materialisations of a failed run).
"""

import dataclasses
import logging
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
from tvq_assets import cli
from tvq_assets import meta as meta_assets
from tvq_assets.catalog import CatalogError, MetaLimit, parse_catalog
from tvq_assets.definitions import ASSETS
from tvq_assets.partitions import catalog, run, run_key, sleeve_run
from tvq_assets.quant import policy
from tvq_assets.quant.meta import BASELINE, META, MetaRecord, join_calendars
from tvq_resources.lake import ParquetIOManager, ParquetLake

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
AS_OF = "2026-06-30"  # a Tuesday
MONDAY, SUNDAY, FRIDAY = "2026-06-29", "2026-06-28", "2026-06-26"
CHAMPION = "log_mps/risk_parity"


def sleeve_records(sleeve: str, as_of: str, seed: int, *, as_promoted: bool = True):
    """A stored backtest (the champion's out-of-sample returns on the sleeve's calendar, and a
    different as-promoted stream: the selection process's own record, or none as a backtest
    stored before it existed) and portfolio of one sleeve × run, as the sleeve's assets store
    them. The book's symbols name the run date, so a test sees which run's decision the
    meta-portfolio holds."""
    random = np.random.default_rng(seed)
    days = pd.date_range(end=as_of, periods=200, freq="D")
    if catalog.sleeve(sleeve).calendar == "weekday":
        days = days[days.dayofweek < 5]
    returns = pd.DataFrame(
        {CHAMPION: random.normal(0.001, 0.02, len(days)), "baseline_universe": 0.0}, index=days
    )
    live = random.normal(0.0005, 0.02, len(days))
    record_of = {
        "promotions": pd.DataFrame([{"window": 0, "champion": CHAMPION}]),
        "as_promoted": pd.DataFrame(
            {"return": live, "policy": CHAMPION, "window": 0}, index=days.rename("date")
        ),
    }
    record = policy.TournamentRecord(
        returns=returns,
        turnover=pd.DataFrame({CHAMPION: [0.5]}, index=days[:1]),
        metrics=pd.DataFrame({"sharpe": [1.0]}, index=pd.Index([CHAMPION], name="policy")),
        verdict=pd.DataFrame([{"champion": CHAMPION, "challenger": CHAMPION}]),
        champion_weights=pd.DataFrame({"weight": [0.5, 0.5]}, index=["A", "B"]),
        targets=pd.DataFrame({"policy": [CHAMPION], "window": [0], "symbol": ["A"], "weight": [1]}),
        **(record_of if as_promoted else {}),
    )
    day = pd.Timestamp(as_of).strftime("%m%d")
    book = pd.Series({f"{sleeve}_A_{day}": 0.25, f"{sleeve}_B_{day}": 0.25, f"{sleeve}_C": 0.5})
    return record, policy.portfolio_record(book.rename("weight").rename_axis("symbol"), None)


def sleeve_run_of(
    instance,
    lake_root: str,
    as_of: str,
    sleeve: str,
    *,
    fail: bool = False,
    fail_portfolio: bool = False,
    as_promoted=True,
):
    """One run of the sleeve × run partition ``as_of|sleeve`` on ``instance``: it stores the
    sleeve's backtest and portfolio, or fails in its backtest step (nothing stored, the
    portfolio skipped) as a daily run stopped by a check does, or (``fail_portfolio``) stores
    the backtest and fails in its portfolio step."""
    record, book = sleeve_records(
        sleeve, as_of, seed=sum(map(ord, sleeve + as_of)), as_promoted=as_promoted
    )

    @dg.asset(name="backtest", partitions_def=sleeve_run)
    def backtest() -> policy.TournamentRecord:
        if fail:
            raise dg.Failure(description=f"the run of {as_of}|{sleeve} failed")
        return record

    @dg.asset(name="portfolio", partitions_def=sleeve_run, deps=[backtest])
    def portfolio() -> policy.PortfolioRecord:
        if fail_portfolio:
            raise dg.Failure(description=f"the portfolio of {as_of}|{sleeve} failed its contract")
        return book

    result = dg.materialize(
        [backtest, portfolio],
        partition_key=run_key(as_of, sleeve),
        instance=instance,
        resources={"io_manager": ParquetIOManager(lake=ParquetLake(root=lake_root))},
        raise_on_error=False,
    )
    assert result.success != (fail or fail_portfolio)
    return result


def decided(instance, lake_root: str, as_of: str, sleeves=("crypto", "tradfi")) -> None:
    for sleeve in sleeves:
        sleeve_run_of(instance, lake_root, as_of, sleeve)


def run_meta(lake_root: str, instance, as_of: str = AS_OF):
    defs = dg.Definitions(
        assets=ASSETS,
        jobs=[meta_assets.meta_job],
        resources=resources_for(lake_root),
    )
    return defs.resolve_job_def("meta_portfolio_job").execute_in_process(
        partition_key=as_of, instance=instance, raise_on_error=False
    )


def logged(instance, result) -> dict[str, int]:
    """The run's own log lines (not Dagster's events), each with its level."""
    return {
        record.user_message: record.level
        for record in instance.all_logs(result.run_id)
        if not record.is_dagster_event
    }


def failure_of(result) -> str:
    [failure] = result.get_step_failure_events()
    return failure.step_failure_data.error.to_string()


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


def test_meta_portfolio_allocates_across_the_sleeves_and_passes_its_contract(
    lake_root, instance, tmp_path
):
    decided(instance, lake_root, AS_OF)
    result = run_meta(lake_root, instance)
    assert result.success
    checks = evaluations(result)
    assert checks["meta_holdings_contract"].passed and checks["meta_sleeves_present"].passed
    lake = ParquetLake(root=lake_root)
    stored: MetaRecord = lake.read(["meta_portfolio"], AS_OF)
    assert stored.holdings["weight"].sum() == pytest.approx(1.0, abs=1e-9)
    assert set(stored.holdings["sleeve"]) == {"crypto", "tradfi"}
    for sleeve, row in stored.sleeves.iterrows():
        assert row["floor"] - 1e-9 <= row["weight"] <= row["cap"] + 1e-9, sleeve
        assert row["decision_date"] == pd.Timestamp(AS_OF) and row["decision_age_sessions"] == 0
    assert list(stored.metrics.index) == [META, BASELINE]
    # The sleeves enter by their as-promoted streams, not today's champion's (hindsight).
    backtests = {s: lake.read(["backtest"], run_key(AS_OF, s)) for s in ("crypto", "tradfi")}
    joined = join_calendars(
        {s: b.as_promoted["return"] for s, b in backtests.items()}, as_of=pd.Timestamp(AS_OF)
    )
    pd.testing.assert_frame_equal(stored.joined, joined.returns, check_freq=False)
    shown = metadata(result, "meta_portfolio")
    assert shown["sleeves_missing"] == "none" and shown["periods_per_year"] == 252
    assert shown["decision_dates"] == {"crypto": AS_OF, "tradfi": AS_OF}
    # Tracked like a sleeve run: its own experiment, params, metrics, tables and a tear sheet.
    from tvq_resources.tracking import MlflowTracker

    tracker = MlflowTracker()
    [tracked] = tracker.search(tracker.experiment_id("tvq-meta"), {"dagster.run_id": result.run_id})
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["meta.profile"] == "risk_parity"
    assert tracked.data.params["meta.max_decision_age"] == "3"
    assert tracked.data.metrics["meta.sharpe"] == pytest.approx(stored.metrics.loc[META, "sharpe"])
    assert "baseline.max_drawdown" in tracked.data.metrics
    artifacts = {
        a.path for a in tracker.client.list_artifacts(tracked.info.run_id, "meta_portfolio")
    }
    assert {
        "meta_portfolio/holdings.csv",
        "meta_portfolio/equity_curve.png",
        "meta_portfolio/drawdown.png",
    } <= artifacts
    # The equity curve is rendered once, by the asset: the run logs the file beside the value.
    logged = tracker.client.download_artifacts(
        tracked.info.run_id, "meta_portfolio/equity_curve.png", str(tmp_path)
    )
    assert Path(logged).read_bytes() == Path(shown["equity_curve_file"]).read_bytes()


def test_on_a_sunday_the_weekday_sleeves_friday_decision_holds(lake_root, instance, capsys):
    # What production does on a weekend: crypto runs Sunday, the weekday sleeve its Friday.
    sleeve_run_of(instance, lake_root, SUNDAY, "crypto")
    sleeve_run_of(instance, lake_root, FRIDAY, "tradfi")
    result = run_meta(lake_root, instance, SUNDAY)
    assert result.success, failure_of(result)
    assert evaluations(result)["meta_sleeves_present"].passed
    stored: MetaRecord = ParquetLake(root=lake_root).read(["meta_portfolio"], SUNDAY)
    tradfi = stored.sleeves.loc["tradfi"]
    assert tradfi["present"] and tradfi["decision_date"] == pd.Timestamp(FRIDAY)
    assert (tradfi["decision_age_days"], tradfi["decision_age_sessions"]) == (2, 0)
    assert tradfi["skipped"] == ""  # a weekend is no session of a weekday sleeve
    # The firm holds tradfi's Friday book.
    assert "tradfi_A_0626" in set(stored.holdings["symbol"])
    shown = metadata(result, "meta_portfolio")
    assert shown["decision_dates"] == {"crypto": SUNDAY, "tradfi": FRIDAY}
    assert "2026-06-26 Fri" in shown["decisions"]
    # Nothing was passed over, so the run notes each sleeve's decision without a warning.
    lines = logged(instance, result)
    used = f"meta_portfolio[{SUNDAY}]: tradfi uses its decision of 2026-06-26 (Friday, 2 days, "
    assert lines[used + "0 sessions old)"] == logging.INFO, lines
    # `tvq demo` prints each sleeve's decision and its age.
    cli.print_meta(stored, SUNDAY)
    printed = capsys.readouterr().out
    assert "decision of 2026-06-26 (Friday, 2 days, 0 sessions old)" in printed
    assert "decision of 2026-06-28 (Sunday, 0 days, 0 sessions old)" in printed


def test_on_a_monday_before_the_weekday_run_its_friday_decision_is_one_session_old(
    lake_root, instance
):
    sleeve_run_of(instance, lake_root, MONDAY, "crypto")
    sleeve_run_of(instance, lake_root, FRIDAY, "tradfi")
    result = run_meta(lake_root, instance, MONDAY)
    assert result.success, failure_of(result)
    stored = ParquetLake(root=lake_root).read(["meta_portfolio"], MONDAY)
    tradfi = stored.sleeves.loc["tradfi"]
    assert tradfi["decision_date"] == pd.Timestamp(FRIDAY)
    assert (tradfi["decision_age_days"], tradfi["decision_age_sessions"]) == (3, 1)
    assert tradfi["skipped"] == "2026-06-29 no run"


def test_the_day_after_a_failed_run_the_previous_decision_is_used_never_the_stale_value(
    lake_root, instance, capsys
):
    decided(instance, lake_root, MONDAY)
    decided(instance, lake_root, AS_OF)
    # tradfi's run of Tuesday is run again and fails: the lake still holds the older run's value
    # of Tuesday, which must not be used.
    sleeve_run_of(instance, lake_root, AS_OF, "tradfi", fail=True)
    lake = ParquetLake(root=lake_root)
    assert lake.exists(["portfolio"], run_key(AS_OF, "tradfi"))
    result = run_meta(lake_root, instance)
    assert result.success, failure_of(result)
    stored = lake.read(["meta_portfolio"], AS_OF)
    tradfi = stored.sleeves.loc["tradfi"]
    assert tradfi["present"] and tradfi["decision_date"] == pd.Timestamp(MONDAY)
    assert (tradfi["decision_age_days"], tradfi["decision_age_sessions"]) == (1, 1)
    assert tradfi["skipped"] == "2026-06-30 run failed"
    held = set(stored.holdings["symbol"])
    assert "tradfi_A_0629" in held and "tradfi_A_0630" not in held
    assert stored.sleeves.loc["crypto", "decision_date"] == pd.Timestamp(AS_OF)
    # The run says so in a WARN line naming the decision used, its age and what was passed over.
    lines = logged(instance, result)
    used = (
        f"meta_portfolio[{AS_OF}]: tradfi uses its decision of 2026-06-29 (Monday, 1 day, "
        "1 session old); skipped 2026-06-30 run failed"
    )
    assert lines[used] == logging.WARNING, lines
    fresh = f"meta_portfolio[{AS_OF}]: crypto uses its decision of {AS_OF} (Tuesday, 0 days, "
    assert lines[fresh + "0 sessions old)"] == logging.INFO, lines
    cli.print_meta(stored, AS_OF)
    assert "skipped 2026-06-30 run failed" in capsys.readouterr().out


def test_a_run_that_stored_its_backtest_but_failed_its_portfolio_is_no_decision(
    lake_root, instance
):
    decided(instance, lake_root, MONDAY)
    decided(instance, lake_root, AS_OF)
    # Run again, tradfi's Tuesday stores a new backtest, then its portfolio fails: the lake's
    # portfolio of Tuesday is the older run's, which must not be paired with the new backtest.
    sleeve_run_of(instance, lake_root, AS_OF, "tradfi", fail_portfolio=True)
    result = run_meta(lake_root, instance)
    assert result.success, failure_of(result)
    stored = ParquetLake(root=lake_root).read(["meta_portfolio"], AS_OF)
    tradfi = stored.sleeves.loc["tradfi"]
    assert tradfi["decision_date"] == pd.Timestamp(MONDAY)
    assert tradfi["skipped"] == "2026-06-30 run failed"
    held = set(stored.holdings["symbol"])
    assert "tradfi_A_0629" in held and "tradfi_A_0630" not in held


def test_a_sleeve_backtest_stored_before_the_as_promoted_record_fails_naming_the_run(
    lake_root, instance
):
    sleeve_run_of(instance, lake_root, AS_OF, "crypto")
    sleeve_run_of(instance, lake_root, AS_OF, "tradfi", as_promoted=False)
    result = run_meta(lake_root, instance)
    assert not result.success
    message = failure_of(result)
    assert f"{run_key(AS_OF, 'tradfi')}" in message and "no as-promoted record" in message
    assert "re-materialise" in message


def test_a_first_run_without_a_decision_fails_clearly_under_fail(lake_root, instance, meta_rule):
    meta_rule(missing_sleeve="fail")
    sleeve_run_of(instance, lake_root, AS_OF, "crypto")
    result = run_meta(lake_root, instance)
    assert not result.success
    message = failure_of(result)
    assert "meta_portfolio[2026-06-30]" in message and "['tradfi']" in message
    assert "'fail'" in message and "no stored decision at or before 2026-06-30" in message
    assert "materialise them first" not in message
    assert not ParquetLake(root=lake_root).exists(["meta_portfolio"], AS_OF)
    # Its MLflow run exists too, FAILED, naming what failed: one run per Dagster run.
    from tvq_resources.tracking import MlflowTracker

    tracker = MlflowTracker()
    [tracked] = tracker.search(tracker.experiment_id("tvq-meta"), {"dagster.run_id": result.run_id})
    assert tracked.info.status == "FAILED"
    assert tracked.data.tags["tvq.failed_asset"] == "meta_portfolio"


def test_a_gap_longer_than_the_bound_makes_the_sleeve_missing(lake_root, instance, meta_rule):
    meta_rule(missing_sleeve="fail")
    sleeve_run_of(instance, lake_root, AS_OF, "crypto")
    # Wednesday 2026-06-24 to Tuesday: Thu, Fri, Mon, Tue = 4 sessions > max_decision_age 3.
    sleeve_run_of(instance, lake_root, "2026-06-24", "tradfi")
    result = run_meta(lake_root, instance)
    assert not result.success
    message = failure_of(result)
    assert "decision of 2026-06-24 (Wednesday, 6 days, 4 sessions old)" in message
    assert "max_decision_age = 3" in message
    # Under allocate_present the too-old decision is left out, never read nor allocated.
    meta_rule(missing_sleeve="allocate_present", limits={"crypto": MetaLimit(cap=1.0, floor=0.2)})
    result = run_meta(lake_root, instance)
    assert result.success, failure_of(result)
    shown = metadata(result, "meta_portfolio")
    assert (shown["sleeves_present"], shown["sleeves_missing"]) == ("crypto", "tradfi")
    assert not [line for line in logged(instance, result) if "tradfi uses its" in line]
    # A bound of 4 sessions accepts it.
    meta_rule(missing_sleeve="fail", max_decision_age=4)
    assert run_meta(lake_root, instance).success


def test_a_missing_sleeve_is_named_in_a_warn_under_allocate_present(lake_root, instance, meta_rule):
    meta_rule(missing_sleeve="allocate_present", limits={"crypto": MetaLimit(cap=1.0, floor=0.2)})
    sleeve_run_of(instance, lake_root, AS_OF, "crypto")
    sleeve_run_of(instance, lake_root, AS_OF, "tradfi", fail=True)
    result = run_meta(lake_root, instance)
    assert result.success
    warned = evaluations(result)["meta_sleeves_present"]
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert "tradfi" in warned.description
    assert evaluations(result)["meta_holdings_contract"].passed
    assert metadata(result, "meta_portfolio")["sleeves_missing"] == "tradfi"
    [line] = [m for m, level in logged(instance, result).items() if "is missing" in m]
    assert line.startswith(f"meta_portfolio[{AS_OF}]: sleeve 'tradfi' is missing (")
    assert "2026-06-30 run failed" in line and line.endswith("allocating across ['crypto']")
    assert logged(instance, result)[line] == logging.WARNING
    stored = ParquetLake(root=lake_root).read(["meta_portfolio"], AS_OF)
    assert stored.sleeves.loc["crypto", "weight"] == pytest.approx(1.0)
    reason = stored.sleeves.loc["tradfi", "missing_reason"]
    assert "allocate_present" in reason and "2026-06-30 run failed" in reason


def test_a_one_sleeve_meta_portfolio_is_that_sleeve_at_100_percent(lake_root, instance, meta_rule):
    meta_rule(sleeves=("crypto",), limits={})
    sleeve_run_of(instance, lake_root, AS_OF, "crypto")
    result = run_meta(lake_root, instance)
    assert result.success, failure_of(result)
    assert evaluations(result)["meta_holdings_contract"].passed
    stored = ParquetLake(root=lake_root).read(["meta_portfolio"], AS_OF)
    assert stored.sleeves["weight"].to_dict() == {"crypto": 1.0}
    book = stored.holdings.set_index("symbol")["weight"].to_dict()
    assert book == {"crypto_C": 0.5, "crypto_A_0630": 0.25, "crypto_B_0630": 0.25}


def test_a_user_catalog_of_one_sleeve_makes_it_the_whole_meta_portfolio(tmp_path):
    sleeves = {"futures": {"source": {"kind": "csv", "path": str(tmp_path)}}}
    alone = parse_catalog({"sleeves": sleeves})
    assert alone.meta_sleeves == ("futures",)
    settings = meta_assets.meta_settings(alone)
    assert settings.caps == {"futures": 1.0} and settings.floors == {"futures": 0.0}
    assert settings.calendars == {"futures": "crypto"}
    # The demo's meta-portfolio is of the date the sleeve ran (a fixed export: its last bar),
    # not today, where the sleeve has no decision.
    keys = {"futures": run_key("2026-03-19", "futures")}
    assert cli.meta_date(keys, alone.meta_sleeves, "2026-12-06") == "2026-03-19"
    weekend = {"crypto": run_key(SUNDAY, "crypto"), "tradfi": run_key(FRIDAY, "tradfi")}
    assert cli.meta_date(weekend, ("crypto", "tradfi"), "2026-06-28") == SUNDAY
    outside = {"binance_perp": run_key("2026-03-19", "binance_perp")}
    assert cli.meta_date(outside, ("crypto", "tradfi"), SUNDAY) == SUNDAY


def _sensor_answer(sensor, instance, result: dg.ExecuteInProcessResult):
    kind = dg.DagsterEventType.RUN_SUCCESS if result.success else dg.DagsterEventType.RUN_FAILURE
    [event] = instance.all_logs(result.run_id, of_type=kind)
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=event.dagster_event,
    )
    return sensor(context)


def test_the_sensor_runs_a_sundays_meta_portfolio_without_waiting_for_the_weekday_sleeve(
    lake_root, instance
):
    finished = sleeve_run_of(instance, lake_root, SUNDAY, "crypto")
    answer = _sensor_answer(meta_assets.run_meta_after_sleeves, instance, finished)
    assert isinstance(answer, dg.RunRequest), answer
    assert answer.partition_key == SUNDAY
    assert answer.run_key == f"meta|{SUNDAY}|{finished.run_id}"


def test_the_sensor_waits_for_a_sleeve_with_a_session_and_no_finished_run(lake_root, instance):
    finished = sleeve_run_of(instance, lake_root, AS_OF, "crypto")
    answer = _sensor_answer(meta_assets.run_meta_after_sleeves, instance, finished)
    assert isinstance(answer, dg.SkipReason)
    assert "waits for the run of 2026-06-30 of ['tradfi']" in answer.skip_message


def test_a_failed_sleeve_run_settles_the_date_and_requests_the_meta_portfolio(lake_root, instance):
    sleeve_run_of(instance, lake_root, AS_OF, "crypto")
    failed = sleeve_run_of(instance, lake_root, AS_OF, "tradfi", fail=True)
    answer = _sensor_answer(meta_assets.run_meta_after_failed_sleeves, instance, failed)
    assert isinstance(answer, dg.RunRequest), answer
    assert answer.partition_key == AS_OF


def test_a_sleeve_outside_the_meta_portfolio_requests_nothing(lake_root, instance):
    decided(instance, lake_root, AS_OF)
    other = sleeve_run_of(instance, lake_root, AS_OF, "binance_perp")
    answer = _sensor_answer(meta_assets.run_meta_after_sleeves, instance, other)
    assert isinstance(answer, dg.SkipReason)
    assert "'binance_perp' is not in the meta-portfolio" in answer.skip_message


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
                    "max_decision_age": -1,
                },
            }
        )
    text = str(raised.value)
    assert "meta: unknown key 'profil' (did you mean 'profile'?)" in text
    assert "meta.missing_sleeve = 'skip'" in text
    assert "meta.lookback = 1: breaks the rule value >= 2" in text
    assert "meta.sleeves: 'rates' is not a sleeve" in text
    assert "meta.max_decision_age = -1: breaks the rule value >= 0" in text
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
    assert defaults.meta.max_decision_age == 3
    assert defaults.meta_sleeves == ("crypto", "tradfi")


@pytest.mark.slow
def test_a_two_date_backfill_materialises_both_dates(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    lake = ParquetLake(root=str(home / "lake"))
    dates = ("2026-06-29", "2026-06-30")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        for date in dates:
            decided(instance, str(home / "lake"), date)
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


# Two small sleeves; tradfi's bars carry a +500% print on Tuesday 2026-06-30: its run of Monday
# (the print is after its as-of date) succeeds, its run of Tuesday stops at the returns contract.
FAILING_TUESDAY = """
first_run: "2026-06-01"
sleeves:
  crypto:
    source:
      {kind: synthetic, seed: 7, symbols: 12, clusters: 3, start: "2025-06-01", end: "2026-06-30"}
  tradfi:
    source:
      kind: synthetic
      seed: 11
      symbols: 12
      clusters: 3
      start: "2025-06-01"
      end: "2026-06-30"
      faults: [{kind: toxic_spike, date: "2026-06-30"}]
    calendar: weekday
"""


@pytest.mark.slow
def test_the_demo_exits_1_for_a_failed_sleeve_though_the_meta_portfolio_uses_its_last_decision(
    tmp_path,
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    catalog_file = tmp_path / "sleeves.yaml"
    catalog_file.write_text(FAILING_TUESDAY)
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TVQ_SLEEVES": str(catalog_file),
        "TVQ_LAKE": str(tmp_path / "lake"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "TVQ_NOW": "2026-07-01T06:00:00+00:00",
    }

    def demo(as_of: str) -> subprocess.CompletedProcess:
        command = [str(BIN / "python"), "-m", "tvq_assets.cli", "demo", "--as-of", as_of]
        return subprocess.run(
            command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=1200
        )

    monday = demo(MONDAY)
    assert monday.returncode == 0, monday.stdout + monday.stderr
    tuesday = demo(AS_OF)
    shown = tuesday.stdout + tuesday.stderr
    assert tuesday.returncode == 1, shown
    assert "returns_contract" in tuesday.stdout, shown
    meta = tuesday.stdout[tuesday.stdout.index("== meta-portfolio") :]
    assert "(success," in meta, shown
    assert (
        "decision of 2026-06-29 (Monday, 1 day, 1 session old); skipped 2026-06-30 run failed"
        in meta
    ), shown
    assert "decision of 2026-06-30 (Tuesday, 0 days, 0 sessions old)" in meta, shown
    assert "SOME FAILED" in tuesday.stdout
