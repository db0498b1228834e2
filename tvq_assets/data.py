"""Data layer: the sleeve's bar lake and the point-in-time returns window, with their contracts."""

from dataclasses import dataclass

import dagster as dg
import pandas as pd
from dagster_ray import RayResource

from tvq_assets import bar_store, stage
from tvq_assets.catalog import Sleeve
from tvq_assets.partitions import Run, run_of, sleeve, sleeve_of, sleeve_run
from tvq_assets.quant import bars as bar_lake
from tvq_assets.quant import policy
from tvq_assets.quant import returns as returns_engine
from tvq_assets.quant.bars import BarHistory
from tvq_assets.quant.returns import ReturnsWindow
from tvq_checks import checks, contracts
from tvq_checks.checks import Evaluation
from tvq_resources import clock, ray_fanout
from tvq_resources.lake import ParquetLake
from tvq_resources.market_data import MarketData

BARS_CONTRACT = "bars_contract"
BARS_QUALITY = "bars_quality"
SOURCE_READABLE = "source_readable"
BARS_DEFECTS = "bars_defects"
BARS_REVISIONS = "bars_revisions"
RETURNS_CONTRACT = "returns_contract"


def _date_range(dates: pd.Index) -> str:
    if len(dates) == 0:
        return "empty"
    return f"{pd.Timestamp(dates.min()):%Y-%m-%d} .. {pd.Timestamp(dates.max()):%Y-%m-%d}"


class BarsRefresh(dg.Config):
    """``full``: re-read the whole source instead of the days after the stored last date minus
    the revision margin (``bars.REVISION_DAYS``): the way to take in a source's corrections of
    older bars."""

    full: bool = False


@dg.asset(
    partitions_def=sleeve,
    group_name="data",
    kinds={"pandas", "parquet"},
    check_specs=checks.specs_for(
        "bars",
        [
            (
                BARS_CONTRACT,
                "The cleaned lake: prices positive and finite, OHLC consistent, one sorted row "
                "per symbol and date, no weekend rows (weekday sleeves), no filler bars.",
                True,
            ),
            (
                BARS_QUALITY,
                "Last-bar volume spikes (z > 10 over 21+ bars) and price stalls "
                "(3 identical closes): recorded, not blocking.",
                False,
            ),
            (SOURCE_READABLE, "Every file of the sleeve's source could be read.", False),
            (
                BARS_DEFECTS,
                "Bar defects of the source (per rule and symbol) and what the sleeve's bar "
                "policy did: repaired, dropped or quarantined. Recorded, not blocking.",
                False,
            ),
            (
                BARS_REVISIONS,
                "Stored bars whose values the source changed in this refresh (old, new), and "
                "older bars where source and lake disagree (found by the source's checksums; "
                "a full refresh takes them in).",
                False,
            ),
        ],
        sleeve,
    ),
    metadata={"dagster/column_schema": checks.column_schema(contracts.BARS_STRUCTURE)},
    output_required=False,
)
def bars(
    context: dg.AssetExecutionContext,
    config: BarsRefresh,
    market_data: MarketData,
    lake: ParquetLake,
    ray: RayResource,
):
    """Daily OHLCV of every symbol in the sleeve by session date, cleaned under the sleeve's bar
    policy, with the defects found and the source's revisions (a ``BarHistory``). A file source's
    files are parsed as tasks of the ``ray`` resource (serial in process, or Ray)."""
    # One writer per sleeve's bar lake from the read of the stored bars to the write of the merge
    # (the IO manager writes inside this block): a concurrent refresh waits, then merges onto it.
    with lake.writer(context.asset_key.path, context.partition_key):
        fanout = ray_fanout.task_map(ray)
        yield from _refresh_bars(context, market_data, lake, fanout, full=config.full)


def _refresh_bars(
    context: dg.AssetExecutionContext,
    market_data: MarketData,
    lake: ParquetLake,
    fanout: ray_fanout.TaskMap,
    *,
    full: bool,
):
    sleeve_entry = sleeve_of(context)
    partition = context.partition_key
    refreshed = _refreshed_store(sleeve_entry, market_data, lake, fanout, full=full)
    if refreshed.written is not None:
        yield dg.MaterializeResult(metadata=_bars_metadata(refreshed, sleeve_entry, lake, fanout))
    yield from _bars_check_results(refreshed)
    if not refreshed.errors.empty:
        raise checks.blocking_failure("bars", partition, refreshed.errors)


