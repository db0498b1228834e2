import csv
import datetime as dt
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_resources.files import (
    BarsFormatError,
    LoadError,
    SymbolError,
    normalise_bars,
    read_csv_directory,
    read_parquet_lake,
    validate_symbol,
)

DATES = pd.date_range("2024-01-01", periods=5, freq="D")
OPEN = [100.0, 101.5, 99.25, 102.0, 103.75]
HIGH = [102.0, 103.0, 101.0, 104.5, 105.0]
LOW = [99.0, 100.0, 98.5, 101.0, 102.25]
CLOSE = [101.5, 99.25, 100.75, 103.75, 104.0]
VOLUME = [1500.0, 2500.5, 1800.0, 3200.0, 900.0]
SECONDS = [int(day.timestamp()) for day in DATES]


def expected_bars(symbol: str, rows: slice = slice(None)) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": symbol,
            "date": DATES[rows].as_unit("ns"),
            "open": OPEN[rows],
            "high": HIGH[rows],
            "low": LOW[rows],
            "close": CLOSE[rows],
            "volume": VOLUME[rows],
        }
    )


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def bar_rows(times: list[object]) -> list[list[object]]:
    return [list(row) for row in zip(times, OPEN, HIGH, LOW, CLOSE, VOLUME, strict=True)]


def tradingview_seconds(root: Path) -> None:
    write_csv(
        root / "TV.csv", ["time", "open", "high", "low", "close", "Volume"], bar_rows(SECONDS)
    )


def tradingview_iso(root: Path) -> None:
    times = [day.strftime("%Y-%m-%dT%H:%M:%SZ") for day in DATES]
    write_csv(root / "TV.csv", ["time", "open", "high", "low", "close", "Volume"], bar_rows(times))


def yahoo(root: Path) -> None:
    header = ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume", "Dividends"]
    header += ["Stock Splits"]
    rows = [
        [f"{day:%Y-%m-%d} 00:00:00-05:00", o, h, lo, c, c * 0.97, v, 0.0, 0.0]
        for day, o, h, lo, c, v in zip(DATES, OPEN, HIGH, LOW, CLOSE, VOLUME, strict=True)
    ]
    write_csv(root / "TV.csv", header, rows)


def klines(root: Path) -> None:
    header = ["open_time", "open", "high", "low", "close", "volume", "close_time"]
    header += ["quote_asset_volume", "number_of_trades", "taker_buy_base_asset_volume"]
    rows = [
        [s * 1000, o, h, lo, c, v, s * 1000 + 86_399_999, v * c, 42, v / 2]
        for s, o, h, lo, c, v in zip(SECONDS, OPEN, HIGH, LOW, CLOSE, VOLUME, strict=True)
    ]
    write_csv(root / "TV.csv", header, rows)


