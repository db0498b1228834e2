"""The bar store: a sleeve's bar lake as immutable Parquet segments named by one manifest.

Layout, inside the lake's value folder of ``bars[sleeve]`` (``ParquetLake.location``)::

    manifest.json                 the lake's bundle manifest, extended with a ``bar_store`` entry
    bars-<token>.parquet          the base segment: every bar as of the last compaction
    bars_00007-<token>.parquet    segment 7: the rows one refresh added or revised, and tombstones
    defects-<token>.parquet       every defect found (small; rewritten when it changes)
    revisions-<token>.parquet     every source revision (small; rewritten when it changes)

Newest wins: segments are ordered (base first, then by sequence number); for a (symbol, date)
the row of the newest segment holding it is the bar, and a tombstone (``removed`` true: a stored
bar a later delivery dropped or quarantined) deletes it. Compaction (when more than
``COMPACT_AFTER`` segments are live) merges them under this rule into a new base segment.
Segments are sorted by (date, symbol) in row groups of ``ROW_GROUP`` rows so that a reader of a
date window (``read_window``) decodes only the row groups that overlap it.

Atomicity: a write never changes a file the manifest names. New segments and tables are written
under fresh names, each atomically (the lake's ``write_file``: a temporary file, then a rename);
then ``manifest.json`` is switched in one atomic ``write_file``; only then are the files the new
manifest no longer names deleted. A write killed before the switch leaves the previous manifest
and every file it names untouched (readers never see a half refresh); what it wrote is a file no
manifest names, which ``tvq lake verify`` lists as a leftover and ``tvq lake clean`` removes.
The caller holds the value's writer lock (``ParquetLake.writer``) across read-merge-write.

The manifest stays a valid lake bundle (``{"tables": {name: file}, "type": ...}``) whose type is
the registered record ``BarStore`` (decoded by :func:`assemble`), so ``ParquetLake.read`` returns
the whole ``BarHistory`` and ``verify``, ``clean`` and ``quarantine`` work on it unchanged. Only
path operations that ``UPath`` also supports are used here (``/``, ``open``, ``exists``, ``unlink``,
``iterdir``).
"""

import dataclasses
import io
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tvq_assets.quant import bars as bar_lake
from tvq_resources import lake as lake_module
from tvq_resources.lake import MANIFEST, ParquetLake
from tvq_resources.records import register_decoder

ASSET = ("bars",)
BASE = "bars"  # the base segment's table name (also what the lake's bundle called the bars)
COMPACT_AFTER = 16  # live segments beyond which a write compacts them into one base segment
ROW_GROUP = 32_768  # rows per Parquet row group: the unit a date filter can skip
VERSION = 1
# The record type the manifest names (registered below with its table names); stores written
# before the registry name the decoder by its import path, which still resolves to it.
RECORD = "BarStore"
_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("date", pa.timestamp("ns")),
        *((name, pa.float64()) for name in bar_lake.VALUE_COLUMNS),
        ("removed", pa.bool_()),
        ("version", pa.int64()),
    ]
)
# Tables beside the segments: the defects as they were before a version (kept for as-of reads)
# and the source's checksums (``checksums``: see ``source_checksums``).
DEFECTS_KNOWN = "defects_known"
CHECKSUMS = "checksums"


@dataclass(frozen=True)
class Segment:
    table: str  # name in the manifest's tables (``bars`` or ``bars_00007``)
    file: str
    rows: int
    first: str | None  # ISO date of the segment's first and last row
    last: str | None
    # The store version that wrote the segment (its rows' ``version`` unless compacted); stores
    # written before versions: derived from the table name (``bars`` 0, ``bars_00007`` 7).
    sequence: int | None = None

    @property
    def version(self) -> int:
        if self.sequence is not None:
            return int(self.sequence)
        return int(self.table.rsplit("_", 1)[1]) if "_" in self.table else 0


@dataclass(frozen=True)
class State:
    """What the manifest says about the stored bars (empty for a sleeve never stored)."""

    segments: tuple[Segment, ...] = ()
    tables: Mapping[str, str] = field(default_factory=dict)  # defects, revisions
    # per symbol: (first, last) ISO date of its stored bars
    symbols: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    rows: int = 0
    sequence: int = 0  # the store version: bumped by every write (a run's bound, see read_window)
    sources: Mapping[str, list] = field(default_factory=dict)  # file fingerprints of the source
    # the version from which the current ``defects`` table holds, and when each version was
    # written (ISO, UTC), by version
    defects_since: int = 0
    written: Mapping[str, str] = field(default_factory=dict)
    # the superseded defects tables: {version from which it held: file}
    defects_known: Mapping[int, str] = field(default_factory=dict)

    @property
    def last_date(self) -> pd.Timestamp | None:
        dates = [s.last for s in self.segments if s.last]
        return pd.Timestamp(max(dates)) if dates else None

    @property
    def first_date(self) -> pd.Timestamp | None:
        dates = [s.first for s in self.segments if s.first]
        return pd.Timestamp(min(dates)) if dates else None


def folder(lake: ParquetLake, sleeve: str) -> Path:
    return lake.location(ASSET, sleeve)


def _what(sleeve: str) -> str:
    return f"bars[{sleeve}]"


