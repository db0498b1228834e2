"""The bar lake: what a source delivered, cleaned under the sleeve's bar policy, with its history.

A source's history is dirty (empty rows, OHLC that does not cover open/close, filler copies,
duplicates, weekend rows on weekday venues, unfinished last bars). ``clean`` finds every such
defect, records it per (symbol, date, rule) and applies the sleeve's action for the rule:

* ``repair``: the bar is fixed and kept (only where the fix is unambiguous: an exact duplicate
  is collapsed, a conflicting duplicate keeps the source's last report, an OHLC inconsistency is
  widened so that high/low cover open/close);
* ``drop``: the bar is left out of the lake;
* ``quarantine``: the bar is left out and the symbol is excluded from every returns window that
  contains the bar's date (``bar_exclusions``); windows before or after it are unaffected.

Defects are never blocking here: history outside a run's window never stops a sleeve. Two cases
are not a policy choice: a bar dated in the future is refused (``FutureBarError``, nothing
stored), and a bar of a session that may still be open (dated today or later in UTC) is dropped
and recorded, so an unfinished bar is never stored as final.

``refresh`` merges a cleaned delivery into the stored lake: the newest value a source reports
for a (symbol, date) wins, and every change of a stored value is recorded in ``revisions``.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tvq_assets.quant import quality
from tvq_resources.records import lake_record

BAR_COLUMNS = ("symbol", "date", "open", "high", "low", "close", "volume")
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
# The traded value in the quote currency, kept when the source reports it (an exchange's API):
# an optional value column. Bars of a source without it carry no such column at all, so their
# frames, segments and checksums are those of OHLCV bars.
QUOTE_VOLUME = "quote_volume"
OPTIONAL_COLUMNS = (QUOTE_VOLUME,)
PRICES = ("open", "high", "low", "close")
DEFECT_COLUMNS = ("symbol", "date", "rule", "action", "value", "detail")
REVISION_COLUMNS = ("symbol", "date", "column", "old", "new", "seen_at")
ACTIONS = ("repair", "drop", "quarantine")
RECORDED = {"repair": "repaired", "drop": "dropped", "quarantine": "quarantined"}

# Rules a policy may act on, with their default action (the one home of these defaults).
DEFAULT_ACTIONS: Mapping[str, str] = {
    "duplicate_exact": "repair",  # identical rows: one is kept
    "duplicate_conflict": "repair",  # differing rows: the source's last report is kept
    "weekend_row": "drop",  # a Saturday/Sunday row in a weekday sleeve (e.g. MOEX working days)
    "price_missing": "drop",  # an empty open/high/low/close cell
    "price_non_positive": "drop",  # a zero or negative price (listing prints)
    "volume_invalid": "drop",  # empty, infinite or negative volume
    "ohlc_inconsistent": "drop",  # high/low miss open/close by more than the tolerance
    "filler_bar": "drop",  # a zero-volume copy of the previous bar (padding)
    # a symbol's last bar trading under a tenth of its usual volume: a snapshot taken while the
    # session was open (held back; a later delivery with newer bars brings it in final)
    "partial_last_bar": "drop",
}
# Rules with an unambiguous fix; `repair` is refused for the others.
REPAIRABLE = ("duplicate_exact", "duplicate_conflict", "ohlc_inconsistent")
# Not policy choices: a bar of a possibly open session is always dropped and recorded.
UNFINISHED = "unfinished_bar"
# A session date may be one day ahead of the UTC date (venues east of UTC); beyond that it is
# a bar from the future.
FUTURE_TOLERANCE = pd.Timedelta(days=1)
# partial_last_bar: last volume below this share of the median of the previous bars (at least
# PARTIAL_WINDOW of them).
PARTIAL_VOLUME_RATIO = 0.1
PARTIAL_WINDOW = 30
# An incremental refresh re-reads the source from this many days before the stored last date:
# the source's revisions of bars inside that margin are seen and recorded; older revisions are
# seen only by a full refresh (a new store, or ``since=None``).
REVISION_DAYS = 7
# ... and from the oldest bar it held back as not final (a transient finding) dated at most this
# many days before the stored last date, so that the bar comes in once the source has it final.
HELD_BACK_DAYS = 31
# Findings about a bar that is not final yet: they leave the history once the bar is stored.
TRANSIENT = (UNFINISHED, "partial_last_bar")


class FutureBarError(ValueError):
    """A source delivered bars dated after now (plus the tolerance): nothing is stored."""


@dataclass(frozen=True)
class BarPolicy:
    """How a sleeve handles bar defects: one action per rule, and the OHLC repair tolerance.

    ``ohlc_tolerance`` is relative: an OHLC inconsistency of at most this fraction of the price
    (e.g. 0.01: high 1% below the close) is always repaired by widening high/low to cover
    open/close; larger ones take the ``ohlc_inconsistent`` action.
    """

    actions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    ohlc_tolerance: float = 0.01

    def __post_init__(self) -> None:
        unknown = set(self.actions) - set(DEFAULT_ACTIONS)
        if unknown:
            raise ValueError(
                f"unknown bar rules {sorted(unknown)}; the rules are {sorted(DEFAULT_ACTIONS)}"
            )
        for rule, action in self.actions.items():
            if action not in ACTIONS:
                raise ValueError(f"bar rule {rule}: action {action!r} is not one of {ACTIONS}")
            if action == "repair" and rule not in REPAIRABLE:
                raise ValueError(
                    f"bar rule {rule}: no unambiguous repair exists; use drop or quarantine"
                )
        if not (0 <= self.ohlc_tolerance < 1):
            raise ValueError(f"ohlc_tolerance {self.ohlc_tolerance} must be in [0, 1)")

    @classmethod
    def of(cls, actions: Mapping[str, str] | None, ohlc_tolerance: float) -> "BarPolicy":
        """The default actions overridden by ``actions``."""
        return cls(actions={**DEFAULT_ACTIONS, **(actions or {})}, ohlc_tolerance=ohlc_tolerance)

    def action(self, rule: str) -> str:
        return self.actions.get(rule, DEFAULT_ACTIONS[rule])


@lake_record  # a lake value: stored data names this type, never imports it
@dataclass(frozen=True)
class BarHistory:
    """The sleeve's bar lake: cleaned bars, every defect found and every source revision."""

    bars: pd.DataFrame  # BAR_COLUMNS, one row per (symbol, date), sorted
    defects: pd.DataFrame  # DEFECT_COLUMNS, one row per (symbol, date, rule)
    revisions: pd.DataFrame  # REVISION_COLUMNS, one row per changed value


