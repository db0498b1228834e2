"""File-based market data: a directory of CSV files or a Parquet lake, one file per symbol.

Both readers return long daily bars (`symbol, date, open, high, low, close, volume`): `date` is
the UTC calendar date as tz-naive midnight, prices and volume are float64, rows are sorted by
(symbol, date) with one row per pair. A broken file becomes a `LoadError` naming the file, the
line and what to do; the other files still load. Symbols come from file names and are validated,
and files are only opened from the directory listing, so a symbol never becomes a path.
"""

import os
import re
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
# A UTC offset (or Z) right after a time of day, e.g. `00:00:00-05:00`, `12:00Z`.
_UTC_OFFSET = re.compile(r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")
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


class _UnreadableFile(Exception):
    def __init__(self, reason: str, *, line: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.line = line


def validate_symbol(name: str) -> str:
    """Return `name` upper-cased, or raise `SymbolError` if it is not a safe ticker.

    Accepted characters are `A-Z a-z 0-9 . _ : -` (`:` for `EXCHANGE:SYMBOL`); path
    separators, `..`, NUL, a leading dot and empty names are rejected.
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
    if not _SYMBOL_CHARACTERS.fullmatch(name):
        raise SymbolError(f"symbol {name!r} has characters outside A-Z a-z 0-9 . _ : -")
    return name.upper()


def read_csv_directory(
    root: str | os.PathLike,
    *,
    pattern: str = "{symbol}.csv",
    since: pd.Timestamp | None = None,
) -> LoadResult:
    """Read every CSV file in `root` whose name matches `pattern` as one symbol's daily bars.

    Accepted layouts (headers case-insensitive, any column order, extra columns ignored):
    TradingView (`time,open,high,low,close,Volume`), Yahoo (`Date,...,Adj Close,Volume`; `Close`
    is used, never `Adj Close`), exchange klines (`open_time` or `datetime`, also headerless
    dumps), and plain `timestamp|date|datetime` tables. `volume` is required. Timestamps are
    ISO 8601 strings (offsets converted to UTC; naive strings are UTC) or unix epochs whose unit
    is read per value from its magnitude (< 1e11 seconds, < 1e14 ms, < 1e17 µs, else ns).
    Each bar's date is the UTC calendar date of its timestamp; several bars on one date keep
    the one with the latest timestamp (file order breaks ties) and the others are counted in
    `duplicates`. Empty cells are kept as NaN for the bars contract to judge; blank lines are
    skipped without shifting reported line numbers. With `since`, only bars dated after it are
    kept (and counted), but every file is still fully validated.

    `pattern` holds `{symbol}` and optionally `{exchange}` (text without `_`); its literal parts
    match case-insensitively against file names in `root` (not recursive) and other files are
    ignored. When two files give the same symbol, the first one read in file-name order is kept
    and each later one is reported as an error. Raises FileNotFoundError if `root` is missing.
    """
    return _read_directory(root, pattern=pattern, since=since, load=_load_csv, locate=_csv_location)


def read_parquet_lake(
    root: str | os.PathLike,
    *,
    pattern: str = "{exchange}_{symbol}_1d.parquet",
    since: pd.Timestamp | None = None,
) -> LoadResult:
    """Read every Parquet file in `root` whose name matches `pattern` as one symbol's bars.

    Same layouts, normalisation, `pattern` and `since` rules as `read_csv_directory`; timestamp
    columns may also be Arrow timestamps (tz-naive ones are taken as UTC) or dates. The symbol is
    the `{symbol}` part only: the same symbol from a second exchange is reported as an error for
    the later file rather than silently merged. Errors locate rows as "row N" (1-based) in the
    reason, with `line` None. Raises FileNotFoundError if `root` is missing.
    """
    return _read_directory(
        root, pattern=pattern, since=since, load=_load_parquet, locate=_parquet_location
    )


def normalise_bars(frame: pd.DataFrame, *, symbol: str) -> pd.DataFrame:
    """Turn one symbol's raw table (any accepted layout) into long bars.

    Conventions as in `read_csv_directory`; a DatetimeIndex (or an index named like a time
    column) is used as the time column when the columns have none. Raises `SymbolError` for a
    bad symbol and `BarsFormatError` (with the offending index label) for a bad table.
    """
    name = validate_symbol(symbol)
    bars, _ = _last_of_each_date(_parse_bars(frame))
    return _with_symbol(bars, name)


def _read_directory(
    root: str | os.PathLike,
    *,
    pattern: str,
    since: pd.Timestamp | None,
    load: Callable[[Path], pd.DataFrame],
    locate: Callable[[BarsFormatError], tuple[int | None, str]],
) -> LoadResult:
    directory = Path(root)
    if not directory.exists():
        raise FileNotFoundError(f"market data directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise NotADirectoryError(f"market data source {str(directory)!r} is not a directory")
    matcher = _compile_pattern(pattern)
    cutoff = _cutoff(since)
    resolved_root = directory.resolve()

    frames: list[pd.DataFrame] = []
    errors: list[LoadError] = []
    source_of: dict[str, str] = {}
    duplicates = 0
    for file_name, raw_symbol, path in _matching_files(directory, matcher):
        try:
            symbol = validate_symbol(raw_symbol)
        except SymbolError as exc:
            errors.append(LoadError(file_name, None, f"{exc}; rename the file to a plain ticker"))
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
        if not path.resolve().is_relative_to(resolved_root):
            errors.append(
                LoadError(file_name, None, "link points outside the source directory; replace it")
            )
            continue
        try:
            parsed = _parse_bars(load(path))
        except _UnreadableFile as exc:
            errors.append(LoadError(file_name, exc.line, exc.reason))
            continue
        except BarsFormatError as exc:
            line, reason = locate(exc)
            errors.append(LoadError(file_name, line, reason))
            continue
        if cutoff is not None:
            parsed = parsed.loc[parsed["date"] > cutoff]
        bars, resolved = _last_of_each_date(parsed)
        duplicates += resolved
        source_of[symbol] = file_name
        frames.append(_with_symbol(bars, symbol))

    return LoadResult(
        bars=_concatenate(frames),
        errors=tuple(errors),
        duplicates=duplicates,
        files=len(frames),
    )


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
    frame = _read_csv(path, header=0)
    first_line = 2
    if len(frame.columns) >= 6 and _is_number(frame.columns[0]):
        # A header that starts with a number is a headerless kline dump.
        names = [*KLINE_COLUMNS, *(f"extra_{i}" for i in range(len(frame.columns)))]
        frame = _read_csv(path, header=None, names=names[: len(frame.columns)])
        first_line = 1
    frame.index = pd.RangeIndex(first_line, first_line + len(frame))
    frame = frame.dropna(how="all")
    if frame.empty:
        raise _UnreadableFile("empty file: a header but no bars; remove it or re-export it")
    return frame


def _read_csv(path: Path, *, header: int | None, names: list[str] | None = None) -> pd.DataFrame:
    try:
        return pd.read_csv(
            path,
            header=header,
            names=names,
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


def _parse_bars(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns `date, open, high, low, close, volume`, stably sorted by full timestamp."""
    frame = _time_index_as_column(frame)
    columns = _locate_columns(frame)
    nanoseconds = _parse_timestamps(frame[columns["time"]], column=str(columns["time"]))
    values = {
        name: _parse_numbers(frame[columns[name]], column=str(columns[name]))
        for name in VALUE_COLUMNS
    }
    order = np.argsort(nanoseconds, kind="stable")
    dates = (nanoseconds[order] // _DAY_NS * _DAY_NS).view("datetime64[ns]")
    return pd.DataFrame(
        {"date": dates, **{name: array[order] for name, array in values.items()}},
    )


def _last_of_each_date(parsed: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    repeated = parsed["date"].duplicated(keep="last").to_numpy()
    return parsed.loc[~repeated].reset_index(drop=True), int(repeated.sum())


def _with_symbol(bars: pd.DataFrame, symbol: str) -> pd.DataFrame:
    result = bars.loc[:, ["date", *VALUE_COLUMNS]].reset_index(drop=True)
    result.insert(0, "symbol", symbol)
    return result


def _concatenate(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        empty = {name: pd.Series(dtype="float64") for name in BAR_COLUMNS}
        empty["symbol"] = pd.Series(dtype="object")
        empty["date"] = pd.Series(dtype="datetime64[ns]")
        return pd.DataFrame(empty)
    bars = pd.concat(frames, ignore_index=True)
    return bars.sort_values(["symbol", "date"], kind="stable", ignore_index=True)


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
    missing = [name for name in VALUE_COLUMNS if name not in labels_of]
    if time_name is None or missing:
        problems = []
        if time_name is None:
            problems.append(f"no time column (expected one of {', '.join(TIME_COLUMNS)})")
        if missing:
            problems.append(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        found = ", ".join(str(label) for label in frame.columns) or "none"
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


def _parse_timestamps(series: pd.Series, *, column: str) -> np.ndarray:
    """UTC timestamps as int64 nanoseconds since the epoch."""
    missing = series.isna().to_numpy()
    if missing.any():
        raise BarsFormatError(
            f"missing timestamp in column {column!r}; fill it or remove the row",
            row=_first_offender(series, missing)[0],
        )
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series):
        stamps = pd.DatetimeIndex(series)
        stamps = stamps.tz_localize("UTC") if stamps.tz is None else stamps.tz_convert("UTC")
        try:
            return stamps.as_unit("ns").asi8
        except (pd.errors.OutOfBoundsDatetime, OverflowError) as exc:
            raise BarsFormatError(f"timestamps in column {column!r} are out of range") from exc
    if pd.api.types.is_bool_dtype(series):
        raise BarsFormatError(f"column {column!r} holds booleans, not timestamps")
    if pd.api.types.is_numeric_dtype(series):
        return _epoch_to_nanoseconds(series, column=column)
    # Text cells are read one by one as an epoch number or else as ISO 8601.
    text = series.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    is_number = numbers.notna().to_numpy()
    nanoseconds = np.empty(len(series), dtype=np.int64)
    if is_number.any():
        nanoseconds[is_number] = _epoch_to_nanoseconds(numbers[is_number], column=column)
    if not is_number.all():
        nanoseconds[~is_number] = _iso_to_nanoseconds(text[~is_number], column=column)
    return nanoseconds


def _iso_to_nanoseconds(text: pd.Series, *, column: str) -> np.ndarray:
    """ISO 8601 strings as UTC nanoseconds; strings without an offset are UTC."""
    # Pandas reads naive strings in the offset of the first aware string of the same call,
    # so the two kinds are parsed apart.
    aware = text.str.contains(_UTC_OFFSET).to_numpy()
    stamps = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    for kind in (aware, ~aware):
        if kind.any():
            parsed = pd.to_datetime(text[kind], utc=True, format="ISO8601", errors="coerce")
            stamps[kind] = parsed.dt.as_unit("ns")
    unparsed = stamps.isna().to_numpy()
    if unparsed.any():
        label, value = _first_offender(text, unparsed)
        raise BarsFormatError(
            f"unparseable timestamp {value!r} in column {column!r}; "
            "use ISO 8601 or unix seconds/milliseconds",
            row=label,
        )
    return pd.DatetimeIndex(stamps).as_unit("ns").asi8


def _epoch_to_nanoseconds(series: pd.Series, *, column: str) -> np.ndarray:
    values = series.to_numpy(dtype="float64", na_value=np.nan)
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