def state(lake: ParquetLake, sleeve: str) -> State | None:
    """The manifest's view of the store; None when nothing is stored in the segment layout
    (a sleeve never refreshed, or a lake written by the single-bundle layout before)."""
    path = folder(lake, sleeve) / MANIFEST
    if not path.exists():
        return None
    try:
        with path.open("rb") as stream:
            manifest = json.loads(stream.read())
    except (OSError, ValueError) as error:
        raise lake_module.LakeReadError(
            lake_module._damaged(_what(sleeve), path, error), path
        ) from error
    entry = manifest.get("bar_store")
    if entry is None:
        return None
    tables = manifest["tables"]
    return State(
        segments=tuple(Segment(**segment) for segment in entry["segments"]),
        tables={k: v for k, v in tables.items() if k in ("defects", "revisions", CHECKSUMS)},
        symbols={k: tuple(v) for k, v in entry["symbols"].items()},
        rows=int(entry["rows"]),
        sequence=int(entry["sequence"]),
        sources=entry.get("sources", {}),
        defects_since=int(entry.get("defects_since", 0)),
        written=entry.get("written", {}),
        defects_known={
            int(k.rsplit("_", 1)[1]): v
            for k, v in tables.items()
            if k.startswith(DEFECTS_KNOWN + "_")
        },
    )


def _segment_frame(
    bars: pd.DataFrame, removed: pd.DataFrame | None = None, *, version: int
) -> pa.Table:
    """Rows (and tombstones for ``removed`` keys) as a segment of ``version``, sorted by (date,
    symbol); rows that already carry a ``version`` (a compaction) keep theirs.

    Built column by column (one sort order, one Arrow column at a time): a first load writes the
    whole history as one segment, and copies of the frame are what its memory peaks on."""
    bar_columns = bar_lake.bar_columns(bars)
    parts = [bars]
    if removed is not None and len(removed):
        parts.append(removed[["symbol", "date"]].assign(removed=True))
    symbols = _joined(parts, "symbol", object, None)
    dates = _joined(parts, "date", "datetime64[ns]", np.datetime64("NaT", "ns"))
    versions = _joined(parts, "version", np.int64, version)
    flags = _joined(parts, "removed", bool, False)
    codes, _ = pd.factorize(symbols, sort=True)
    order = np.lexsort((versions, codes, dates.view(np.int64)))  # (date, symbol, version), stable
    schema = _schema(bar_columns)
    columns = {
        "symbol": symbols[order],
        "date": dates[order],
        **{name: _joined(parts, name, float, np.nan)[order] for name in bar_columns[2:]},
        "removed": flags[order],
        "version": versions[order],
    }
    return pa.Table.from_arrays(
        [pa.array(columns[field.name], type=field.type) for field in schema], schema=schema
    )


def _joined(parts: Sequence[pd.DataFrame], name: str, dtype, missing) -> np.ndarray:
    """Column ``name`` of the frames one after another, as ``dtype``; a frame without it holds
    ``missing`` (segments written before an optional column was kept, tombstones' values)."""
    arrays = [
        part[name].to_numpy(dtype=dtype) if name in part else np.full(len(part), missing, dtype)
        for part in parts
    ]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _schema(bar_columns: Sequence[str]) -> pa.Schema:
    """The segment schema: OHLCV, then the optional value columns the rows carry (a segment
    of bars without quote volume is written exactly as before quote volumes were kept)."""
    optional = [name for name in bar_columns if name in bar_lake.OPTIONAL_COLUMNS]
    if not optional:
        return _SCHEMA
    at = _SCHEMA.get_field_index("removed")
    schema = _SCHEMA
    for offset, name in enumerate(optional):
        schema = schema.insert(at + offset, pa.field(name, pa.float64()))
    return schema


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=ROW_GROUP, compression="snappy")
    return buffer.getvalue()


def _frame_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=True)
    return buffer.getvalue()


def _read_segment(
    path: Path, *, what: str, since: pd.Timestamp | None = None, version: int = 0
) -> pd.DataFrame:
    """A segment's rows with their ``version`` (``version`` for a segment written before rows
    carried theirs)."""
    try:
        with path.open("rb") as stream:
            filters = None if since is None else [("date", ">=", pd.Timestamp(since))]
            table = pq.read_table(stream, filters=filters)
    except Exception as error:
        raise lake_module.LakeReadError(lake_module._damaged(what, path, error), path) from error
    frame = table.to_pandas()
    if "version" not in frame:
        frame["version"] = np.int64(version)
    return frame


