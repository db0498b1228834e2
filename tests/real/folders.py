"""The shipped real-data folders as sleeve sources, and the per-rule defect table of each.

Run ``python -m tests.real.folders`` to print, for every folder, how many bars each rule
repaired, dropped or quarantined under the default bar policy (and the files that could not be
read). The folders live in ``../shared/data/real`` beside the repository (never edited); the
demo sleeve's folder also ships inside the repository, and tests read that copy, so they run in a
clone alone. A test over any other folder skips when ``../shared`` is absent.
"""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.settings import settings_for
from tvq_assets.catalog import CALENDAR_DEFAULTS, Policy, Sleeve, parse_catalog
from tvq_assets.quant import bars as bar_lake
from tvq_assets.quant.policy import point_in_time
from tvq_checks import contracts
from tvq_resources import clock
from tvq_resources.market_data import MarketData, SourceConfig

REPOSITORY = Path(__file__).resolve().parents[2]
REAL = REPOSITORY.parent / "shared" / "data" / "real"
# Real folders shipped inside the repository (byte for byte the same files as in REAL).
SHIPPED = REPOSITORY / "tvq_resources" / "fixtures"

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real fixtures not found at {REAL}")


@dataclass(frozen=True)
class Folder:
    name: str
    pattern: str
    calendar: str
    as_of: str  # a recent as-of date inside the folder's data (its last complete session)

    @property
    def root(self) -> Path:
        """The shipped copy when the repository has one, else the folder in ``REAL``."""
        shipped = SHIPPED / self.name
        return shipped if shipped.is_dir() else REAL / self.name


FOLDERS = (
    Folder("crypto_binance_klines_yodumini", "{symbol}.csv", "crypto", "2022-09-25"),
    Folder("crypto_binance_perp_gravestone", "{symbol}.csv", "crypto", "2026-03-19"),
    Folder("crypto_binance_spot_soneyjohnt", "{symbol}_1d.csv", "crypto", "2022-06-04"),
    Folder("crypto_bybit_perp_zxckotee", "{symbol}_1d.csv", "crypto", "2025-10-21"),
    Folder("crypto_cryptodatadownload_ziggerzz", "Binance_{symbol}_d.csv", "crypto", "2022-04-08"),
    Folder(
        "crypto_lakehouse_tradingview_scraper",
        "{exchange}_{symbol}_1d.parquet",
        "crypto",
        "2025-12-19",
    ),
    Folder("crypto_tradingview_uzanbtc", "{exchange}_{symbol}, 1D.csv", "crypto", "2023-01-27"),
    Folder("tradfi_skfolio", "{symbol}.csv.gz", "weekday", "2022-12-28"),
    Folder("tradfi_tradingview_uzanbtc", "{exchange}_{symbol}, 1D.csv", "weekday", "2023-01-27"),
    Folder("tradfi_yahoo_moex_zenoftrading", "{symbol}.csv", "weekday", "2021-09-29"),
    Folder("tradfi_yfinance_testdata", "{symbol}.csv", "weekday", "2024-08-21"),
)
BY_NAME = {folder.name: folder for folder in FOLDERS}
# The folder of the demo sleeve `binance_perp` (shipped: always present).
DEMO = BY_NAME["crypto_binance_perp_gravestone"]


def params(folders=FOLDERS) -> list:
    """``folders`` as pytest parameters named after them; one that is absent here is skipped."""
    return [
        pytest.param(
            folder,
            id=folder.name,
            marks=pytest.mark.skipif(
                not folder.root.is_dir(), reason=f"real fixtures not found at {folder.root}"
            ),
        )
        for folder in folders
    ]


