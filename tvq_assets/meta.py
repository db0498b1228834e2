"""The meta-portfolio: one allocation across the sleeves' champions per run date.

``meta_portfolio`` is partitioned by ``run`` alone. For each sleeve of the meta-portfolio it
uses the sleeve's **latest successful decision at or before the date** D
(``tvq_assets.quant.meta.latest_decision``): the newest run date d ≤ D whose ``backtest`` and
``portfolio`` Dagster records as materialised, with no later run of that partition failed or
still running (``DagsterInstance.get_status_by_partition``: a partition whose latest planned
materialisation belongs to a failed run is FAILED, whatever an older run left in the lake). A
weekday sleeve's Friday decision holds through the weekend; the day after a failed run, the
previous decision holds. The engine is ``tvq_assets.quant.meta``; the rules and defaults are
the catalog's ``meta`` section (``MetaPolicy``).

The graph declares the fan-in: ``meta_portfolio[D]`` depends on every sleeve's ``backtest`` and
``portfolio`` of D (a multi-to-single-dimension mapping on ``run``), so the UI shows it and a
backfill of dates schedules the sleeves' runs first. The trailing window it may read from,
[D − k, D], cannot be declared: Dagster 1.13 has no built-in mapping from the single ``run``
dimension to a window of a sleeve × run dimension (``TimeWindowPartitionMapping`` maps
time-window definitions only, ``MultiPartitionMapping`` needs both sides multi-partitioned,
``MultiToSingleDimensionPartitionMapping`` is the identity on ``run``), and a custom
``PartitionMapping`` is deprecated and left out of the code location's snapshot (the UI, the
daemon's backfills and sensors would not see it). So the dependencies are declared without
loading, Dagster's own records pick the partition, and the asset reads exactly that one
``backtest`` and ``portfolio`` per sleeve through the ``lake`` resource — never a value Dagster
does not vouch for, and never k tournament records to use one.

It runs in its own job (``meta_portfolio_job``), not in ``daily``: a job's assets share one
partitioning, and the meta-portfolio of a date needs every sleeve's run of that date, which
``daily`` computes one sleeve at a time. The sensors ``run_meta_after_sleeves`` and
``run_meta_after_failed_sleeves`` request it once every sleeve's run of the date has settled.
"""

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd

from tvq_assets import stage
from tvq_assets.catalog import Catalog
from tvq_assets.partitions import catalog, is_run_key, run, run_key, sleeve_run, split_run_key
from tvq_assets.plots import equity_plot
from tvq_assets.quant import meta as engine
from tvq_assets.quant.policy import PortfolioRecord, TournamentRecord
from tvq_checks import checks, meta_contracts
from tvq_checks.checks import Evaluation
from tvq_resources.lake import ParquetLake, write_file

META_CONTRACT = "meta_holdings_contract"
SLEEVES_PRESENT = "meta_sleeves_present"

# The sleeve assets a decision is read from: both stored by the same sleeve × run.
DECISION_ASSETS = ("backtest", "portfolio")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    # A run date of the meta-portfolio depends on that date's partition of every sleeve.
    SLEEVES_OF_RUN = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="run")


def meta_settings(source: Catalog | None = None) -> engine.MetaSettings:
    """The engine's parameters, every one from the catalog (its ``meta`` section and each
    sleeve's costs and periods per year): the only place they are built."""
    source = source or catalog
    meta = source.meta
    sleeves = source.meta_sleeves
    return engine.MetaSettings(
        profile=meta.profile,
        lookback=meta.lookback,
        test=meta.test,
        step=meta.step,
        missing=meta.missing_sleeve,
        max_decision_age=meta.max_decision_age,
        calendars={s: source.sleeve(s).calendar for s in sleeves},
        caps={s: meta.limit(s).cap for s in sleeves},
        floors={s: meta.limit(s).floor for s in sleeves},
        cost_rates={s: source.sleeve(s).policy.cost_rate for s in sleeves},
        periods_per_year={s: source.sleeve(s).periods_per_year for s in sleeves},
        ridge=meta.ridge,
    )