@dataclass(frozen=True)
class Cleaned:
    bars: pd.DataFrame
    defects: pd.DataFrame


@dataclass(frozen=True)
class Refresh:
    history: BarHistory
    added: int  # (symbol, date) rows not stored before
    revised: int  # stored rows whose value the source changed (the new value is kept)
    removed: int  # stored rows a defect now drops or quarantines
    new_symbols: tuple[str, ...]
    new_revisions: pd.DataFrame  # the revisions this refresh recorded
    # BAR_COLUMNS rows of the delivery that are new or differ from the stored row: what an
    # incremental store appends (the rows the bar contract must check)
    changed: pd.DataFrame = field(default_factory=lambda: empty_bars())
    removed_keys: pd.DataFrame = field(  # (symbol, date) of stored rows this refresh removed
        default_factory=lambda: empty_bars()[["symbol", "date"]]
    )


def context_rows(volume_spike_window: int) -> int:
    """Stored bars per symbol before a delivery that its cleaning and its contract look back on:
    the partial-last-bar median, the volume-spike window, filler and order continuity."""
    return max(PARTIAL_WINDOW, volume_spike_window) + 1


def bar_columns(*frames: pd.DataFrame) -> list[str]:
    """BAR_COLUMNS plus the optional value columns any of ``frames`` holds."""
    return [*BAR_COLUMNS, *(c for c in OPTIONAL_COLUMNS if any(c in f for f in frames))]


def value_columns(*frames: pd.DataFrame) -> list[str]:
    """The value columns to compare between ``frames``: OHLCV, and an optional one when every
    frame holds it (a source without quote volume revises no quote volume)."""
    return [*VALUE_COLUMNS, *(c for c in OPTIONAL_COLUMNS if all(c in f for f in frames))]


def empty_bars() -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series(dtype=float) for name in BAR_COLUMNS})
    frame["symbol"] = frame["symbol"].astype(object)
    frame["date"] = frame["date"].astype("datetime64[ns]")
    return frame


def _typed(bars: pd.DataFrame) -> pd.DataFrame:
    """BAR_COLUMNS (and the optional columns it holds) with the lake's dtypes (an empty frame
    may come in untyped)."""
    frame = bars[bar_columns(bars)].copy()
    frame["symbol"] = frame["symbol"].astype(object)
    frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[ns]")
    for column in value_columns(frame):
        frame[column] = frame[column].astype(float)
    return frame


def empty_defects() -> pd.DataFrame:
    return _defect_table([])


def empty_revisions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": pd.Series(dtype=object),
            "date": pd.Series(dtype="datetime64[ns]"),
            "column": pd.Series(dtype=object),
            "old": pd.Series(dtype=float),
            "new": pd.Series(dtype=float),
            "seen_at": pd.Series(dtype="datetime64[ns]"),
        }
    )


def _defect_table(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [part for part in parts if len(part)]
    if not parts:
        frame = pd.DataFrame({name: pd.Series(dtype=object) for name in DEFECT_COLUMNS})
        frame["date"] = frame["date"].astype("datetime64[ns]")
        frame["value"] = frame["value"].astype(float)
        return frame
    frame = pd.concat(parts, ignore_index=True)[list(DEFECT_COLUMNS)]
    frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[ns]")
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(["symbol", "date", "rule"], ignore_index=True)


def _found(rows: pd.DataFrame, rule: str, action: str, value, detail) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": rows["symbol"].to_numpy(dtype=object),
            "date": rows["date"].to_numpy(),
            "rule": rule,
            "action": RECORDED.get(action, action),
            "value": np.asarray(value, dtype=float) if np.ndim(value) else float(value),
            "detail": detail,
        }
    )


def reject_future_bars(raw: pd.DataFrame, *, now: pd.Timestamp) -> None:
    """Raise ``FutureBarError`` naming the symbols and dates of bars dated after now + 1 day."""
    limit = _utc_day(now) + FUTURE_TOLERANCE
    ahead = raw[raw["date"] > limit]
    if ahead.empty:
        return
    first = ahead.sort_values(["date", "symbol"]).head(5)
    named = ", ".join(
        f"{s} on {d:%Y-%m-%d}" for s, d in zip(first["symbol"], first["date"], strict=True)
    )
    raise FutureBarError(
        f"{len(ahead)} bar(s) dated after {limit:%Y-%m-%d} (now {now:%Y-%m-%d %H:%M} UTC plus "
        f"one day) were refused and nothing was stored: {named}; fix the source's timestamps"
    )


