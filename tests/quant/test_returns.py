"""The point-in-time returns window, its exclusions, and its tidy form for the contracts."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.settings import settings_for
from tvq_assets.quant.policy import point_in_time
from tvq_assets.quant.returns import (
    EXCLUSION_COLUMNS,
    ReturnsWindow,
    drop_symbols,
    tidy_returns,
)
from tvq_resources.synthetic import Fault, generate_market

AS_OF = pd.Timestamp("2025-03-31")


def window(bars: pd.DataFrame, *, as_of=AS_OF, calendar="crypto", **options) -> ReturnsWindow:
    """The production run's window (``policy.point_in_time``, nothing quarantined) of a sleeve
    with the catalog's defaults but for ``options`` (lookback 200 unless given)."""
    settings = settings_for(calendar, **{"lookback": 200, **options})
    return point_in_time(bars, as_of=pd.Timestamp(as_of), settings=settings, quarantine=False)


def hand_made_bars() -> pd.DataFrame:
    """Three symbols over ten days; CCC lists on day 4; closes chosen by hand."""
    closes = {
        "AAA": [10.0, 11.0, 9.9, 9.9, 12.0, 12.5, 11.0, 13.0, 13.5, 14.0],
        "BBB": [2.0, 2.2, 2.1, 2.4, 2.3, 2.2, 2.5, 2.6, 2.4, 2.5],
        "CCC": [None, None, None, 100.0, 90.0, 99.0, 101.0, 100.0, 102.0, 105.0],
    }
    dates = pd.date_range("2025-01-01", periods=10, freq="D")
    rows = [
        (symbol, date, close, close, close, close, 1000.0 + k)
        for symbol, series in closes.items()
        for k, (date, close) in enumerate(zip(dates, series, strict=True))
        if close is not None
    ]
    return pd.DataFrame(rows, columns=["symbol", "date", "open", "high", "low", "close", "volume"])


def test_simple_returns_equal_each_close_over_the_previous_close_minus_one():
    bars = hand_made_bars()
    result = window(bars, as_of="2025-01-10", lookback=9, min_history=1).returns
    for symbol, group in bars.groupby("symbol"):
        closes, dates = group["close"].to_numpy(), group["date"].to_numpy()
        for k in range(1, len(closes)):
            assert result.loc[dates[k], symbol] == closes[k] / closes[k - 1] - 1.0
    assert result.columns.name == "symbol" and result.index.name == "date"
    assert result.dtypes.eq(np.float64).all()


def test_the_first_bar_of_a_symbol_gives_no_return():
    result = window(hand_made_bars(), as_of="2025-01-10", lookback=9, min_history=1).returns
    assert result["CCC"].loc[:"2025-01-04"].isna().all()
    assert result["CCC"].loc["2025-01-05":].notna().all()
    assert result["AAA"].notna().all()  # the first bar (2025-01-01) is the row before the window


def test_dollar_volume_is_close_times_volume_on_the_same_grid():
    bars = hand_made_bars()
    result = window(bars, as_of="2025-01-10", lookback=9, min_history=1)
    expected = bars.assign(dv=bars.close * bars.volume).pivot(
        index="date", columns="symbol", values="dv"
    )
    pd.testing.assert_frame_equal(
        result.dollar_volume,
        expected.loc[result.returns.index],
        check_names=False,
        check_freq=False,
    )


def test_the_window_has_lookback_rows_ending_at_the_last_bar_on_or_before_as_of():
    bars = hand_made_bars()
    result = window(bars, as_of="2025-01-12", lookback=5, min_history=1).returns
    assert len(result) == 5
    assert result.index[-1] == pd.Timestamp("2025-01-10")
    assert list(result.index) == list(pd.date_range("2025-01-06", "2025-01-10"))
    early = window(bars, as_of="2025-01-07", lookback=3, min_history=1).returns
    assert list(early.index) == list(pd.date_range("2025-01-05", "2025-01-07"))


@pytest.fixture(scope="module")
def crypto_market() -> pd.DataFrame:
    return generate_market(seed=17, n_symbols=25, start="2024-06-01", end="2025-06-30")


@pytest.fixture(scope="module")
def crypto_window(crypto_market) -> ReturnsWindow:
    return window(crypto_market)


def assert_same_window(left: ReturnsWindow, right: ReturnsWindow) -> None:
    pd.testing.assert_frame_equal(left.returns, right.returns, check_exact=True)
    pd.testing.assert_frame_equal(left.dollar_volume, right.dollar_volume, check_exact=True)
    pd.testing.assert_frame_equal(left.excluded, right.excluded, check_exact=True)


def test_bars_after_as_of_do_not_change_the_window(crypto_market, crypto_window):
    truncated = crypto_market[crypto_market["date"] <= AS_OF].reset_index(drop=True)
    assert_same_window(window(truncated), crypto_window)