def _refreshed_store(
    sleeve_entry: Sleeve,
    market_data: MarketData,
    lake: ParquetLake,
    fanout: ray_fanout.TaskMap,
    *,
    full: bool,
) -> bar_store.Refreshed:
    """``bar_store.refresh`` of the sleeve under its bar policy, validated by the bars contract."""
    rules = sleeve_entry.policy

    def validate(plan: bar_store.Plan) -> tuple[pd.DataFrame, pd.DataFrame]:
        return contracts.bar_violations(
            plan.frame,
            calendar=sleeve_entry.calendar,
            stall_bars=rules.stall_bars,
            volume_spike_window=rules.volume_spike_window,
            volume_spike_sigma=rules.volume_spike_sigma,
            rows=plan.rows,
        )

    try:
        return bar_store.refresh(
            lake,
            sleeve_entry.name,
            fetch=lambda since, known=(): market_data.fetch(
                sleeve_entry.name, since=since, known=known, map_tasks=fanout
            ),
            incremental=market_data.incremental(sleeve_entry.name),
            validate=validate,
            calendar=sleeve_entry.calendar,
            bar_policy=rules.bar_policy,
            volume_spike_window=rules.volume_spike_window,
            now=clock.now(),
            full=full,
        )
    except bar_lake.FutureBarError as exc:
        raise dg.Failure(description=f"bars of sleeve {sleeve_entry.name}: {exc}") from exc


def _load_errors(refreshed: bar_store.Refreshed) -> pd.DataFrame:
    return pd.DataFrame(
        [(e.file, e.line, e.reason) for e in refreshed.batch.errors],
        columns=["file", "line", "reason"],
    )


def _bars_metadata(
    refreshed: bar_store.Refreshed,
    sleeve_entry: Sleeve,
    lake: ParquetLake,
    fanout: ray_fanout.TaskMap,
) -> dict[str, object]:
    plan, written, batch = refreshed.plan, refreshed.written, refreshed.batch
    update, defects = plan.update, plan.defects
    load_errors = _load_errors(refreshed)
    return {
        "symbols": len(plan.symbols),
        "rows": written.rows,
        "rows_read": plan.rows_read,
        "rows_added": update.added,
        "rows_revised_at_source": update.revised,
        "rows_removed_by_defects": update.removed,
        "rows_validated": int(plan.rows.sum()),
        "new_symbols": len(set(update.changed["symbol"]) - set(plan.known_symbols)),
        "date_range": _symbol_range(plan.symbols),
        "read_since": "everything" if plan.since is None else f"{plan.since:%Y-%m-%d}",
        "segments": written.segments,
        "compacted": written.compacted,
        "version": written.version,
        "source_disagreements": len(plan.source_check.disagreements),
        "checksums_baselined": plan.source_check.baselined,
        "source": sleeve_entry.source["kind"],
        "duplicates_resolved": batch.duplicates,
        **{f"source_{key}": value for key, value in batch.metadata.items()},
        **{
            f"defects_{action}": int((defects["action"] == action).sum())
            for action in bar_lake.RECORDED.values()
        },
        "defects_by_rule": stage.table(bar_lake.defect_summary(defects)),
        "defects_by_symbol": stage.table(_defects_by_symbol(defects)),
        "unreadable_files": len(load_errors),
        "load_errors": stage.table(load_errors.head(20)),
        "path": dg.MetadataValue.path(str(bar_store.folder(lake, plan.sleeve))),
        "seconds_source": round(plan.seconds["source"], 3),
        "source_parse_mode": fanout.mode,
        "source_parse_tasks": fanout.tasks,
        "seconds_read": round(plan.seconds["read"], 3),
        "seconds_merge": round(plan.seconds["merge"], 3),
        "seconds_checksums": round(plan.seconds["checksums"], 3),
        "seconds_validate": round(refreshed.seconds["validate"], 3),
        "seconds_write": round(refreshed.seconds["write"], 3),
        "seconds": round(refreshed.seconds["total"], 3),
    }