# The US and London files of the Yahoo folder with bars over 2023-06 .. 2024-08: the sources of
# the mixed-venue fixture sleeve of ``us_london.yaml``.
US_LONDON_FILES = (
    "CALM-1d-no-bad-divs.csv",
    "EWG-1d-no-bad-divs.csv",
    "SAND-1d-bad-div.csv",
    "JENYX-1d-cg-double-count.csv",
    "ABDP-L-1d-bad-div.csv",
    "ADIG-L-1d-bad-div.csv",
    "CLC-L-1d-bad-div.csv",
    "KMR-L-1d-no-bad-divs.csv",
    "PSH-L-1d-bad-div.csv",
    "REL-L-1d-bad-div.csv",
    "RGL-L-1d-bad-div.csv",
    "SERE-L-1d-bad-div.csv",
    "TEM-L-1d-bad-div.csv",
    "TENT-L-1d-bad-div.csv",
    "HSBK-IL-1d-no-bad-divs.csv",
    "KAP-IL-1d-bad-div.csv",
)
US_LONDON_CATALOG = Path(__file__).with_name("us_london.yaml")


def assert_same_load(read, expected) -> None:
    """Two reads of a source folder (``files.LoadResult`` or ``market_data.Batch``) are equal:
    bars, superseded rows, errors in order, duplicate count and files read."""
    pd.testing.assert_frame_equal(read.bars, expected.bars)
    pd.testing.assert_frame_equal(read.superseded, expected.superseded)
    assert (read.errors, read.duplicates, read.files) == (
        expected.errors,
        expected.duplicates,
        expected.files,
    )


def us_london_folder(target: Path, *, until: str | None = None) -> Path:
    """``target`` holding US_LONDON_FILES as a daily replay sees them on ``until``: each file's
    header and its rows dated on or before it (the stamp's local date), byte for byte; the whole
    files when None. Returns ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in US_LONDON_FILES:
        header, *rows = (
            (REAL / BY_NAME["tradfi_yfinance_testdata"].name / name)
            .read_text()
            .splitlines(keepends=True)
        )
        kept = [row for row in rows if until is None or row[:10] <= until]
        (target / name).write_text(header + "".join(kept))
    return target


def us_london_sleeve(folder: Path) -> Sleeve:
    """The sleeve of ``us_london.yaml`` reading ``folder``."""
    document = yaml.safe_load(US_LONDON_CATALOG.read_text())
    document["sleeves"]["us_london"]["source"]["path"] = str(folder)
    return parse_catalog(document, origin=str(US_LONDON_CATALOG)).sleeve("us_london")


def sleeve_source(sleeve: Sleeve) -> SourceConfig:
    """The SourceConfig of a catalog sleeve (its source mapping carries the calendar)."""
    return SourceConfig(**sleeve.source)


def source(folder: Folder, **options) -> SourceConfig:
    return SourceConfig(
        kind="parquet" if folder.pattern.endswith(".parquet") else "csv",
        path=str(folder.root),
        pattern=folder.pattern,
        calendar=folder.calendar,
        **options,
    )


def cleaned(folder: Folder, *, now: pd.Timestamp | None = None):
    """(delivery, cleaned bars) of a folder under the default bar policy."""
    batch = MarketData(sources={"real": source(folder)}).fetch("real")
    result = bar_lake.clean(
        batch.bars,
        calendar=folder.calendar,
        policy=bar_lake.BarPolicy(),
        now=now or clock.now(),
        superseded=batch.superseded,
    )
    return batch, result


def blocking(folder: Folder, bars: pd.DataFrame) -> pd.DataFrame:
    """Returns-contract violations in the default window at the folder's as-of date: what stops
    a `fail` sleeve (a `quarantine` sleeve excludes these symbols instead)."""
    policy = Policy(**CALENDAR_DEFAULTS[folder.calendar])
    window = point_in_time(
        bars,
        as_of=pd.Timestamp(folder.as_of),
        settings=settings_for(folder.calendar),
        quarantine=False,
    )
    return contracts.returns_violations(window.returns, toxic_threshold=policy.toxic_threshold)


def defect_table() -> pd.DataFrame:
    """One row per (folder, rule): bars repaired, dropped, quarantined; files unreadable; and
    the returns-contract violations inside the window at the folder's as-of date (blocking)."""
    rows = []
    for folder in FOLDERS:
        if not folder.root.is_dir():
            rows.append({"folder": folder.name, "rule": "(not found)", "detail": str(folder.root)})
            continue
        batch, result = cleaned(folder)
        stops = blocking(folder, result.bars)
        for rule, group in stops.groupby("rule"):
            rows.append(
                {
                    "folder": folder.name,
                    "rule": f"returns:{rule}",
                    "blocking": len(group),
                    "symbols": group["symbol"].nunique(),
                    "detail": "; ".join(group["message"].head(2)),
                }
            )
        summary = bar_lake.defect_summary(result.defects)
        for record in summary.to_dict("records"):
            rows.append({"folder": folder.name, **record})
        if batch.errors:
            rows.append(
                {
                    "folder": folder.name,
                    "rule": "unreadable_file",
                    "repaired": 0,
                    "dropped": len(batch.errors),
                    "quarantined": 0,
                    "symbols": len(batch.errors),
                }
            )
        if summary.empty and not batch.errors and stops.empty:
            rows.append({"folder": folder.name, "rule": "(none)"})
    counts = ["repaired", "dropped", "quarantined", "blocking", "symbols"]
    columns = ["folder", "rule", *counts, "detail"]
    # Every column even when no folder present had that kind of row (a clone without ../shared).
    table = pd.DataFrame(rows).reindex(columns=columns)
    table[counts] = table[counts].fillna(0).astype(int)
    table["detail"] = table["detail"].fillna("")
    return table.sort_values(["folder", "rule"], ignore_index=True)


