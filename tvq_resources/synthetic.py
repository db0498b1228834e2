"""The embedded synthetic daily market: seeded, factor-structured, optionally faulty.

Model, per symbol ``i`` and calendar row ``t`` (log returns, clipped to ±1.0 per day):

    r[t, i] = mu_i + sigma_i * (a_m,i * x_m[t] + a_s,i * x_s(i)[t] + a_e,i * x_e[t, i])

``x`` are unit-variance GARCH(1,1) processes driven by Student-t (df 4) innovations: one market
factor, one factor per sector (each symbol loads on exactly one sector) and one idiosyncratic
component per symbol. Squared loadings sum to one (market 0.15-0.30, sector 0.35-0.50), so the
expected correlation is about 0.6 inside a sector and about 0.2 across sectors. ``mu_i`` and
``sigma_i`` (annualised drift and volatility) differ between symbols; volumes are lognormal in the
cross-section (median daily dollar volume about $10-15M crypto, $500-600M tradfi) and rise with
volatility.

Conventions: ``calendar="crypto"`` has a row for every calendar day (365 periods a year),
``"weekday"`` for Monday to Friday only (252), no holidays. Dates are tz-naive midnights (UTC
calendar dates). Simple returns of the output are ``close_t / close_{t-1} - 1``.

Crypto names are pseudo tickers built from syllables and quoted in USDT (``BAKOUSDT``). Two
identities are listed on a second quote (``BAKOUSDC``: same price path up to a basis of a few
basis points), and about one symbol in forty is a stablecoin (base ending in ``USD``, e.g.
``BAUSDUSDT``; close about 1.0). Tradfi names are 2-4 letter tickers.

Point-in-time: every random component is drawn from its own child of
``np.random.SeedSequence(seed)`` as a (rows, columns) array, and listing and delisting dates are
offsets from ``start``; hence the rows dated up to ``D`` are identical whatever ``end >= D``.
Faults with an explicit ``date`` keep this property; faults with ``date=None`` are placed relative
to the last bar, so they move with ``end``.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

FAULT_KINDS: tuple[str, ...] = (
    "toxic_spike",
    "stall",
    "volume_spike",
    "gap",
    "weekend_padding",
    "nan_after_genesis",
)
CALENDARS: tuple[str, ...] = ("crypto", "weekday")
BAR_COLUMNS: tuple[str, ...] = ("symbol", "date", "open", "high", "low", "close", "volume")

_T_DEGREES_OF_FREEDOM = 4.0
_SHOCK_CAP = 6.0  # standardised innovations are capped so a clean market never trips +500%
_VARIANCE_CAP = 12.0  # conditional variance relative to the unconditional one
_LOG_RETURN_CAP = 1.0  # |daily log return| <= 1.0, i.e. between -63% and +172%
_NEVER = np.iinfo(np.int64).max // 4
_NAME_SEED = 20231101  # names depend on the size only, never on the market seed
_TOXIC_MULTIPLE = 8.0  # close = 8 x previous close: a simple return of +700%
_VOLUME_SPIKE_MULTIPLE = 50.0
_STALL_BARS = 4
_GAP_BARS = 3
_PADDING_DAYS = 28


@dataclass(frozen=True)
class Fault:
    """A data fault injected into the synthetic market.

    ``symbol=None`` picks a symbol listed from ``start``, never delisted, not a stablecoin and not
    quoted twice (a different one per kind). ``date=None`` anchors the fault at the symbol's last
    bar: toxic spike 10 bars before it, gap over bars 12-10 before it, NaN prices 5 bars before
    it, stall over the last 4 bars, volume spike on the last bar, weekend padding over the last
    28 days. An explicit ISO ``date`` is the spiked/NaN/spiking bar, the first missing bar of a
    gap, or the first day of a stall or of the padding (both then last to ``end``); a fault
    dated after ``end`` is simply not visible.
    """

    kind: str
    symbol: str | None = None
    date: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; allowed kinds: {', '.join(FAULT_KINDS)}"
            )


@dataclass(frozen=True)
class _Regime:
    """Cross-sectional parameters of one calendar; vols and drifts annualised, log scale."""

    periods_per_year: int
    volatility_median: float
    volatility_dispersion: float
    drift_mean: float
    drift_sd: float
    price_median: float
    price_dispersion: float
    dollar_volume_median: float
    dollar_volume_dispersion: float
    open_gap: float  # sd of log(open / previous close), in units of the daily volatility


_REGIMES = {
    "crypto": _Regime(365, 0.75, 0.30, 0.05, 0.35, 1.0, 2.0, 15e6, 1.1, 0.02),
    "weekday": _Regime(252, 0.28, 0.30, 0.07, 0.12, 60.0, 0.8, 600e6, 0.9, 0.25),
}


@dataclass(frozen=True)
class _Layout:
    """Static, seed-determined description of every symbol (aligned with sorted ``symbols``)."""

    symbols: np.ndarray
    cluster: np.ndarray  # planted label: sector 1..K, stablecoins K + 1
    stable: np.ndarray
    twin_of: np.ndarray  # for a second-quote listing, the column of its first quote; else -1
    genesis_day: np.ndarray  # first listed calendar day, as days after start
    delist_day: np.ndarray  # first calendar day without a bar, as days after start (or never)
    drift: np.ndarray  # daily log drift
    volatility: np.ndarray  # daily volatility
    loadings: np.ndarray  # (3, N): market, sector, idiosyncratic (squares sum to one)
    garch: np.ndarray  # (2, N): alpha, beta of the idiosyncratic component
    log_price: np.ndarray  # log close on the day before start
    log_dollar_volume: np.ndarray
    fault_candidates: np.ndarray  # column indices eligible as default fault symbols


def symbol_names(n_symbols: int, *, calendar: str) -> list[str]:
    """Sorted, unique symbol names of a market of ``n_symbols`` (characters A-Z and 0-9 only).

    Depends only on the size and calendar, not on the seed.
    """
    _check_calendar(calendar)
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be at least 1, got {n_symbols}")
    names, _, _ = _names_and_roles(n_symbols, calendar)
    return sorted(names)


def planted_clusters(
    *, seed: int = 7, n_symbols: int = 100, n_clusters: int = 8, calendar: str = "crypto"
) -> pd.Series:
    """Ground-truth sector of every symbol (ints from 1; stablecoins form cluster n_clusters + 1).

    Indexed by symbol (sorted, index name "symbol"), series name "cluster".
    """
    layout = _layout(seed, n_symbols, n_clusters, calendar)
    return pd.Series(
        layout.cluster,
        index=pd.Index(layout.symbols, name="symbol", dtype=object),
        name="cluster",
        dtype=np.int64,
    )


def generate_market(
    *,
    seed: int = 7,
    n_symbols: int = 100,
    start: str = "2023-11-01",
    end: str,
    calendar: str = "crypto",
    n_clusters: int = 8,
    faults: Sequence[Fault] = (),
) -> pd.DataFrame:
    """Daily long bars ``symbol, date, open, high, low, close, volume`` from ``start`` to ``end``.

    Sorted by (symbol, date), unique, RangeIndex; prices in quote currency, volume in base units
    (dollar volume = close * volume). A symbol has bars from its listing (about a quarter list
    after ``start``) to its delisting (about 3% stop before roughly three years), never before or
    after. Without faults every price is finite and positive, ``high >= max(open, close)``,
    ``low <= min(open, close)`` and volume > 0. Identical arguments give an identical frame, and
    rows dated up to ``D`` do not depend on ``end >= D`` (see the module docstring).
    """
    _check_calendar(calendar)
    for fault in faults:
        if not isinstance(fault, Fault):
            raise TypeError(f"faults must be Fault instances, got {fault!r}")
        if fault.kind == "weekend_padding" and calendar != "weekday":
            raise ValueError(
                "fault 'weekend_padding' only applies to the 'weekday' calendar (it inserts "
                f"Saturday and Sunday rows); calendar {calendar!r} already trades every day"
            )
    first, last = _day(start), _day(end)
    if last < first:
        raise ValueError(f"end {end} is before start {start}")
    layout = _layout(seed, n_symbols, n_clusters, calendar)
    frequency = "D" if calendar == "crypto" else "B"
    dates = pd.date_range(first, last, freq=frequency)
    if len(dates) == 0:
        return _empty_bars()
    prices = _simulate(layout, seed, len(dates), _REGIMES[calendar])
    days = ((dates - first) // pd.Timedelta(days=1)).to_numpy()
    listed = (days[:, None] >= layout.genesis_day) & (days[:, None] < layout.delist_day)
    bars = _WideBars(symbols=layout.symbols, start=first, dates=dates, listed=listed, **prices)
    padding = []
    for fault in faults:
        column = _fault_column(layout, fault)
        if fault.kind == "weekend_padding":
            padding.append((fault, column))
        else:
            _apply_fault(bars, fault, column, layout)
    frame = _to_long(bars, layout.symbols)
    extra = [_weekend_padding(bars, fault, column, layout) for fault, column in padding]
    if extra:
        frame = pd.concat([frame, *extra], ignore_index=True)
        frame = frame.sort_values(["symbol", "date"], kind="mergesort", ignore_index=True)
    return frame


def _day(value: str) -> pd.Timestamp:
    """The UTC calendar date of ``value`` as a tz-naive midnight."""
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.normalize()


def _check_calendar(calendar: str) -> None:
    if calendar not in CALENDARS:
        raise ValueError(f"unknown calendar {calendar!r}; use one of {', '.join(CALENDARS)}")


def _stablecoin_count(n_symbols: int, calendar: str) -> int:
    return max(1, n_symbols // 40) if calendar == "crypto" and n_symbols >= 12 else 0


def _twin_count(n_symbols: int, calendar: str) -> int:
    return 2 if calendar == "crypto" and n_symbols >= 12 else 0


def _names_and_roles(n_symbols: int, calendar: str) -> tuple[list[str], list[str], list[int]]:
    """Names in construction order, their role ("stable", "regular", "twin") and twin partner."""
    rng = np.random.default_rng(_NAME_SEED)
    if calendar == "weekday":
        tickers = _unique_draws(rng, n_symbols, _ticker_batch)
        return tickers, ["regular"] * n_symbols, [-1] * n_symbols
    n_stable, n_twins = _stablecoin_count(n_symbols, calendar), _twin_count(n_symbols, calendar)
    bases = _unique_draws(rng, n_symbols - n_twins, _syllable_batch)
    names, roles, partners = [], [], []
    taken: set[str] = set()
    for position, base in enumerate(bases):
        if position < n_stable:
            stable_base = base[:2] + "USD"
            stable_base = base + "USD" if stable_base in taken else stable_base
            taken.add(stable_base)
            names.append(stable_base + "USDT")
            roles.append("stable")
            partners.append(-1)
        else:
            names.append(base + "USDT")
            roles.append("regular")
            partners.append(-1)
            if position < n_stable + n_twins:
                names.append(base + "USDC")
                roles.append("twin")
                partners.append(len(names) - 2)
    return names, roles, partners


def _unique_draws(
    rng: np.random.Generator, count: int, batch: Callable[[np.random.Generator], list[str]]
) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < count:
        for candidate in batch(rng):
            seen.setdefault(candidate, None)
            if len(seen) == count:
                break
    return list(seen)


def _syllable_batch(rng: np.random.Generator, size: int = 4096) -> list[str]:
    consonants, vowels = np.array(list("BCDFGHJKLMNPRSTVXZ")), np.array(list("AEIOU"))
    c = consonants[rng.integers(0, len(consonants), size=(size, 3))]
    v = vowels[rng.integers(0, len(vowels), size=(size, 2))]
    with_tail = rng.random(size) < 0.5
    return [
        c[k, 0] + v[k, 0] + c[k, 1] + v[k, 1] + (c[k, 2] if with_tail[k] else "")
        for k in range(size)
    ]


def _ticker_batch(rng: np.random.Generator, size: int = 4096) -> list[str]:
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    drawn = letters[rng.integers(0, 26, size=(size, 4))]
    lengths = rng.choice([2, 3, 4], size=size, p=[0.1, 0.5, 0.4])
    return ["".join(drawn[k, : lengths[k]]) for k in range(size)]


def _layout(seed: int, n_symbols: int, n_clusters: int, calendar: str) -> _Layout:
    _check_calendar(calendar)
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be at least 1, got {n_symbols}")
    names, roles, partners = _names_and_roles(n_symbols, calendar)
    n_identities = sum(role == "regular" for role in roles)
    if not 1 <= n_clusters <= n_identities:
        raise ValueError(
            f"n_clusters must be between 1 and {n_identities} (the non-stablecoin identities "
            f"of a {n_symbols}-symbol {calendar} market), got {n_clusters}"
        )
    order = np.argsort(np.array(names, dtype=object), kind="stable")
    position_of = np.empty(n_symbols, dtype=np.int64)
    position_of[order] = np.arange(n_symbols)
    role = np.array(roles, dtype=object)[order]
    twin_of = np.array([position_of[p] if p >= 0 else -1 for p in partners], dtype=np.int64)[order]
    stable, twin = role == "stable", role == "twin"
    regular = np.flatnonzero(role == "regular")

    regime = _REGIMES[calendar]
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])
    cluster = np.full(n_symbols, n_clusters + 1, dtype=np.int64)
    cluster[regular] = rng.permutation(np.arange(len(regular)) % n_clusters) + 1
    cluster[twin] = cluster[twin_of[twin]]

    periods = regime.periods_per_year
    annual_volatility = regime.volatility_median * np.exp(
        regime.volatility_dispersion * rng.standard_normal(n_symbols)
    )
    volatility = annual_volatility / np.sqrt(periods)
    drift = (regime.drift_mean + regime.drift_sd * rng.standard_normal(n_symbols)) / periods
    market_share = rng.uniform(0.15, 0.30, n_symbols)
    sector_share = rng.uniform(0.35, 0.50, n_symbols)
    loadings = np.sqrt(np.vstack([market_share, sector_share, 1 - market_share - sector_share]))
    alpha = rng.uniform(0.04, 0.12, n_symbols)
    beta = np.minimum(rng.uniform(0.84, 0.93, n_symbols), 0.985 - alpha)
    log_price = np.log(regime.price_median) + regime.price_dispersion * rng.standard_normal(
        n_symbols
    )
    log_dollar_volume = np.log(
        regime.dollar_volume_median
    ) + regime.dollar_volume_dispersion * rng.standard_normal(n_symbols)
    # Stablecoins trade heavily; a second quote trades a fraction of the first one.
    log_dollar_volume[stable] = np.log(2e8) + 0.5 * rng.standard_normal(int(stable.sum()))
    log_dollar_volume[twin] = log_dollar_volume[twin_of[twin]] - rng.uniform(1.0, 2.5, twin.sum())
    log_price[stable] = 0.0

    # Listings and delistings are offsets from start (never from end) for point-in-time data.
    shuffled = rng.permutation(regular[~np.isin(regular, twin_of[twin])])
    n_late = round(0.25 * n_symbols)
    n_delisted = max(1, round(0.03 * n_symbols)) if n_symbols >= 12 else 0
    late, delisted = shuffled[:n_late], shuffled[n_late : n_late + n_delisted]
    genesis_day = np.zeros(n_symbols, dtype=np.int64)
    genesis_day[late] = rng.integers(20, 800, size=len(late))
    delist_day = np.full(n_symbols, _NEVER, dtype=np.int64)
    delist_day[delisted] = rng.integers(300, 1000, size=len(delisted))
    fault_candidates = shuffled[n_late + n_delisted :]
    if len(fault_candidates) == 0:
        fault_candidates = np.flatnonzero(~stable & ~twin)

    return _Layout(
        symbols=np.array(names, dtype=object)[order],
        cluster=cluster,
        stable=stable,
        twin_of=twin_of,
        genesis_day=genesis_day,
        delist_day=delist_day,
        drift=drift,
        volatility=volatility,
        loadings=loadings,
        garch=np.vstack([alpha, beta]),
        log_price=log_price,
        log_dollar_volume=log_dollar_volume,
        fault_candidates=fault_candidates,
    )


def _garch_variance(shocks: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Unit-unconditional GARCH(1,1) variance paths, one column per process; starts at 1."""
    variance = np.empty_like(shocks)
    variance[0] = 1.0
    omega = 1.0 - alpha - beta
    multiplier = alpha * shocks**2 + beta
    for t in range(1, len(shocks)):
        np.minimum(omega + multiplier[t - 1] * variance[t - 1], _VARIANCE_CAP, out=variance[t])
    return variance