def test_changing_bars_after_as_of_does_not_change_the_window(crypto_market, crypto_window):
    changed = crypto_market.copy()
    later = changed["date"] > AS_OF
    changed.loc[later, ["open", "high", "low", "close"]] *= 3.0
    changed.loc[later, "volume"] = 0.0
    assert_same_window(window(changed), crypto_window)


def test_a_crypto_window_has_every_calendar_day(crypto_window):
    index = crypto_window.returns.index
    assert len(index) == 200 and index[-1] == AS_OF
    assert (np.diff(index.to_numpy()) == np.timedelta64(1, "D")).all()


def test_a_symbol_silent_for_more_than_stale_days_is_excluded_and_recorded():
    bars = hand_made_bars()
    silent = bars[~((bars.symbol == "BBB") & (bars.date > "2025-01-04"))]
    result = window(silent, as_of="2025-01-10", lookback=9, min_history=1, stale_days=5)
    assert list(result.returns.columns) == ["AAA", "CCC"]
    [row] = result.excluded.itertuples(index=False)
    assert (row.symbol, row.rule) == ("BBB", "stale_or_delisted")
    assert row.date == pd.Timestamp("2025-01-04") and row.value == 6.0


def test_a_symbol_silent_for_exactly_stale_days_is_not_stale_but_lacks_the_last_bar():
    bars = hand_made_bars()
    silent = bars[~((bars.symbol == "BBB") & (bars.date > "2025-01-05"))]
    result = window(silent, as_of="2025-01-10", lookback=9, min_history=1, stale_days=5)
    assert "BBB" not in result.returns.columns
    assert result.excluded["rule"].tolist() == ["no_bar_on_last_day"]


def test_a_symbol_with_fewer_returns_than_min_history_is_excluded_and_recorded():
    result = window(hand_made_bars(), as_of="2025-01-10", lookback=9, min_history=7)
    assert list(result.returns.columns) == ["AAA", "BBB"]  # CCC has 6 returns, the others 9
    [row] = result.excluded.itertuples(index=False)
    assert (row.symbol, row.rule, row.value) == ("CCC", "min_history", 6.0)
    assert row.date == pd.Timestamp("2025-01-10")
    assert list(result.excluded.columns) == list(EXCLUSION_COLUMNS)


def test_a_symbol_with_exactly_min_history_returns_stays():
    result = window(hand_made_bars(), as_of="2025-01-10", lookback=9, min_history=6)
    assert "CCC" in result.returns.columns and result.excluded.empty


def test_delisted_and_late_listed_synthetic_symbols_are_excluded_by_the_right_rule(
    crypto_market, crypto_window
):
    known = crypto_market[crypto_market["date"] <= AS_OF]
    last_bar = known.groupby("symbol")["date"].max()
    stale = set(last_bar.index[(AS_OF - last_bar).dt.days > 5])
    window_start = crypto_window.returns.index[0] - pd.Timedelta(days=1)
    inside = known[known["date"] >= window_start]
    counts = inside.groupby("symbol").size() - 1  # bars inside the window give one fewer return
    short = set(counts.index[counts < 90]) - stale
    excluded = crypto_window.excluded
    assert set(excluded.loc[excluded.rule == "stale_or_delisted", "symbol"]) == stale
    assert set(excluded.loc[excluded.rule == "min_history", "symbol"]) == short
    assert stale or short  # the fixture must exercise at least one rule
    kept = set(crypto_market["symbol"]) - stale - short
    assert set(crypto_window.returns.columns) == kept


@pytest.fixture(scope="module")
def weekday_markets() -> tuple[pd.DataFrame, pd.DataFrame]:
    options = {"seed": 4, "n_symbols": 12, "start": "2024-06-03", "end": "2025-04-04"}
    clean = generate_market(calendar="weekday", **options)
    padded = generate_market(
        calendar="weekday", faults=[Fault("weekend_padding", date="2024-09-02")], **options
    )
    return clean, padded


def test_a_weekday_window_never_contains_weekend_dates(weekday_markets):
    _, padded = weekday_markets
    assert (padded["date"].dt.dayofweek >= 5).any()
    result = window(padded, calendar="weekday", as_of="2025-03-30", lookback=120)
    assert len(result.returns) == 120
    assert (result.returns.index.dayofweek < 5).all()
    assert result.returns.index[-1] == pd.Timestamp("2025-03-28")


def test_weekend_rows_leave_a_weekday_window_unchanged(weekday_markets):
    clean, padded = weekday_markets
    options = {"calendar": "weekday", "as_of": "2025-03-30", "lookback": 120}
    assert_same_window(window(padded, **options), window(clean, **options))


