"""File-based market data: a directory of CSV files or a Parquet lake, one file per symbol.

Both readers return long daily bars (`symbol, date, open, high, low, close, volume`): `date` is
the bar's SESSION date as tz-naive midnight (the calendar date in the stamp's own UTC offset, or
the UTC date of an epoch or offset-free stamp), prices and volume are float64, rows are sorted by
(symbol, date) with one row per pair; the rows a duplicate date superseded are kept aside in
`LoadResult.superseded` so that the bar cleaning can record them. A broken file becomes a
`LoadError` naming the file, the line and what to do; the other files still load. Symbols come
from file names and are validated, and files are only opened from the directory listing, so a
symbol never becomes a path.
"""

import dataclasses
import itertools
import os
import re
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BAR_COLUMNS = ("symbol", "date", "open", "high", "low", "close", "volume")
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
# Priority order: klines carry both `open_time` and `close_time`; the bar's date is its open.
TIME_COLUMNS = ("open_time", "timestamp", "datetime", "date", "time")
# Column order of headerless exchange kline dumps (e.g. data.binance.vision).
KLINE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_asset_volume",
    "number_of_trades",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
    "ignore",
)

_SYMBOL_CHARACTERS = re.compile(r"[A-Za-z0-9._:-]+")
_PLACEHOLDER = re.compile(r"(\{[^{}]*\})")
_DAY_NS = 86_400 * 10**9
# Pandas nanosecond timestamps cover 1677-09-21 .. 2262-04-11, about ±9.22e9 seconds.
_MAX_EPOCH_SECONDS = 9.2e9


class SymbolError(ValueError):
    """A symbol name that could escape the source directory or is not a ticker."""


class BarsFormatError(ValueError):
    """A table that cannot be read as bars.

    `row` is the index label of the offending row (None when the problem is not a row), and
    `in_header` marks problems with the column names.
    """

    def __init__(self, reason: str, *, row: Hashable | None = None, in_header: bool = False):
        location = "header: " if in_header else "" if row is None else f"row {row}: "
        super().__init__(f"{location}{reason}")
        self.reason = reason
        self.row = row
        self.in_header = in_header


@dataclass(frozen=True)
class LoadError:
    """One file that could not be loaded; `line` is 1-based with the header as line 1."""

    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class LoadResult:
    """Bars of every file read successfully, one error per broken file or rejected name."""

    bars: pd.DataFrame
    errors: tuple[LoadError, ...]
    duplicates: int
    files: int
    # BAR_COLUMNS rows that a later row of the same (symbol, date) superseded, in file order.
    superseded: pd.DataFrame | None = None


