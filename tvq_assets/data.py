"""Data layer: the sleeve's bar lake and the point-in-time returns window, with their contracts."""

import time

import dagster as dg
import pandas as pd

from tvq_assets.catalog import policy_parameters
from tvq_assets.partitions import sleeve, sleeve_and_date, sleeve_of, sleeve_run
from tvq_assets.quant import bars as bar_lake
from tvq_assets.quant import returns as returns_engine
from tvq_checks import checks, contracts
from tvq_resources.lake import ParquetLake
from tvq_resources.market_data import MarketData

BARS_CONTRACT = "bars_contract"
BARS_QUALITY = "bars_quality"
SOURCE_READABLE = "source_readable"
RETURNS_CONTRACT = "returns_contract"


def _date_range(dates: pd.Index) -> str:
    if len(dates) == 0:
        return "empty"
    return f"{pd.Timestamp(dates.min()):%Y-%m-%d} .. {pd.Timestamp(dates.max()):%Y-%m-%d}"


@dg.asset(
    partitions_def=sleeve,
    group_name="data",
    kinds={"pandas", "parquet"},
    check_specs=checks.specs_for(
        "bars",
        [
            (
                BARS_CONTRACT,
                "Prices positive and finite, OHLC consistent, one sorted row per "
                "symbol and date, no weekend rows (weekday sleeves), no filler bars.",
                True,
            ),
            (
                BARS_QUALITY,
                "Last-bar volume spikes (z > 10 over 21+ bars) and price stalls "
                "(3 identical closes): recorded, not blocking.",
                False,
            ),
            (SOURCE_READABLE, "Every file of the sleeve's source could be read.", False),
        ],
        sleeve,
    ),
    metadata={"dagster/column_schema": checks.column_schema(contracts.BARS_STRUCTURE)},
    output_required=False,
)
def bars(context: dg.AssetExecutionContext, market_data: MarketData, lake: ParquetLake):
    """Daily OHLCV of every symbol in the sleeve (UTC dates), refreshed incrementally."""
    # One writer per sleeve's bar lake from the read of the stored bars to the write of the merge
    # (the IO manager writes inside this block): a concurrent refresh waits, then merges onto it.
    with lake.writer(context.asset_key.path, context.partition_key):
        yield from _refresh_bars(context, market_data, lake)


def _refresh_bars(context: dg.AssetExecutionContext, market_data: MarketData, lake: ParquetLake):
    started = time.perf_counter()
    sleeve_entry = sleeve_of(context)
    policy = sleeve_entry.policy
    key, partition = context.asset_key.path, context.partition_key
    stored = lake.read(key, partition) if lake.exists(key, partition) else None
    batch = market_data.fetch(sleeve_entry.name)
    update = bar_lake.refresh(stored, batch.bars)
    merged = update.bars
    errors, warnings = contracts.bar_violations(
        merged,
        calendar=sleeve_entry.calendar,
        stall_bars=policy.stall_bars,
        volume_spike_window=policy.volume_spike_window,
        volume_spike_sigma=policy.volume_spike_sigma,
        rows=None if stored is None else update.added_rows,
    )
    load_errors = pd.DataFrame(
        [(e.file, e.line, e.reason) for e in batch.errors], columns=["file", "line", "reason"]
    )
    load_table = dg.MetadataValue.md(checks.markdown(load_errors.head(20)))
    # An incremental lake must not absorb rows that break the contract: on an ERROR the stored
    # lake stays as it was (no materialisation) and the run stops with the failing rows named.
    if errors.empty:
        yield dg.Output(
            merged,
            metadata={
                "symbols": merged["symbol"].nunique(),
                "rows": len(merged),
                "rows_added": update.added,
                "rows_revised_at_source": update.revised,
                "new_symbols": len(update.new_symbols),
                "date_range": _date_range(pd.Index(merged["date"])),
                "source": sleeve_entry.source["kind"],
                "duplicates_resolved": batch.duplicates,
                "unreadable_files": len(load_errors),
                "load_errors": load_table,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
    yield checks.result(
        BARS_CONTRACT,
        errors,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows_checked": len(merged) if stored is None else update.added},
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
    if not errors.empty:
        raise checks.blocking_failure("bars", partition, errors)


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
                "before genesis, no padded days. Policy `quarantine` excludes and lists offenders.",
                True,
            ),
        ],
        sleeve_run,
    ),
)
def returns(context: dg.AssetExecutionContext, bars: pd.DataFrame):
    """Wide simple-return matrix over the lookback window ending at the run's as-of date."""
    started = time.perf_counter()
    sleeve_entry, as_of = sleeve_and_date(context)
    policy = sleeve_entry.policy
    window = returns_engine.returns_window(
        bars,
        as_of=as_of,
        lookback=policy.lookback,
        calendar=sleeve_entry.calendar,
        stale_days=policy.stale_days,
        min_history=policy.min_history,
    )
    failures = contracts.returns_violations(window.returns, toxic_threshold=policy.toxic_threshold)
    quarantined = failures.iloc[0:0]
    if sleeve_entry.toxic_policy == "quarantine":
        handled = failures["rule"].isin(contracts.QUARANTINABLE)
        quarantined, failures = failures[handled], failures[~handled]
        window = returns_engine.drop_symbols(
            window,
            quarantined.assign(
                rule="quarantine:" + quarantined["rule"], detail=quarantined["message"]
            ),
        )
    frame = window.returns
    # Like every ERROR contract here: a rejected window is never stored (see checks.emit).
    if failures.empty:
        yield dg.Output(
            {"returns": frame, "dollar_volume": window.dollar_volume, "excluded": window.excluded},
            metadata={
                "symbols": frame.shape[1],
                "rows": frame.shape[0],
                "date_range": _date_range(frame.index),
                "as_of": f"{as_of:%Y-%m-%d}",
                "excluded": len(window.excluded),
                "excluded_symbols": dg.MetadataValue.md(checks.markdown(window.excluded)),
                "quarantined": dg.MetadataValue.json(
                    sorted(quarantined["symbol"].unique().tolist())
                ),
                "parameters": dg.MetadataValue.json(policy_parameters(sleeve_entry)),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
    threshold = f" (threshold {policy.toxic_threshold:+.0%}, policy: {sleeve_entry.toxic_policy})"
    yield checks.result(
        RETURNS_CONTRACT,
        pd.concat([failures, quarantined], ignore_index=True),
        severity=dg.AssetCheckSeverity.ERROR,
        passed=failures.empty,
        metadata={
            "policy": sleeve_entry.toxic_policy,
            "quarantined_symbols": dg.MetadataValue.json(
                sorted(quarantined["symbol"].unique().tolist())
            ),
        },
    )
    if not failures.empty:
        raise checks.blocking_failure("returns", context.partition_key, failures, suffix=threshold)
