"""Returns (L0/L1): the point-in-time simple-return window of a sleeve, and who is left out.

Conventions: simple returns ``close_t / close_{t-1} - 1`` on the sleeve's calendar; a symbol's first
bar has no return (NaN), so NaN marks "before genesis". Dates are tz-naive UTC calendar dates.
"""

import dataclasses
import fnmatch
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tvq_resources.records import lake_record

EXCLUSION_COLUMNS = ("symbol", "rule", "date", "value", "detail", "reason")
# Why a symbol left the universe: the eligibility rules (stale, lagging, short history), a return
# defect under the `quarantine` policy, or a bar defect the bar policy quarantined.
REASONS = ("ineligible", "quarantine", "bar_defect")
# Weekday sleeves mix venues with different holidays: a symbol without a bar on a date the sleeve
# traded takes its last close (a zero return that day, the move lands on its next bar) when the
# silence lasts at most this many sleeve dates inside its life (a week covers every exchange
# holiday run, e.g. 2001-09-11..14); a longer silence stays missing: a gap, or stale.
HOLIDAY_CARRY = 5
# One symbol going silent is a lagging feed; at least this many symbols of one inferred venue
# going silent after the same session, while the sleeve trades on, is read as that venue's holiday.
INFERRED_HOLIDAY_SYMBOLS = 2


@lake_record  # a lake value: stored data names this type, never imports it
@dataclass(frozen=True)
class ReturnsWindow:
    """The point-in-time data of one run: the decision window and the history the backtest needs.

    ``returns`` / ``dollar_volume``: dates × eligible symbols over the ``lookback`` rows ending at
    the as-of date. ``excluded``: one row per symbol left out (EXCLUSION_COLUMNS, ``reason`` one
    of REASONS). ``history`` / ``history_dollar_volume``: every symbol of the sleeve with a bar in
    the longer history the walk-forward replays (dates × symbols, same conventions; a symbol that
    died inside it is kept, NaN after its last bar). ``defects``: dated return defects and
    quarantining bar defects over the history (symbol, rule, date, value, detail), which the
    walk-forward uses to quarantine a symbol in the windows that contain them.
    Dollar volume is defined exactly on the dates a symbol has a bar.
    """

    returns: pd.DataFrame
    dollar_volume: pd.DataFrame
    excluded: pd.DataFrame
    history: pd.DataFrame
    history_dollar_volume: pd.DataFrame
    defects: pd.DataFrame


@dataclass(frozen=True)
class History:
    """Wide returns and dollar volume of every symbol on the calendar grid, and each symbol's last
    bar date (from all bars up to the as-of date, also those before the grid)."""

    returns: pd.DataFrame
    dollar_volume: pd.DataFrame
    last_bar: pd.Series


@dataclass(frozen=True)
class VenueCalendar:
    """One venue's weekdays without a session (ISO dates), complete from ``first`` to ``last``."""

    code: str
    first: str
    last: str
    closed: tuple[str, ...]


@dataclass(frozen=True)
class Venues:
    """Where the symbols of a weekday sleeve trade, and the weekdays each venue was closed.

    Plain data built at the edge (``tvq_assets.settings`` from the catalog's ``venues`` and the
    exchange calendars); the engine only reads it. ``patterns``: (symbol pattern, venue code)
    pairs in catalog order; a symbol's venue is the code of the first pattern it matches
    (``fnmatch``, case-insensitive), none when no pattern matches. ``calendars``: the closed
    weekdays of every venue named there. An empty ``Venues()`` knows no venue: every holiday is
    inferred from the data (:func:`venue_sessions`).
    """

    patterns: tuple[tuple[str, str], ...] = ()
    calendars: tuple[VenueCalendar, ...] = ()

    def config(self) -> dict:
        """Plain JSON/YAML values (lists, strings) of this object."""
        return {
            "patterns": [list(pair) for pair in self.patterns],
            "calendars": [
                {**dataclasses.asdict(calendar), "closed": list(calendar.closed)}
                for calendar in self.calendars
            ],
        }

    @classmethod
    def from_config(cls, values: Mapping) -> "Venues":
        """The inverse of :meth:`config`."""
        return cls(
            patterns=tuple((str(pattern), str(code)) for pattern, code in values["patterns"]),
            calendars=tuple(
                VenueCalendar(
                    code=str(entry["code"]),
                    first=str(entry["first"]),
                    last=str(entry["last"]),
                    closed=tuple(str(day) for day in entry["closed"]),
                )
                for entry in values["calendars"]
            ),
        )

    def venue_of(self, symbol: str) -> str | None:
        """The code of the first pattern ``symbol`` matches; None when none does."""
        return _first_match(self.patterns, str(symbol).upper())