class _UnreadableFile(Exception):
    def __init__(self, reason: str, *, line: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.line = line


def validate_symbol(name: str) -> str:
    """Return `name` upper-cased, or raise `SymbolError` if it is not a safe ticker.

    Accepted characters are letters `A-Z a-z`, digits and the punctuation `. _ : -` (`:` for
    `EXCHANGE:SYMBOL`); path separators, `..`, NUL, a leading dot, a leading dash (a file
    `-rf.csv` would read as a command-line option) and empty names are rejected.
    """
    if not isinstance(name, str):
        raise SymbolError(f"symbol {name!r} is not a string")
    if not name:
        raise SymbolError("symbol name is empty")
    if "\x00" in name:
        raise SymbolError(f"symbol {name!r} contains a NUL character")
    if "/" in name or "\\" in name:
        raise SymbolError(f"symbol {name!r} contains a path separator")
    if ".." in name:
        raise SymbolError(f"symbol {name!r} contains '..'")
    if name.startswith("."):
        raise SymbolError(f"symbol {name!r} starts with a dot")
    if name.startswith("-"):
        raise SymbolError(f"symbol {name!r} starts with a dash")
    if not _SYMBOL_CHARACTERS.fullmatch(name):
        raise SymbolError(f"symbol {name!r} has characters outside A-Z a-z 0-9 . _ : -")
    return name.upper()


def read_csv_directory(
    root: str | os.PathLike,
    *,
    pattern: str = "{symbol}.csv",
    since: pd.Timestamp | None = None,
    map_tasks: "MapTasks | None" = None,
) -> LoadResult:
    """Read every CSV file in `root` whose name matches `pattern` as one symbol's daily bars.

    Accepted layouts (headers case-insensitive, any column order, extra columns ignored):
    TradingView (`time,open,high,low,close,Volume`), Yahoo (`Date,...,Adj Close,Volume`; `Close`
    is used, never `Adj Close`), exchange klines (`open_time` or `datetime`, also headerless
    dumps), and plain `timestamp|date|datetime` tables. `volume` is required. Timestamps are
    ISO 8601 strings (offsets converted to UTC; naive strings are UTC) or unix epochs whose unit
    is read per value from its magnitude (< 1e11 seconds, < 1e14 ms, < 1e17 µs, else ns); a
    column of `YYYYMMDD` integers only is read as dates.
    Each bar's date is its session date: the calendar date of the stamp in its own UTC offset
    (`2024-01-04 00:00+09:00` is 2024-01-04), the UTC date for epochs and naive strings. Several
    bars on one date keep the one with the latest timestamp (file order breaks ties); the others
    are counted in `duplicates` and returned in `superseded`. A first line without a comma (a
    vendor URL such as CryptoDataDownload's) is skipped; `.csv.gz` files are read decompressed.
    Empty cells are kept as NaN for the bar cleaning to judge; blank lines are
    skipped without shifting reported line numbers. With `since`, only bars dated after it are
    kept (and counted), but every file is still fully validated.

    `pattern` holds `{symbol}` and optionally `{exchange}` (text without `_`); its literal parts
    match case-insensitively against file names in `root` (not recursive) and other files are
    ignored. When two files give the same symbol, the first one read in file-name order is kept
    and each later one is reported as an error. Raises FileNotFoundError if `root` is missing.
    With `map_tasks` (the engine's fan-out contract, e.g. on Ray) the files are parsed in chunks
    of `FILES_PER_TASK` as its tasks (the workers must see `root`); the result is the same.
    """
    return _read_directory(
        root,
        pattern=pattern,
        since=since,
        load=_load_csv,
        locate=_csv_location,
        map_tasks=map_tasks,
    )


def read_parquet_lake(
    root: str | os.PathLike,
    *,
    pattern: str = "{exchange}_{symbol}_1d.parquet",
    since: pd.Timestamp | None = None,
    map_tasks: "MapTasks | None" = None,
) -> LoadResult:
    """Read every Parquet file in `root` whose name matches `pattern` as one symbol's bars.

    Same layouts, normalisation, `pattern` and `since` rules as `read_csv_directory`; timestamp
    columns may also be Arrow timestamps (tz-naive ones are taken as UTC) or dates. The symbol is
    the `{symbol}` part only: the same symbol from a second exchange is reported as an error for
    the later file rather than silently merged. Errors locate rows as "row N" (1-based) in the
    reason, with `line` None. Raises FileNotFoundError if `root` is missing.
    """
    return _read_directory(
        root,
        pattern=pattern,
        since=since,
        load=_load_parquet,
        locate=_parquet_location,
        map_tasks=map_tasks,
    )


def normalise_bars(frame: pd.DataFrame, *, symbol: str) -> pd.DataFrame:
    """Turn one symbol's raw table (any accepted layout) into long bars.

    Conventions as in `read_csv_directory`; a DatetimeIndex (or an index named like a time
    column) is used as the time column when the columns have none. Raises `SymbolError` for a
    bad symbol and `BarsFormatError` (with the offending index label) for a bad table.
    """
    name = validate_symbol(symbol)
    bars, _, _ = _last_of_each_date(_parse_bars(frame))
    return _assemble([(name, bars)])


# Files parsed per task when a directory's parsing is fanned out (``map_tasks``): parsing one
# daily file takes milliseconds, so a task per file would cost more in scheduling than in work.
FILES_PER_TASK = 64

MapTasks = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]


