"""Bar-quality rules that look at each symbol's most recent bars: stalls, volume spikes, filler.

All functions take long bars (symbol, date, OHLCV) sorted by symbol then date, as the bar lake
stores them, and work on every symbol at once through index arithmetic on the sorted rows (no
group-by, no Python loop over symbols). ``as_of`` restricts them to bars dated on or before it.
"""

from collections.abc import Callable
from dataclasses import dataclass

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


def is_volume_spike(z: np.ndarray, sigma: float) -> np.ndarray:
    """The volume-spike rule: a z-score strictly above ``sigma`` (exactly ``sigma`` is no spike)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(z, dtype=float) > sigma


def volume_zscores(volumes: np.ndarray) -> np.ndarray:
    """Z-score of the last column of ``volumes`` (rows: symbols; columns: trailing bars, oldest
    first) against the mean and standard deviation (ddof=1) of the columns before it.

    A flat trailing volume followed by a higher last volume is an infinite z-score; NaN when any
    volume of the row is missing (a missing volume is no spike).
    """
    before, last = volumes[:, :-1], volumes[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        std = before.std(axis=1, ddof=1)
        excess = last - before.mean(axis=1)
        z = np.where(std > 0, excess / std, np.where(excess > 0, np.inf, 0.0))
    z[np.isnan(before).any(axis=1) | np.isnan(last)] = np.nan
    return z


def volume_spikes(
    bars: pd.DataFrame,
    *,
    sigma: float,
    window: int,
    as_of: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Symbols whose last volume is more than ``sigma`` standard deviations (ddof=1) above the
    mean of the ``window`` bars before it (value: the z-score; needs ``window`` trailing bars).

    ``sigma=-inf`` returns every symbol's z-score.
    """
    known = _known(bars, as_of)
    symbols = known["symbol"].to_numpy()
    ends = last_rows(symbols)
    z = volume_zscores(trailing(known["volume"].to_numpy(), symbols, ends, window + 1))
    spike = is_volume_spike(z, sigma)
    return _findings(symbols[ends][spike], known["date"].to_numpy()[ends][spike], z[spike])


def stall_mask(
    returns: np.ndarray, *, window: int, max_zero_share: float, stall_bars: int
) -> np.ndarray:
    """The stall rule, per column of ``returns`` (rows: dates, oldest first; columns: symbols).

    A symbol is stalled when, over its last ``window`` rows, the share of zero returns among its
    valid (non-NaN) returns is above ``max_zero_share``, or when its last ``stall_bars − 1``
    returns are all exactly zero (``stall_bars`` identical closes). A column without valid
    returns in the window is not stalled (it is ineligible for other reasons).
    """
    if stall_bars < 2:
        raise ValueError(f"a stall needs at least 2 identical closes, got stall_bars={stall_bars}")
    values = np.asarray(returns, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"stall_mask needs a 2-D array (dates × symbols), got {values.shape}")
    tail = values[-window:] if window > 0 else values[:0]
    valid = ~np.isnan(tail)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (tail == 0.0).sum(axis=0) / valid.sum(axis=0)
    by_share = valid.any(axis=0) & (share > max_zero_share)
    run = max(stall_bars - 1, 1)
    last = values[-run:]
    by_run = (len(values) >= run) & (last == 0.0).all(axis=0)
    return by_share | by_run


def stalled(
    returns: pd.DataFrame, *, window: int, max_zero_share: float, stall_bars: int
) -> pd.Series:
    """:func:`stall_mask` of a wide returns frame: a boolean per symbol."""
    mask = stall_mask(
        returns.to_numpy(dtype=float),
        window=window,
        max_zero_share=max_zero_share,
        stall_bars=stall_bars,
    )
    return pd.Series(mask, index=returns.columns, name="stalled")


def stalled_closes(bars: pd.DataFrame, *, stall_bars: int) -> np.ndarray:
    """Per symbol (rows sorted by symbol), whether its last ``stall_bars`` closes are identical:
    the run part of :func:`stall_mask` on bars (the bar lake has no feature window)."""
    symbols = bars["symbol"].to_numpy()
    ends = last_rows(symbols)
    closes = trailing(bars["close"].to_numpy(), symbols, ends, stall_bars)
    # A step is "no move" (0) exactly when two closes are equal; short history leaves NaN, which
    # never counts as a stall.
    earlier, later = closes[:, :-1], closes[:, 1:]
    steps = np.where(np.isnan(earlier) | np.isnan(later), np.nan, np.where(later == earlier, 0, 1))
    return stall_mask(steps.T, window=0, max_zero_share=1.0, stall_bars=stall_bars)