def _autoregressive(noise: np.ndarray, phi: float) -> np.ndarray:
    """Stationary AR(1) paths with unit marginal variance, one column per process."""
    path = np.empty_like(noise)
    path[0] = noise[0]
    innovation = noise * np.sqrt(1.0 - phi**2)
    for t in range(1, len(noise)):
        path[t] = phi * path[t - 1] + innovation[t]
    return path


def _simulate(layout: _Layout, seed: int, n_rows: int, regime: _Regime) -> dict[str, np.ndarray]:
    """Wide (rows, symbols) OHLCV arrays on every row of the calendar, listed or not."""
    n_symbols = len(layout.symbols)
    n_sectors = int(layout.cluster.max())
    stable_columns = np.flatnonzero(layout.stable)
    twin_columns = np.flatnonzero(layout.twin_of >= 0)
    _, shock_stream, noise_stream = np.random.SeedSequence(seed).spawn(3)

    # Each stream is drawn once as a (rows, width) array: row t never depends on n_rows.
    width = 1 + n_sectors + n_symbols
    raw = np.random.default_rng(shock_stream).standard_t(_T_DEGREES_OF_FREEDOM, (n_rows, width))
    shocks = np.clip(
        raw / np.sqrt(_T_DEGREES_OF_FREEDOM / (_T_DEGREES_OF_FREEDOM - 2)), -_SHOCK_CAP, _SHOCK_CAP
    )
    noise_width = 4 * n_symbols + 1 + len(stable_columns) + len(twin_columns)
    noise = np.random.default_rng(noise_stream).standard_normal((n_rows, noise_width))
    gap_noise, high_noise, low_noise, volume_noise = (
        noise[:, k * n_symbols : (k + 1) * n_symbols] for k in range(4)
    )
    peg_noise = noise[:, 4 * n_symbols : 4 * n_symbols + 1 + len(stable_columns)]
    basis_noise = noise[:, 4 * n_symbols + 1 + len(stable_columns) :]

    factor_alpha = np.full(1 + n_sectors, 0.08)
    factor_beta = np.full(1 + n_sectors, 0.90)
    variance = _garch_variance(
        shocks,
        np.concatenate([factor_alpha, layout.garch[0]]),
        np.concatenate([factor_beta, layout.garch[1]]),
    )
    component = np.sqrt(variance) * shocks
    market, sectors, idiosyncratic = (
        component[:, :1],
        component[:, 1 : 1 + n_sectors],
        component[:, 1 + n_sectors :],
    )
    sector_column = layout.cluster - 1
    loading_market, loading_sector, loading_idio = layout.loadings
    standardised = (
        loading_market * market
        + loading_sector * sectors[:, sector_column]
        + loading_idio * idiosyncratic
    )
    relative_variance = (
        loading_market**2 * variance[:, :1]
        + loading_sector**2 * variance[:, 1 : 1 + n_sectors][:, sector_column]
        + loading_idio**2 * variance[:, 1 + n_sectors :]
    )
    conditional_volatility = layout.volatility * np.sqrt(relative_variance)
    log_return = np.clip(
        layout.drift + layout.volatility * standardised, -_LOG_RETURN_CAP, _LOG_RETURN_CAP
    )
    log_close = layout.log_price + np.cumsum(log_return, axis=0)
    previous_log_close = np.vstack([layout.log_price[None, :], log_close[:-1]])
    log_open = previous_log_close + regime.open_gap * layout.volatility * gap_noise
    close, open_ = np.exp(log_close), np.exp(log_open)

    if len(stable_columns):
        # A peg: mean-reverting deviations from 1.0, partly common to all stablecoins.
        deviation = _autoregressive(peg_noise, 0.6)
        peg = 1.0 + 4e-4 * (0.7 * deviation[:, :1] + 0.7 * deviation[:, 1:])
        previous_peg = np.vstack([np.ones((1, len(stable_columns))), peg[:-1]])
        close[:, stable_columns] = peg
        open_[:, stable_columns] = previous_peg * (1.0 + 2e-5 * gap_noise[:, stable_columns])
        conditional_volatility[:, stable_columns] = 2e-4

    spread = 0.5 * conditional_volatility
    high = np.maximum(open_, close) * np.exp(spread * np.abs(high_noise))
    low = np.minimum(open_, close) * np.exp(-spread * np.abs(low_noise))

    if len(twin_columns):
        basis = np.exp(3e-4 * basis_noise)
        first_quote = layout.twin_of[twin_columns]
        for array in (open_, high, low, close):
            array[:, twin_columns] = array[:, first_quote] * basis
        conditional_volatility[:, twin_columns] = conditional_volatility[:, first_quote]

    surprise = np.abs(standardised) - 0.8
    log_dollar_volume = (
        layout.log_dollar_volume
        + 0.7 * np.log(np.sqrt(relative_variance))
        + 0.12 * surprise
        + 0.4 * _autoregressive(volume_noise, 0.7)
    )
    volume = np.exp(log_dollar_volume) / close
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