def clean(
    raw: pd.DataFrame,
    *,
    calendar: str,
    policy: BarPolicy,
    now: pd.Timestamp,
    superseded: pd.DataFrame | None = None,
) -> Cleaned:
    """Bars one row per (symbol, date), sorted, with every defect recorded and handled.

    ``raw`` holds BAR_COLUMNS with one row per (symbol, date) (the readers keep a day's last
    report); ``superseded`` holds the earlier reports of duplicated days. Raises
    ``FutureBarError`` for bars from the future. Vectorised over all symbols.
    """
    reject_future_bars(raw, now=now)
    frame = raw[bar_columns(raw)].sort_values(["symbol", "date"], ignore_index=True, kind="stable")
    defects: list[pd.DataFrame] = []

    def handle(mask: np.ndarray, rule: str, value, detail, action: str | None = None) -> None:
        """Record the flagged rows; drop them unless repaired."""
        nonlocal frame
        if not mask.any():
            return
        action = action or policy.action(rule)
        rows = frame[mask]
        value = np.asarray(value)[mask] if np.ndim(value) else value
        detail = np.asarray(detail, dtype=object)[mask] if np.ndim(detail) else detail
        defects.append(_found(rows, rule, action, value, detail))
        if action != "repair":
            frame = frame[~mask].reset_index(drop=True)

    # A session that may still be open: dated today or later (UTC). Always dropped.
    today = _utc_day(now)
    handle(
        frame["date"].to_numpy() >= today.to_datetime64(),
        UNFINISHED,
        frame["close"].to_numpy(),
        f"session not finished at {now:%Y-%m-%d %H:%M} UTC",
        action="drop",
    )
    # Duplicates: the readers kept each day's last report; earlier reports are judged against it.
    if superseded is not None and len(superseded):
        defects.extend(_duplicates(frame, superseded, policy))
        conflict = policy.action("duplicate_conflict")
        if conflict != "repair":
            keys = _conflicting_keys(frame, superseded)
            mask = _key_mask(frame, keys)
            frame = frame[~mask].reset_index(drop=True)
    if calendar == "weekday":
        weekend = frame["date"].dt.dayofweek.to_numpy() >= 5
        handle(
            weekend,
            "weekend_row",
            frame["close"].to_numpy(),
            frame["date"].dt.day_name().to_numpy(),
        )
    prices = frame[list(PRICES)].to_numpy(dtype=float)
    missing = np.isnan(prices).any(axis=1)
    handle(missing, "price_missing", frame["close"].to_numpy(), "empty open/high/low/close cell")
    prices = frame[list(PRICES)].to_numpy(dtype=float)
    non_positive = ~(np.isfinite(prices) & (prices > 0)).all(axis=1)
    handle(
        non_positive,
        "price_non_positive",
        np.nanmin(np.where(np.isfinite(prices), prices, -np.inf), axis=1),
        "price not finite and positive",
    )
    volume = frame["volume"].to_numpy(dtype=float)
    handle(
        ~(np.isfinite(volume) & (volume >= 0)), "volume_invalid", volume, "volume not finite >= 0"
    )
    frame = _ohlc(frame, policy, defects)
    filler = quality.filler_bars(frame)
    handle(filler, "filler_bar", frame["close"].to_numpy(), "zero-volume copy of the previous bar")
    partial, usual = _partial_last_bars(frame)
    # Text only for the flagged rows: a string per row of the whole history is the largest
    # allocation of a first load (hundreds of bytes a row).
    detail = np.full(len(frame), "", dtype=object)
    detail[partial] = np.char.add("last volume vs median ", usual[partial].astype(str))
    handle(partial, "partial_last_bar", frame["volume"].to_numpy(dtype=float), detail)

    found = _defect_table(defects)
    return Cleaned(bars=frame[bar_columns(frame)].reset_index(drop=True), defects=found)