def _what_was_left(statuses: Mapping[str, object]) -> str | None:
    """What a sleeve's runs of one date left, from the Dagster status of each decision asset's
    partition (None: never planned, no run)."""
    found = set(statuses.values())
    if found == {dg.AssetPartitionStatus.MATERIALIZED}:
        return engine.STORED
    if dg.AssetPartitionStatus.IN_PROGRESS in found:
        return engine.RUN_IN_PROGRESS
    if dg.AssetPartitionStatus.FAILED in found:
        return engine.RUN_FAILED
    if found == {None}:
        return None
    never = [asset for asset, status in statuses.items() if status is None]
    return f"incomplete run ({', '.join(never)} never stored)"


def sleeve_runs(
    instance: dg.DagsterInstance,
    settings: engine.MetaSettings,
    *,
    sleeves: Sequence[str],
    as_of: pd.Timestamp,
) -> dict[str, dict[pd.Timestamp, str]]:
    """What Dagster records of each sleeve's runs dated in its decision window (from
    ``decision_window_start`` to ``as_of``) and of its newest stored decision before it (so a
    missing sleeve's message says how old it is): per sleeve, run date -> ``STORED`` or why
    not. Dates without any run are left out."""
    first = catalog.first_run
    keys: dict[str, tuple[str, pd.Timestamp]] = {}
    stored = instance.get_materialized_partitions(dg.AssetKey("portfolio"))
    for sleeve in sleeves:
        start = engine.decision_window_start(
            as_of, settings.calendars[sleeve], settings.max_decision_age
        )
        for day in pd.date_range(max(start, first), as_of, freq="D"):
            keys[run_key(day, sleeve)] = (sleeve, day)
        older = [
            day
            for day, name in (split_run_key(k) for k in stored if k.count("|") == 1)
            if name == sleeve and day < start
        ]
        if older:
            keys[run_key(max(older), sleeve)] = (sleeve, max(older))
    statuses = {
        asset: instance.get_status_by_partition(dg.AssetKey(asset), list(keys), sleeve_run) or {}
        for asset in DECISION_ASSETS
    }
    runs: dict[str, dict[pd.Timestamp, str]] = {sleeve: {} for sleeve in sleeves}
    for key, (sleeve, day) in keys.items():
        left = _what_was_left({asset: statuses[asset].get(key) for asset in DECISION_ASSETS})
        if left is not None:
            runs[sleeve][day] = left
    return runs


@dataclass(frozen=True)
class DecisionsRead:
    """What a run of the meta-portfolio reads: each sleeve's latest successful decision at or
    before the date, the stored backtest and portfolio of each usable one (in the
    meta-portfolio's order), and the seconds spent asking Dagster and reading the lake."""

    decisions: dict[str, engine.Decision]
    records: dict[str, tuple[TournamentRecord, PortfolioRecord]]
    seconds: float

    @property
    def usable(self) -> list[str]:
        return list(self.records)


@dg.asset(
    partitions_def=run,
    output_required=False,
    group_name="meta",
    kinds={"cvxpy", "parquet"},
    deps=[dg.AssetDep(asset, partition_mapping=SLEEVES_OF_RUN) for asset in DECISION_ASSETS],
    check_specs=checks.specs_for(
        "meta_portfolio",
        [
            (
                META_CONTRACT,
                "Firm-wide holdings: finite, non-negative, each sleeve within its cap and floor, "
                "summing to 1, every sleeve held or its absence explained.",
                True,
            ),
            (
                SLEEVES_PRESENT,
                "Every sleeve of the meta-portfolio has a usable decision: its latest "
                "successful one at or before the date, within meta.max_decision_age of its "
                "sessions (a WARN under missing_sleeve: allocate_present names the missing one).",
                False,
            ),
        ],
        run,
    ),
)
def meta_portfolio(context: dg.AssetExecutionContext, lake: ParquetLake):
    """Capital across the sleeves' champions for the date (each sleeve's latest successful
    decision at or before it) and the firm-wide holdings it implies, with a meta walk-forward
    against the equal weight of the sleeves."""
    started = time.perf_counter()
    key, settings, sleeves = str(context.partition_key), meta_settings(), list(catalog.meta_sleeves)
    as_of, where = pd.Timestamp(key), f"meta_portfolio[{key}]"
    read = read_decisions(
        context.instance, lake, settings, sleeves=sleeves, as_of=as_of, where=where
    )
    _log_decisions_used(context.log, read, where)
    record = _decide(read, settings, as_of=as_of, where=where)
    _log_missing_sleeves(context.log, record, read, where)
    plot_path = _equity_curve(record, lake, key)
    yield from checks.emit(
        "meta_portfolio",
        key,
        record,
        metadata=_meta_metadata(key, settings, read, record, plot_path, started),
        evaluations=_meta_evaluations(record, settings, sleeves=sleeves, as_of=as_of),
    )