@dataclass
class _WideBars:
    """Mutable wide arrays the faults edit in place; ``listed`` marks rows that are bars."""

    symbols: np.ndarray
    start: pd.Timestamp
    dates: pd.DatetimeIndex
    listed: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


def _fault_column(layout: _Layout, fault: Fault) -> int:
    if fault.symbol is None:
        candidates = layout.fault_candidates
        return int(candidates[FAULT_KINDS.index(fault.kind) % len(candidates)])
    matches = np.flatnonzero(layout.symbols == fault.symbol)
    if len(matches) == 0:
        raise ValueError(
            f"fault {fault.kind!r}: symbol {fault.symbol!r} is not in this market; "
            "see symbol_names() for the symbols of a market of this size"
        )
    return int(matches[0])


def _fault_row(bars: _WideBars, fault: Fault, column: int, bars_before_last: int) -> int | None:
    """Calendar row of the fault; None when it is dated after the last generated date."""
    rows = np.flatnonzero(bars.listed[:, column])
    symbol = f"fault {fault.kind!r} on {bars.symbols[column]}"
    if len(rows) == 0:
        if fault.date is not None and _day(fault.date) > bars.dates[-1]:
            return None
        raise ValueError(f"{symbol}: the symbol has no bars between start and end")
    if fault.date is None:
        position = len(rows) - 1 - bars_before_last
        if position < 1:
            raise ValueError(
                f"{symbol}: only {len(rows)} bars, too few to place the fault "
                f"{bars_before_last} bars before the last one; extend the window or give a date"
            )
        return int(rows[position])
    date = _day(fault.date)
    if date > bars.dates[-1]:
        return None
    row = int(bars.dates.searchsorted(date))
    if row >= len(bars.dates) or bars.dates[row] != date or not bars.listed[row, column]:
        raise ValueError(f"{symbol}: no bar on {date.date()} to place the fault on")
    if row == rows[0]:
        raise ValueError(f"{symbol}: {date.date()} is the symbol's first bar; pick a later date")
    return row