def _partial_last_bars(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each symbol's last bar when its volume is under PARTIAL_VOLUME_RATIO of the median of
    the PARTIAL_WINDOW bars before it; and that median (NaN elsewhere)."""
    symbols = frame["symbol"].to_numpy()
    flagged = np.zeros(len(frame), dtype=bool)
    usual = np.full(len(frame), np.nan)
    if len(frame) == 0:
        return flagged, usual
    ends = quality.last_rows(symbols)
    volumes = quality.trailing(frame["volume"].to_numpy(), symbols, ends, PARTIAL_WINDOW + 1)
    before, last = volumes[:, :-1], volumes[:, -1]
    full = ~np.isnan(before).any(axis=1)
    median = np.full(len(ends), np.nan)
    median[full] = np.median(before[full], axis=1)
    partial = full & (last < PARTIAL_VOLUME_RATIO * median)
    flagged[ends[partial]] = True
    usual[ends] = median
    return flagged, usual


def _ohlc(frame: pd.DataFrame, policy: BarPolicy, defects: list[pd.DataFrame]) -> pd.DataFrame:
    """Widen high/low to cover open/close when the miss is within tolerance; act on the rest."""
    o, h, low, c = (frame[p].to_numpy(dtype=float) for p in PRICES)
    top, bottom = np.maximum(o, c), np.minimum(o, c)
    miss = np.maximum.reduce([(top - h) / top, (low - bottom) / bottom, (low - h) / h])
    bad = miss > 0
    if not bad.any():
        return frame
    small = bad & (miss <= policy.ohlc_tolerance)
    large = bad & ~small
    action = policy.action("ohlc_inconsistent")
    # Text only for the flagged rows (a long history has few of them).
    detail = np.full(len(frame), "", dtype=object)
    detail[bad] = [
        f"open {a:g} high {b:g} low {x:g} close {y:g}"
        for a, b, x, y in zip(o[bad], h[bad], low[bad], c[bad], strict=True)
    ]
    if small.any():
        rows = frame[small]
        defects.append(
            _found(
                rows,
                "ohlc_inconsistent",
                "repair",
                miss[small],
                np.char.add(detail[small].astype(str), f" (within {policy.ohlc_tolerance:g})"),
            )
        )
    if large.any():
        defects.append(
            _found(frame[large], "ohlc_inconsistent", action, miss[large], detail[large])
        )
    repaired = small | (large & (action == "repair"))
    frame = frame.copy()
    frame.loc[repaired, "high"] = np.maximum.reduce([h, top, low])[repaired]
    frame.loc[repaired, "low"] = np.minimum.reduce([low, bottom, h])[repaired]
    if action != "repair":
        frame = frame[~large].reset_index(drop=True)
    return frame


def is_key_sorted(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` is in (symbol, date) order with no key twice, on a RangeIndex."""
    index = frame.index
    if not isinstance(index, pd.RangeIndex) or (index.start, index.step) != (0, 1):
        return False
    symbols = frame["symbol"].to_numpy(dtype=object)
    dates = frame["date"].to_numpy(dtype="datetime64[ns]")
    after = symbols[1:] > symbols[:-1]
    same = symbols[1:] == symbols[:-1]
    return bool((after | (same & (dates[1:] > dates[:-1]))).all())


def _key_mask(frame: pd.DataFrame, keys: pd.DataFrame) -> np.ndarray:
    index = pd.MultiIndex.from_frame(frame[["symbol", "date"]])
    return index.isin(pd.MultiIndex.from_frame(keys[["symbol", "date"]]))


def _conflicting_keys(frame: pd.DataFrame, superseded: pd.DataFrame) -> pd.DataFrame:
    joined = superseded.merge(frame, on=["symbol", "date"], suffixes=("", "_kept"))
    differs = np.zeros(len(joined), dtype=bool)
    for column in VALUE_COLUMNS:
        a, b = joined[column].to_numpy(float), joined[f"{column}_kept"].to_numpy(float)
        differs |= ~((a == b) | (np.isnan(a) & np.isnan(b)))
    joined["differs"] = differs
    per_key = joined.groupby(["symbol", "date"], sort=False)["differs"].any()
    return per_key[per_key].reset_index()[["symbol", "date"]]


def _duplicates(
    frame: pd.DataFrame, superseded: pd.DataFrame, policy: BarPolicy
) -> list[pd.DataFrame]:
    """One defect per duplicated (symbol, date): exact copies or conflicting reports."""
    counts = superseded.groupby(["symbol", "date"], sort=False).size().rename("extra")
    conflicts = _conflicting_keys(frame, superseded)
    keys = counts.reset_index()
    conflicting = _key_mask(keys, conflicts) if len(conflicts) else np.zeros(len(keys), bool)
    kept = keys.merge(frame, on=["symbol", "date"], how="left")
    out = []
    exact = keys[~conflicting]
    if len(exact):
        out.append(
            _found(
                exact,
                "duplicate_exact",
                policy.action("duplicate_exact"),
                exact["extra"].to_numpy(float),
                "identical extra row(s) removed",
            )
        )
    clash = kept[conflicting]
    if len(clash):
        first = superseded.drop_duplicates(["symbol", "date"]).merge(
            clash[["symbol", "date"]], on=["symbol", "date"]
        )
        first = clash[["symbol", "date"]].merge(first, on=["symbol", "date"], how="left")
        detail = [
            f"close {a:g} (kept, last reported) vs {b:g}"
            for a, b in zip(
                clash["close"].to_numpy(float), first["close"].to_numpy(float), strict=True
            )
        ]
        out.append(
            _found(
                clash,
                "duplicate_conflict",
                policy.action("duplicate_conflict"),
                clash["extra"].to_numpy(float),
                np.array(detail, dtype=object),
            )
        )
    return out


def refresh(
    stored: BarHistory | None,
    cleaned: Cleaned,
    *,
    seen_at: pd.Timestamp,
) -> Refresh:
    """Merge a cleaned delivery into the stored lake; the source's newest value wins.

    Every stored value the source now reports differently is recorded in ``revisions`` (old,
    new, ``seen_at``); stored rows the source no longer delivers are kept; stored rows that a
    defect of this delivery drops or quarantines are removed. Defects are kept per (symbol, date,
    rule), the newest finding winning.
    """
    keys = ["symbol", "date"]
    incoming = _typed(cleaned.bars)
    seen = _utc_naive(seen_at)
    if stored is None or stored.bars.empty:
        base = empty_bars()
        old_defects, old_revisions = (
            (empty_defects(), empty_revisions())
            if stored is None
            else (stored.defects, stored.revisions)
        )
    else:
        base, old_defects, old_revisions = _typed(stored.bars), stored.defects, stored.revisions
    if base.empty:  # a first load: every delivered row is new, no stored value to compare
        fresh = np.ones(len(incoming), dtype=bool)
        overlap = incoming.iloc[:0]
    else:
        joined = incoming.merge(base, on=keys, how="left", suffixes=("", "_old"), indicator=True)
        fresh = (joined["_merge"] == "left_only").to_numpy()
        overlap = joined[~fresh]
    revisions = []
    revised_rows = np.zeros(len(overlap), dtype=bool)
    filled_rows = np.zeros(len(overlap), dtype=bool)
    for column in value_columns(incoming):
        new = overlap[column].to_numpy(float)
        old = (
            overlap[f"{column}_old"].to_numpy(float)
            if f"{column}_old" in overlap
            else np.full(len(overlap), np.nan)
        )
        changed = ~((new == old) | (np.isnan(new) & np.isnan(old)))
        if column in OPTIONAL_COLUMNS:
            # A quote volume given where none was stored (bars stored before it was kept, or
            # from files without it) is stored with the row, not recorded as a revision.
            filled = changed & np.isnan(old)
            filled_rows |= filled
            changed &= ~filled
        revised_rows |= changed
        if changed.any():
            rows = overlap[changed]
            revisions.append(
                pd.DataFrame(
                    {
                        "symbol": rows["symbol"].to_numpy(dtype=object),
                        "date": rows["date"].to_numpy(),
                        "column": column,
                        "old": old[changed],
                        "new": new[changed],
                        "seen_at": seen,
                    }
                )
            )
    new_revisions = (
        pd.concat(revisions, ignore_index=True).sort_values(["symbol", "date", "column"])
        if revisions
        else empty_revisions()
    )
    changed = fresh.copy()
    changed[np.flatnonzero(~fresh)[revised_rows | filled_rows]] = True
    removed_keys = cleaned.defects[cleaned.defects["action"].isin(["dropped", "quarantined"])]
    kept_old = base[~_key_mask(base, incoming)] if len(base) else base
    removal = _key_mask(kept_old, removed_keys) if len(kept_old) and len(removed_keys) else None
    removed = 0 if removal is None else int(removal.sum())
    removed_keys = empty_bars()[keys]
    if removal is not None:
        removed_keys = kept_old.loc[removal, keys].reset_index(drop=True)
        kept_old = kept_old[~removal]
    if kept_old.empty and is_key_sorted(incoming):
        bars = incoming  # a first load as cleaned: nothing to merge, already in key order
    else:
        bars = (
            pd.concat([kept_old, incoming], ignore_index=True)
            .sort_values(keys, ignore_index=True, kind="stable")[bar_columns(kept_old, incoming)]
            .reset_index(drop=True)
        )
    # Unfinished bars are held back, not history: they are reported by the delivery only.
    found = cleaned.defects[cleaned.defects["rule"] != UNFINISHED]
    if len(old_defects) and (len(found) or len(cleaned.bars)):
        # The newest finding of a (symbol, date, rule) wins; a bar held back as not final and
        # delivered again is judged anew (its old transient finding goes, a new one may come).
        rule_keys = ["symbol", "date", "rule"]
        replaced = pd.MultiIndex.from_frame(old_defects[rule_keys]).isin(
            pd.MultiIndex.from_frame(found[rule_keys])
        )
        delivered = pd.concat([incoming[keys], cleaned.defects[keys]], ignore_index=True)
        rejudged = old_defects["rule"].isin(TRANSIENT).to_numpy() & _key_mask(
            old_defects, delivered
        )
        old_defects = old_defects[~(replaced | rejudged)]
    defects = _defect_table([old_defects, found])
    defects = defects.drop_duplicates(["symbol", "date", "rule"], keep="last").reset_index(
        drop=True
    )
    all_revisions = pd.concat(
        [frame for frame in (old_revisions, new_revisions) if len(frame)] or [empty_revisions()],
        ignore_index=True,
    )
    # A bar once held back as not final leaves the defect history when it is stored final.
    transient = defects["rule"].isin(TRANSIENT).to_numpy()
    if transient.any():
        settled = transient & _key_mask(defects, bars)
        defects = defects[~settled].reset_index(drop=True)
    new_symbols = tuple(sorted(set(incoming["symbol"]) - set(base["symbol"])))
    # A first load: every row changed, and the history is the delivery itself (one frame, not
    # two copies of a whole history).
    first_load = base.empty and bars is incoming
    changed_rows = bars if first_load else incoming[changed].reset_index(drop=True)
    return Refresh(
        history=BarHistory(bars=bars, defects=defects, revisions=all_revisions),
        added=int(fresh.sum()),
        revised=int(revised_rows.sum()),
        removed=removed,
        new_symbols=new_symbols,
        new_revisions=new_revisions.reset_index(drop=True),
        changed=changed_rows,
        removed_keys=removed_keys,
    )


def bar_exclusions(
    defects: pd.DataFrame, *, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """Every bar defect the bar policy quarantined, dated inside [start, end], in the columns of
    ``quality.DEFECT_COLUMNS`` (symbol, rule, date, value, detail).

    All of them, not one per symbol: the walk-forward windows inside [start, end] each exclude a
    symbol only for the defects dated inside that window. Defects outside never exclude anything.
    """
    dates = pd.to_datetime(defects["date"])
    inside = defects[
        (defects["action"] == "quarantined") & (dates >= start) & (dates <= end)
    ].sort_values(["symbol", "date", "rule"])
    frame = pd.DataFrame(
        {
            "symbol": inside["symbol"].to_numpy(dtype=object),
            "rule": inside["rule"].astype(str).to_numpy(dtype=object),
            "date": pd.to_datetime(inside["date"]).to_numpy(),
            "value": inside["value"].to_numpy(dtype=float),
            "detail": inside["detail"].astype(str).to_numpy(dtype=object),
        },
        columns=list(quality.DEFECT_COLUMNS),
    )
    frame["date"] = frame["date"].astype("datetime64[ns]")
    return frame.reset_index(drop=True)


def defect_summary(defects: pd.DataFrame) -> pd.DataFrame:
    """Counts per rule and action (columns repaired, dropped, quarantined), with symbols."""
    if defects.empty:
        return pd.DataFrame(columns=["rule", "repaired", "dropped", "quarantined", "symbols"])
    counts = defects.pivot_table(
        index="rule", columns="action", values="symbol", aggfunc="size", fill_value=0
    )
    for action in RECORDED.values():
        if action not in counts.columns:
            counts[action] = 0
    symbols = defects.groupby("rule")["symbol"].nunique().rename("symbols")
    return (
        counts[list(RECORDED.values())]
        .join(symbols)
        .reset_index()
        .rename_axis(None, axis=1)
        .sort_values("rule", ignore_index=True)
    )


def revisions_between(
    revisions: pd.DataFrame, *, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """Revisions of bars dated inside [start, end] (a run's window)."""
    return revisions[(revisions["date"] >= start) & (revisions["date"] <= end)].reset_index(
        drop=True
    )


def last_complete_session(now: pd.Timestamp) -> pd.Timestamp:
    """The newest session date whose bars are final: yesterday in UTC (see ``UNFINISHED``)."""
    return _utc_day(now) - pd.Timedelta(days=1)


def _utc_naive(moment: pd.Timestamp) -> pd.Timestamp:
    moment = pd.Timestamp(moment)
    return moment.tz_convert("UTC").tz_localize(None) if moment.tzinfo else moment


def _utc_day(moment: pd.Timestamp) -> pd.Timestamp:
    return _utc_naive(moment).normalize()


# The source's checksums: how a refresh that re-reads only the last days still sees a revision
# of older bars. Every refresh parses the source's files whole (they are filtered by date after
# parsing), so hashing the delivery's older rows is nearly free. The store keeps, per symbol, a
# checksum of each month of what the source delivered (``period`` "YYYY-MM") and, for the months
# a later refresh may still re-read in part, of each day ("YYYY-MM-DD"): each refresh compares
# the delivery with them on every period it does not re-read, at the granularity stored.
CHECKSUM_COLUMNS = ("symbol", "period", "rows", "checksum")
# Days stay checksummed one by one while their month ends after the stored last date minus this
# margin: the earliest date an incremental refresh may re-read from (``REVISION_DAYS``, or a bar
# held back up to ``HELD_BACK_DAYS`` before), so that no month is re-read in part.
DAY_CHECKSUM_DAYS = REVISION_DAYS + HELD_BACK_DAYS + 1


def empty_checksums() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": pd.Series(dtype=object),
            "period": pd.Series(dtype=object),
            "rows": pd.Series(dtype="int64"),
            "checksum": pd.Series(dtype="int64"),
        }
    )


def _days(values: np.ndarray, unit: str) -> np.ndarray:
    """ISO days ("D") or months ("M") of datetime64 values, as strings (vectorised)."""
    return np.datetime_as_string(values.astype(f"datetime64[{unit}]"), unit=unit).astype(object)


@dataclass(frozen=True)
class _Hashed:
    """The delivered rows as arrays: symbol (a code into ``names``), day and the row's hash."""

    names: np.ndarray  # object: the symbols, by code
    code: np.ndarray  # int64
    day: np.ndarray  # datetime64[D]
    hashes: np.ndarray  # int64 (a uint64 hash)

    @property
    def month(self) -> np.ndarray:
        return self.day.astype("datetime64[M]")

    @property
    def symbol(self) -> np.ndarray:
        return self.names[self.code]

    def take(self, mask: np.ndarray) -> "_Hashed":
        return _Hashed(self.names, self.code[mask], self.day[mask], self.hashes[mask])

    def month_keys(self) -> np.ndarray:
        """(symbol, month) as one int64: the symbol's code in the high bits."""
        return (self.code << 32) + self.month.astype(np.int64)


def _hashed(bars: pd.DataFrame) -> _Hashed:
    dates = pd.to_datetime(bars["date"]).astype("datetime64[ns]")
    hashes = pd.util.hash_pandas_object(
        pd.DataFrame({"date": dates, **{c: bars[c].astype(float) for c in VALUE_COLUMNS}}),
        index=False,
    ).to_numpy(dtype=np.uint64)
    if QUOTE_VOLUME in bars:
        # A reported quote volume adds its own hash (modulo 2**64): a revision of it alone is a
        # revision of the source, while a row without one hashes as OHLCV alone, as the
        # checksums of every store written before quote volumes were kept.
        quote = bars[QUOTE_VOLUME].astype(float)
        given = quote.notna().to_numpy()
        if given.any():
            extra = pd.util.hash_pandas_object(
                pd.DataFrame({"date": dates[given], QUOTE_VOLUME: quote[given]}), index=False
            ).to_numpy(dtype=np.uint64)
            hashes = hashes.copy()  # pandas may hand out a read-only view
            with np.errstate(over="ignore"):
                hashes[given] = hashes[given] + extra
    code, names = pd.factorize(bars["symbol"].to_numpy(dtype=object))
    return _Hashed(
        np.asarray(names, dtype=object),
        code.astype(np.int64),
        dates.to_numpy().astype("datetime64[D]"),
        hashes.view(np.int64),
    )


def _sum_by(symbol: np.ndarray, period: np.ndarray, rows, checksums) -> pd.DataFrame:
    """Checksums summed per (symbol, period), modulo 2**64 (the order of days does not matter)."""
    if len(symbol) == 0:
        return empty_checksums()
    frame = pd.DataFrame({"symbol": symbol, "period": period, "rows": rows, "checksum": checksums})
    summed = frame.groupby(["symbol", "period"], sort=True).agg(
        rows=("rows", "sum"), checksum=("checksum", "sum")
    )
    return summed.reset_index()[list(CHECKSUM_COLUMNS)].astype(
        {"rows": "int64", "checksum": "int64"}
    )


def _month_sums(rows: _Hashed) -> pd.DataFrame:
    """Month entries of delivered rows: grouped on one int64 key, text made per month only."""
    if len(rows.code) == 0:
        return empty_checksums()
    keys = rows.month_keys()
    frame = pd.DataFrame({"key": keys, "checksum": rows.hashes})
    summed = frame.groupby("key", sort=True)["checksum"].agg(["size", "sum"])
    key = summed.index.to_numpy(dtype=np.int64)
    return pd.DataFrame(
        {
            "symbol": rows.names[key >> 32],
            "period": _days((key & 0xFFFFFFFF).astype("datetime64[M]"), "M"),
            "rows": summed["size"].to_numpy(dtype=np.int64),
            "checksum": summed["sum"].to_numpy(dtype=np.int64),
        }
    )


def _entries(rows: _Hashed, *, before: np.datetime64) -> pd.DataFrame:
    """Checksum entries of delivered rows: one per day, or per month for months ending on or
    before ``before`` (their periods as text only for the entries)."""
    month = rows.month
    rolled = ((month + 1).astype("datetime64[D]") - np.timedelta64(1, "D")) <= before
    days = rows.take(~rolled)
    day_entries = pd.DataFrame(
        {
            "symbol": days.symbol,
            "period": _days(days.day, "D"),
            "rows": np.ones(len(days.code), dtype=np.int64),
            "checksum": days.hashes,
        }
    )
    parts = [f for f in (_month_sums(rows.take(rolled)), day_entries) if len(f)]
    return pd.concat(parts or [empty_checksums()], ignore_index=True)


def day_checksums(bars: pd.DataFrame) -> pd.DataFrame:
    """One checksum per delivered (symbol, date): a hash of the date and the raw values."""
    if bars.empty:
        return empty_checksums()
    return _entries(_hashed(bars), before=np.datetime64("NaT"))


def _period_end(period: pd.Series) -> np.ndarray:
    """Each period's last day: the day itself, or the month's last day."""
    text = period.to_numpy(dtype=object)
    is_day = np.array([len(p) == 10 for p in text], dtype=bool)
    ends = np.empty(len(text), dtype="datetime64[D]")
    ends[is_day] = np.array(text[is_day], dtype="datetime64[D]")
    if (~is_day).any():
        months = np.array(text[~is_day], dtype="datetime64[M]")
        ends[~is_day] = (months + 1).astype("datetime64[D]") - np.timedelta64(1, "D")
    return ends


def rolled_up(checksums: pd.DataFrame, *, before: pd.Timestamp | None) -> pd.DataFrame:
    """The checksums of each month ending on or before ``before`` (all months when None) summed
    into one month entry: its day entries and the month entries of its parts (a month a refresh
    took in as compared days plus re-read ones)."""
    period = checksums["period"]
    days = np.ones(len(period), dtype=bool)
    if before is not None and len(period):
        days &= _period_end(period.str[:7]) <= np.datetime64(pd.Timestamp(before).date(), "D")
    part = checksums[days]
    months = _sum_by(
        part["symbol"].to_numpy(dtype=object),
        np.array([p[:7] for p in part["period"]], dtype=object),
        part["rows"].to_numpy(dtype=np.int64),
        part["checksum"].to_numpy(dtype=np.int64),
    )
    frame = pd.concat([f for f in (checksums[~days], months) if len(f)] or [empty_checksums()])
    frame = frame.sort_values(["symbol", "period"], ignore_index=True)
    return frame[list(CHECKSUM_COLUMNS)].astype({"rows": "int64", "checksum": "int64"})


@dataclass(frozen=True)
class SourceCheck:
    """What a comparison of the source's delivery with the stored checksums found."""

    # symbol, period ("YYYY-MM"), dates (the ISO dates that differ, ", "-joined; "" unknown)
    disagreements: pd.DataFrame
    checksums: pd.DataFrame  # the checksums to store after the refresh
    baselined: int  # (symbol, month)s with no stored checksum before: taken as delivered


def check_source(
    stored: pd.DataFrame | None,
    delivered: pd.DataFrame,
    *,
    since: pd.Timestamp | None,
    last: pd.Timestamp,
) -> SourceCheck:
    """Compare the delivery (raw bars of the whole source) with the ``stored`` checksums on
    every period ending on or before ``since`` (what an incremental refresh does not re-read;
    ``since`` None: a full refresh, which takes everything in), and the checksums to store:
    the stored ones for those periods (a disagreement stays until a full refresh takes it in),
    the delivery's for the re-read dates and for symbols never checksummed, day checksums rolled
    up into months ending ``DAY_CHECKSUM_DAYS`` or more before ``last``. A symbol the delivery
    does not hold (an unreadable or removed file) is not compared: its checksums are kept.
    Vectorised over the delivery's rows; text is made only for the stored entries."""
    rows = _hashed(delivered)
    before = np.datetime64((pd.Timestamp(last) - pd.Timedelta(days=DAY_CHECKSUM_DAYS)).date(), "D")
    none = pd.DataFrame({"symbol": [], "period": [], "dates": []}, dtype=object)
    if since is None or stored is None:
        # A full refresh takes everything in; a store never checksummed takes the source's
        # older periods as delivered (they could not be compared: counted as baselined).
        baselined = 0
        if since is not None:
            old = rows.take(rows.day <= np.datetime64(pd.Timestamp(since).date(), "D"))
            baselined = len(np.unique(old.month_keys()))
        return SourceCheck(
            none, rolled_up(_entries(rows, before=before), before=pd.Timestamp(before)), baselined
        )
    cut = np.datetime64(pd.Timestamp(since).date(), "D")
    reread, old = rows.take(rows.day > cut), rows.take(rows.day <= cut)
    stored_end = _period_end(stored["period"])
    is_day = np.array([len(p) == 10 for p in stored["period"]], dtype=bool)
    # Symbols by the delivery's codes (-1: not delivered).
    stored_code = pd.Index(rows.names).get_indexer(stored["symbol"].to_numpy(dtype=object))
    present = stored_code >= 0
    compared = stored[(stored_end <= cut) & present]
    known_names = np.zeros(len(rows.names), dtype=bool)
    known_names[stored_code[present]] = True
    known = known_names[old.code]
    baseline, mine = old.take(~known), old.take(known)
    # The delivery at the stored granularity: a month where the store holds a month checksum.
    as_month = (stored_end <= cut) & present & ~is_day
    wanted = (stored_code[as_month].astype(np.int64) << 32) + np.array(
        stored["period"].to_numpy(dtype=object)[as_month], dtype="datetime64[M]"
    ).astype(np.int64)
    in_month = np.isin(mine.month_keys(), wanted)
    months = _month_sums(mine.take(in_month))
    delivered_periods = pd.concat(
        [_entries(mine.take(~in_month), before=np.datetime64("NaT")), months], ignore_index=True
    )
    joined = compared.merge(
        delivered_periods, on=["symbol", "period"], how="outer", suffixes=("", "_source")
    )
    differs = ~(
        (joined["rows"] == joined["rows_source"])
        & (joined["checksum"] == joined["checksum_source"])
    )
    found = joined.loc[differs, ["symbol", "period"]]
    disagreements = pd.DataFrame(
        {
            "symbol": found["symbol"].to_numpy(dtype=object),
            "period": np.array([p[:7] for p in found["period"]], dtype=object),
            "dates": np.array([p if len(p) == 10 else "" for p in found["period"]], dtype=object),
        }
    )
    if len(disagreements):
        disagreements = (
            disagreements.groupby(["symbol", "period"], sort=True)["dates"]
            .agg(lambda d: ", ".join(sorted(x for x in d if x)))
            .reset_index()
        )
    else:
        disagreements = none
    reread_names = np.zeros(len(rows.names), dtype=bool)
    reread_names[reread.code] = True
    not_reread = ~(present & reread_names[np.maximum(stored_code, 0)])
    kept = stored[~present | ((stored_end > cut) & not_reread)]
    fresh = [_entries(part, before=before) for part in (baseline, reread) if len(part.code)]
    checksums = pd.concat(
        [frame for frame in (compared, kept, *fresh) if len(frame)] or [empty_checksums()],
        ignore_index=True,
    )
    baselined = len(np.unique(baseline.month_keys()))
    return SourceCheck(
        disagreements,
        rolled_up(checksums[list(CHECKSUM_COLUMNS)], before=pd.Timestamp(before)),
        baselined,
    )


def disagreeing_dates(
    delivered: pd.DataFrame, stored: pd.DataFrame, defects: pd.DataFrame, months: pd.DataFrame
) -> pd.DataFrame:
    """The dates of the (symbol, month)s in ``months`` where the delivery and the stored bars
    differ (a value, or a bar only one of them holds), leaving out bars with a recorded defect
    (the store holds those repaired, or not at all)."""
    keys = ["symbol", "date"]

    def inside(frame: pd.DataFrame) -> pd.DataFrame:
        month = _days(pd.to_datetime(frame["date"]).to_numpy(dtype="datetime64[ns]"), "M")
        keys = pd.MultiIndex.from_arrays([frame["symbol"].to_numpy(dtype=object), month])
        mask = keys.isin(pd.MultiIndex.from_frame(months[["symbol", "period"]]))
        return _typed(frame[bar_columns(frame)][np.asarray(mask, dtype=bool)])

    source, lake = inside(delivered), inside(stored)
    joined = source.merge(lake, on=keys, how="outer", suffixes=("", "_lake"), indicator=True)
    same = joined["_merge"] == "both"
    for column in value_columns(source, lake):
        new, old = joined[column].to_numpy(float), joined[f"{column}_lake"].to_numpy(float)
        # an optional value the store never held (kept from a later refresh on) is no revision
        unheld = np.isnan(old) if column in OPTIONAL_COLUMNS else False
        same &= (new == old) | (np.isnan(new) & np.isnan(old)) | unheld
    differing = joined.loc[~same, keys]
    if len(defects):
        differing = differing[~_key_mask(differing, defects)]
    values = differing["date"].to_numpy(dtype="datetime64[ns]")
    differing = differing.assign(period=_days(values, "M"), day=_days(values, "D"))
    return (
        differing.groupby(["symbol", "period"], sort=True)["day"]
        .agg(lambda d: ", ".join(sorted(d)))
        .rename("dates")
        .reset_index()
    )


def changed_bars(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """The (symbol, date)s whose bar differs between two reads: ``revised`` (a value changed),
    ``added`` (only ``after`` holds it) or ``removed`` (only ``before``), with the closes."""
    keys = ["symbol", "date"]
    joined = _typed(before).merge(
        _typed(after), on=keys, how="outer", suffixes=("_before", ""), indicator=True
    )
    same = joined["_merge"] == "both"
    for column in value_columns(before, after):
        new, old = joined[column].to_numpy(float), joined[f"{column}_before"].to_numpy(float)
        same &= (new == old) | (np.isnan(new) & np.isnan(old))
    changed = joined[~same]
    change = np.select(
        [changed["_merge"] == "left_only", changed["_merge"] == "right_only"],
        ["removed", "added"],
        "revised",
    )
    return pd.DataFrame(
        {
            "symbol": changed["symbol"].to_numpy(dtype=object),
            "date": changed["date"].to_numpy(dtype="datetime64[ns]"),
            "change": change.astype(object),
            "close_before": changed["close_before"].to_numpy(float),
            "close": changed["close"].to_numpy(float),
        }
    ).sort_values(keys, ignore_index=True)