@functools.lru_cache(maxsize=65536)
def _first_match(patterns: tuple[tuple[str, str], ...], name: str) -> str | None:
    # Every walk-forward window asks again for the same symbols: match each one once.
    for pattern, code in patterns:
        if fnmatch.fnmatchcase(name, pattern.upper()):
            return code
    return None


@functools.lru_cache(maxsize=64)
def _business_days(calendar: VenueCalendar) -> np.busdaycalendar:
    return np.busdaycalendar(holidays=np.array(calendar.closed, dtype="datetime64[D]"))


def exchange_qualifier(symbol: str) -> str:
    """The exchange part of a symbol's name: after the last ``.`` (Yahoo ``VOD.L``), before the
    first ``:`` (``LSE:VOD``), or after the last ``-`` (Yahoo names in file names, ``VOD-L``);
    empty when the name has none (``AAPL``)."""
    name = str(symbol).upper()
    if "." in name:
        return name.rsplit(".", 1)[1]
    if ":" in name:
        return name.split(":", 1)[0]
    if "-" in name:
        return name.rsplit("-", 1)[1]
    return ""


VENUE_COLUMNS = ("venue", "known", "last_session", "held")


def venue_sessions(last_bar: pd.Series, *, end: pd.Timestamp, venues: Venues) -> pd.DataFrame:
    """Each symbol's venue and that venue's last session on or before ``end`` (a weekday sleeve's
    grid date), and whether the symbol's last bar is that session (``held``).

    ``last_bar``: each symbol's last bar date on or before ``end`` (NaT: none). One row per
    symbol (VENUE_COLUMNS):

    - a symbol whose venue is named by ``venues.patterns`` and whose calendar covers ``end``:
      ``venue`` is its code, ``known`` True, ``last_session`` the last weekday on or before
      ``end`` that is not one of the venue's closed days; ``held`` when its last bar is on or
      after it (its venue held no session since: a holiday, not a lag).
    - any other symbol (no pattern matches, or the calendar does not cover ``end``): the venue is
      inferred from the data. Its group is its venue code when a pattern names one, else its
      :func:`exchange_qualifier` (``venue`` ``"~L"``, ``"~"`` for none); ``last_session`` is the
      latest last bar of the group, and ``held`` when the symbol's last bar is that date and at
      least ``INFERRED_HOLIDAY_SYMBOLS`` symbols of the group share it: several symbols of one
      venue falling silent after the same session while the sleeve trades on is that venue's
      holiday. Limits: one symbol alone cannot tell its holiday from its lag (it is dropped);
      symbols of two venues under one qualifier only drop more (the group is silent only when
      both venues are); two feeds of one group lagging together on the same day look like a
      holiday and are kept (with a zero return) until they print again or go stale.
    """
    end = pd.Timestamp(end).normalize()
    symbols = last_bar.index
    codes = [venues.venue_of(symbol) for symbol in symbols]
    calendars = {calendar.code: calendar for calendar in venues.calendars}
    sessions = {}
    for code in set(codes) - {None}:
        calendar = calendars.get(code)
        if calendar is None or not (
            pd.Timestamp(calendar.first) <= end <= pd.Timestamp(calendar.last)
        ):
            continue
        day = np.busday_offset(
            end.to_datetime64().astype("datetime64[D]"),
            0,
            roll="backward",
            busdaycal=_business_days(calendar),
        )
        sessions[code] = pd.Timestamp(day)
    known = np.array([code in sessions for code in codes], dtype=bool)
    last = pd.to_datetime(last_bar.to_numpy())
    session = pd.DatetimeIndex([sessions.get(code, pd.NaT) for code in codes])
    group = pd.Series(
        [
            code if code is not None else f"~{exchange_qualifier(s)}"
            for s, code in zip(symbols, codes, strict=True)
        ],
        index=symbols,
    )
    frame = pd.DataFrame({"group": group.to_numpy(), "last": last}, index=symbols)[~known]
    group_last = frame.groupby("group")["last"].transform("max")
    on_last = (frame["last"] == group_last).to_numpy()
    sharing = pd.Series(on_last, index=frame.index).groupby(frame["group"]).transform("sum")
    inferred_held = on_last & (sharing.to_numpy() >= INFERRED_HOLIDAY_SYMBOLS)
    last_session = pd.Series(session, index=symbols)
    last_session[~known] = group_last.to_numpy()
    held = pd.Series(False, index=symbols)
    held[known] = last[known] >= session[known]
    held[~known] = inferred_held
    return pd.DataFrame(
        {
            "venue": group.to_numpy(),
            "known": known,
            "last_session": last_session.to_numpy(dtype="datetime64[ns]"),
            "held": held.to_numpy(dtype=bool),
        },
        index=symbols,
    )