def stalled_symbols(
    bars: pd.DataFrame, *, stall_bars: int, as_of: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Symbols whose last ``stall_bars`` closes are identical (value: the stuck close)."""
    known = _known(bars, as_of)
    symbols = known["symbol"].to_numpy()
    ends = last_rows(symbols)
    stuck = stalled_closes(known, stall_bars=stall_bars)
    return _findings(
        symbols[ends][stuck],
        known["date"].to_numpy()[ends][stuck],
        known["close"].to_numpy()[ends][stuck],
    )


def is_toxic(values: np.ndarray, threshold: float) -> np.ndarray:
    """The toxic-return rule: a finite simple return strictly above ``threshold`` (5.0 = +500%)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values > threshold)


def _below_minus_100pct(values: np.ndarray, threshold: float | None) -> np.ndarray:
    # Infinite returns belong to finite_return alone: one finding per fault.
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (values < -1.0)


def _infinite(values: np.ndarray, threshold: float | None) -> np.ndarray:
    return np.isinf(values)


def _missing(values: np.ndarray, threshold: float | None) -> np.ndarray:
    return np.isnan(values)


@dataclass(frozen=True)
class ReturnDefectRule:
    """One symbol-level return defect, declared once: the engine's masks
    (:func:`return_defects`) and the returns contract (``tvq_checks.contracts``) are built from it.

    ``breaks(values, threshold)``: True where a simple return breaks the rule (NaN breaks only
    ``non_null_after_genesis``; which cells are asked is the caller's: after a symbol's first
    return). ``threshold``: the ``Policy`` field the rule's threshold comes from (None: none).
    ``message``: what is wrong, with the offending ``{value}``.
    """

    name: str
    message: str
    threshold: str | None
    breaks: Callable[[np.ndarray, "float | None"], np.ndarray]


# The rules of the returns contract a ``quarantine`` policy may exclude instead of failing a run.
RETURN_DEFECT_RULES: tuple[ReturnDefectRule, ...] = (
    ReturnDefectRule(
        "toxic_return",
        "return {value:+.0%} exceeds the toxic threshold",
        "toxic_threshold",
        is_toxic,
    ),
    ReturnDefectRule(
        "return_above_minus_100pct", "return {value:+.0%} is below -100%", None, _below_minus_100pct
    ),
    ReturnDefectRule("finite_return", "return {value} is not finite", None, _infinite),
    ReturnDefectRule(
        "non_null_after_genesis", "return is missing after the symbol's first bar", None, _missing
    ),
)


DEFECT_COLUMNS = ("symbol", "rule", "date", "value", "detail")


def return_defects(returns: pd.DataFrame, *, toxic_threshold: float) -> pd.DataFrame:
    """Every symbol-level return defect of a wide returns frame, dated (DEFECT_COLUMNS).

    The rules are :data:`RETURN_DEFECT_RULES`, asked of every cell between a symbol's first and
    last return (a missing return there is a gap; the NaN after a symbol's last return is a
    delisting, not a defect). Vectorised over symbols; the walk-forward quarantines a symbol in
    every window whose rows contain one of its defects.
    """
    values = returns.to_numpy(dtype=float)
    present = ~np.isnan(values)
    listed = np.maximum.accumulate(present, axis=0)
    alive = listed & np.maximum.accumulate(present[::-1], axis=0)[::-1]
    thresholds = {"toxic_threshold": toxic_threshold}
    masks = {
        rule.name: alive & rule.breaks(values, thresholds.get(rule.threshold))
        for rule in RETURN_DEFECT_RULES
    }
    symbols = returns.columns.to_numpy(dtype=object)
    dates = returns.index.to_numpy()
    tables = []
    for rule, mask in masks.items():
        rows, cols = np.nonzero(mask)
        if len(rows):
            tables.append(
                pd.DataFrame(
                    {
                        "symbol": symbols[cols],
                        "rule": rule,
                        "date": dates[rows],
                        "value": values[rows, cols],
                        "detail": rule,
                    }
                )
            )
    if not tables:
        return empty_defects()
    frame = pd.concat(tables, ignore_index=True)
    frame["date"] = pd.to_datetime(frame["date"])
    return frame.sort_values(["date", "symbol", "rule"], ignore_index=True)


def empty_defects() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "symbol": pd.Series(dtype=object),
            "rule": pd.Series(dtype=object),
            "date": pd.Series(dtype="datetime64[ns]"),
            "value": pd.Series(dtype=float),
            "detail": pd.Series(dtype=object),
        }
    )
    return frame


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
