"""Returns (L0/L1): the point-in-time simple-return window of a sleeve, and who is left out.

Conventions: simple returns ``close_t / close_{t-1} - 1`` on the sleeve's calendar; a symbol's first
bar has no return (NaN), so NaN marks "before genesis". Dates are tz-naive UTC calendar dates.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

EXCLUSION_COLUMNS = ("symbol", "rule", "date", "value", "detail")
# Weekday sleeves mix venues with different holidays: a symbol without a bar on a date the sleeve
# traded takes its last close (a zero return that day, the move lands on its next bar) when the
# silence lasts at most this many sleeve dates inside its life (a week covers every exchange
# holiday run, e.g. 2001-09-11..14); a longer silence stays missing: a gap, or stale.
HOLIDAY_CARRY = 5


@dataclass(frozen=True)
class ReturnsWindow:
    returns: pd.DataFrame  # dates × symbols, simple returns
    dollar_volume: pd.DataFrame  # same shape: close × volume, NaN where there is no bar
    excluded: pd.DataFrame  # EXCLUSION_COLUMNS: one row per symbol left out, with the rule


def calendar_grid(
    dates: pd.DatetimeIndex, *, calendar: str, end: pd.Timestamp, rows: int
) -> pd.DatetimeIndex:
    """The last ``rows`` dates of the sleeve's calendar up to ``end``.

    ``crypto`` is every calendar day. ``weekday`` is the Monday–Friday dates on which the sleeve
    traded at all (so exchange holidays are not invented as gaps; weekend rows never enter). On
    a mixed-venue weekday sleeve a holiday of one venue is still a grid date: ``_wide_on_grid``
    carries that venue's last close across it (``HOLIDAY_CARRY``).
    """
    if calendar == "crypto":
        return pd.date_range(end=end, periods=rows, freq="D", name="date")
    if calendar == "weekday":
        traded = dates[(dates <= end) & (dates.dayofweek < 5)].unique().sort_values()
        return pd.DatetimeIndex(traded[-rows:], name="date")
    raise ValueError(f"unknown calendar {calendar!r}; expected 'crypto' or 'weekday'")


def returns_window(
    bars: pd.DataFrame,
    *,
    as_of: pd.Timestamp,
    lookback: int,
    calendar: str,
    stale_days: int,
    min_history: int,
) -> ReturnsWindow:
    """Simple returns over the ``lookback`` bars ending at ``as_of``, from bars dated ≤ ``as_of``.

    The window ends at the sleeve's last bar on or before ``as_of`` (a run scheduled before the
    day's bars land still sees a complete last row). Symbols are dropped, and recorded, when their
    last bar is more than ``stale_days`` calendar days before ``as_of`` (``stale_or_delisted``),
    when they lack a bar on the window's last date although they printed within ``stale_days``
    (``no_bar_on_last_day``: a lagging feed; kept, its trailing gap would reach the optimiser as
    NaN after genesis), or when they have fewer than ``min_history`` returns inside the window.
    """
    as_of = pd.Timestamp(as_of).normalize()
    known = bars[bars["date"] <= as_of]
    empty = pd.DataFrame(
        index=pd.DatetimeIndex([], name="date"), columns=pd.Index([], name="symbol"), dtype=float
    )
    if known.empty:
        return ReturnsWindow(empty, empty.copy(), _exclusions([]))
    end = known["date"].max()
    grid = calendar_grid(
        pd.DatetimeIndex(known["date"].unique()), calendar=calendar, end=end, rows=lookback + 1
    )
    close, volume, last_bar = _wide_on_grid(
        known, grid, carry=HOLIDAY_CARRY if calendar == "weekday" else 0
    )
    days_silent = (as_of - last_bar).dt.days
    stale = days_silent[days_silent > stale_days]
    lagging = last_bar[(last_bar < grid[-1]) & ~last_bar.index.isin(stale.index)]
    returns = close.pct_change(fill_method=None).iloc[1:]
    dollar_volume = (close * volume).iloc[1:]
    history = returns.notna().sum()
    dropped = stale.index.union(lagging.index)
    short = history[(history < min_history) & ~history.index.isin(dropped)]

    excluded = (
        [
            (symbol, "stale_or_delisted", last_bar[symbol], float(days), f"no bar for {days} days")
            for symbol, days in stale.items()
        ]
        + [
            (
                symbol,
                "no_bar_on_last_day",
                date,
                float((grid[-1] - date).days),
                f"last bar {date:%Y-%m-%d}, window ends {grid[-1]:%Y-%m-%d}",
            )
            for symbol, date in lagging.items()
        ]
        + [
            (
                symbol,
                "min_history",
                returns.index[-1],
                float(count),
                f"{count} < {min_history} bars",
            )
            for symbol, count in short.items()
        ]
    )
    keep = returns.columns.difference(dropped.union(short.index), sort=False)
    keep = keep.sort_values()
    return ReturnsWindow(
        returns=returns[keep], dollar_volume=dollar_volume[keep], excluded=_exclusions(excluded)
    )


def _wide_on_grid(
    known: pd.DataFrame, grid: pd.DatetimeIndex, *, carry: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Close and volume (grid × symbols with a bar on the grid, sorted), and every symbol's last
    bar date (Series indexed by the sorted symbols of ``known``).

    With ``carry`` > 0, a run of at most ``carry`` grid dates without a bar between two bars of
    a symbol takes the last close before it (volume stays NaN: nothing traded); longer runs and
    the dates before the first or after the last bar on the grid stay NaN.

    Equivalent to pivoting the rows dated on the grid and reindexing to it, without pandas'
    reshape machinery: symbols are factorised once and the values scattered into place. A
    repeated (symbol, date) raises ``ValueError`` as a pivot would.
    """
    codes, names = pd.factorize(known["symbol"].to_numpy(), sort=True)
    dates = known["date"].to_numpy(dtype="datetime64[ns]")
    last = np.full(len(names), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, codes, dates.view(np.int64))
    last_bar = pd.Series(last.view("datetime64[ns]"), index=pd.Index(names, name="symbol"))
    last_bar.name = "date"

    rows = grid.get_indexer(dates)
    on_grid = rows >= 0
    rows, codes = rows[on_grid], codes[on_grid]
    present = np.zeros(len(names), dtype=bool)
    present[codes] = True
    columns = np.cumsum(present) - 1
    flat = rows * present.sum() + columns[codes]
    if len(flat) and np.bincount(flat).max() > 1:
        raise ValueError("Index contains duplicate entries, cannot reshape")
    symbols = pd.Index(names[present], name="symbol")

    def wide(values: np.ndarray) -> pd.DataFrame:
        out = np.full((len(grid), len(symbols)), np.nan)
        out[rows, columns[codes]] = values[on_grid]
        return pd.DataFrame(out, index=grid, columns=symbols)

    close = wide(known["close"].to_numpy(dtype=np.float64))
    volume = wide(known["volume"].to_numpy(dtype=np.float64))
    if carry > 0:
        close = pd.DataFrame(
            _carry_short_gaps(close.to_numpy(), carry), index=close.index, columns=close.columns
        )
    return close, volume, last_bar