def calendar_grid(
    dates: pd.DatetimeIndex, *, calendar: str, end: pd.Timestamp, rows: int
) -> pd.DatetimeIndex:
    """The last ``rows`` dates of the sleeve's calendar up to ``end``.

    ``crypto`` is every calendar day. ``weekday`` is the Monday–Friday dates on which the sleeve
    traded at all (so exchange holidays are not invented as gaps; weekend rows never enter). On
    a mixed-venue weekday sleeve a holiday of one venue is still a grid date: ``_wide_on_grid``
    carries that venue's last close across it (``HOLIDAY_CARRY``), and :func:`returns_history`
    onto the grid's last dates when they are that venue's holiday (:func:`venue_sessions`).
    """
    if calendar == "crypto":
        return pd.date_range(end=end, periods=rows, freq="D", name="date")
    if calendar == "weekday":
        traded = dates[(dates <= end) & (dates.dayofweek < 5)].unique().sort_values()
        return pd.DatetimeIndex(traded[-rows:], name="date")
    raise ValueError(f"unknown calendar {calendar!r}; expected 'crypto' or 'weekday'")


def returns_history(
    bars: pd.DataFrame,
    *,
    as_of: pd.Timestamp,
    rows: int,
    calendar: str,
    venues: Venues | None = None,
) -> History:
    """Simple returns and dollar volume of every symbol over the ``rows`` grid dates ending at the
    sleeve's last bar on or before ``as_of`` (from bars dated ≤ ``as_of`` only).

    The grid ends at the last bar on or before ``as_of``: a run scheduled before the day's bars
    land still sees a complete last row (a Saturday's run is Friday's). With ``venues`` (a
    weekday sleeve), a symbol whose venue held no session after its last bar up to the grid's
    end (:func:`venue_sessions`) carries its last close to the end: a zero return on its venue's
    holiday at the end of the grid, exactly as the same day reads once it is inside the grid.
    """
    as_of = pd.Timestamp(as_of).normalize()
    known = bars[bars["date"] <= as_of]
    if known.empty:
        empty = pd.DataFrame(
            index=pd.DatetimeIndex([], name="date"),
            columns=pd.Index([], name="symbol"),
            dtype=float,
        )
        last = pd.Series([], index=pd.Index([], name="symbol"), dtype="datetime64[ns]", name="date")
        return History(empty, empty.copy(), last)
    end = known["date"].max()
    grid = calendar_grid(
        pd.DatetimeIndex(known["date"].unique()), calendar=calendar, end=end, rows=rows + 1
    )
    close, volume, last_bar = _wide_on_grid(
        known, grid, carry=HOLIDAY_CARRY if calendar == "weekday" else 0
    )
    if venues is not None and calendar == "weekday":
        close = _carry_to_the_end(close, last_bar, venues)
    returns = close.pct_change(fill_method=None).iloc[1:]
    dollar_volume = (close * volume).iloc[1:]
    return History(returns, dollar_volume, last_bar)


def last_bar_dates(dollar_volume: pd.DataFrame) -> pd.Series:
    """Each column's last date with a bar (a non-NaN dollar volume); NaT for none."""
    present = dollar_volume.notna().to_numpy()
    if present.size == 0:
        return pd.Series(pd.NaT, index=dollar_volume.columns, dtype="datetime64[ns]", name="date")
    last_row = len(present) - 1 - np.argmax(present[::-1], axis=0)
    dates = dollar_volume.index.to_numpy()[last_row]
    values = np.where(present.any(axis=0), dates, np.datetime64("NaT"))
    return pd.Series(values, index=dollar_volume.columns, dtype="datetime64[ns]", name="date")


