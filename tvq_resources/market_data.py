"""Market data: one source per sleeve, chosen by the sleeve catalog.

Three kinds of source share one interface, ``MarketData.fetch(sleeve, since=...)``:
``synthetic`` (the embedded, seeded market), ``csv`` (a directory of per-symbol exports) and
``parquet`` (a lake of ``{EXCHANGE}_{SYMBOL}_1d.parquet`` files). Every source returns long bars
(symbol, UTC date, OHLCV) plus the files it could not read, so one broken file never hides the rest.
"""

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field, field_validator, model_validator

from tvq_resources import clock, files, synthetic

SYNTHETIC_START = "2023-11-01"
# The largest synthetic market: a bound that keeps a typo (1e9) from hanging the load; the
# large benchmark runs 10,000 symbols.
MAX_SYNTHETIC_SYMBOLS = 100_000
REPOSITORY = Path(__file__).resolve().parent.parent
_DEFAULT_CATALOG = REPOSITORY / "tvq_assets" / "sleeves.yaml"


class FaultConfig(dg.Config):
    """A data fault injected into the synthetic market (for demos and tests)."""

    kind: Literal[synthetic.FAULT_KINDS]  # type: ignore[valid-type]
    symbol: str | None = Field(default=None, min_length=1)
    date: str | None = None

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        return iso_date(value)


def iso_date(value: str | None) -> str | None:
    """``value`` when it is an ISO date (YYYY-MM-DD) or None; else a ValueError naming it."""
    if value is None:
        return None
    try:
        datetime.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError("not a date (rule: an ISO date, YYYY-MM-DD)") from None
    return value


class SourceConfig(dg.Config):
    """Where one sleeve's bars come from. Fields apply to the kinds named in their comment."""

    kind: Literal["synthetic", "csv", "parquet"] = "synthetic"
    calendar: Literal["crypto", "weekday"] = "crypto"
    # all kinds: the first date of the sleeve's history (synthetic: the market's first day,
    # default 2023-11-01; csv/parquet: older bars are not read; None keeps all of them)
    start: str | None = None
    # synthetic (clusters: at most the symbols that are not stablecoins or twins, see `synthetic`)
    seed: int = Field(default=7, ge=0)
    symbols: int = Field(default=100, ge=1, le=MAX_SYNTHETIC_SYMBOLS)
    clusters: int = Field(default=8, ge=1)
    end: str | None = None  # None: today (UTC); not before `start`
    faults: list[FaultConfig] = []
    # csv and parquet (the folder's existence is checked where the catalog loads, see `catalog`)
    path: str | None = Field(default=None, min_length=1)
    pattern: str | None = None  # the rules of `files` (holds {symbol}, no path separator)
    # the unit of the files' `volume` column: `base` (coins, shares) or `quote` (currency, e.g.
    # Yahoo crypto in USD); quote volume is divided by the close so that close x volume is the
    # traded value either way
    volume: Literal["base", "quote"] = "base"

    @field_validator("start", "end")
    @classmethod
    def _iso_dates(cls, value: str | None) -> str | None:
        return iso_date(value)

    @field_validator("pattern")
    @classmethod
    def _file_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            files._compile_pattern(value)  # the readers' own rules
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "SourceConfig":
        # A synthetic market without `start` begins at SYNTHETIC_START (see `fetch`).
        start = self.start or (SYNTHETIC_START if self.kind == "synthetic" else None)
        day = datetime.date.fromisoformat
        if start and self.end and day(self.end) < day(start):
            shown = f"start = {start!r}" if self.start else f"the default start {start!r}"
            raise ValueError(f"end = {self.end!r} is before {shown} (rule: start <= end)")
        if self.kind == "synthetic":
            # the generator's own rule (`synthetic._layout`): one identity per cluster at least
            most = (
                self.symbols
                - synthetic._stablecoin_count(self.symbols, self.calendar)
                - synthetic._twin_count(self.symbols, self.calendar)
            )
            if self.clusters > most:
                raise ValueError(
                    f"clusters = {self.clusters} breaks the rule clusters <= {most} (the symbols "
                    f"of a {self.symbols}-symbol {self.calendar} market that are not stablecoins "
                    "or twins)"
                )
            for fault in self.faults:
                if fault.kind == "weekend_padding" and self.calendar != "weekday":
                    raise ValueError(
                        "faults: weekend_padding only applies to a weekday calendar, not "
                        f"{self.calendar!r}"
                    )
        return self