def headerless_klines(root: Path) -> None:
    rows = [
        [s * 1000, o, h, lo, c, v, s * 1000 + 86_399_999, v * c, 42, v / 2, v * c / 2, 0]
        for s, o, h, lo, c, v in zip(SECONDS, OPEN, HIGH, LOW, CLOSE, VOLUME, strict=True)
    ]
    with (root / "TV.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def plain_timestamp_seconds(root: Path) -> None:
    header = ["timestamp", "open", "high", "low", "close", "volume"]
    write_csv(root / "TV.csv", header, bar_rows(SECONDS))


def plain_date_milliseconds(root: Path) -> None:
    header = ["date", "open", "high", "low", "close", "volume"]
    write_csv(root / "TV.csv", header, bar_rows([s * 1000 for s in SECONDS]))


def plain_datetime_iso(root: Path) -> None:
    header = ["datetime", "open", "high", "low", "close", "volume"]
    write_csv(root / "TV.csv", header, bar_rows([f"{day:%Y-%m-%d}" for day in DATES]))


@pytest.mark.parametrize(
    "write_layout",
    [
        tradingview_seconds,
        tradingview_iso,
        yahoo,
        klines,
        headerless_klines,
        plain_timestamp_seconds,
        plain_date_milliseconds,
        plain_datetime_iso,
    ],
)
def test_every_supported_layout_reads_to_identical_bars(tmp_path, write_layout):
    write_layout(tmp_path)

    result = read_csv_directory(tmp_path)

    assert result.errors == ()
    assert result.files == 1
    assert result.duplicates == 0
    pd.testing.assert_frame_equal(result.bars, expected_bars("TV"))


def test_yahoo_close_is_used_rather_than_adjusted_close(tmp_path):
    yahoo(tmp_path)

    bars = read_csv_directory(tmp_path).bars

    assert bars["close"].tolist() == CLOSE


def test_bars_follow_the_long_bars_convention(tmp_path):
    tradingview_seconds(tmp_path)
    klines_root = tmp_path / "ETH.csv"
    header = ["open_time", "open", "high", "low", "close", "volume"]
    write_csv(klines_root, header, bar_rows([s * 1000 for s in SECONDS])[::-1])

    bars = read_csv_directory(tmp_path).bars

    assert list(bars.columns) == ["symbol", "date", "open", "high", "low", "close", "volume"]
    assert isinstance(bars.index, pd.RangeIndex) and bars.index.start == 0
    assert bars["date"].dtype == np.dtype("datetime64[ns]")
    assert all(bars[c].dtype == np.float64 for c in ["open", "high", "low", "close", "volume"])
    assert bars["symbol"].tolist() == ["ETH"] * 5 + ["TV"] * 5
    assert bars.equals(bars.sort_values(["symbol", "date"]).reset_index(drop=True))
    assert not bars.duplicated(["symbol", "date"]).any()


def test_a_minus_five_hour_midnight_keeps_its_calendar_date(tmp_path):
    header = ["Date", "Open", "High", "Low", "Close", "Volume"]
    write_csv(tmp_path / "SPY.csv", header, [["2024-01-02 00:00:00-05:00", 1, 2, 0.5, 1.5, 10]])

    bars = read_csv_directory(tmp_path).bars

    assert bars["date"].tolist() == [pd.Timestamp("2024-01-02")]


def test_a_plus_nine_hour_midnight_is_that_days_session_not_the_previous_utc_date(tmp_path):
    header = ["Date", "Open", "High", "Low", "Close", "Volume"]
    write_csv(tmp_path / "7203.T.csv", header, [["2024-01-04 00:00:00+09:00", 1, 2, 0.5, 1.5, 9]])

    bars = read_csv_directory(tmp_path).bars

    assert bars["symbol"].tolist() == ["7203.T"]
    assert bars["date"].tolist() == [pd.Timestamp("2024-01-04")]


def test_mixed_daylight_saving_offsets_in_one_file_keep_their_local_session_dates(tmp_path):
    header = ["Date", "Open", "High", "Low", "Close", "Volume"]
    rows = [
        ["2024-03-08 00:00:00-05:00", 1, 2, 0.5, 1.5, 10],
        ["2024-03-11 00:00:00-04:00", 1, 2, 0.5, 1.5, 10],
        ["2024-03-11 23:30:00-04:00", 1, 2, 0.5, 1.6, 10],
    ]
    write_csv(tmp_path / "SPY.csv", header, rows)

    result = read_csv_directory(tmp_path)

    # 23:30-04:00 is still the 11th's session there: the later report of that day wins.
    expected = pd.to_datetime(["2024-03-08", "2024-03-11"])
    assert result.bars["date"].tolist() == list(expected)
    assert result.bars["close"].tolist() == [1.5, 1.6]
    assert result.duplicates == 1 and result.superseded["close"].tolist() == [1.5]


@pytest.mark.parametrize("scale", [1, 1_000, 1_000_000, 1_000_000_000])
def test_unix_epochs_are_read_as_seconds_milliseconds_microseconds_or_nanoseconds(tmp_path, scale):
    header = ["timestamp", "open", "high", "low", "close", "volume"]
    write_csv(tmp_path / "BTC.csv", header, bar_rows([s * scale for s in SECONDS]))

    bars = read_csv_directory(tmp_path).bars

    assert bars["date"].tolist() == list(DATES)


def test_seconds_and_milliseconds_of_the_same_instant_may_share_a_file(tmp_path):
    header = ["timestamp", "open", "high", "low", "close", "volume"]
    times = [s * 1000 if i % 2 else s for i, s in enumerate(SECONDS)]
    write_csv(tmp_path / "BTC.csv", header, bar_rows(times))

    bars = read_csv_directory(tmp_path).bars

    assert bars["date"].tolist() == list(DATES)


def test_a_column_of_yyyymmdd_integers_is_read_as_dates(tmp_path):
    header = ["Date", "Open", "High", "Low", "Close", "Volume"]
    write_csv(tmp_path / "SPY.csv", header, bar_rows([f"{day:%Y%m%d}" for day in DATES]))

    bars = read_csv_directory(tmp_path).bars

    assert bars["date"].tolist() == list(DATES)


@pytest.mark.parametrize(
    ("raw", "date"),
    [
        ("2024-01-02T23:30:00Z", "2024-01-02"),
        ("2024-01-02T20:00:00-0500", "2024-01-02"),
        ("2024-01-02T08:00+09", "2024-01-02"),
        ("2024-01-02 05:30:00+05:30", "2024-01-02"),
        ("2024-01-02 00:00:00+05:30", "2024-01-02"),
        ("2024-01-02T23:59:00-1000", "2024-01-02"),
        ("2024-1-2", "2024-01-02"),
    ],
)
def test_every_iso_offset_form_is_dated_by_its_local_session(tmp_path, raw, date):
    header = ["datetime", "open", "high", "low", "close", "volume"]
    write_csv(tmp_path / "X.csv", header, [[raw, 1, 2, 0.5, 1.5, 10]])

    result = read_csv_directory(tmp_path)

    assert result.errors == ()
    assert result.bars["date"].tolist() == [pd.Timestamp(date)]


@pytest.mark.parametrize("word", ["today", "now", "NaT", "2024-01-02T00:00:00+9:00:00"])
def test_a_word_in_a_date_column_is_never_read_as_a_date(tmp_path, word):
    times = [f"{day:%Y-%m-%d}" for day in DATES]
    times[1] = word
    write_csv(
        tmp_path / "X.csv", ["date", "open", "high", "low", "close", "volume"], bar_rows(times)
    )

    [error] = read_csv_directory(tmp_path).errors

    assert error.line == 3
    assert repr(word) in error.reason


def test_an_intraday_epoch_is_dated_by_its_utc_calendar_day(tmp_path):
    last_millisecond = (SECONDS[1] - 1) * 1000 + 999
    header = ["open_time", "open", "high", "low", "close", "volume"]
    write_csv(tmp_path / "BTC.csv", header, [[last_millisecond, 1, 2, 0.5, 1.5, 3]])

    bars = read_csv_directory(tmp_path).bars

    assert bars["date"].tolist() == [DATES[0]]


def test_headers_are_case_insensitive_and_column_order_is_free(tmp_path):
    header = ["VOLUME", "Close", "extra", "LoW", "TIME", "oPeN", "High"]
    rows = [
        [v, c, "x", lo, t, o, h]
        for t, o, h, lo, c, v in zip(SECONDS, OPEN, HIGH, LOW, CLOSE, VOLUME, strict=True)
    ]
    write_csv(tmp_path / "TV.csv", header, rows)

    result = read_csv_directory(tmp_path)

    pd.testing.assert_frame_equal(result.bars, expected_bars("TV"))


def test_duplicate_dates_keep_the_last_row_and_are_counted(tmp_path):
    header = ["time", "open", "high", "low", "close", "volume"]
    rows = [
        [SECONDS[0], 1, 2, 0.5, 1.0, 10],
        [SECONDS[1], 1, 2, 0.5, 2.0, 10],
        [SECONDS[0], 1, 2, 0.5, 3.0, 10],  # a later correction of the first day
        [SECONDS[1] + 3600, 1, 2, 0.5, 4.0, 10],  # a later bar of the second day
    ]
    write_csv(tmp_path / "BTC.csv", header, rows)
    write_csv(tmp_path / "ETH.csv", header, [rows[0], rows[0]])

    result = read_csv_directory(tmp_path)

    assert result.duplicates == 3
    btc = result.bars[result.bars["symbol"] == "BTC"]
    assert btc["date"].tolist() == list(DATES[:2])
    assert btc["close"].tolist() == [3.0, 4.0]


def test_the_latest_timestamp_of_a_day_wins_whatever_the_file_order(tmp_path):
    header = ["time", "open", "high", "low", "close", "volume"]
    rows = [[SECONDS[0] + 7200, 1, 2, 0.5, 2.0, 10], [SECONDS[0] + 3600, 1, 2, 0.5, 1.0, 10]]
    write_csv(tmp_path / "BTC.csv", header, rows)

    result = read_csv_directory(tmp_path)

    assert result.bars["close"].tolist() == [2.0]
    assert result.duplicates == 1


def test_text_in_a_numeric_column_is_reported_with_its_line_while_other_files_load(tmp_path):
    tradingview_seconds(tmp_path)
    rows = bar_rows(SECONDS)
    rows[2][4] = "n/a?"
    write_csv(tmp_path / "BAD.csv", ["time", "open", "high", "low", "close", "volume"], rows)

    result = read_csv_directory(tmp_path)

    [error] = result.errors
    assert (error.file, error.line) == ("BAD.csv", 4)
    assert "close" in error.reason and "'n/a?'" in error.reason
    assert result.files == 1
    pd.testing.assert_frame_equal(result.bars, expected_bars("TV"))


def test_blank_lines_do_not_shift_reported_line_numbers(tmp_path):
    text = (
        "time,open,high,low,close,volume\n\n1704067200,1,2,0.5,1.5,10\n\n\n1704153600,1,2,x,1,1\n"
    )
    (tmp_path / "BAD.csv").write_text(text)

    [error] = read_csv_directory(tmp_path).errors

    assert error.line == 6
    assert str(error).startswith("BAD.csv:6: ")


def test_a_header_without_a_time_column_names_the_missing_and_found_columns(tmp_path):
    tradingview_seconds(tmp_path)
    write_csv(tmp_path / "BAD.csv", ["when", "open", "high", "close", "volume"], [[1, 1, 2, 1, 1]])

    result = read_csv_directory(tmp_path)

    [error] = result.errors
    assert (error.file, error.line) == ("BAD.csv", 1)
    assert "no time column" in error.reason
    assert "missing column low" in error.reason
    assert "when, open, high, close, volume" in error.reason
    assert result.bars["symbol"].unique().tolist() == ["TV"]


def test_a_missing_volume_column_is_an_error_naming_it(tmp_path):
    write_csv(
        tmp_path / "BTC.csv", ["time", "open", "high", "low", "close"], [[SECONDS[0], 1, 2, 0, 1]]
    )

    [error] = read_csv_directory(tmp_path).errors

    assert "missing column volume" in error.reason


def test_an_empty_file_and_a_header_only_file_are_reported_as_empty(tmp_path):
    tradingview_seconds(tmp_path)
    (tmp_path / "EMPTY.csv").write_text("")
    (tmp_path / "HEADER.csv").write_text("time,open,high,low,close,volume\n")

    result = read_csv_directory(tmp_path)

    assert [error.file for error in result.errors] == ["EMPTY.csv", "HEADER.csv"]
    assert all("empty file" in error.reason for error in result.errors)
    assert result.files == 1


def test_an_unparseable_timestamp_reports_its_line_and_value(tmp_path):
    times = [f"{day:%Y-%m-%d}" for day in DATES]
    times[3] = "04/01/2024"
    write_csv(
        tmp_path / "BTC.csv", ["date", "open", "high", "low", "close", "volume"], bar_rows(times)
    )

    [error] = read_csv_directory(tmp_path).errors

    assert error.line == 5
    assert "'04/01/2024'" in error.reason


def test_a_stray_word_among_unix_epochs_is_reported_as_an_unparseable_timestamp(tmp_path):
    times: list[object] = list(SECONDS)
    times[1] = "yesterday"
    write_csv(
        tmp_path / "BTC.csv", ["time", "open", "high", "low", "close", "volume"], bar_rows(times)
    )

    [error] = read_csv_directory(tmp_path).errors

    assert error.line == 3
    assert "'yesterday'" in error.reason


def test_a_malformed_csv_row_is_reported_with_its_line(tmp_path):
    text = "time,open,high,low,close,volume\n1704067200,1,2,0.5,1.5,10\n1704153600,1,2,1,1,1,7,8\n"
    (tmp_path / "BTC.csv").write_text(text)

    [error] = read_csv_directory(tmp_path).errors

    assert error.line == 3


def test_empty_price_cells_are_kept_as_nan_for_the_bars_contract(tmp_path):
    text = "time,open,high,low,close,volume\n1704067200,1,2,0.5,,10\n"
    (tmp_path / "BTC.csv").write_text(text)

    result = read_csv_directory(tmp_path)

    assert result.errors == ()
    assert np.isnan(result.bars["close"].iloc[0])


@pytest.mark.parametrize(
    "name", ["..", "a/b", "..\\x", "", ".hidden", "a\x00b", "BTC USDT", "é", "-rf", "BTC, 1D"]
)
def test_unsafe_or_malformed_symbols_are_rejected_naming_the_value(name):
    with pytest.raises(SymbolError) as raised:
        validate_symbol(name)

    assert repr(name) in str(raised.value) or name == ""


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("btcusdt", "BTCUSDT"),
        ("BINANCE:BTCUSDT", "BINANCE:BTCUSDT"),
        ("BRK.B", "BRK.B"),
        ("X_1-2", "X_1-2"),
    ],
)
def test_valid_symbols_are_returned_upper_cased(name, symbol):
    assert validate_symbol(name) == symbol


