"""Bar-quality rules that look at each symbol's most recent bars: stalls, volume spikes, filler.

All functions take long bars (symbol, date, OHLCV) sorted by symbol then date, as the bar lake
stores them, and work on every symbol at once through index arithmetic on the sorted rows (no
group-by, no Python loop over symbols). ``as_of`` restricts them to bars dated on or before it.
"""

import numpy as np
import pandas as pd


def _known(bars: pd.DataFrame, as_of: pd.Timestamp | None) -> pd.DataFrame:
    return bars if as_of is None else bars[bars["date"] <= as_of]


def symbol_starts(symbols: np.ndarray) -> np.ndarray:
    """Row positions where a new symbol begins in rows sorted by symbol."""
    if len(symbols) == 0:
        return np.zeros(0, dtype=np.int64)
    changes = np.flatnonzero(symbols[1:] != symbols[:-1]) + 1
    return np.concatenate([[0], changes])


def last_rows(symbols: np.ndarray) -> np.ndarray:
    """Row position of each symbol's last bar (rows sorted by symbol)."""
    starts = symbol_starts(symbols)
    return np.append(starts[1:], len(symbols)) - 1 if len(starts) else starts


def trailing(values: np.ndarray, symbols: np.ndarray, ends: np.ndarray, count: int) -> np.ndarray:
    """``count`` values ending at each row in ``ends`` (oldest first), NaN where the symbol's
    history is shorter: shape (len(ends), count)."""
    positions = ends[:, None] - np.arange(count - 1, -1, -1)[None, :]
    valid = positions >= 0
    clipped = np.where(valid, positions, 0)
    valid &= symbols[clipped] == symbols[ends][:, None]
    return np.where(valid, values[clipped].astype(float), np.nan)


def _findings(symbols, dates, values) -> pd.DataFrame:
    return pd.DataFrame(
        {"symbol": symbols, "date": pd.to_datetime(dates), "value": np.asarray(values, dtype=float)}
    )


def stalled_symbols(
    bars: pd.DataFrame, *, stall_bars: int = 3, as_of: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Symbols whose last ``stall_bars`` closes are identical (value: the stuck close)."""
    known = _known(bars, as_of)
    symbols = known["symbol"].to_numpy()
    ends = last_rows(symbols)
    closes = trailing(known["close"].to_numpy(), symbols, ends, stall_bars)
    stuck = np.all(closes == closes[:, -1:], axis=1)  # NaN (short history) never compares equal
    return _findings(symbols[ends][stuck], known["date"].to_numpy()[ends][stuck], closes[stuck, -1])


def volume_spikes(
    bars: pd.DataFrame,
    *,
    sigma: float = 10.0,
    window: int = 21,
    as_of: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Symbols whose last volume is more than ``sigma`` standard deviations (ddof=1) above the
    mean of the ``window`` bars before it (value: the z-score; needs ``window`` trailing bars).

    A flat trailing volume (standard deviation 0) followed by a higher last volume is an infinite
    z-score, i.e. a spike. ``sigma=-inf`` returns every symbol's z-score.
    """
    known = _known(bars, as_of)
    symbols = known["symbol"].to_numpy()
    ends = last_rows(symbols)
    history = trailing(known["volume"].to_numpy(), symbols, ends, window + 1)
    before, last = history[:, :-1], history[:, -1]
    complete = ~np.isnan(before).any(axis=1) & ~np.isnan(last)  # a missing volume is no spike
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = before.mean(axis=1)
        std = before.std(axis=1, ddof=1)
        excess = last - mean
        z = np.where(std > 0, excess / std, np.where(excess > 0, np.inf, 0.0))
    spike = complete & (z > sigma)
    return _findings(symbols[ends][spike], known["date"].to_numpy()[ends][spike], z[spike])


def filler_bars(bars: pd.DataFrame) -> np.ndarray:
    """True for padding rows: zero volume and open = high = low = close = the previous close."""
    close = bars["close"].to_numpy()
    symbols = bars["symbol"].to_numpy()
    previous = np.full(len(close), np.nan)
    if len(close) > 1:
        same = symbols[1:] == symbols[:-1]
        previous[1:] = np.where(same, close[:-1], np.nan)
    flat = (
        (bars["open"].to_numpy() == close)
        & (bars["high"].to_numpy() == close)
        & (bars["low"].to_numpy() == close)
    )
    return flat & (bars["volume"].to_numpy() == 0) & (close == previous)