def _apply_fault(bars: _WideBars, fault: Fault, column: int, layout: _Layout) -> None:
    if fault.kind == "toxic_spike":
        row = _fault_row(bars, fault, column, bars_before_last=10)
        if row is None:
            return
        previous = np.flatnonzero(bars.listed[:row, column])[-1]
        bars.close[row, column] = _TOXIC_MULTIPLE * bars.close[previous, column]
        bars.high[row, column] = max(bars.high[row, column], bars.close[row, column])
    elif fault.kind == "stall":
        row = _stall_start(bars, fault, column)
        if row is None:
            return
        previous = np.flatnonzero(bars.listed[:row, column])[-1]
        level = bars.close[previous, column]
        for array in (bars.open, bars.high, bars.low, bars.close):
            array[row:, column] = level
        # A stalled market still prints a trickle of volume.
        bars.volume[row:, column] *= 0.1
    elif fault.kind == "volume_spike":
        row = _fault_row(bars, fault, column, bars_before_last=0)
        if row is None:
            return
        history = np.flatnonzero(bars.listed[:row, column])[-30:]
        bars.volume[row, column] = _VOLUME_SPIKE_MULTIPLE * np.median(bars.volume[history, column])
    elif fault.kind == "gap":
        row = _fault_row(bars, fault, column, bars_before_last=12)
        if row is None:
            return
        rows = np.flatnonzero(bars.listed[:, column])
        missing = rows[(rows >= row)][:_GAP_BARS]
        bars.listed[missing, column] = False
    elif fault.kind == "nan_after_genesis":
        row = _fault_row(bars, fault, column, bars_before_last=5)
        if row is None:
            return
        for array in (bars.open, bars.high, bars.low, bars.close):
            array[row, column] = np.nan