def eligibility(
    returns: pd.DataFrame,
    *,
    last_bar: pd.Series,
    as_of: pd.Timestamp,
    stale_days: int,
    min_history: int,
    venues: Venues | None = None,
) -> pd.DataFrame:
    """The eligibility rules of a returns window; one exclusion row per ineligible symbol.

    ``last_bar``: each symbol's last bar date on or before ``as_of`` (NaT: none). A symbol is
    ``stale_or_delisted`` when its last bar is more than ``stale_days`` calendar days before
    ``as_of`` (or it has none); ``no_bar_on_last_day`` when it printed within ``stale_days`` but
    not on the window's last date (a lagging feed: its trailing gap would reach the optimiser as
    NaN after genesis); ``min_history`` when it has fewer than ``min_history`` returns in the
    window. The same function decides the universe of the assets and of every walk-forward window.

    ``venues`` (weekday sleeves; None: every grid date is a session of every symbol): a symbol
    whose last bar is its venue's last session on or before the window's last date
    (:func:`venue_sessions`: from the venue's calendar, or inferred from the data) is not
    ``no_bar_on_last_day`` — its venue was closed since, and its return there is a carried zero
    (:func:`returns_history`). One that missed a session its venue held still is.
    """
    as_of = pd.Timestamp(as_of).normalize()
    end = returns.index[-1] if len(returns) else as_of
    days_silent = (as_of - last_bar).dt.days
    stale = days_silent[~(days_silent <= stale_days)]
    lagging = last_bar[(last_bar < end) & ~last_bar.index.isin(stale.index)]
    held_by = None
    if venues is not None and len(lagging):
        held_by = venue_sessions(last_bar, end=end, venues=venues)
        lagging = lagging[~held_by["held"].reindex(lagging.index).to_numpy(dtype=bool)]
    history = returns.notna().sum()
    dropped = stale.index.union(lagging.index)
    short = history[(history < min_history) & ~history.index.isin(dropped)]
    rows = (
        [
            (
                symbol,
                "stale_or_delisted",
                last_bar[symbol],
                float(days) if pd.notna(days) else np.inf,
                f"no bar for {days:.0f} days" if pd.notna(days) else "no bar in the window",
                "ineligible",
            )
            for symbol, days in stale.items()
        ]
        + [
            (
                symbol,
                "no_bar_on_last_day",
                date,
                float((end - date).days),
                f"last bar {date:%Y-%m-%d}, window ends {end:%Y-%m-%d}"
                + _venue_note(held_by, symbol),
                "ineligible",
            )
            for symbol, date in lagging.items()
        ]
        + [
            (
                symbol,
                "min_history",
                end,
                float(count),
                f"{count} < {min_history} bars",
                "ineligible",
            )
            for symbol, count in short.items()
        ]
    )
    return exclusions(rows)


def _venue_note(sessions: pd.DataFrame | None, symbol: str) -> str:
    """``"; XNYS traded on 2024-06-18"`` for a symbol on a known venue, else nothing."""
    if sessions is None or not sessions.at[symbol, "known"]:
        return ""
    return (
        f"; {sessions.at[symbol, 'venue']} traded on {sessions.at[symbol, 'last_session']:%Y-%m-%d}"
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


def _carry_to_the_end(close: pd.DataFrame, last_bar: pd.Series, venues: Venues) -> pd.DataFrame:
    """``close`` with the last close of every symbol that :func:`venue_sessions` says held its
    venue's last session carried over the grid rows after its last bar."""
    if close.empty:
        return close
    end = close.index[-1]
    last = last_bar.reindex(close.columns)
    trailing = (last < end) & (last >= close.index[0])
    if not trailing.any():
        return close
    held = venue_sessions(last_bar, end=end, venues=venues)["held"].reindex(close.columns)
    carry = (trailing & held).to_numpy(dtype=bool)
    if not carry.any():
        return close
    values = close.to_numpy(copy=True)
    row = close.index.get_indexer(pd.DatetimeIndex(last[carry]))
    columns = np.flatnonzero(carry)[row >= 0]
    row = row[row >= 0]
    after = np.arange(len(close))[:, None] > row[None, :]
    block = values[:, columns]
    block[after] = np.broadcast_to(values[row, columns], block.shape)[after]
    values[:, columns] = block
    return pd.DataFrame(values, index=close.index, columns=close.columns)


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


def exclusions(rows: "list[tuple] | pd.DataFrame") -> pd.DataFrame:
    """An exclusion table (EXCLUSION_COLUMNS), sorted by rule then symbol."""
    frame = pd.DataFrame(rows, columns=list(EXCLUSION_COLUMNS))
    frame["date"] = pd.to_datetime(frame["date"])
    frame["value"] = frame["value"].astype(float)
    frame = frame.astype({"symbol": object, "rule": object, "detail": object, "reason": object})
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


def drop_symbols(window: ReturnsWindow, offenders: pd.DataFrame, *, reason: str) -> ReturnsWindow:
    """Remove ``offenders`` (rows: symbol, rule, date, value, detail) from the decision window and
    record them in ``excluded`` with ``reason`` (one of REASONS)."""
    if reason not in REASONS:
        raise ValueError(f"unknown exclusion reason {reason!r}; expected one of {REASONS}")
    if offenders.empty:
        return window
    gone = pd.Index(offenders["symbol"].unique())
    keep = window.returns.columns.difference(gone, sort=False)
    added = offenders.assign(reason=reason)[list(EXCLUSION_COLUMNS)]
    return dataclasses.replace(
        window,
        returns=window.returns[keep],
        dollar_volume=window.dollar_volume[keep],
        excluded=pd.concat([window.excluded, added], ignore_index=True),
    )