def _bars_check_results(refreshed: bar_store.Refreshed):
    """The bars contract (blocking), the quality warnings, the source's readability, the bar
    defects and the source's revisions."""
    plan = refreshed.plan
    yield checks.result(
        BARS_CONTRACT,
        refreshed.errors,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows_checked": int(plan.rows.sum())},
    )
    yield checks.result(BARS_QUALITY, refreshed.warnings, severity=dg.AssetCheckSeverity.WARN)
    yield _source_readable(refreshed)
    yield _bar_defects(plan.defects)
    yield _bar_revisions(plan)


def _source_readable(refreshed: bar_store.Refreshed) -> dg.AssetCheckResult:
    load_errors = _load_errors(refreshed)
    return dg.AssetCheckResult(
        check_name=SOURCE_READABLE,
        passed=load_errors.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            "every file was read"
            if load_errors.empty
            else f"{len(load_errors)} file(s) could not be read; first: {refreshed.batch.errors[0]}"
        ),
        metadata={
            "unreadable_files": len(load_errors),
            "load_errors": stage.table(load_errors.head(20)),
        },
    )


def _bar_defects(defects: pd.DataFrame) -> dg.AssetCheckResult:
    held_back = int((defects["rule"] == bar_lake.UNFINISHED).sum())
    return dg.AssetCheckResult(
        check_name=BARS_DEFECTS,
        # Holding back today's unfinished bars is routine, not a defect of the source.
        passed=len(defects) == held_back,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            "no bar defect in the source"
            if defects.empty
            else f"{len(defects)} bar defect(s) in "
            f"{defects['symbol'].nunique()} symbol(s), handled by the bar policy"
        ),
        metadata={
            "defects": len(defects) - held_back,
            "unfinished_bars_held_back": held_back,
            "by_rule": stage.table(bar_lake.defect_summary(defects)),
            "by_symbol": stage.table(_defects_by_symbol(defects)),
            "first_defects": stage.table(defects.head(20)),
        },
    )


def _bar_revisions(plan: bar_store.Plan) -> dg.AssetCheckResult:
    update, disagreements = plan.update, plan.source_check.disagreements
    told = []
    if not update.new_revisions.empty:
        told.append(
            f"{update.revised} stored bar(s) revised by the source; the new values are kept"
        )
    if not disagreements.empty:
        told.append(_disagreement_message(disagreements))
    return dg.AssetCheckResult(
        check_name=BARS_REVISIONS,
        passed=not told,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(told) or "no stored bar was revised by the source",
        metadata={
            "revisions": len(update.new_revisions),
            "table": stage.table(update.new_revisions.head(20)),
            "source_disagreements": len(disagreements),
            "disagreements": stage.table(disagreements.head(20)),
        },
    )


def _disagreement_message(disagreements: pd.DataFrame, shown: int = 5) -> str:
    """``source and lake disagree on ABC 2024-01 (3 dates: ...) ...: run a full refresh``."""
    parts = []
    for row in disagreements.head(shown).itertuples():
        dates = [d for d in row.dates.split(", ") if d]
        listed = ", ".join(dates[:3]) + (", ..." if len(dates) > 3 else "")
        parts.append(
            f"{row.symbol} {row.period} ({len(dates)} date(s): {listed})"
            if dates
            else f"{row.symbol} {row.period}"
        )
    more = len(disagreements) - shown
    return (
        f"source and lake disagree on {'; '.join(parts)}{f' and {more} more' if more > 0 else ''}"
        f" — older than the {bar_lake.REVISION_DAYS}-day re-read margin, not taken in: run a "
        "full refresh (bars config full: true) to take them in"
    )


def _symbol_range(symbols) -> str:
    if not symbols:
        return "empty"
    return f"{min(f for f, _ in symbols.values())} .. {max(last for _, last in symbols.values())}"


class ReturnsRead(dg.Config):
    """``restate``: read the bars as stored now (a full refresh's corrections included) instead
    of as this run knew them at its previous materialisation, and record what differs."""

    restate: bool = False


BARS_VERSION = "bars_version"  # the metadata key of the bound a returns run records