def _resolve(segments: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Bars by (symbol, date) from segments oldest first: the row of the newest version of a key
    wins (then the later segment), a tombstone deletes it. Also the number of tombstones that
    were applied.

    Column by column in NumPy: each column of the segments is joined once and the winning rows
    taken once (no frame is concatenated, taken and rebuilt: a run reads its history window of
    every symbol this way, so this is on the daily path)."""
    parts = [s for s in segments if len(s)]
    if not parts:
        return bar_lake.empty_bars(), 0
    order_of_segment = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    versions = _joined(parts, "version", np.int64, 0)
    symbols = _joined(parts, "symbol", object, None)
    codes, _ = pd.factorize(symbols, sort=True)
    dates = _joined(parts, "date", "datetime64[ns]", np.datetime64("NaT", "ns"))
    order = np.lexsort((order_of_segment, versions, dates.view(np.int64), codes))
    codes, ordered_dates = codes[order], dates.view(np.int64)[order]
    newest = np.ones(len(order), dtype=bool)
    newest[:-1] = (codes[1:] != codes[:-1]) | (ordered_dates[1:] != ordered_dates[:-1])
    chosen = order[newest]
    removed = _joined(parts, "removed", bool, False)[chosen]  # no column: no tombstone
    kept = chosen[~removed]
    # Segments without an optional column (written before it was kept, or by a source without
    # it) hold it as missing: the column is read when any segment holds it.
    columns = bar_lake.bar_columns(*parts)
    bars = pd.DataFrame(
        {
            "symbol": symbols[kept],
            "date": dates[kept],
            **{name: _joined(parts, name, float, np.nan)[kept] for name in columns[2:]},
        },
        columns=columns,
    )
    return bars, int(removed.sum())


def assemble(**tables: pd.DataFrame) -> bar_lake.BarHistory:
    """The ``BarHistory`` of a manifest's tables (how ``ParquetLake.read`` rebuilds the store):
    the segments resolved newest-wins in table-name order, with defects and revisions."""
    defects = tables.pop("defects", None)
    revisions = tables.pop("revisions", None)
    tables.pop(CHECKSUMS, None)
    for name in [n for n in tables if n.startswith(DEFECTS_KNOWN)]:
        tables.pop(name)
    # bars < bars_00001 < bars_00002 ...: the table order is the version order of old segments
    segments = [
        frame
        if "version" in frame
        else frame.assign(version=int(name.rsplit("_", 1)[1]))
        if "_" in name
        else frame.assign(version=0)
        for name, frame in sorted(tables.items())
    ]
    bars, _ = _resolve(segments)
    return bar_lake.BarHistory(
        bars=bars,
        defects=bar_lake.empty_defects() if defects is None else defects,
        revisions=bar_lake.empty_revisions() if revisions is None else revisions,
    )


# The base segment, numbered segments, defects and revisions; any other table is refused.
register_decoder(
    RECORD,
    assemble,
    required=("defects", "revisions"),
    more=rf"{BASE}(_\d{{5}})?|{DEFECTS_KNOWN}_\d{{5}}|{CHECKSUMS}",
    legacy=("tvq_assets.bar_store:assemble",),
)


def _defects_and_revisions(
    lake: ParquetLake, sleeve: str, current: State
) -> tuple[pd.DataFrame, pd.DataFrame]:
    base, what = folder(lake, sleeve), _what(sleeve)
    tables = {
        name: lake_module.read_table(base / file, what=what)
        for name, file in current.tables.items()
    }
    return (
        tables.get("defects", bar_lake.empty_defects()),
        tables.get("revisions", bar_lake.empty_revisions()),
    )


def read_window(
    lake: ParquetLake,
    sleeve: str,
    *,
    since: pd.Timestamp | None,
    last_bars: bool = True,
    tables: bool = True,
    known: int | None = None,
) -> bar_lake.BarHistory:
    """The stored bars dated on or after ``since`` (all of them when None), plus the last bar of
    every symbol whose stored bars all end before ``since`` (so a run still sees when each
    symbol last traded; not with ``last_bars=False``), with every defect and revision (empty
    tables with ``tables=False``). Sorted by (symbol, date).

    ``known``: the bars as they were known at that store version (``State.sequence`` when a run
    read them): every row written after it is left out, the defects are those of then, the
    revisions those seen by then. Such a read decodes the whole store (a past run's
    reproduction, not the daily path)."""
    current = state(lake, sleeve)
    if known is not None:
        return _windowed(as_known(lake, sleeve, known, current=current), since)
    if current is None:
        if not lake.exists(ASSET, sleeve):
            raise FileNotFoundError(f"{_what(sleeve)} has not been materialised; refresh it first")
        return _windowed(_legacy(lake, sleeve), since)
    base, what = folder(lake, sleeve), _what(sleeve)
    parts = []
    for segment in current.segments:
        if since is not None and segment.last is not None and pd.Timestamp(segment.last) < since:
            continue  # nothing in the window
        parts.append(
            _read_segment(base / segment.file, what=what, since=since, version=segment.version)
        )
    if since is not None and last_bars:
        ended = {s: last for s, (_, last) in current.symbols.items() if pd.Timestamp(last) < since}
        if ended:  # their keys are all before the window: resolved with it, in one sort
            parts.extend(_last_bar_parts(ended, lake, sleeve, current))
    bars, _ = _resolve(parts)
    if not tables:
        return bar_lake.BarHistory(
            bars=bars, defects=bar_lake.empty_defects(), revisions=bar_lake.empty_revisions()
        )
    defects, revisions = _defects_and_revisions(lake, sleeve, current)
    return bar_lake.BarHistory(bars=bars, defects=defects, revisions=revisions)


def _windowed(history: bar_lake.BarHistory, since: pd.Timestamp | None) -> bar_lake.BarHistory:
    """``read_window``'s rows of a history held whole: dated on or after ``since``, plus each
    symbol's last bar."""
    if since is None:
        return history
    bars = history.bars
    last = bars.groupby("symbol", sort=False)["date"].transform("max")
    keep = (bars["date"] >= since) | (bars["date"] == last)
    return bar_lake.BarHistory(
        bars=bars[keep].reset_index(drop=True),
        defects=history.defects,
        revisions=history.revisions,
    )


class UnknownVersion(ValueError):
    """A bound names a store version this store cannot answer for."""


def as_known(
    lake: ParquetLake, sleeve: str, known: int, *, current: State | None = None
) -> bar_lake.BarHistory:
    """The whole store as it was at version ``known``: per (symbol, date) the row of the newest
    version <= ``known`` (a tombstone deletes it), the defects table of then, and the revisions
    seen by then. Compaction and full refreshes keep every version's rows (see ``write``), so
    any version this store wrote can be answered."""
    current = current if current is not None else state(lake, sleeve)
    if current is None:
        raise UnknownVersion(
            f"{_what(sleeve)} holds no versioned segment store; bars as known at version "
            f"{known} cannot be read (re-materialise with restate to read the current bars)"
        )
    if known > current.sequence or known < 0:
        raise UnknownVersion(
            f"{_what(sleeve)} is at version {current.sequence}; version {known} was never "
            "written here (the lake was replaced?): re-materialise with restate"
        )
    base, what = folder(lake, sleeve), _what(sleeve)
    parts = []
    for segment in current.segments:
        if segment.sequence is not None and segment.version > known and segment.table != BASE:
            continue  # written after the bound (a base may hold older versions: compacted)
        frame = _read_segment(base / segment.file, what=what, version=segment.version)
        parts.append(frame[frame["version"].to_numpy() <= known])
    bars, _ = _resolve(parts)
    if known >= current.defects_since:
        file = current.tables.get("defects")
    else:
        held = [v for v in current.defects_known if v <= known]
        file = current.defects_known[max(held)] if held else None
    defects = (
        bar_lake.empty_defects() if file is None else lake_module.read_table(base / file, what=what)
    )
    revisions = (
        lake_module.read_table(base / current.tables["revisions"], what=what)
        if "revisions" in current.tables
        else bar_lake.empty_revisions()
    )
    written = current.written.get(str(known))
    if written is not None:
        revisions = revisions[revisions["seen_at"] <= pd.Timestamp(written)].reset_index(drop=True)
    return bar_lake.BarHistory(bars=bars, defects=defects, revisions=revisions)


def _last_bar_parts(
    ended: Mapping[str, str], lake: ParquetLake, sleeve: str, current: State
) -> list[pd.DataFrame]:
    """The stored rows of each (symbol, last date) in ``ended``, one frame per segment holding
    any (to resolve with the segments' other rows)."""
    base, what = folder(lake, sleeve), _what(sleeve)
    wanted = pd.DataFrame(
        {"symbol": list(ended), "date": pd.to_datetime(list(ended.values())).astype("M8[ns]")}
    )
    days = sorted(set(ended.values()))
    parts = []
    for segment in current.segments:
        if segment.first is None or segment.first > days[-1] or segment.last < days[0]:
            continue
        path = base / segment.file
        try:
            with path.open("rb") as stream:
                table = pq.read_table(
                    stream,
                    filters=[
                        ("date", "in", [pd.Timestamp(day) for day in days]),
                        ("symbol", "in", list(ended)),
                    ],
                )
        except Exception as error:
            raise lake_module.LakeReadError(
                lake_module._damaged(what, path, error), path
            ) from error
        frame = table.to_pandas()
        if "version" not in frame:
            frame["version"] = np.int64(segment.version)
        # The filter is per column; keep each symbol's own last date only.
        parts.append(frame.merge(wanted, on=["symbol", "date"]))
    return parts


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    codes, _ = pd.factorize(frame["symbol"].to_numpy(dtype=object), sort=True)
    order = np.lexsort((frame["date"].to_numpy(dtype="datetime64[ns]").view(np.int64), codes))
    return frame.iloc[order].reset_index(drop=True)


def _legacy(lake: ParquetLake, sleeve: str) -> bar_lake.BarHistory:
    """A lake written before the segment layout: one table, or one BarHistory bundle."""
    stored = lake.read(list(ASSET), sleeve)
    if isinstance(stored, bar_lake.BarHistory):
        return stored
    return bar_lake.BarHistory(
        bars=stored, defects=bar_lake.empty_defects(), revisions=bar_lake.empty_revisions()
    )


def read_history(
    lake: ParquetLake,
    sleeve: str,
    *,
    as_of: pd.Timestamp,
    rows: int,
    calendar: str,
    known: int | None = None,
) -> bar_lake.BarHistory:
    """What a run's returns history of ``rows`` grid dates ending at its last bar on or before
    ``as_of`` needs (``returns.returns_history``): the bars from a date window that covers that
    grid (widened until it does), each symbol's last bar, every defect and revision.

    The window is ``rows + 1`` calendar dates before ``as_of`` (crypto) or 7/5 of that plus a
    month of holidays (weekday); it is doubled while the grid would start at its edge.

    ``known``: the bars as known at that store version (see ``read_window``), windowed alike."""
    from tvq_assets.quant import returns as returns_engine

    as_of = pd.Timestamp(as_of).normalize()
    current = state(lake, sleeve)
    whole = None if known is None else as_known(lake, sleeve, known, current=current)
    first = current.first_date if current is not None else None
    if first is None:
        return whole if whole is not None else read_window(lake, sleeve, since=None)
    days = rows + 2 if calendar == "crypto" else int(np.ceil((rows + 1) * 7 / 5)) + 31
    span = pd.Timedelta(days=days)
    while True:
        since = as_of - span
        if whole is None:
            history = read_window(lake, sleeve, since=since)
        else:
            history = _windowed(whole, since)
        if since <= first:
            return history
        known = history.bars[history.bars["date"] <= as_of]
        inside = known[known["date"] >= since]
        if len(inside):
            grid = returns_engine.calendar_grid(
                pd.DatetimeIndex(inside["date"].unique()),
                calendar=calendar,
                end=known["date"].max(),
                rows=rows + 1,
            )
            if len(grid) == rows + 1 and grid[0] > since:
                return history
        span *= 2


def read_tail(
    lake: ParquetLake, sleeve: str, *, since: pd.Timestamp, context: int, symbols=None
) -> bar_lake.BarHistory:
    """Stored bars dated after ``since``, plus at least ``context`` bars on or before it of each
    of ``symbols`` (the delivered ones; all when None), or all of a symbol's bars when it has
    fewer: what a refresh delivering the dates after ``since`` must merge with and clean
    against. Widens the date window until those symbols have their context (daily: one pass)."""
    current = state(lake, sleeve)
    first = current.first_date if current is not None else None
    span = pd.Timedelta(days=context + 3)  # daily bars: one pass; gaps widen it
    while True:
        start = since - span
        # Symbols that ended before the window are not delivered: no context needed for them.
        history = read_window(lake, sleeve, since=start, last_bars=False, tables=False)
        bars = history.bars
        if first is None or start <= first:
            return history
        before = bars[bars["date"] <= since]
        counts = before.groupby("symbol")["date"].size()
        if symbols is not None:  # a symbol with no bar in the window has none of its context
            counts = counts.reindex(pd.Index(list(symbols)), fill_value=0)
        older = pd.Series(
            {s: pd.Timestamp(f) for s, (f, _) in (current.symbols.items() if current else ())}
        )
        short = counts[counts < context]
        if short.empty or not (older.reindex(short.index) < start).any():
            return history
        span *= 2


@dataclass(frozen=True)
class Written:
    segments: int  # live segments after the write
    compacted: bool
    rows: int  # stored bars after the write
    files: tuple[str, ...]
    version: int = 0  # the store version this write made (what a run reading it records)


def write(
    lake: ParquetLake,
    sleeve: str,
    *,
    delta: pd.DataFrame,
    removed: pd.DataFrame,
    defects: pd.DataFrame,
    revisions: pd.DataFrame,
    symbols: Mapping[str, tuple[str, str]],
    rows: int,
    sources: Mapping[str, list] | None = None,
    compact_after: int = COMPACT_AFTER,
    replace: bool = False,
    previous: Mapping[str, pd.DataFrame] | None = None,
    checksums: pd.DataFrame | None = None,
    now: pd.Timestamp | None = None,
) -> Written:
    """Append one segment (``delta`` rows and tombstones for ``removed`` keys), replace defects,
    revisions and the source's ``checksums`` (kept when None), and switch the manifest: the
    store's next version. Compact when more than ``compact_after`` segments would be live; with
    ``replace`` (a first store, or a store of the layout before segments), ``delta`` becomes the
    only (base) segment. The caller holds the writer lock. See the module docstring for
    atomicity.

    Nothing a version needs is lost (bitemporal): compaction keeps every row of every version
    (superseded values and tombstones with their ``version``: a revision is one more row), and
    a defects table that changes stays named as ``defects_known_<version it held from>``."""
    base = folder(lake, sleeve)
    base.mkdir(parents=True, exist_ok=True)
    current = state(lake, sleeve)
    legacy = current is None and lake.exists(ASSET, sleeve) and not replace
    fresh = replace or legacy
    counted = current.sequence if current is not None else 0  # versions keep counting
    current = State() if current is None or replace else current
    token = uuid.uuid4().hex[:12]
    written: list[str] = []
    sequence = counted + 1  # this write's version
    try:
        segments = list(current.segments)
        if legacy:
            # The first write after the single-bundle layout: its bars become the base segment.
            old = _legacy(lake, sleeve).bars
            frame = _segment_frame(old, version=sequence)
            segments = [_put(base, BASE, token, frame, written, sequence)]
        if len(delta) or len(removed):
            table = f"{BASE}_{sequence:05d}" if segments else BASE
            frame = _segment_frame(delta, removed, version=sequence)
            segments.append(_put(base, table, token, frame, written, sequence))
        compacted = len(segments) > compact_after
        if compacted:
            parts = [
                _read_segment(base / s.file, what=_what(sleeve), version=s.version)
                for s in segments
            ]
            every = pd.concat(parts, ignore_index=True)
            segments = [
                _put(
                    base,
                    BASE,
                    uuid.uuid4().hex[:12],
                    _segment_frame(every, version=sequence),
                    written,
                    sequence,
                )
            ]
        tables = {}
        defects_since, known = current.defects_since, dict(current.defects_known)
        for name, frame in (("defects", defects), ("revisions", revisions), (CHECKSUMS, checksums)):
            stored = current.tables.get(name)
            if frame is None:
                if stored:
                    tables[name] = stored
                continue
            if stored and not fresh and _same(lake, sleeve, stored, frame, previous):
                tables[name] = stored
                continue
            if name == "defects" and stored and not fresh:
                known[defects_since] = stored  # the defects of the versions before this one
                defects_since = sequence
            tables[name] = f"{name}-{token}.parquet"
            lake_module.write_file(_frame_bytes(frame), base / tables[name])
            written.append(tables[name])
        history = {f"{DEFECTS_KNOWN}_{v:05d}": file for v, file in sorted(known.items())}
        moment = bar_lake._utc_naive(now) if now is not None else None
        manifest = {
            "tables": {**{s.table: s.file for s in segments}, **tables, **history},
            "type": RECORD,
            "series": [],
            "bar_store": {
                "version": VERSION,
                "segments": [s.__dict__ for s in segments],
                "symbols": {k: list(v) for k, v in sorted(symbols.items())},
                "rows": int(rows),
                "sequence": sequence,
                "sources": dict(sources if sources is not None else current.sources),
                "defects_since": defects_since,
                "written": {
                    **current.written,
                    **({} if moment is None else {str(sequence): moment.isoformat()}),
                },
            },
        }
        # The switch: one atomic replace of manifest.json.
        lake_module.write_file(json.dumps(manifest).encode(), base / MANIFEST)
    except BaseException:
        for name in written:
            (base / name).unlink(missing_ok=True)
        raise
    named = set(manifest["tables"].values())
    for path in base.iterdir():
        # Files of the previous manifest (compacted segments, replaced tables), a legacy single
        # table, and whatever a killed write left: the caller holds the lock, no writer is live.
        hidden = path.name.startswith(".")
        stale = (hidden and path.name.endswith(".tmp")) or not (hidden or path.name in named)
        if stale and path.name != MANIFEST:
            path.unlink(missing_ok=True)
    single = base.parent / f"{base.name}.parquet"
    if single.exists():
        single.unlink()
    return Written(
        segments=len(segments),
        compacted=compacted,
        rows=int(rows),
        files=tuple(written),
        version=sequence,
    )


def _put(
    base: Path, table: str, token: str, frame: pa.Table, written: list[str], sequence: int
) -> Segment:
    name = f"{table}-{token}.parquet"
    lake_module.write_file(_parquet_bytes(frame), base / name)
    written.append(name)
    dates = frame.column("date")
    first = pc.min(dates).as_py() if len(frame) else None
    last = pc.max(dates).as_py() if len(frame) else None
    return Segment(
        table=table,
        file=name,
        rows=len(frame),
        first=None if first is None else pd.Timestamp(first).strftime("%Y-%m-%d"),
        last=None if last is None else pd.Timestamp(last).strftime("%Y-%m-%d"),
        sequence=sequence,
    )


def _same(lake: ParquetLake, sleeve: str, file: str, frame: pd.DataFrame, previous=None) -> bool:
    """Whether the stored table ``file`` (``previous`` holds it when already read, by table
    name) already holds ``frame`` (no rewrite needed)."""
    name = file.rsplit("-", 1)[0]
    if previous is not None and name in previous:
        stored = previous[name]
    else:
        stored = lake_module.read_table(folder(lake, sleeve) / file, what=_what(sleeve))
    return stored.shape == frame.shape and stored.reset_index(drop=True).equals(
        frame.reset_index(drop=True)
    )


def compact(lake: ParquetLake, sleeve: str) -> Written:
    """Merge every live segment into one base segment (content unchanged), by manifest switch."""
    with lake.writer(list(ASSET), sleeve):
        current = state(lake, sleeve)
        if current is None:
            raise FileNotFoundError(f"{_what(sleeve)}: no segment store to compact")
        defects, revisions = _defects_and_revisions(lake, sleeve, current)
        return write(
            lake,
            sleeve,
            delta=bar_lake.empty_bars(),
            removed=bar_lake.empty_bars()[["symbol", "date"]],
            defects=defects,
            revisions=revisions,
            symbols=current.symbols,
            rows=current.rows,
            compact_after=0,
        )


def resume_date(current: State, defects: pd.DataFrame) -> pd.Timestamp:
    """The date after which an incremental refresh re-reads the source: ``REVISION_DAYS``
    before the stored last date, or the day before the oldest bar held back as not final within
    ``HELD_BACK_DAYS`` of it (see ``bars.REVISION_DAYS``)."""
    last = current.last_date
    since = last - pd.Timedelta(days=bar_lake.REVISION_DAYS)
    held = defects.loc[defects["rule"].isin(bar_lake.TRANSIENT), "date"]
    held = held[held >= last - pd.Timedelta(days=bar_lake.HELD_BACK_DAYS)]
    if len(held):
        since = min(since, pd.Timestamp(held.min()) - pd.Timedelta(days=1))
    return since


@dataclass(frozen=True)
class Plan:
    """A refresh merged in memory and not yet written (see :func:`prepare`, :func:`commit`)."""

    sleeve: str
    since: pd.Timestamp | None  # the delivery holds the source's bars dated after it (None: all)
    defects: pd.DataFrame  # the delivery's defects (of the delivered rows only)
    update: bar_lake.Refresh  # the merge of the delivery into the stored tail
    frame: pd.DataFrame  # the bars the contract sees: stored context + merged tail, sorted
    rows: np.ndarray  # mask of ``frame``: the rows this refresh adds or revises
    symbols: Mapping[str, tuple[str, str]]  # the per-symbol date range after the refresh
    known_symbols: tuple[str, ...]  # symbols stored before the refresh
    total_rows: int
    rows_read: int
    seconds: Mapping[str, float]
    stored_tables: Mapping[str, pd.DataFrame] | None = None  # defects, revisions as read
    # the delivery compared with the stored checksums on the dates not re-read
    source_check: bar_lake.SourceCheck | None = None
    now: pd.Timestamp | None = None


def prepare(
    lake: ParquetLake,
    sleeve: str,
    *,
    fetch,
    calendar: str,
    bar_policy: bar_lake.BarPolicy,
    volume_spike_window: int,
    now: pd.Timestamp,
    full: bool = False,
    incremental: bool = False,
) -> tuple[Plan, object]:
    """Read what can be new from the source (``fetch(since)`` returns a market-data batch of
    the bars dated after ``since``), clean it against the stored context, merge it into the
    stored tail. Returns the plan and the batch (the bars after ``since``). Nothing is written.
    Raises ``bars.FutureBarError`` like ``bars.clean``.

    The source is fetched whole (its files are parsed whole anyway): the bars after ``since``
    are the delivery; the older ones are only hashed and compared with the stored checksums
    (``bars.check_source``), so a revision older than the re-read margin is reported.

    An ``incremental`` source (an exchange's API) is asked only for what can be new:
    ``fetch(since, known)`` delivers the bars after ``since`` of the stored symbols ``known``
    and the whole history of new ones; there is no older bar to compare with the checksums."""
    import time

    started = time.perf_counter()
    current = state(lake, sleeve)
    context = bar_lake.context_rows(volume_spike_window)
    since = None
    stored_tables = None
    if current is not None:
        stored_tables = _defects_and_revisions(lake, sleeve, current)
    if not full and current is not None and current.last_date is not None:
        since = resume_date(current, stored_tables[0])
    if incremental:
        whole = fetch(since, tuple(current.symbols) if since is not None else ())
        batch = whole
    else:
        whole = fetch(None)
        if since is not None and not set(pd.unique(whole.bars["symbol"])) <= set(current.symbols):
            # A symbol the store has never seen (a new file, a new listing) may bring history
            # from before ``since``: take the whole source in, or that history would be cut off.
            since = None
        batch = whole if since is None else _after(whole, since)
    fetched = time.perf_counter()
    if since is None:
        exists = lake.exists(ASSET, sleeve)
        stored = read_window(lake, sleeve, since=None) if exists else None
        before = bar_lake.empty_bars()
    else:
        delivered_symbols = pd.unique(batch.bars["symbol"])
        stored = read_tail(lake, sleeve, since=since, context=context, symbols=delivered_symbols)
        old = stored.bars
        before = old[old["date"] <= since].reset_index(drop=True)
        stored = bar_lake.BarHistory(
            bars=old[old["date"] > since].reset_index(drop=True),
            defects=stored_tables[0],
            revisions=stored_tables[1],
        )
    read = time.perf_counter()
    incoming = batch.bars
    keys = ["symbol", "date"]
    if since is not None:
        # The cleaning looks back on the stored bars (filler copies, the partial-last-bar median):
        # every stored bar the delivery does not bring again is context. Context rows were
        # cleaned when they came in, so only the delivered rows' findings and bars count.
        stored_rows = pd.concat([before, stored.bars], ignore_index=True)
        delivered = pd.MultiIndex.from_frame(incoming[keys])
        context_rows = stored_rows[~pd.MultiIndex.from_frame(stored_rows[keys]).isin(delivered)]
        cleaned = bar_lake.clean(
            pd.concat([context_rows, incoming[bar_lake.bar_columns(incoming)]], ignore_index=True),
            calendar=calendar,
            policy=bar_policy,
            now=now,
            superseded=batch.superseded,
        )
        ours = pd.MultiIndex.from_frame(cleaned.bars[keys]).isin(delivered)
        found = pd.MultiIndex.from_frame(cleaned.defects[keys]).isin(delivered)
        cleaned = bar_lake.Cleaned(
            bars=cleaned.bars[ours].reset_index(drop=True),
            defects=cleaned.defects[found].reset_index(drop=True),
        )
    else:
        cleaned = bar_lake.clean(
            incoming, calendar=calendar, policy=bar_policy, now=now, superseded=batch.superseded
        )
    update = bar_lake.refresh(stored, cleaned, seen_at=now)
    changed = update.changed
    if before.empty:  # nothing stored before the delivery: the history is sorted already
        frame = update.history.bars
    else:
        frame = _sorted(pd.concat([before, update.history.bars], ignore_index=True))
    if changed is frame:  # a first load: every row is new
        rows = np.ones(len(frame), dtype=bool)
    else:
        rows = pd.MultiIndex.from_frame(frame[["symbol", "date"]]).isin(
            pd.MultiIndex.from_frame(changed[["symbol", "date"]])
        )
    symbols = dict(current.symbols) if current is not None and since is not None else {}
    if len(frame):
        span = frame.groupby("symbol", sort=True)["date"].agg(["min", "max"])
        for symbol, first, last in zip(span.index, span["min"], span["max"], strict=True):
            old_first = symbols.get(symbol, (None, None))[0]
            first = first if old_first is None else min(first, pd.Timestamp(old_first))
            symbols[symbol] = (f"{first:%Y-%m-%d}", f"{last:%Y-%m-%d}")
    if since is None or current is None:
        total = len(update.history.bars)
    else:
        total = current.rows + update.added - update.removed
    merged = time.perf_counter()
    last = max((pd.Timestamp(end) for _, end in symbols.values()), default=pd.Timestamp(now))
    checksums = _checksums(lake, sleeve, current)
    if incremental and since is not None and checksums is not None:
        source_check = _delivered_days_check(checksums, whole.bars, since=since, last=last)
    else:
        source_check = bar_lake.check_source(checksums, whole.bars, since=since, last=last)
    if (source_check.disagreements["dates"] == "").any():
        source_check = _with_dates(lake, sleeve, source_check, whole.bars, stored_tables)
    checked = time.perf_counter()
    plan = Plan(
        sleeve=sleeve,
        since=since,
        defects=cleaned.defects,
        update=update,
        frame=frame,
        rows=np.asarray(rows, dtype=bool),
        symbols=symbols,
        known_symbols=tuple(current.symbols) if current is not None else (),
        total_rows=int(total),
        rows_read=len(incoming),
        stored_tables=None
        if stored_tables is None
        else {"defects": stored_tables[0], "revisions": stored_tables[1]},
        source_check=source_check,
        now=pd.Timestamp(now),
        seconds={
            "source": fetched - started,
            "read": read - fetched,
            "merge": merged - read,
            "checksums": checked - merged,
        },
    )
    # The delivery's bars are in the plan, cleaned: the batch keeps what the run reports of it
    # (load errors, duplicates, the source's metadata), not a second copy of every bar.
    return plan, dataclasses.replace(batch, bars=batch.bars.iloc[:0])


def _after(batch, since: pd.Timestamp):
    """A market-data batch's bars (and superseded duplicate reports) dated after ``since``."""
    import dataclasses

    bars = batch.bars[batch.bars["date"] > since].reset_index(drop=True)
    superseded = batch.superseded
    duplicates = batch.duplicates
    if superseded is not None:
        superseded = superseded[superseded["date"] > since].reset_index(drop=True)
        duplicates = len(superseded)  # one superseded row per duplicate resolved
    return dataclasses.replace(batch, bars=bars, superseded=superseded, duplicates=duplicates)


def _delivered_days_check(
    stored: pd.DataFrame, delivered: pd.DataFrame, *, since: pd.Timestamp, last: pd.Timestamp
) -> bar_lake.SourceCheck:
    """``bars.check_source`` of an incremental delivery: the stored symbols' periods up to
    ``since`` were not asked for, so they are kept as stored rather than compared."""
    older = bar_lake._period_end(stored["period"]) <= np.datetime64(pd.Timestamp(since).date(), "D")
    check = bar_lake.check_source(stored[~older], delivered, since=since, last=last)
    kept = pd.concat([stored[older], check.checksums], ignore_index=True)
    before = pd.Timestamp(last) - pd.Timedelta(days=bar_lake.DAY_CHECKSUM_DAYS)
    return bar_lake.SourceCheck(
        check.disagreements,
        bar_lake.rolled_up(kept[list(bar_lake.CHECKSUM_COLUMNS)], before=before),
        check.baselined,
    )


def _checksums(lake: ParquetLake, sleeve: str, current: State | None) -> pd.DataFrame | None:
    if current is None or CHECKSUMS not in current.tables:
        return None  # never checksummed (a first store, or one written before checksums)
    return lake_module.read_table(
        folder(lake, sleeve) / current.tables[CHECKSUMS], what=_what(sleeve)
    )


def _with_dates(lake, sleeve, check: bar_lake.SourceCheck, delivered, stored_tables):
    """The check with the dates of each month that disagrees at month granularity, found by
    comparing the delivery with the stored bars of those months (read only then)."""
    import dataclasses

    found = check.disagreements
    months = found[found["dates"] == ""]
    start = pd.Timestamp(months["period"].min() + "-01")
    stored = read_window(lake, sleeve, since=start, last_bars=False, tables=False).bars
    defects = stored_tables[0] if stored_tables is not None else bar_lake.empty_defects()
    dates = bar_lake.disagreeing_dates(delivered, stored, defects, months)
    filled = found.merge(dates, on=["symbol", "period"], how="left", suffixes=("", "_lake"))
    filled["dates"] = filled["dates"].where(filled["dates"] != "", filled["dates_lake"].fillna(""))
    return dataclasses.replace(check, disagreements=filled[["symbol", "period", "dates"]])


def commit(lake: ParquetLake, plan: Plan, *, compact_after: int = COMPACT_AFTER) -> Written:
    """Write a prepared refresh as the store's next version: one segment of what it added or
    revised (a full refresh too: the values it replaces stay readable as known before), or a
    first store (nothing stored in the segment layout yet) as one base segment."""
    history = plan.update.history
    checksums = None if plan.source_check is None else plan.source_check.checksums
    if plan.since is None and state(lake, plan.sleeve) is None:
        # A whole delivery: the merged history replaces whatever was stored, as one base.
        return write(
            lake,
            plan.sleeve,
            delta=history.bars,
            removed=bar_lake.empty_bars()[["symbol", "date"]],
            defects=history.defects,
            revisions=history.revisions,
            symbols=plan.symbols,
            rows=plan.total_rows,
            replace=True,
            checksums=checksums,
            now=plan.now,
        )
    return write(
        lake,
        plan.sleeve,
        delta=plan.update.changed,
        removed=plan.update.removed_keys,
        defects=history.defects,
        revisions=history.revisions,
        symbols=plan.symbols,
        rows=plan.total_rows,
        compact_after=compact_after,
        previous=plan.stored_tables,
        checksums=checksums,
        now=plan.now,
    )


@dataclass(frozen=True)
class Refreshed:
    """One refresh of the store: the prepared merge, the source's batch, the contract's blocking
    ``errors`` and recorded ``warnings`` on the rows it adds or revises, and the write (None when
    the errors kept it out of the store); ``seconds`` of validation, writing and in all."""

    plan: Plan
    batch: object  # the market-data batch: its load errors and resolved duplicates
    errors: pd.DataFrame
    warnings: pd.DataFrame
    written: Written | None
    seconds: Mapping[str, float]


def refresh(
    lake: ParquetLake,
    sleeve: str,
    *,
    fetch,
    validate: Callable[[Plan], tuple[pd.DataFrame, pd.DataFrame]],
    calendar: str,
    bar_policy: bar_lake.BarPolicy,
    volume_spike_window: int,
    now: pd.Timestamp,
    full: bool = False,
    incremental: bool = False,
) -> Refreshed:
    """Take what is new at the source into the store: :func:`prepare` the merge, ``validate`` it
    (the contract's errors and warnings on the rows the refresh adds or revises, read against the
    stored context), and :func:`commit` it only when there is no error — the store only ever
    holds bars that passed, one small segment per refresh."""
    started = time.perf_counter()
    plan, batch = prepare(
        lake,
        sleeve,
        fetch=fetch,
        calendar=calendar,
        bar_policy=bar_policy,
        volume_spike_window=volume_spike_window,
        now=now,
        full=full,
        incremental=incremental,
    )
    validating = time.perf_counter()
    errors, warnings = validate(plan)
    validated = time.perf_counter()
    written = commit(lake, plan) if errors.empty else None
    wrote = time.perf_counter()
    seconds = {
        "validate": validated - validating,
        "write": wrote - validated,
        "total": wrote - started,
    }
    return Refreshed(plan, batch, errors, warnings, written, seconds)
