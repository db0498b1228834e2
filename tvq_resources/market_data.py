"""Market data: one source per sleeve, chosen by the sleeve catalog.

Four kinds of source share one interface, ``MarketData.fetch(sleeve, since=...)``:
``synthetic`` (the embedded, seeded market), ``csv`` (a directory of per-symbol exports),
``parquet`` (a lake of ``{EXCHANGE}_{SYMBOL}_1d.parquet`` files) and ``exchange`` (an exchange's
public API through ccxt, see ``exchange``). Every source returns long bars (symbol, UTC date,
OHLCV) plus the files or markets it could not read, so one broken file never hides the rest.
"""

import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pandas as pd
from pydantic import Field, field_validator, model_validator

from tvq_resources import clock, exchange, files, synthetic

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

    kind: Literal["synthetic", "csv", "parquet", "exchange"] = "synthetic"
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
    # exchange (see `exchange`): a ccxt exchange id, the market type, the quote currency, and
    # either `bases` (base assets traded against `quote`) or `top` (the N markets of `quote` with
    # the largest 24h quote volume, decided at each refresh)
    exchange: str | None = Field(default=None, min_length=1)
    market: Literal["spot", "swap"] = "spot"
    quote: str = Field(default="USDT", min_length=1)
    bases: list[str] = []
    top: int | None = Field(default=None, ge=1, le=5000)
    url: str | None = None  # the API's scheme://host[:port] (a mirror or a proxy); paths kept
    timeout: float = Field(default=10.0, gt=0, le=300)  # seconds per request
    retries: int = Field(default=5, ge=0, le=20)  # further attempts after a retryable failure
    backoff: float = Field(default=1.0, ge=0, le=60)  # seconds before the first retry, doubling
    workers: int = Field(default=4, ge=1, le=64)  # symbols fetched side by side

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

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is not None:
            exchange.rebased("https://example.invalid/api", value)  # the source's own rule
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "SourceConfig":
        # A synthetic market without `start` begins at SYNTHETIC_START (see `fetch`).
        start = self.start or (SYNTHETIC_START if self.kind == "synthetic" else None)
        day = datetime.date.fromisoformat
        if start and self.end and day(self.end) < day(start):
            shown = f"start = {start!r}" if self.start else f"the default start {start!r}"
            raise ValueError(f"end = {self.end!r} is before {shown} (rule: start <= end)")
        if self.kind == "exchange":
            if self.exchange is None:
                raise ValueError("an exchange source needs `exchange` (a ccxt id, e.g. binance)")
            if bool(self.bases) == (self.top is not None):
                raise ValueError(
                    "an exchange source takes either `bases` (a list of base assets) or `top` "
                    "(the N most liquid markets of `quote`), not both and not neither"
                )
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
    # what the source says about this delivery (an exchange: requests, retries, the universe)
    metadata: Mapping[str, Any] = field(default_factory=dict)


class MarketData(dg.ConfigurableResource):
    """Daily bars for every sleeve of the catalog, from the sleeve's own source."""

    sources: dict[str, SourceConfig]

    def fetch(
        self,
        sleeve: str,
        *,
        since: pd.Timestamp | None = None,
        known: Sequence[str] = (),
        map_tasks: files.MapTasks | None = None,
    ) -> Batch:
        """Bars of ``sleeve`` dated after ``since`` (all bars when ``since`` is None); a file
        source's files are parsed as tasks of ``map_tasks`` when given (see ``files``). An
        incremental source (:meth:`incremental`) delivers the whole history of the symbols not
        in ``known`` (the stored ones), ``since`` applying to the known ones only."""
        source = self._source(sleeve)
        if source.kind == "exchange":
            fetched = exchange.fetch_daily_bars(
                exchange_spec(source), now=clock.now(), since=since, known=known
            )
            return Batch(bars=fetched.bars, errors=fetched.errors, metadata=fetched.metadata)
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

    def incremental(self, sleeve: str) -> bool:
        """Whether the sleeve's source serves the days asked for (an exchange's API) rather
        than a whole folder to be read anyway: the bar store then asks it for the new days."""
        return self._source(sleeve).kind == "exchange"

    def _source(self, sleeve: str) -> SourceConfig:
        if sleeve not in self.sources:
            raise KeyError(
                f"sleeve {sleeve!r} has no market data source; known: {sorted(self.sources)}"
            )
        return self.sources[sleeve]


def exchange_spec(source: SourceConfig) -> exchange.ExchangeSpec:
    """An exchange source's settings as the ``exchange`` module takes them."""
    return exchange.ExchangeSpec(
        exchange=source.exchange or "",
        market=source.market,
        quote=source.quote,
        bases=tuple(source.bases),
        top=source.top,
        start=source.start,
        url=source.url,
        timeout=source.timeout,
        retries=source.retries,
        backoff=source.backoff,
        workers=source.workers,
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