def _recorded_version(context: dg.AssetExecutionContext) -> int | None:
    """The bar store version the previous materialisation of this run read (None: the first
    materialisation, or one made before runs recorded it)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=context.asset_key, asset_partitions=[context.partition_key]
        ),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get(BARS_VERSION)
    return None if value is None else int(value.value)


def _bars_read(version, recorded, restate: bool, restated, current) -> dict[str, object]:
    """The metadata of what a returns run read: the bound, how it was chosen, what a restate
    changed."""
    if version is None:
        return {"bars_read_as": "a store without versions (written before them)"}
    written = None if current is None else current.written.get(str(version))
    if restate:
        how = f"restated: the current bars (version {version})" + (
            "" if recorded is None else f" instead of version {recorded} known before"
        )
    elif recorded is not None and version == recorded:
        how = f"as known at version {version}, recorded by the previous materialisation"
    else:
        how = f"the current bars (version {version})"
    values: dict[str, object] = {
        BARS_VERSION: int(version),
        "bars_read_as": how,
        "restate": restate,
    }
    if written is not None:
        values["bars_written_at"] = written
    if restated is not None:
        values["restated_version"] = int(recorded)
        values["restated_bars"] = len(restated)
        values["restated_symbols"] = dg.MetadataValue.json(
            sorted(restated["symbol"].unique().tolist())
        )
        values["restated_changes"] = dg.MetadataValue.md(checks.markdown(restated.head(50)))
    return values


def _defects_by_symbol(defects: pd.DataFrame) -> pd.DataFrame:
    """Counts per (rule, symbol, action), largest first (top 30)."""
    if defects.empty:
        return pd.DataFrame(columns=["rule", "symbol", "action", "bars"])
    table = defects.groupby(["rule", "symbol", "action"]).size().rename("bars").reset_index()
    return table.sort_values("bars", ascending=False, kind="stable").head(30)


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="data",
    kinds={"pandas", "parquet"},
    check_specs=checks.specs_for(
        "returns",
        [
            (
                RETURNS_CONTRACT,
                "Simple returns finite, >= -100%, not toxic (> +500%), NaN only "
                "before genesis, no padded days; at least `min_universe` eligible symbols. "
                "Policy `quarantine` excludes and lists offenders.",
                True,
            ),
        ],
        sleeve_run,
    ),
    # The bars are read from the sleeve's bar store, only the date window the run needs.
    ins={"bars": dg.AssetIn(dagster_type=dg.Nothing)},
)
def returns(context: dg.AssetExecutionContext, config: ReturnsRead, lake: ParquetLake):
    """Point-in-time returns: the eligible window ending at the as-of date, and its history.

    The bars are read as this run knew them: a run records the bar store's version it read
    (``bars_version``); materialised again, it reads the bars as of that version and reproduces
    itself bit for bit, whatever the store took in since; with ``restate`` it reads the current
    bars and records which bars differ from the ones it knew."""
    run = run_of(context)
    read = _bars_as_known(context, run, lake, restate=config.restate)
    window, failures = _checked_window(run, read.bars)
    quarantined = window.excluded[window.excluded["reason"] != "ineligible"]
    restated = _restated(read, window, run.as_of)
    settings, toxic_policy = run.settings, run.sleeve.toxic_policy
    yield from stage.emit(
        run,
        "returns",
        window,
        metadata={**_window_metadata(window, read.bars), **read.metadata(restated)},
        evaluations=[_returns_evaluation(failures, quarantined, toxic_policy)],
        failure_suffix=f" (threshold {settings.toxic_threshold:+.0%}, policy: {toxic_policy})",
    )


@dataclass(frozen=True)
class BarsAsKnown:
    """The bars a returns run reads: as of the store ``version`` it read before (``recorded``)
    unless restated; ``before``: on a restate, the bars it knew then."""

    bars: BarHistory
    before: BarHistory | None
    version: int | None
    recorded: int | None
    restate: bool
    current: bar_store.State | None

    def metadata(self, restated: pd.DataFrame | None) -> dict[str, object]:
        return _bars_read(self.version, self.recorded, self.restate, restated, self.current)


def _bars_as_known(
    context: dg.AssetExecutionContext, run: Run, lake: ParquetLake, *, restate: bool
) -> BarsAsKnown:
    """The run's history window of the sleeve's bars, as this run knew them (see ``returns``)."""
    name = run.sleeve.name
    current = bar_store.state(lake, name)
    recorded = _recorded_version(context)
    known = None if restate or current is None else recorded
    settings = run.settings
    window_of = {"as_of": run.as_of, "rows": settings.history_rows, "calendar": settings.calendar}
    try:
        bars = bar_store.read_history(lake, name, known=known, **window_of)
        before = (
            bar_store.as_known(lake, name, recorded, current=current)
            if restate and recorded is not None and current is not None
            else None
        )
    except bar_store.UnknownVersion as exc:
        raise dg.Failure(
            description=f"returns[{run.key}]: the bars this run read before: {exc}"
        ) from exc
    version = known if known is not None else (None if current is None else current.sequence)
    return BarsAsKnown(bars, before, version, recorded, restate, current)


def _checked_window(run: Run, bars: BarHistory) -> tuple[ReturnsWindow, pd.DataFrame]:
    """The point-in-time window of ``bars`` and the returns contract's unhandled violations;
    under the ``quarantine`` policy the offenders the contract found are excluded instead."""
    settings = run.settings
    quarantine = run.sleeve.toxic_policy == "quarantine"
    window = policy.point_in_time(
        bars.bars,
        as_of=run.as_of,
        settings=settings,
        quarantine=quarantine,
        bar_exclusions=bar_lake.bar_exclusions(bars.defects, start=pd.Timestamp.min, end=run.as_of),
    )
    failures = contracts.name_dropped_bars(
        contracts.returns_violations(window.returns, toxic_threshold=settings.toxic_threshold),
        bars.defects,
        window.returns,
    )
    # point_in_time quarantined the engine's dated defects; a gap running into the as-of date
    # (no return after it) is the contract's alone, and `quarantine` excludes it here
    # (tests/checks/test_contracts.py shows the difference).
    handled = failures["rule"].isin(contracts.QUARANTINABLE) & quarantine
    window = returns_engine.drop_symbols(
        window, failures[handled].rename(columns={"message": "detail"}), reason="quarantine"
    )
    too_few = contracts.universe_violations(
        window.returns, window.excluded, minimum=settings.min_universe, as_of=run.as_of
    )
    return window, pd.concat([failures[~handled], too_few], ignore_index=True)


def _restated(read: BarsAsKnown, window: ReturnsWindow, as_of: pd.Timestamp):
    """What the run's history window sees differently from the bars it knew (None: no restate)."""
    if read.before is None:
        return None
    start = window.history.index.min() if len(window.history) else as_of
    inside = read.bars.bars[(read.bars.bars["date"] >= start) & (read.bars.bars["date"] <= as_of)]
    old = read.before.bars[
        (read.before.bars["date"] >= start) & (read.before.bars["date"] <= as_of)
    ]
    return bar_lake.changed_bars(old, inside)