@given(st.text(min_size=1, max_size=12))
def test_an_accepted_symbol_is_always_a_single_safe_path_component(name):
    try:
        symbol = validate_symbol(name)
    except SymbolError:
        return
    assert symbol == name.upper()
    assert Path(symbol).name == symbol and len(Path(symbol).parts) == 1
    assert ".." not in symbol and not symbol.startswith(".")
    assert set(symbol) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")


@given(st.text(alphabet="abcXYZ019._:-", min_size=1, max_size=10))
def test_every_name_of_allowed_characters_without_dots_in_front_or_in_pairs_is_accepted(name):
    safe = not name.startswith((".", "-")) and ".." not in name

    accepted = True
    try:
        validate_symbol(name)
    except SymbolError:
        accepted = False

    assert accepted == safe


def test_traversal_like_file_names_are_rejected_and_never_read(tmp_path, monkeypatch):
    tradingview_seconds(tmp_path)
    (tmp_path / "..\\x.csv").write_text("time,open,high,low,close,volume\n")
    (tmp_path / "..evil.csv").write_text("time,open,high,low,close,volume\n")
    opened: list[str] = []
    real_read_csv = pd.read_csv

    def spy(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_read_csv(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", spy)

    result = read_csv_directory(tmp_path)

    assert sorted(error.file for error in result.errors) == ["..\\x.csv", "..evil.csv"]
    assert all(error.line is None and "symbol" in error.reason for error in result.errors)
    assert set(opened) == {"TV.csv"}


def test_a_link_pointing_outside_the_directory_is_not_read(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    tradingview_seconds(tmp_path)
    (source / "LEAK.csv").symlink_to(tmp_path / "TV.csv")

    result = read_csv_directory(source)

    assert result.bars.empty
    assert [error.file for error in result.errors] == ["LEAK.csv"]


def test_files_not_matching_the_pattern_are_ignored(tmp_path):
    tradingview_seconds(tmp_path)
    (tmp_path / "notes.txt").write_text("not market data")
    (tmp_path / "README.md").write_text("#")
    (tmp_path / "sub.csv").mkdir()

    result = read_csv_directory(tmp_path)

    assert result.errors == ()
    assert result.files == 1


def test_a_custom_pattern_takes_the_symbol_from_its_placeholder(tmp_path):
    header = ["time", "open", "high", "low", "close", "volume"]
    write_csv(tmp_path / "nasdaq-aapl_daily.csv", header, bar_rows(SECONDS))
    write_csv(tmp_path / "aapl.csv", header, bar_rows(SECONDS))

    result = read_csv_directory(tmp_path, pattern="{exchange}-{symbol}_daily.csv")

    assert result.files == 1
    assert result.bars["symbol"].unique().tolist() == ["AAPL"]


@pytest.mark.parametrize(
    "pattern", ["{ticker}.csv", "data.csv", "{symbol}/x.csv", "{symbol}{symbol}"]
)
def test_an_invalid_pattern_is_refused(tmp_path, pattern):
    with pytest.raises(ValueError):
        read_csv_directory(tmp_path, pattern=pattern)


def test_two_files_for_one_symbol_keep_the_first_and_report_the_second(tmp_path):
    tradingview_seconds(tmp_path)
    (tmp_path / "tv.CSV").write_text("time,open,high,low,close,volume\n1704067200,9,9,9,9,9\n")

    result = read_csv_directory(tmp_path)

    [error] = result.errors
    assert error.file == "tv.CSV" and "TV.csv" in error.reason
    pd.testing.assert_frame_equal(result.bars, expected_bars("TV"))


def test_since_keeps_only_bars_dated_after_it_and_still_validates_every_file(tmp_path):
    tradingview_seconds(tmp_path)
    rows = bar_rows(SECONDS)
    rows[0][1] = "oops"
    write_csv(tmp_path / "BAD.csv", ["time", "open", "high", "low", "close", "volume"], rows)

    result = read_csv_directory(tmp_path, since=DATES[2])

    pd.testing.assert_frame_equal(result.bars, expected_bars("TV", slice(3, None)))
    assert [(error.file, error.line) for error in result.errors] == [("BAD.csv", 2)]


def test_since_counts_only_duplicates_inside_the_kept_range(tmp_path):
    header = ["time", "open", "high", "low", "close", "volume"]
    rows = [[SECONDS[i], 1, 2, 0.5, 1, 1] for i in (0, 0, 3, 3, 3)]
    write_csv(tmp_path / "BTC.csv", header, rows)

    result = read_csv_directory(tmp_path, since=pd.Timestamp("2024-01-02T00:00:00+00:00"))

    assert result.duplicates == 2
    assert result.bars["date"].tolist() == [DATES[3]]


def test_a_missing_root_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_csv_directory(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_parquet_lake(missing)


def test_an_empty_directory_gives_empty_bars_with_the_bar_columns(tmp_path):
    result = read_csv_directory(tmp_path)

    assert list(result.bars.columns) == ["symbol", "date", "open", "high", "low", "close", "volume"]
    assert result.bars.empty and result.files == 0 and result.errors == ()
    assert result.bars["date"].dtype == np.dtype("datetime64[ns]")


def test_a_load_error_prints_as_file_line_reason():
    assert str(LoadError("BTC.csv", 7, "bad")) == "BTC.csv:7: bad"
    assert str(LoadError("BTC.csv", None, "bad")) == "BTC.csv: bad"


def parquet_table(time_column: str, times: pa.Array) -> pa.Table:
    return pa.table(
        {
            time_column: times,
            "Open": pa.array(OPEN),
            "high": pa.array(HIGH),
            "low": pa.array(LOW),
            "close": pa.array(CLOSE),
            "volume": pa.array(VOLUME),
            "symbol": pa.array(["ignored"] * 5),
        }
    )


def test_a_parquet_lake_round_trips_several_timestamp_encodings(tmp_path):
    utc = pa.array([day.to_pydatetime() for day in DATES], pa.timestamp("ms", tz="UTC"))
    tokyo = pa.array(
        [(day + pd.Timedelta(hours=9)).tz_localize("Asia/Tokyo") for day in DATES],
        pa.timestamp("us", tz="Asia/Tokyo"),
    )
    pq.write_table(parquet_table("open_time", utc), tmp_path / "BINANCE_BTCUSDT_1d.parquet")
    pq.write_table(parquet_table("date", pa.array(DATES.date)), tmp_path / "NYSE_SPY_1d.parquet")
    milliseconds = pa.array([s * 1000 for s in SECONDS], pa.int64())
    pq.write_table(parquet_table("timestamp", milliseconds), tmp_path / "OKX_ETH-USDT_1d.parquet")
    pq.write_table(parquet_table("datetime", tokyo), tmp_path / "TSE_7203.T_1d.parquet")
    iso = pa.array([f"{day:%Y-%m-%d}T00:00:00Z" for day in DATES])
    pq.write_table(parquet_table("time", iso), tmp_path / "CME_ES:1_1d.parquet")

    result = read_parquet_lake(tmp_path)

    assert result.errors == ()
    assert result.files == 5
    symbols = ["7203.T", "BTCUSDT", "ES:1", "ETH-USDT", "SPY"]
    expected = pd.concat([expected_bars(s) for s in symbols], ignore_index=True)
    pd.testing.assert_frame_equal(result.bars, expected)


def test_a_pandas_written_parquet_file_with_a_date_index_is_read(tmp_path):
    frame = expected_bars("X").drop(columns="symbol").set_index("date")
    frame.to_parquet(tmp_path / "NYSE_IBM_1d.parquet")

    result = read_parquet_lake(tmp_path)

    pd.testing.assert_frame_equal(result.bars, expected_bars("IBM"))


def test_the_lake_pattern_keeps_the_exchange_out_of_the_symbol_and_ignores_other_files(tmp_path):
    seconds = pa.array(SECONDS, pa.int64())
    pq.write_table(parquet_table("time", seconds), tmp_path / "BINANCE_BTCUSDT_1d.parquet")
    pq.write_table(parquet_table("time", seconds), tmp_path / "BINANCE_BTCUSDT_1h.parquet")
    pq.write_table(parquet_table("time", seconds), tmp_path / "BTCUSDT.parquet")
    pq.write_table(parquet_table("time", seconds), tmp_path / "BYBIT_BTCUSDT_1d.parquet")

    result = read_parquet_lake(tmp_path)

    assert result.bars["symbol"].unique().tolist() == ["BTCUSDT"]
    [error] = result.errors
    assert error.file == "BYBIT_BTCUSDT_1d.parquet"
    assert "BINANCE_BTCUSDT_1d.parquet" in error.reason


def test_a_broken_parquet_file_is_reported_while_the_others_load(tmp_path):
    seconds = pa.array(SECONDS, pa.int64())
    pq.write_table(parquet_table("time", seconds), tmp_path / "X_GOOD_1d.parquet")
    (tmp_path / "X_CORRUPT_1d.parquet").write_bytes(b"PAR1 not really parquet")
    (tmp_path / "X_EMPTY_1d.parquet").write_bytes(b"")
    texts = pa.array(["1", "2", "three", "4", "5"])
    bad = parquet_table("time", seconds).set_column(4, "close", texts)
    pq.write_table(bad, tmp_path / "X_TEXT_1d.parquet")
    pq.write_table(parquet_table("when", seconds), tmp_path / "X_NOTIME_1d.parquet")

    result = read_parquet_lake(tmp_path)

    reasons = {error.file: error.reason for error in result.errors}
    assert set(reasons) == {
        "X_CORRUPT_1d.parquet",
        "X_EMPTY_1d.parquet",
        "X_TEXT_1d.parquet",
        "X_NOTIME_1d.parquet",
    }
    assert "empty file" in reasons["X_EMPTY_1d.parquet"]
    assert (
        reasons["X_TEXT_1d.parquet"].startswith("row 3:")
        and "'three'" in reasons["X_TEXT_1d.parquet"]
    )
    assert "no time column" in reasons["X_NOTIME_1d.parquet"]
    assert all(error.line is None for error in result.errors)
    pd.testing.assert_frame_equal(result.bars, expected_bars("GOOD"))


def test_normalise_bars_uses_a_datetime_index_when_no_column_holds_time():
    frame = expected_bars("X").drop(columns="symbol").set_index("date")
    frame.columns = [c.title() for c in frame.columns]

    bars = normalise_bars(frame, symbol="ibm")

    pd.testing.assert_frame_equal(bars, expected_bars("IBM"))


def test_normalise_bars_names_the_offending_row_label():
    frame = pd.DataFrame(
        {"time": SECONDS[:2], "open": [1, 1], "high": [2, 2], "low": [0, 0]},
        index=[10, 11],
    )
    frame["close"] = ["1.0", "bad"]
    frame["volume"] = 1.0

    with pytest.raises(BarsFormatError) as raised:
        normalise_bars(frame, symbol="X")

    assert raised.value.row == 11


def reference_bars(text: str) -> dict[dt.date, tuple[float, ...]]:
    """Loop-based reading: parse each row with the standard library, later timestamps win."""
    rows = []
    for position, record in enumerate(csv.DictReader(io.StringIO(text))):
        raw = record["time"]
        if raw.lstrip("-").isdigit():
            value = int(raw)
            unit = 1 if abs(value) < 1e11 else 1_000
            stamp = dt.datetime.fromtimestamp(value / unit, tz=dt.UTC)
        else:
            stamp = dt.datetime.fromisoformat(raw)
            stamp = stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp
        prices = tuple(float(record[c]) for c in ["open", "high", "low", "close", "volume"])
        # The session date is the local date in the stamp's own offset; later instants win.
        rows.append((stamp.astimezone(dt.UTC), position, stamp.date(), prices))
    result: dict[dt.date, tuple[float, ...]] = {}
    for _, _, day, prices in sorted(rows, key=lambda row: (row[0], row[1])):
        result[day] = prices
    return result


@st.composite
def raw_rows(draw) -> str:
    count = draw(st.integers(min_value=1, max_value=25))
    lines = ["time,open,high,low,close,volume"]
    base = dt.datetime(2023, 12, 30, tzinfo=dt.UTC)
    for _ in range(count):
        minutes = draw(st.integers(min_value=0, max_value=8 * 24 * 60))
        stamp = base + dt.timedelta(minutes=minutes)
        encoding = draw(
            st.sampled_from(
                ["seconds", "milliseconds", "iso", "date", "zulu", "offset", "compact_offset"]
            )
        )
        if encoding == "seconds":
            raw = str(int(stamp.timestamp()))
        elif encoding == "milliseconds":
            raw = str(int(stamp.timestamp()) * 1000)
        elif encoding == "iso":
            raw = stamp.strftime("%Y-%m-%d %H:%M:%S")
        elif encoding == "date":
            raw = stamp.strftime("%Y-%m-%d")
        elif encoding == "zulu":
            raw = stamp.strftime("%Y-%m-%dT%H:%MZ")
        else:
            minutes_east = draw(st.integers(min_value=-11 * 4, max_value=14 * 4)) * 15
            zone = dt.timezone(dt.timedelta(minutes=minutes_east))
            local = stamp.astimezone(zone)
            raw = local.isoformat() if encoding == "offset" else f"{local:%Y-%m-%d %H:%M:%S%z}"
        prices = draw(st.lists(st.integers(1, 10_000), min_size=5, max_size=5))
        lines.append(",".join([raw, *(str(p / 4) for p in prices)]))
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None)
@given(raw_rows())
def test_normalised_bars_match_a_row_by_row_reference_reading(text):
    frame = pd.read_csv(io.StringIO(text), dtype={"time": str})

    bars = normalise_bars(frame, symbol="btc")

    reference = reference_bars(text)
    assert [d.date() for d in bars["date"]] == sorted(reference)
    values = bars[["open", "high", "low", "close", "volume"]].itertuples(index=False, name=None)
    assert list(values) == [reference[day] for day in sorted(reference)]
    assert (bars["symbol"] == "BTC").all()


def test_a_file_named_like_an_option_is_reported_and_never_read(tmp_path):
    tradingview_seconds(tmp_path)
    (tmp_path / "-rf.csv").write_text("time,open,high,low,close,volume\n1704067200,1,2,0.5,1,1\n")

    result = read_csv_directory(tmp_path)

    assert "-RF" not in set(result.bars["symbol"])
    [error] = result.errors
    assert error.file == "-rf.csv" and "starts with a dash" in error.reason


def test_a_vendor_url_line_before_the_header_is_skipped_and_lines_still_count_from_it(tmp_path):
    (tmp_path / "X.csv").write_text(
        "https://www.CryptoDataDownload.com\n"
        "unix,date,symbol,open,high,low,close,Volume X,Volume USDT\n"
        "1704153600000,2024-01-02,X/USDT,1,2,0.5,1.5,10,15\n"
        "1704067200,2024-01-01,X/USDT,1,2,0.5,oops,10,15\n"
    )

    [error] = read_csv_directory(tmp_path).errors

    assert error.line == 4 and "oops" in error.reason


@pytest.mark.parametrize("per_task", [1, 2, 64])
def test_a_symbol_goes_to_its_first_readable_file_however_the_parsing_is_split(
    tmp_path, monkeypatch, per_task
):
    from tvq_resources import files
    from tvq_resources.ray_fanout import SerialMap

    header = "date,open,high,low,close,volume\n"
    good = header + "2024-01-02,1,2,0.5,1.5,100\n2024-01-03,1,2,0.5,{},100\n"
    (tmp_path / "A_BTC.csv").write_text(header)  # no bars
    (tmp_path / "B_BTC.csv").write_text(good.format(1.6))
    (tmp_path / "C_BTC.csv").write_text(good.format(1.7))
    (tmp_path / "D_ETH.csv").write_text(good.format(1.8))
    monkeypatch.setattr(files, "FILES_PER_TASK", per_task)
    fanout = SerialMap()
    loaded = read_csv_directory(tmp_path, pattern="{exchange}_{symbol}.csv", map_tasks=fanout)
    assert fanout.tasks == (-(-4 // per_task) if per_task < 4 else 0)  # one chunk: in process
    assert [str(error).split(":")[0] for error in loaded.errors] == ["A_BTC.csv", "C_BTC.csv"]
    assert "already loaded from B_BTC.csv" in loaded.errors[1].reason
    closes = loaded.bars.groupby("symbol")["close"].last()
    assert closes.to_dict() == {"BTC": 1.6, "ETH": 1.8}