def _stall_start(bars: _WideBars, fault: Fault, column: int) -> int | None:
    if fault.date is None:
        return _fault_row(bars, fault, column, bars_before_last=_STALL_BARS - 1)
    date = _day(fault.date)
    if date > bars.dates[-1]:
        return None
    rows = np.flatnonzero(bars.listed[:, column] & (bars.dates >= date))
    before = np.flatnonzero(bars.listed[:, column] & (bars.dates < date))
    if len(rows) == 0 or len(before) == 0:
        raise ValueError(
            f"fault 'stall' on {bars.symbols[column]}: needs a bar before and "
            f"a bar on or after {date.date()}"
        )
    return int(rows[0])


def _weekend_padding(bars: _WideBars, fault: Fault, column: int, layout: _Layout) -> pd.DataFrame:
    """Saturday and Sunday filler rows (O=H=L=C = previous close, volume 0) from the fault date.

    Covers the weekends between the fault date and ``end`` while the symbol is listed.
    """
    rows = np.flatnonzero(bars.listed[:, column])
    if len(rows) == 0:
        return _empty_bars()
    listed_dates = bars.dates[rows]
    if fault.date is None:
        begin = listed_dates[-1] - pd.Timedelta(days=_PADDING_DAYS - 1)
    else:
        begin = _day(fault.date)
    days = pd.date_range(max(begin, listed_dates[0]), bars.dates[-1], freq="D")
    weekend = days[days.dayofweek >= 5]
    if layout.delist_day[column] != _NEVER:
        weekend = weekend[weekend < bars.start + pd.Timedelta(days=int(layout.delist_day[column]))]
    previous_rows = rows[listed_dates.searchsorted(weekend, side="left") - 1]
    level = bars.close[previous_rows, column]
    return pd.DataFrame(
        {
            "symbol": np.full(len(weekend), layout.symbols[column], dtype=object),
            "date": weekend.to_numpy(dtype="datetime64[ns]"),
            "open": level,
            "high": level,
            "low": level,
            "close": level,
            "volume": np.zeros(len(weekend)),
        }
    )


def _to_long(bars: _WideBars, symbols: np.ndarray) -> pd.DataFrame:
    listed = np.ascontiguousarray(bars.listed.T)
    counts = listed.sum(axis=1)
    dates = np.broadcast_to(bars.dates.to_numpy(dtype="datetime64[ns]"), listed.shape)
    columns = {
        "symbol": np.repeat(symbols, counts),
        "date": dates[listed],
    }
    for name in ("open", "high", "low", "close", "volume"):
        columns[name] = np.ascontiguousarray(getattr(bars, name).T)[listed]
    return pd.DataFrame(columns)


def _empty_bars() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": pd.Series(dtype=object),
            "date": pd.Series(dtype="datetime64[ns]"),
            **{name: pd.Series(dtype=np.float64) for name in BAR_COLUMNS[2:]},
        }
    )