def reference_tidy(returns: pd.DataFrame) -> pd.DataFrame:
    """Loop reference: cells from each symbol's first return on; padding over trading symbols."""
    first = {s: returns[s].first_valid_index() for s in returns.columns}
    last = {s: returns[s].last_valid_index() for s in returns.columns}
    padded = {}
    for date, row in returns.iterrows():
        trading = [s for s in returns.columns if first[s] is not None and first[s] <= date]
        trading = [s for s in trading if date <= last[s]]
        padded[date] = len(trading) >= 2 and all(row[s] == 0.0 for s in trading)
    rows = []
    for date, row in returns.iterrows():
        for symbol in returns.columns:
            if first[symbol] is not None and first[symbol] <= date:
                trading_day = date <= last[symbol]
                rows.append((symbol, date, row[symbol], padded[date] and trading_day))
    return pd.DataFrame(rows, columns=["symbol", "date", "value", "filler_day"])


def sorted_cells(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["symbol", "date"], ignore_index=True)


def test_tidy_returns_keeps_exactly_the_cells_after_genesis_and_flags_padded_days():
    returns = pd.DataFrame(
        {
            "AAA": [np.nan, 0.1, 0.0, -0.2, np.nan, 0.0],
            "BBB": [np.nan, np.nan, 0.0, 0.3, 0.1, 0.0],
            "CCC": [0.05, 0.02, 0.0, np.nan, np.nan, np.nan],
        },
        index=pd.date_range("2025-02-01", periods=6, name="date"),
    )
    tidy = tidy_returns(returns)
    assert len(tidy) == 5 + 4 + 6
    pd.testing.assert_frame_equal(sorted_cells(tidy), sorted_cells(reference_tidy(returns)))
    padded = tidy[tidy["filler_day"]]
    assert set(zip(padded.symbol, padded.date.dt.day, strict=True)) == {
        ("AAA", 3),
        ("BBB", 3),
        ("CCC", 3),
        ("AAA", 6),
        ("BBB", 6),
    }


CELL = st.sampled_from([np.nan, 0.0, 0.01, -0.02, 0.5])
SHAPES = st.tuples(st.integers(1, 8), st.integers(1, 4))


@settings(max_examples=60, deadline=None)
@given(values=hnp.arrays(np.float64, SHAPES, elements=CELL))
def test_tidy_returns_matches_a_loop_reference_on_random_windows(values):
    returns = pd.DataFrame(
        values,
        index=pd.date_range("2025-01-01", periods=values.shape[0], name="date"),
        columns=pd.Index([f"S{k}" for k in range(values.shape[1])], name="symbol"),
    )
    tidy, expected = sorted_cells(tidy_returns(returns)), sorted_cells(reference_tidy(returns))
    pd.testing.assert_frame_equal(tidy, expected, check_dtype=False)


def test_drop_symbols_removes_their_columns_and_appends_the_exclusions(crypto_window):
    victims = list(crypto_window.returns.columns[:2])
    offenders = pd.DataFrame(
        {
            "symbol": [victims[0], victims[0], victims[1]],
            "rule": ["toxic_return"] * 3,
            "date": pd.to_datetime(["2025-01-02", "2025-01-05", "2025-02-01"]),
            "value": [6.0, 7.5, 9.0],
            "detail": ["spike", "spike", "spike"],
            "message": ["ignored"] * 3,
        }
    )
    result = drop_symbols(crypto_window, offenders, reason="quarantine")
    remaining = [s for s in crypto_window.returns.columns if s not in victims]
    assert list(result.returns.columns) == remaining
    assert list(result.dollar_volume.columns) == remaining
    pd.testing.assert_frame_equal(result.returns, crypto_window.returns[remaining])
    before = len(crypto_window.excluded)
    pd.testing.assert_frame_equal(
        result.excluded.iloc[:before], crypto_window.excluded, check_dtype=False
    )
    appended = result.excluded.iloc[before:].reset_index(drop=True)
    expected = offenders.assign(reason="quarantine")[list(EXCLUSION_COLUMNS)]
    pd.testing.assert_frame_equal(appended, expected)
    with pytest.raises(ValueError, match="unknown exclusion reason"):
        drop_symbols(crypto_window, offenders, reason="quarantine:toxic_return")


def test_a_symbol_without_a_bar_on_the_last_day_is_excluded_not_left_with_a_trailing_gap():
    from tvq_resources.synthetic import generate_market

    bars = generate_market(seed=5, n_symbols=20, end="2026-06-30")
    lagging = bars.loc[bars["date"] == "2026-06-30", "symbol"].iloc[0]
    bars = bars[~((bars["symbol"] == lagging) & (bars["date"] > "2026-06-28"))]
    result = window(bars, as_of="2026-06-30")
    assert lagging not in result.returns.columns
    [rule] = result.excluded.loc[result.excluded["symbol"] == lagging, "rule"]
    assert rule == "no_bar_on_last_day"
    assert not result.returns.iloc[-1].isna().any()