def read_decisions(
    instance: dg.DagsterInstance,
    lake: ParquetLake,
    settings: engine.MetaSettings,
    *,
    sleeves: Sequence[str],
    as_of: pd.Timestamp,
    where: str,
) -> DecisionsRead:
    """Each sleeve's latest successful decision at or before ``as_of`` from what Dagster
    records of its runs (:func:`sleeve_runs`), and the stored backtest and portfolio of each
    usable one from the lake."""
    started = time.perf_counter()
    runs = sleeve_runs(instance, settings, sleeves=sleeves, as_of=as_of)
    decisions = engine.latest_decisions(runs, settings, sleeves=sleeves, as_of=as_of)
    records = {s: _read_decision(lake, d, where) for s, d in decisions.items() if d.usable}
    return DecisionsRead(decisions, records, time.perf_counter() - started)


def _read_decision(
    lake: ParquetLake, decision: engine.Decision, where: str
) -> tuple[TournamentRecord, PortfolioRecord]:
    """The stored backtest and portfolio of the decision's run (Dagster recorded both)."""
    key = run_key(decision.date, decision.sleeve)
    missing = [asset for asset in DECISION_ASSETS if not lake.exists([asset], key)]
    if missing:
        raise dg.Failure(
            description=f"{where}: Dagster records {missing} of {key} as materialised, but the "
            f"lake at {lake.root_path} has no such value (quarantined or deleted?): "
            f"re-materialise {key} (`tvq backfill {decision.sleeve} {decision.date:%Y-%m-%d} "
            f"{decision.date:%Y-%m-%d}`)"
        )
    return lake.read(["backtest"], key), lake.read(["portfolio"], key)


def _log_decisions_used(log: dg.DagsterLogManager, read: DecisionsRead, where: str) -> None:
    """One line per usable sleeve naming the decision it uses and its age: a WARN when a newer
    session was passed over (no run, a failed run), worth a look; an INFO otherwise (a weekend
    is not)."""
    for sleeve in read.usable:
        decision = read.decisions[sleeve]
        line = f"{where}: {sleeve} uses its {decision.describe()}"
        (log.warning if decision.skipped else log.info)(line)


def _decide(
    read: DecisionsRead, settings: engine.MetaSettings, *, as_of: pd.Timestamp, where: str
) -> engine.MetaRecord:
    """``engine.decide`` on the usable sleeves' as-promoted streams, books and champions; a
    missing sleeve under ``fail``, an infeasible bound or a backtest without an as-promoted
    record fails the run naming it."""
    records = read.records
    # Each sleeve contributes what its selection process would have earned (the policy the rule
    # crowned at each window), not today's champion's stream over past dates (hindsight).
    outdated = [s for s, (backtest, _) in records.items() if not backtest.has_as_promoted]
    if outdated:
        raise dg.Failure(
            description=f"{where}: the stored backtest of "
            f"{[run_key(read.decisions[s].date, s) for s in outdated]} has no as-promoted record "
            "(it was stored before the record existed), and the meta-portfolio joins the sleeves' "
            "as-promoted streams: re-materialise those runs' backtest (`tvq backfill <sleeve> "
            "<date> <date>`)"
        )
    try:
        return engine.decide(
            {s: backtest.as_promoted["return"] for s, (backtest, _) in records.items()},
            {s: book.weights["weight"] for s, (_, book) in records.items()},
            {s: backtest.champion for s, (backtest, _) in records.items()},
            settings,
            decisions=read.decisions,
            as_of=as_of,
            where=where,
        )
    except (engine.MissingSleeve, engine.MetaInfeasible) as error:
        raise dg.Failure(description=str(error)) from error