def _window_metadata(window: ReturnsWindow, bars: BarHistory) -> dict[str, object]:
    frame, excluded = window.returns, window.excluded
    quarantined = excluded[excluded["reason"] != "ineligible"]
    return {
        "symbols": frame.shape[1],
        "rows": frame.shape[0],
        "date_range": _date_range(frame.index),
        "history_symbols": window.history.shape[1],
        "history_range": _date_range(window.history.index),
        "bars_read": len(bars.bars),
        "excluded": len(excluded),
        "excluded_symbols": stage.table(excluded),
        "quarantined": dg.MetadataValue.json(sorted(quarantined["symbol"].unique().tolist())),
    }


def _returns_evaluation(
    failures: pd.DataFrame, quarantined: pd.DataFrame, toxic_policy: str
) -> Evaluation:
    """The returns contract: the unhandled violations fail it; the quarantined symbols are
    listed after them. A rejected window is never stored (see ``checks.emit``)."""
    reported = quarantined.assign(
        message=quarantined["symbol"] + ": " + quarantined["detail"] + " [quarantined]"
    )[["symbol", "date", "value", "rule", "message"]]
    return Evaluation(
        RETURNS_CONTRACT,
        failures,
        metadata={
            "policy": toxic_policy,
            "quarantined_symbols": dg.MetadataValue.json(
                sorted(quarantined["symbol"].unique().tolist())
            ),
        },
        handled=reported,
    )