@dataclass(frozen=True)
class Batch:
    """What a source delivered: long bars and the files it could not read."""

    bars: pd.DataFrame
    errors: tuple[files.LoadError, ...] = ()
    duplicates: int = 0
    files: int = 0
    superseded: pd.DataFrame | None = None  # earlier reports of duplicated (symbol, date) rows


class MarketData(dg.ConfigurableResource):
    """Daily bars for every sleeve of the catalog, from the sleeve's own source."""

    sources: dict[str, SourceConfig]

    def fetch(
        self,
        sleeve: str,
        *,
        since: pd.Timestamp | None = None,
        map_tasks: files.MapTasks | None = None,
    ) -> Batch:
        """Bars of ``sleeve`` dated after ``since`` (all bars when ``since`` is None); a file
        source's files are parsed as tasks of ``map_tasks`` when given (see ``files``)."""
        if sleeve not in self.sources:
            raise KeyError(
                f"sleeve {sleeve!r} has no market data source; known: {sorted(self.sources)}"
            )
        source = self.sources[sleeve]
        if source.kind == "synthetic":
            bars = synthetic.generate_market(
                seed=source.seed,
                n_symbols=source.symbols,
                n_clusters=source.clusters,
                start=source.start or SYNTHETIC_START,
                end=source.end or clock.now().strftime("%Y-%m-%d"),
                calendar=source.calendar,
                faults=[synthetic.Fault(f.kind, f.symbol, f.date) for f in source.faults],
            )
            if since is not None:
                bars = bars[bars["date"] > since].reset_index(drop=True)
            return Batch(bars=bars)
        if source.path is None:
            raise ValueError(f"sleeve {sleeve!r}: a {source.kind} source needs a `path`")
        if source.start is not None:
            first = pd.Timestamp(source.start) - pd.Timedelta(days=1)
            since = first if since is None else max(since, first)
        path = resolve_path(source.path)
        if source.kind == "csv":
            loaded = files.read_csv_directory(
                path, pattern=source.pattern or "{symbol}.csv", since=since, map_tasks=map_tasks
            )
        else:
            loaded = files.read_parquet_lake(
                path,
                pattern=source.pattern or "{exchange}_{symbol}_1d.parquet",
                since=since,
                map_tasks=map_tasks,
            )
        bars, superseded = loaded.bars, loaded.superseded
        if source.volume == "quote":
            bars = bars.assign(volume=bars["volume"] / bars["close"])
            if superseded is not None:
                superseded = superseded.assign(volume=superseded["volume"] / superseded["close"])
        return Batch(
            bars=bars,
            errors=loaded.errors,
            duplicates=loaded.duplicates,
            files=loaded.files,
            superseded=superseded,
        )


def resolve_path(path: str) -> Path:
    """A source path as written in the catalog: absolute, or relative to the catalog file's
    folder when it exists there, else relative to the repository root (the folder holding
    `tvq_resources`, also in an installed package), never to the working directory: the shipped
    `tvq_resources/fixtures/...` resolve wherever the command runs."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    catalog_dir = Path(os.environ.get("TVQ_SLEEVES") or _DEFAULT_CATALOG).resolve().parent
    for base in (catalog_dir, REPOSITORY):
        if (base / candidate).exists():
            return base / candidate
    return REPOSITORY / candidate
