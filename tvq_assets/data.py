"""Data layer: the sleeve's bar lake and the point-in-time returns window, with their contracts."""

import time

import dagster as dg
import pandas as pd
from dagster_ray import RayResource

from tvq_assets import bar_store
from tvq_assets.partitions import run_of, sleeve, sleeve_of, sleeve_run
from tvq_assets.quant import bars as bar_lake
from tvq_assets.quant import policy
from tvq_assets.quant import returns as returns_engine
from tvq_checks import checks, contracts
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
    started = time.perf_counter()
    sleeve_entry = sleeve_of(context)
    policy = sleeve_entry.policy
    partition = context.partition_key
    now = clock.now()
    try:
        plan, batch = bar_store.prepare(
            lake,
            partition,
            fetch=lambda since, known=(): market_data.fetch(
                sleeve_entry.name, since=since, known=known, map_tasks=fanout
            ),
            incremental=market_data.incremental(sleeve_entry.name),
            calendar=sleeve_entry.calendar,
            bar_policy=policy.bar_policy,
            volume_spike_window=policy.volume_spike_window,
            now=now,
            full=full,
        )
    except bar_lake.FutureBarError as exc:
        raise dg.Failure(description=f"bars of sleeve {partition}: {exc}") from exc
    update, cleaned = plan.update, plan.cleaned
    validating = time.perf_counter()
    # The stored bars passed this contract when they came in; the rows this refresh adds or
    # revises are checked, against the stored context their continuity rules look back on.
    errors, warnings = contracts.bar_violations(
        plan.frame,
        calendar=sleeve_entry.calendar,
        stall_bars=policy.stall_bars,
        volume_spike_window=policy.volume_spike_window,
        volume_spike_sigma=policy.volume_spike_sigma,
        rows=plan.rows,
    )
    validated = time.perf_counter()
    load_errors = pd.DataFrame(
        [(e.file, e.line, e.reason) for e in batch.errors], columns=["file", "line", "reason"]
    )
    load_table = dg.MetadataValue.md(checks.markdown(load_errors.head(20)))
    summary = bar_lake.defect_summary(cleaned.defects)
    summary_table = dg.MetadataValue.md(checks.markdown(summary))
    per_symbol = dg.MetadataValue.md(checks.markdown(_defects_by_symbol(cleaned.defects)))
    if errors.empty:
        # The store writes one small segment and switches its manifest (never through the IO
        # manager, which would rewrite the whole lake); readers load it with ``lake.read``.
        written = bar_store.commit(lake, plan)
        wrote = time.perf_counter()
        symbols = plan.symbols
        yield dg.MaterializeResult(
            metadata={
                "symbols": len(symbols),
                "rows": written.rows,
                "rows_read": plan.rows_read,
                "rows_added": update.added,
                "rows_revised_at_source": update.revised,
                "rows_removed_by_defects": update.removed,
                "rows_validated": int(plan.rows.sum()),
                "new_symbols": len(set(update.changed["symbol"]) - set(plan.known_symbols)),
                "date_range": _symbol_range(symbols),
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
                    f"defects_{action}": int((cleaned.defects["action"] == action).sum())
                    for action in bar_lake.RECORDED.values()
                },
                "defects_by_rule": summary_table,
                "defects_by_symbol": per_symbol,
                "unreadable_files": len(load_errors),
                "load_errors": load_table,
                "path": dg.MetadataValue.path(str(bar_store.folder(lake, partition))),
                "seconds_source": round(plan.seconds["source"], 3),
                "source_parse_mode": fanout.mode,
                "source_parse_tasks": fanout.tasks,
                "seconds_read": round(plan.seconds["read"], 3),
                "seconds_merge": round(plan.seconds["merge"], 3),
                "seconds_checksums": round(plan.seconds["checksums"], 3),
                "seconds_validate": round(validated - validating, 3),
                "seconds_write": round(wrote - validated, 3),
                "seconds": round(wrote - started, 3),
            },
        )
    yield checks.result(
        BARS_CONTRACT,
        errors,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows_checked": int(plan.rows.sum())},
    )
    yield checks.result(BARS_QUALITY, warnings, severity=dg.AssetCheckSeverity.WARN)
    yield dg.AssetCheckResult(
        check_name=SOURCE_READABLE,
        passed=load_errors.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            "every file was read"
            if load_errors.empty
            else f"{len(load_errors)} file(s) could not be read; first: {batch.errors[0]}"
        ),
        metadata={"unreadable_files": len(load_errors), "load_errors": load_table},
    )
    held_back = int((cleaned.defects["rule"] == bar_lake.UNFINISHED).sum())
    yield dg.AssetCheckResult(
        check_name=BARS_DEFECTS,
        # Holding back today's unfinished bars is routine, not a defect of the source.
        passed=len(cleaned.defects) == held_back,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            "no bar defect in the source"
            if cleaned.defects.empty
            else f"{len(cleaned.defects)} bar defect(s) in "
            f"{cleaned.defects['symbol'].nunique()} symbol(s), handled by the bar policy"
        ),
        metadata={
            "defects": len(cleaned.defects) - held_back,
            "unfinished_bars_held_back": held_back,
            "by_rule": summary_table,
            "by_symbol": per_symbol,
            "first_defects": dg.MetadataValue.md(checks.markdown(cleaned.defects.head(20))),
        },
    )
    disagreements = plan.source_check.disagreements
    told = []
    if not update.new_revisions.empty:
        told.append(
            f"{update.revised} stored bar(s) revised by the source; the new values are kept"
        )
    if not disagreements.empty:
        told.append(_disagreement_message(disagreements))
    yield dg.AssetCheckResult(
        check_name=BARS_REVISIONS,
        passed=not told,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(told) or "no stored bar was revised by the source",
        metadata={
            "revisions": len(update.new_revisions),
            "table": dg.MetadataValue.md(checks.markdown(update.new_revisions.head(20))),
            "source_disagreements": len(disagreements),
            "disagreements": dg.MetadataValue.md(checks.markdown(disagreements.head(20))),
        },
    )
    if not errors.empty:
        raise checks.blocking_failure("bars", partition, errors)


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
    settings = run.settings
    quarantine = run.sleeve.toxic_policy == "quarantine"
    name = run.sleeve.name
    current = bar_store.state(lake, name)
    recorded = _recorded_version(context)
    known = None if config.restate or current is None else recorded
    window_of = {"as_of": run.as_of, "rows": settings.history_rows, "calendar": settings.calendar}
    try:
        bars = bar_store.read_history(lake, name, known=known, **window_of)
        before = (
            bar_store.as_known(lake, name, recorded, current=current)
            if config.restate and recorded is not None and current is not None
            else None
        )
    except bar_store.UnknownVersion as exc:
        raise dg.Failure(
            description=f"returns[{run.key}]: the bars this run read before: {exc}"
        ) from exc
    version = known if known is not None else (None if current is None else current.sequence)
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
    failures = pd.concat(
        [
            failures[~handled],
            contracts.universe_violations(
                window.returns,
                window.excluded,
                minimum=settings.min_universe,
                as_of=run.as_of,
            ),
        ],
        ignore_index=True,
    )
    excluded = window.excluded
    quarantined = excluded[excluded["reason"] != "ineligible"]
    frame = window.returns
    restated = None
    if before is not None:
        # What the run's history window sees differently from the bars it knew.
        start = window.history.index.min() if len(window.history) else run.as_of
        inside = bars.bars[(bars.bars["date"] >= start) & (bars.bars["date"] <= run.as_of)]
        old = before.bars[(before.bars["date"] >= start) & (before.bars["date"] <= run.as_of)]
        restated = bar_lake.changed_bars(old, inside)
    # Like every ERROR contract here: a rejected window is never stored (see checks.emit).
    if failures.empty:
        yield dg.Output(
            window,
            metadata=run.metadata(
                symbols=frame.shape[1],
                rows=frame.shape[0],
                date_range=_date_range(frame.index),
                history_symbols=window.history.shape[1],
                history_range=_date_range(window.history.index),
                bars_read=len(bars.bars),
                excluded=len(excluded),
                excluded_symbols=dg.MetadataValue.md(checks.markdown(excluded)),
                quarantined=dg.MetadataValue.json(sorted(quarantined["symbol"].unique().tolist())),
                **_bars_read(version, recorded, config.restate, restated, current),
            ),
        )
    threshold = f" (threshold {settings.toxic_threshold:+.0%}, policy: {run.sleeve.toxic_policy})"
    reported = quarantined.assign(
        message=quarantined["symbol"] + ": " + quarantined["detail"] + " [quarantined]"
    )[["symbol", "date", "value", "rule", "message"]]
    yield checks.result(
        RETURNS_CONTRACT,
        pd.concat([failures, reported], ignore_index=True),
        severity=dg.AssetCheckSeverity.ERROR,
        passed=failures.empty,
        metadata={
            "policy": run.sleeve.toxic_policy,
            "quarantined_symbols": dg.MetadataValue.json(
                sorted(quarantined["symbol"].unique().tolist())
            ),
        },
    )
    if not failures.empty:
        raise checks.blocking_failure("returns", run.key, failures, suffix=threshold)