def run_folder(folder: Folder, lake_root: str) -> str:
    """Materialise bars, then returns .. backtest at the folder's as-of date, as a `quarantine`
    sleeve allowing 3 to 10 winners; the outcome: the champion, or the failing step's error."""
    import dataclasses

    import dagster as dg

    from tests.conftest import resources_for
    from tvq_assets.definitions import SLEEVE_ASSETS as assets
    from tvq_assets.partitions import catalog

    name = "crypto" if folder.calendar == "crypto" else "tradfi"
    entry = catalog.sleeves[name]
    policy = dataclasses.replace(
        entry.policy, min_winners=3, max_winners=10, min_universe=1, infeasible_cap="raise"
    )
    catalog.sleeves[name] = dataclasses.replace(entry, toxic_policy="quarantine", policy=policy)
    try:
        resources = resources_for(lake_root, **{name: source(folder)})
        with dg.DagsterInstance.ephemeral() as instance:
            dg.materialize([assets[0]], partition_key=name, resources=resources, instance=instance)
            result = dg.materialize(
                assets,
                partition_key=f"{folder.as_of}|{name}",
                selection=[asset.key for asset in assets[1:]],
                resources=resources,
                instance=instance,
                raise_on_error=False,
            )
            if not result.success:
                [failure] = [e for e in result.all_events if e.is_step_failure]
                error = failure.step_failure_data.error.message.strip().splitlines()[0]
                return f"FAILED at {failure.step_key}: {error[:160]}"
        from tvq_resources.lake import ParquetLake

        bundle = ParquetLake(root=lake_root).read(["backtest"], f"{folder.as_of}|{name}")
        sharpe = bundle.metrics.loc[bundle.champion, "sharpe"]
        return f"champion {bundle.champion} (sharpe {sharpe:.2f})"
    finally:
        catalog.sleeves[name] = entry


if __name__ == "__main__":
    import sys
    import tempfile

    pd.set_option("display.width", 200)
    table = defect_table()
    table["detail"] = table["detail"].str.slice(0, 90)
    print(table.to_string(index=False))
    if "--run" in sys.argv:
        for folder in FOLDERS:
            if folder.name != "tradfi_skfolio" and folder.root.is_dir():
                with tempfile.TemporaryDirectory() as lake:
                    print(f"{folder.name} @ {folder.as_of}: {run_folder(folder, lake)}", flush=True)