def _log_missing_sleeves(
    log: dg.DagsterLogManager, record: engine.MetaRecord, read: DecisionsRead, where: str
) -> None:
    """A WARN per sleeve left out under ``missing_sleeve: allocate_present``, with why."""
    for sleeve, reason in record.missing.items():
        log.warning(
            f"{where}: sleeve {sleeve!r} is missing ({reason}); allocating across {read.usable}"
        )


def _equity_curve(record: engine.MetaRecord, lake: ParquetLake, key: str) -> Path:
    """The meta walk-forward's and the baseline's equity curves as a PNG beside the value."""
    png = equity_plot(
        record.returns,
        champion=engine.META,
        baselines=[engine.BASELINE],
        title=f"meta-portfolio walk-forward to {key}",
    )
    plot_path = lake.figure(["meta_portfolio"], key)
    write_file(png, plot_path)
    return plot_path


def _meta_metadata(
    key: str,
    settings: engine.MetaSettings,
    read: DecisionsRead,
    record: engine.MetaRecord,
    plot_path: Path,
    started: float,
) -> dict[str, object]:
    decisions, usable = read.decisions, read.usable
    shown = record.metrics.loc[[engine.META, engine.BASELINE]] if len(record.returns) else None
    return {
        "as_of": key,
        "profile": settings.profile,
        "missing_sleeve_rule": settings.missing,
        "sleeves_present": ", ".join(usable),
        "sleeves_missing": ", ".join(record.missing) or "none",
        "max_decision_age": settings.max_decision_age,
        "decisions": stage.table(_decision_table(decisions)),
        "decision_dates": dg.MetadataValue.json(
            {s: f"{d.date:%Y-%m-%d}" if d.date is not None else None for s, d in decisions.items()}
        ),
        "oldest_decision_sessions": max(
            (d.age_sessions for d in decisions.values() if d.usable), default=0
        ),
        "sleeve_weights": stage.table(record.sleeves.reset_index()),
        "top_holdings": stage.table(record.holdings.head(20)),
        "holdings": len(record.holdings),
        "common_dates": len(record.joined),
        "periods_per_year": settings.joined_periods_per_year(usable),
        "meta_vs_baseline": dg.MetadataValue.md(
            checks.markdown(shown.reset_index()) if shown is not None else "_no window_"
        ),
        **(_meta_figures(shown) if shown is not None else {}),
        "equity_curve_file": dg.MetadataValue.path(str(plot_path)),
        "seconds": round(time.perf_counter() - started, 3),
        # Asking Dagster for the decisions and reading them from the lake.
        "seconds_reading_decisions": round(read.seconds, 3),
    }


def _decision_table(decisions: Mapping[str, engine.Decision]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "sleeve": s,
                "decision": f"{d.date:%Y-%m-%d %a}" if d.date is not None else "none",
                "age_days": d.age_days,
                "age_sessions": d.age_sessions,
                "usable": d.usable,
                "skipped": d.skipped_text() or "-",
            }
            for s, d in decisions.items()
        ]
    )


def _meta_figures(shown: pd.DataFrame) -> dict[str, float]:
    """The figures charted across run dates: the meta walk-forward's and the baseline's."""
    return {
        "sharpe": float(shown.loc[engine.META, "sharpe"]),
        "max_drawdown": float(shown.loc[engine.META, "max_drawdown"]),
        "baseline_sharpe": float(shown.loc[engine.BASELINE, "sharpe"]),
        "baseline_max_drawdown": float(shown.loc[engine.BASELINE, "max_drawdown"]),
    }


