"""The bars refresh adding one day, before (whole source, whole lake, whole contract, one file
rewritten) and after (the segment store), at 1000 synthetic crypto symbols over three years.

``python -m benchmarks.bench_bars [--symbols 1000] [--end 2026-11-27]`` prints seconds per stage of
both paths, measured in one run. ``build(root, symbols, end)`` and ``refresh_next_day`` are what
a benchmark suite calls; the source stage (generating the synthetic market) is the same for both.
"""

import argparse
import time
from pathlib import Path

import pandas as pd

from tvq_assets import bar_store
from tvq_assets.quant import bars as bar_lake
from tvq_checks import contracts
from tvq_resources.lake import ParquetLake
from tvq_resources.market_data import MarketData, SourceConfig

SLEEVE = "crypto"
END = "2026-11-27"
YEARS = 3
# Fixed, so that the market of end D and of end D+1 agree on every bar up to D.
START = (pd.Timestamp(END) - pd.DateOffset(years=YEARS)).strftime("%Y-%m-%d")
VOLUME_SPIKE_WINDOW = 21


def market(symbols: int, end: str) -> MarketData:
    source = SourceConfig(kind="synthetic", symbols=symbols, start=START, end=end)
    return MarketData(sources={SLEEVE: source})


def _now(end: str) -> pd.Timestamp:
    return pd.Timestamp(end, tz="UTC") + pd.Timedelta(days=1, hours=1)


def build(root: str | Path, symbols: int = 1000, end: str = END) -> ParquetLake:
    """A bar store of ``symbols`` synthetic crypto symbols, three years ending ``end``."""
    lake = ParquetLake(root=str(root))
    refresh_next_day(lake, symbols=symbols, end=end)
    return lake


def refresh_next_day(lake: ParquetLake, *, symbols: int, end: str) -> dict[str, float]:
    """One refresh exactly as the bars asset runs it; seconds per stage."""
    data = market(symbols, end)
    started = time.perf_counter()
    with lake.writer(["bars"], SLEEVE):
        plan, _ = bar_store.prepare(
            lake,
            SLEEVE,
            fetch=lambda since: data.fetch(SLEEVE, since=since),
            calendar="crypto",
            bar_policy=bar_lake.BarPolicy(),
            volume_spike_window=VOLUME_SPIKE_WINDOW,
            now=_now(end),
        )
        checked = time.perf_counter()
        errors, _ = contracts.bar_violations(plan.frame, calendar="crypto", rows=plan.rows)
        validated = time.perf_counter()
        if not errors.empty:
            raise AssertionError(errors.head())
        written = bar_store.commit(lake, plan)
        done = time.perf_counter()
    return {
        "source": plan.seconds["source"],
        "read": plan.seconds["read"],
        "merge": plan.seconds["merge"],
        "validate": validated - checked,
        "write": done - validated,
        "total": done - started,
        "rows_read": plan.rows_read,
        "rows_validated": int(plan.rows.sum()),
        "segments": written.segments,
    }


def build_single_file(root: str | Path, symbols: int = 1000, end: str = END) -> ParquetLake:
    """The former layout: one BarHistory bundle, rewritten whole by every refresh."""
    lake = ParquetLake(root=str(root))
    single_file_refresh(lake, symbols=symbols, end=end)
    return lake


def single_file_refresh(lake: ParquetLake, *, symbols: int, end: str) -> dict[str, float]:
    """The former refresh: the whole source, merged against the whole lake, the contract on
    every row, the whole bundle rewritten (as the bars asset did before the segment store)."""
    data = market(symbols, end)
    started = time.perf_counter()
    batch = data.fetch(SLEEVE)
    fetched = time.perf_counter()
    stored = lake.read(["bars"], SLEEVE) if lake.exists(["bars"], SLEEVE) else None
    read = time.perf_counter()
    cleaned = bar_lake.clean(
        batch.bars, calendar="crypto", policy=bar_lake.BarPolicy(), now=_now(end)
    )
    update = bar_lake.refresh(stored, cleaned, seen_at=_now(end))
    merged = time.perf_counter()
    errors, _ = contracts.bar_violations(update.history.bars, calendar="crypto")
    validated = time.perf_counter()
    if not errors.empty:
        raise AssertionError(errors.head())
    lake.write(["bars"], SLEEVE, update.history)
    done = time.perf_counter()
    return {
        "source": fetched - started,
        "read": read - fetched,
        "merge": merged - read,
        "validate": validated - merged,
        "write": done - validated,
        "total": done - started,
        "rows_read": len(batch.bars),
        "rows_validated": len(update.history.bars),
        "segments": 1,
    }


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--end", default=END)
    args = parser.parse_args()
    before = (pd.Timestamp(args.end) - pd.Timedelta(days=1)).strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory() as root:
        single = build_single_file(Path(root) / "single", args.symbols, before)
        segments = build(Path(root) / "segments", args.symbols, before)
        old = single_file_refresh(single, symbols=args.symbols, end=args.end)
        new = refresh_next_day(segments, symbols=args.symbols, end=args.end)
        same = single.read(["bars"], SLEEVE).bars.equals(segments.read(["bars"], SLEEVE).bars)
    print(f"bars refresh adding {args.end} at {args.symbols} symbols ({YEARS} years), seconds")
    print(f"{'stage':16} {'single file':>12} {'segments':>12}")
    for stage in ("source", "read", "merge", "validate", "write", "total"):
        print(f"{stage:16} {old[stage]:12.3f} {new[stage]:12.3f}")
    lake_old = old["total"] - old["source"]
    lake_new = new["total"] - new["source"]
    print(f"{'total - source':16} {lake_old:12.3f} {lake_new:12.3f}")
    for key in ("rows_read", "rows_validated", "segments"):
        print(f"{key:16} {old[key]:12d} {new[key]:12d}")
    print(
        f"validation share of the refresh: {old['validate'] / old['total']:.1%} -> "
        f"{new['validate'] / new['total']:.1%}; stored bars identical: {same}"
    )


if __name__ == "__main__":
    main()