def _carry_short_gaps(values: np.ndarray, carry: int) -> np.ndarray:
    """Fill each interior NaN run of at most ``carry`` rows with the value before it."""
    rows = np.arange(len(values))[:, None]
    observed = ~np.isnan(values)
    previous = np.maximum.accumulate(np.where(observed, rows, -1), axis=0)
    following = np.minimum.accumulate(np.where(observed, rows, len(values))[::-1], axis=0)[::-1]
    fill = (
        ~observed
        & (previous >= 0)
        & (following < len(values))
        & (following - previous - 1 <= carry)
    )
    out = values.copy()
    fill_rows, fill_cols = np.nonzero(fill)
    out[fill_rows, fill_cols] = values[previous[fill_rows, fill_cols], fill_cols]
    return out


def _exclusions(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(EXCLUSION_COLUMNS))
    frame["date"] = pd.to_datetime(frame["date"])
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(["rule", "symbol"]).reset_index(drop=True)


def tidy_returns(returns: pd.DataFrame) -> pd.DataFrame:
    """Long form of a returns window for contract checks: one row per (symbol, date) after genesis.

    Columns: ``symbol``, ``date``, ``value`` (the return, NaN kept), ``filler_day`` (every listed
    symbol returned exactly 0 that day, at least two of them: a padded, non-trading row). For the
    padding test a symbol counts as listed from its first to its last return, so one that
    delisted inside the window neither hides later padded days nor is reported on them.
    """
    values = returns.to_numpy(dtype=float)
    present = ~np.isnan(values)
    listed = np.maximum.accumulate(present, axis=0)
    trading = listed & np.maximum.accumulate(present[::-1], axis=0)[::-1]
    trading_count = trading.sum(axis=1)
    zero_count = (values == 0.0).sum(axis=1)
    filler = (trading_count >= 2) & (zero_count == trading_count)
    rows, cols = np.nonzero(listed)
    return pd.DataFrame(
        {
            "symbol": returns.columns.to_numpy(dtype=object)[cols],
            "date": returns.index.to_numpy()[rows],
            "value": values[rows, cols],
            "filler_day": filler[rows] & trading[rows, cols],
        }
    )


def drop_symbols(window: ReturnsWindow, offenders: pd.DataFrame) -> ReturnsWindow:
    """Remove quarantined symbols (rows of ``offenders``: symbol, rule, date, value, detail)."""
    gone = pd.Index(offenders["symbol"].unique())
    keep = window.returns.columns.difference(gone, sort=False)
    excluded = pd.concat([window.excluded, offenders[list(EXCLUSION_COLUMNS)]], ignore_index=True)
    return ReturnsWindow(
        returns=window.returns[keep],
        dollar_volume=window.dollar_volume[keep],
        excluded=excluded.reset_index(drop=True),
    )