def _meta_evaluations(
    record: engine.MetaRecord,
    settings: engine.MetaSettings,
    *,
    sleeves: Sequence[str],
    as_of: pd.Timestamp,
) -> list[Evaluation]:
    """The firm-wide holdings contract (blocking) and the sleeves present (a warning naming each
    missing sleeve and why)."""
    missing = record.missing
    absent = pd.DataFrame(
        {
            "symbol": list(missing),
            "date": as_of,
            "value": 0.0,
            "rule": "sleeve_present",
            "message": [f"{s} on {as_of:%Y-%m-%d}: missing ({r})" for s, r in missing.items()],
        }
    )
    return [
        Evaluation(
            META_CONTRACT,
            meta_contracts.holdings_violations(
                record.holdings,
                sleeves=sleeves,
                missing=missing,
                caps=settings.caps,
                floors=settings.floors,
                as_of=as_of,
            ),
        ),
        Evaluation(
            SLEEVES_PRESENT,
            absent,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"missing": dg.MetadataValue.json(missing)},
        ),
    ]


meta_job = dg.define_asset_job(
    "meta_portfolio_job",
    selection=dg.AssetSelection.assets("meta_portfolio"),
    partitions_def=run,
    description="The meta-portfolio of one run date, across every sleeve's run of that date.",
)


def _daily_job():
    from tvq_assets.jobs import daily_job  # jobs imports the graph's assets, not this module

    return daily_job


def unsettled_sleeves(
    instance: dg.DagsterInstance, as_of: pd.Timestamp, source: Catalog | None = None
) -> list[str]:
    """The sleeves of the meta-portfolio whose run of ``as_of`` has not settled: ``as_of`` is
    one of the sleeve's sessions and its latest run of that date has not finished (none yet,
    queued, running, or a retry pending). A weekday sleeve on a weekend is settled: it has no
    session to wait for."""
    source = source or catalog
    waiting = []
    for sleeve in source.meta_sleeves:
        if not engine.is_session(as_of, source.sleeve(sleeve).calendar):
            continue
        tags = {"dagster/partition": run_key(as_of, sleeve)}
        latest = instance.get_runs(dg.RunsFilter(tags=tags), limit=1)
        if not latest or not latest[0].is_finished:
            waiting.append(sleeve)
    return waiting


def _request_meta(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    """The meta-portfolio of the finished sleeve run's date, once every sleeve's run of that date
    has settled (once per date and finishing run)."""
    partition = context.dagster_run.tags.get("dagster/partition")
    if not is_run_key(partition):
        return dg.SkipReason("the daily run had no sleeve × run partition")
    as_of, sleeve = split_run_key(partition)
    if sleeve not in catalog.meta_sleeves:
        return dg.SkipReason(f"sleeve {sleeve!r} is not in the meta-portfolio")
    waiting = unsettled_sleeves(context.instance, as_of)
    if waiting:
        return dg.SkipReason(
            f"meta_portfolio[{as_of:%Y-%m-%d}] waits for the run of {as_of:%Y-%m-%d} of {waiting}"
        )
    return dg.RunRequest(
        run_key=f"meta|{as_of:%Y-%m-%d}|{context.dagster_run.run_id}",
        partition_key=f"{as_of:%Y-%m-%d}",
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[_daily_job()],
    request_job=meta_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_meta_after_sleeves(context: dg.RunStatusSensorContext):
    """When a sleeve's run of a date succeeds and every sleeve of the meta-portfolio has settled
    its run of that date (finished, or no session that day), compute the meta-portfolio of the
    date from each sleeve's latest successful decision."""
    return _request_meta(context)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.FAILURE,
    monitored_jobs=[_daily_job()],
    request_job=meta_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_meta_after_failed_sleeves(context: dg.RunStatusSensorContext):
    """The same when a sleeve's run of a date fails: the meta-portfolio of the date then uses
    that sleeve's previous decision (or applies ``missing_sleeve``)."""
    return _request_meta(context)


SENSORS = [run_meta_after_sleeves, run_meta_after_failed_sleeves]