def _read_directory(
    root: str | os.PathLike,
    *,
    pattern: str,
    since: pd.Timestamp | None,
    load: Callable[[Path], pd.DataFrame],
    locate: Callable[[BarsFormatError], tuple[int | None, str]],
    map_tasks: MapTasks | None = None,
) -> LoadResult:
    directory = Path(root)
    if not directory.exists():
        raise FileNotFoundError(f"market data directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"market data source {str(directory)!r} is not a directory")
    matcher = _compile_pattern(pattern)
    resolved_root = directory.resolve()

    # (file name, symbol or the LoadError of a bad one, path, whether the path stays inside)
    candidates = []
    for file_name, raw_symbol, path in _matching_files(directory, matcher):
        try:
            symbol: str | LoadError = validate_symbol(raw_symbol)
        except SymbolError as exc:
            symbol = LoadError(file_name, None, f"{exc}; rename the file to a plain ticker")
        inside = path.resolve().is_relative_to(resolved_root)
        candidates.append((file_name, symbol, path, inside))
    # Parsing is independent per file: fanned out in chunks when a map_tasks is given. Which
    # file wins a symbol is then decided in file-name order, as if read one after the other.
    readable = [
        path for _, symbol, path, inside in candidates if inside and isinstance(symbol, str)
    ]
    parse = partial(_parse_files, cutoff=_cutoff(since), load=load, locate=locate)
    chunks = [readable[i : i + FILES_PER_TASK] for i in range(0, len(readable), FILES_PER_TASK)]
    if map_tasks is None or len(chunks) < 2:
        parsed_chunks = [parse(chunk) for chunk in chunks]
    else:
        parsed_chunks = map_tasks(parse, chunks)
    parsed_files = dict(zip(readable, itertools.chain.from_iterable(parsed_chunks), strict=True))

    blocks: list[tuple[str, dict[str, np.ndarray]]] = []
    superseded: list[tuple[str, dict[str, np.ndarray]]] = []
    errors: list[LoadError] = []
    source_of: dict[str, str] = {}
    duplicates = 0
    for file_name, symbol, path, inside in candidates:
        if isinstance(symbol, LoadError):
            errors.append(symbol)
            continue
        if symbol in source_of:
            errors.append(
                LoadError(
                    file_name,
                    None,
                    f"symbol {symbol} was already loaded from {source_of[symbol]}; "
                    "keep one file per symbol",
                )
            )
            continue
        if not inside:
            errors.append(
                LoadError(file_name, None, "link points outside the source directory; replace it")
            )
            continue
        outcome = parsed_files[path]
        if isinstance(outcome, LoadError):
            errors.append(dataclasses.replace(outcome, file=file_name))
            continue
        bars, older, resolved = outcome
        duplicates += resolved
        source_of[symbol] = file_name
        blocks.append((symbol, bars))
        superseded.append((symbol, older))

    return LoadResult(
        bars=_assemble(blocks),
        errors=tuple(errors),
        duplicates=duplicates,
        files=len(blocks),
        superseded=_assemble(superseded),
    )


def _parse_files(
    paths: Sequence[Path],
    *,
    cutoff: pd.Timestamp | None,
    load: Callable[[Path], pd.DataFrame],
    locate: Callable[[BarsFormatError], tuple[int | None, str]],
) -> list:
    """Each file's bars, the rows its duplicate dates superseded and their count, or the
    ``LoadError`` (file name filled in by the caller) that rejects it."""
    outcomes: list = []
    for path in paths:
        try:
            parsed = _parse_bars(load(path))
        except _UnreadableFile as exc:
            outcomes.append(LoadError("", exc.line, exc.reason))
            continue
        except BarsFormatError as exc:
            line, reason = locate(exc)
            outcomes.append(LoadError("", line, reason))
            continue
        if cutoff is not None:
            kept = parsed["date"] > cutoff.to_datetime64()
            parsed = {name: values[kept] for name, values in parsed.items()}
        bars, resolved, older = _last_of_each_date(parsed)
        outcomes.append((bars, older, resolved))
    return outcomes


def _compile_pattern(pattern: str) -> re.Pattern[str]:
    if "/" in pattern or "\\" in pattern:
        raise ValueError(f"file name pattern {pattern!r} must not contain path separators")
    pieces: list[str] = []
    seen: set[str] = set()
    for part in _PLACEHOLDER.split(pattern):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            if name not in ("symbol", "exchange"):
                raise ValueError(
                    f"file name pattern {pattern!r} has an unknown placeholder {part}; "
                    "use {symbol} and optionally {exchange}"
                )
            if name in seen:
                raise ValueError(f"file name pattern {pattern!r} repeats {part}")
            seen.add(name)
            pieces.append("(?P<symbol>.+)" if name == "symbol" else "(?P<exchange>[^_]+)")
        elif "{" in part or "}" in part:
            raise ValueError(f"file name pattern {pattern!r} has an unbalanced brace")
        else:
            pieces.append(re.escape(part))
    if "symbol" not in seen:
        raise ValueError(f"file name pattern {pattern!r} must contain {{symbol}}")
    return re.compile("".join(pieces), re.IGNORECASE)


def _matching_files(directory: Path, matcher: re.Pattern[str]) -> Iterator[tuple[str, str, Path]]:
    with os.scandir(directory) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        match = matcher.fullmatch(entry.name)
        if match is not None and entry.is_file():
            yield entry.name, match["symbol"], Path(entry.path)


def _cutoff(since: pd.Timestamp | None) -> pd.Timestamp | None:
    if since is None:
        return None
    cutoff = pd.Timestamp(since)
    if cutoff.tzinfo is not None:
        cutoff = cutoff.tz_convert("UTC").tz_localize(None)
    return cutoff


def _load_csv(path: Path) -> pd.DataFrame:
    """Raw CSV table indexed by file line number (header = line 1), blank lines dropped."""
    skip = 1 if _has_preamble(path) else 0
    frame = _read_csv(path, header=0, skip=skip)
    first_line = 2 + skip
    if len(frame.columns) >= 6 and _is_number(frame.columns[0]):
        # A header that starts with a number is a headerless kline dump.
        names = [*KLINE_COLUMNS, *(f"extra_{i}" for i in range(len(frame.columns)))]
        frame = _read_csv(path, header=None, names=names[: len(frame.columns)], skip=skip)
        first_line = 1 + skip
    frame.index = pd.RangeIndex(first_line, first_line + len(frame))
    # A blank line is NaN in every column, so only rows with an empty first cell are checked.
    first_empty = frame.iloc[:, 0].isna().to_numpy()
    if first_empty.any():
        blank = frame.loc[first_empty].isna().all(axis=1)
        frame = frame.drop(index=blank.index[blank.to_numpy()])
    if frame.empty:
        raise _UnreadableFile("empty file: a header but no bars; remove it or re-export it")
    return frame


def _has_preamble(path: Path) -> bool:
    """True when the first line holds no comma but the second does (a vendor URL or title)."""
    try:
        import gzip

        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as handle:
            first, second = handle.readline(), handle.readline()
    except (OSError, EOFError):
        return False
    return bool(first.strip()) and "," not in first and "," in second


def _read_csv(
    path: Path, *, header: int | None, names: list[str] | None = None, skip: int = 0
) -> pd.DataFrame:
    try:
        return pd.read_csv(
            path,
            header=header,
            names=names,
            skiprows=skip,
            skip_blank_lines=False,
            encoding="utf-8-sig",
            low_memory=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise _UnreadableFile("empty file; remove it or re-export it") from exc
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise _UnreadableFile(
            f"malformed CSV ({str(exc).strip()}); fix the row or re-export the file",
            line=int(line.group(1)) if line else None,
        ) from exc
    except UnicodeDecodeError as exc:
        raise _UnreadableFile("not UTF-8 text; export the file as UTF-8 CSV") from exc
    except OSError as exc:
        raise _UnreadableFile(f"cannot read the file ({exc.strerror or exc})") from exc


def _csv_location(error: BarsFormatError) -> tuple[int | None, str]:
    if error.in_header:
        return 1, error.reason
    return (int(error.row) if error.row is not None else None), error.reason


def _load_parquet(path: Path) -> pd.DataFrame:
    """Raw Parquet table indexed by 1-based row number."""
    try:
        if path.stat().st_size == 0:
            raise _UnreadableFile("empty file; remove it or re-export it")
        table = pq.read_table(path)
        # Pandas metadata is ignored so that a stored index (e.g. `date`) is an ordinary column.
        frame = table.to_pandas(ignore_metadata=True, date_as_object=False)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _UnreadableFile(f"unreadable Parquet file ({exc}); re-export it") from exc
    if frame.empty:
        raise _UnreadableFile("empty file: no rows; remove it or re-export it")
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


def _parquet_location(error: BarsFormatError) -> tuple[int | None, str]:
    if error.row is None or error.in_header:
        return None, error.reason
    return None, f"row {error.row}: {error.reason}"


def _parse_bars(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Arrays `date, open, high, low, close, volume`, stably sorted by full timestamp."""
    frame = _time_index_as_column(frame)
    columns = _locate_columns(frame)
    nanoseconds, local = _parse_timestamps(frame[columns["time"]], column=str(columns["time"]))
    order = np.argsort(nanoseconds, kind="stable")
    # The session date is the local calendar date of the stamp (its own UTC offset), so a
    # `00:00+01:00` London bar is that day's bar, not the previous UTC day's.
    parsed = {"date": (local[order] // _DAY_NS * _DAY_NS).view("datetime64[ns]")}
    for name in VALUE_COLUMNS:
        parsed[name] = _parse_numbers(frame[columns[name]], column=str(columns[name]))[order]
    return parsed


def _last_of_each_date(
    parsed: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], int, dict[str, np.ndarray]]:
    """Keep the last row of each date (rows are sorted by timestamp); count and return the others.

    Session dates of rows sorted by UTC stamp can go backwards only when offsets change inside a
    file, so the rows are first stably sorted by date.
    """
    dates = parsed["date"]
    order = np.argsort(dates, kind="stable")
    parsed = {name: values[order] for name, values in parsed.items()}
    dates = parsed["date"]
    last = np.ones(len(dates), dtype=bool)
    last[:-1] = dates[1:] != dates[:-1]
    kept = {name: values[last] for name, values in parsed.items()}
    older = {name: values[~last] for name, values in parsed.items()}
    return kept, int(len(dates) - last.sum()), older


def _assemble(blocks: list[tuple[str, dict[str, np.ndarray]]]) -> pd.DataFrame:
    """Long bars from per-symbol arrays, sorted by (symbol, date) with a RangeIndex."""
    blocks = sorted(blocks, key=lambda block: block[0])
    lengths = [len(bars["date"]) for _, bars in blocks]
    symbols = np.repeat(np.array([symbol for symbol, _ in blocks], dtype=object), lengths)
    columns: dict[str, np.ndarray] = {"symbol": symbols}
    for name in ("date", *VALUE_COLUMNS):
        empty = np.empty(0, dtype="datetime64[ns]" if name == "date" else "float64")
        columns[name] = np.concatenate([bars[name] for _, bars in blocks] or [empty])
    return pd.DataFrame(columns, columns=list(BAR_COLUMNS))


def _normalised_name(label: Hashable) -> str:
    return re.sub(r"\s+", "_", str(label).strip().lower())


def _time_index_as_column(frame: pd.DataFrame) -> pd.DataFrame:
    names = {_normalised_name(label) for label in frame.columns}
    if names.intersection(TIME_COLUMNS):
        return frame
    index_is_time = isinstance(frame.index, pd.DatetimeIndex) or (
        frame.index.name is not None and _normalised_name(frame.index.name) in TIME_COLUMNS
    )
    if not index_is_time:
        return frame
    return frame.rename_axis(frame.index.name or "date").reset_index()


def _locate_columns(frame: pd.DataFrame) -> dict[str, Hashable]:
    labels_of: dict[str, list[Hashable]] = {}
    for label in frame.columns:
        labels_of.setdefault(_normalised_name(label), []).append(label)
    time_name = next((name for name in TIME_COLUMNS if name in labels_of), None)
    if "volume" not in labels_of:
        # CryptoDataDownload writes `Volume BTC, Volume USDT`: the first (base) one is the volume.
        named = [name for name in labels_of if name.startswith("volume_")]
        if named:
            labels_of["volume"] = labels_of[named[0]]
    missing = [name for name in VALUE_COLUMNS if name not in labels_of]
    if time_name is None or missing:
        problems = []
        if time_name is None:
            problems.append(f"no time column (expected one of {', '.join(TIME_COLUMNS)})")
        if missing:
            problems.append(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        found = ", ".join(str(label) for label in frame.columns) or "none"
        if time_name is not None and set(missing) >= {"open", "high", "low", "volume"}:
            raise BarsFormatError(
                f"a wide close-only layout (one column per symbol: {found}) is not supported; "
                "export one file per symbol with time, open, high, low, close and volume",
                in_header=True,
            )
        raise BarsFormatError(
            f"{'; '.join(problems)}; found columns: {found}; "
            "export time, open, high, low, close and volume",
            in_header=True,
        )
    located: dict[str, Hashable] = {}
    for role, name in (("time", time_name), *((name, name) for name in VALUE_COLUMNS)):
        labels = labels_of[name]
        if len(labels) > 1:
            raise BarsFormatError(
                f"columns {', '.join(map(str, labels))} all mean {name}; keep only one",
                in_header=True,
            )
        located[role] = labels[0]
    return located


def _first_offender(series: pd.Series, mask: np.ndarray) -> tuple[Hashable, object]:
    """Index label and raw value of the first row flagged in `mask`."""
    position = np.flatnonzero(mask)[0]
    return series.index[position], series.iloc[position]


def _parse_timestamps(series: pd.Series, *, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(UTC, local wall-clock) timestamps as int64 nanoseconds since the epoch.

    The local time is the stamp in its own UTC offset (the UTC time when it has none).
    """
    missing = series.isna().to_numpy()
    if missing.any():
        raise BarsFormatError(
            f"missing timestamp in column {column!r}; fill it or remove the row",
            row=_first_offender(series, missing)[0],
        )
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series):
        stamps = pd.DatetimeIndex(series)
        try:
            local = stamps.tz_localize(None) if stamps.tz is not None else stamps
            stamps = stamps.tz_localize("UTC") if stamps.tz is None else stamps.tz_convert("UTC")
            return stamps.as_unit("ns").asi8, local.as_unit("ns").asi8
        except (pd.errors.OutOfBoundsDatetime, OverflowError) as exc:
            raise BarsFormatError(f"timestamps in column {column!r} are out of range") from exc
    if pd.api.types.is_bool_dtype(series):
        raise BarsFormatError(f"column {column!r} holds booleans, not timestamps")
    if pd.api.types.is_numeric_dtype(series):
        utc = _epoch_to_nanoseconds(series, column=column)
        return utc, utc
    # Each text cell is read as an epoch number, or else as ISO 8601; a cell with a ':' or a
    # '-' after its first character (a date) is never a number, which spares most conversions.
    values = np.strings.strip(series.to_numpy(dtype=str))
    text = pd.Series(values, index=series.index)
    is_number = ~((np.strings.find(values, ":") >= 0) | (np.strings.find(values, "-", 1) >= 0))
    numbers = pd.Series(np.nan, index=series.index)
    if is_number.any():
        numbers[is_number] = pd.to_numeric(text[is_number], errors="coerce")
        is_number &= numbers.notna().to_numpy()
    nanoseconds = np.empty(len(series), dtype=np.int64)
    local = np.empty(len(series), dtype=np.int64)
    if is_number.any():
        nanoseconds[is_number] = _epoch_to_nanoseconds(numbers[is_number], column=column)
        local[is_number] = nanoseconds[is_number]
    if not is_number.all():
        utc, wall = _iso_to_nanoseconds(text[~is_number], column=column)
        nanoseconds[~is_number], local[~is_number] = utc, wall
    return nanoseconds, local


def _iso_to_nanoseconds(text: pd.Series, *, column: str) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 strings as (UTC, local wall-clock) nanoseconds; strings without an offset are UTC.

    The offset (`Z`, `±HH:MM`, `±HHMM`, `±HH`) is split off with vectorised string operations
    and the local part parsed on its own: pandas is slow on mixed offsets and reads naive strings
    in the offset of the first aware string of the same call.
    """
    local, minutes = _split_utc_offsets(text.to_numpy(dtype=str))
    fast = _numpy_local_times(local)
    if fast is not None:
        wall = fast.view(np.int64)
        return wall - minutes * 60 * 10**9, wall
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stamps = pd.to_datetime(
            pd.Series(local, index=text.index), format="ISO8601", errors="coerce"
        )
    if not pd.api.types.is_datetime64_dtype(stamps) or isinstance(stamps.dtype, pd.DatetimeTZDtype):
        aware = np.array([getattr(stamp, "tzinfo", None) is not None for stamp in stamps])
        label, value = _first_offender(text, aware)
        raise BarsFormatError(
            f"timestamp {value!r} in column {column!r} has an unsupported UTC offset; "
            "write it as Z or ±HH:MM",
            row=label,
        )
    # Pandas also reads words such as `today` and `now`; a date starts with its year.
    unparsed = stamps.isna().to_numpy() | ~np.strings.isdigit(np.strings.slice(local, 0, 4))
    if unparsed.any():
        label, value = _first_offender(text, unparsed)
        raise BarsFormatError(
            f"unparseable timestamp {value!r} in column {column!r}; "
            "use ISO 8601 or unix seconds/milliseconds",
            row=label,
        )
    wall = stamps.dt.as_unit("ns").to_numpy().view(np.int64)
    return wall - minutes * 60 * 10**9, wall


def _numpy_local_times(local: np.ndarray) -> np.ndarray | None:
    """Naive extended ISO strings (`YYYY-MM-DD…`) parsed by numpy, or None to defer to pandas.

    NumPy is several times faster than pandas here but also reads words such as `today` and
    basic-format dates such as `20240102` (as a year), so only the extended form is given to it.
    """
    extended = np.strings.isdigit(np.strings.slice(local, 0, 4)) & (
        np.strings.slice(local, 4, 5) == "-"
    )
    if not extended.all():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return local.astype("datetime64[ns]")
    except (ValueError, Warning):
        return None


def _split_utc_offsets(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local parts and UTC offsets in minutes of ISO strings (offset 0 when absent)."""
    local = values.copy()
    minutes = np.zeros(len(values), dtype=np.int64)
    zulu = np.strings.endswith(values, "Z") | np.strings.endswith(values, "z")
    # Only a string with a time of day can carry an offset: `2024-01-02` ends in `-02`.
    pending = np.flatnonzero(np.strings.find(values, ":") >= 0)
    zulu = zulu[pending]
    local[pending[zulu]] = np.strings.slice(values[pending[zulu]], 0, -1)
    pending = pending[~zulu]
    # Longest form first, so that `-05:00` is never read as `…:00` with offset `-00`.
    for width in (6, 5, 3):
        if len(pending) == 0:
            break
        # A file has few distinct endings, so they are decoded once each.
        tails = np.strings.slice(values[pending], -width, None)
        endings, inverse = np.unique(tails, return_inverse=True)
        offsets, valid = _offset_minutes(endings, width=width)
        found = valid[inverse]
        rows = pending[found]
        minutes[rows] = offsets[inverse[found]]
        local[rows] = np.strings.rstrip(np.strings.slice(values[rows], 0, -width))
        pending = pending[~found]
    return local, minutes


def _offset_minutes(endings: np.ndarray, *, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Minutes east of UTC for endings `±HH:MM` (width 6), `±HHMM` (5) or `±HH` (3)."""
    sign = np.strings.slice(endings, 0, 1)
    valid = (sign == "+") | (sign == "-")
    if width == 6:
        digits = np.strings.add(np.strings.slice(endings, 1, 3), np.strings.slice(endings, 4, 6))
        valid &= np.strings.slice(endings, 3, 4) == ":"
    elif width == 5:
        digits = np.strings.slice(endings, 1, 5)
    else:
        digits = np.strings.add(np.strings.slice(endings, 1, 3), "00")
    valid &= np.strings.isdigit(digits) & (np.strings.str_len(digits) == 4)
    hours_minutes = np.where(valid, digits, "0").astype(np.int64)
    direction = np.where(sign == "-", -1, 1)
    return direction * (hours_minutes // 100 * 60 + hours_minutes % 100), valid


def _epoch_to_nanoseconds(series: pd.Series, *, column: str) -> np.ndarray:
    """Unix epochs as UTC nanoseconds, the unit read per value from its magnitude.

    A column made only of valid `YYYYMMDD` integers is read as dates instead: as epoch seconds
    they would all fall in August 1970, which no daily data set means.
    """
    values = series.to_numpy(dtype="float64", na_value=np.nan)
    compact = _compact_dates(values)
    if compact is not None:
        return compact
    magnitude = np.abs(values)
    divisor = np.select(
        [magnitude < 1e11, magnitude < 1e14, magnitude < 1e17], [1.0, 1e3, 1e6], default=1e9
    )
    seconds = values / divisor
    invalid = ~np.isfinite(seconds) | (np.abs(seconds) > _MAX_EPOCH_SECONDS)
    if invalid.any():
        label, value = _first_offender(series, invalid)
        raise BarsFormatError(
            f"timestamp {value!r} in column {column!r} is out of range",
            row=label,
        )
    return np.round(seconds * 1e9).astype(np.int64)


def _compact_dates(values: np.ndarray) -> np.ndarray | None:
    """`YYYYMMDD` integers as nanoseconds, or None unless every value is one."""
    plausible = (values >= 1900_01_01) & (values <= 2100_12_31) & (values == np.floor(values))
    if len(values) == 0 or not plausible.all():
        return None
    dates = pd.to_datetime(values.astype(np.int64).astype(str), format="%Y%m%d", errors="coerce")
    if dates.isna().any():
        return None
    return dates.as_unit("ns").asi8


def _parse_numbers(series: pd.Series, *, column: str) -> np.ndarray:
    """Float64 values; empty cells become NaN, any other non-number is an error."""
    if pd.api.types.is_bool_dtype(series):
        raise BarsFormatError(f"column {column!r} holds booleans, not numbers")
    if pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    text = series.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    bad = (numbers.isna() & series.notna() & text.ne("")).to_numpy()
    if bad.any():
        label, value = _first_offender(series, bad)
        raise BarsFormatError(
            f"column {column!r} has the non-numeric value {value!r}; "
            "fix the value or remove the row",
            row=label,
        )
    return numbers.to_numpy(dtype="float64", na_value=np.nan)


def _is_number(label: Hashable) -> bool:
    try:
        float(str(label))
    except ValueError:
        return False
    return True
