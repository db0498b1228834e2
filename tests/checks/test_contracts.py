"""Every rule of the data contracts (DOMAIN §2), each broken alone by a crafted input."""

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from tests.settings import settings_for
from tvq_assets.quant import policy, quality
from tvq_checks import contracts
from tvq_resources.synthetic import generate_market

SYMBOLS = ("AAA", "BBB")
ROW = 12  # the row of AAA that a crafted case breaks (2024-01-13 on the crypto fixture)


def make_bars(*, days: int = 30, start: str = "2024-01-01", freq: str = "D") -> pd.DataFrame:
    """Clean long bars: two symbols, varied closes, noisy positive volume, consistent OHLC."""
    rng = np.random.default_rng(42)
    dates = pd.date_range(start, periods=days, freq=freq)
    frames = []
    for symbol in SYMBOLS:
        close = 100.0 * np.cumprod(1.0 + 0.02 * rng.standard_normal(days))
        open_ = close * (1.0 + 0.005 * rng.standard_normal(days))
        frames.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "date": dates,
                    "open": open_,
                    "high": np.maximum(open_, close) * 1.01,
                    "low": np.minimum(open_, close) * 0.99,
                    "close": close,
                    "volume": 1_000.0 + 100.0 * rng.standard_normal(days),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def day(bars: pd.DataFrame, row: int) -> str:
    return f"{bars.loc[row, 'date']:%Y-%m-%d}"


def assert_single_finding(
    table: pd.DataFrame, *, rule: str, symbol: str, date: str, value: float, text: str
) -> None:
    """Exactly one finding, carrying the rule, symbol, date and value, named in its message."""
    assert list(table["rule"]) == [rule], table.to_string()
    [finding] = table.itertuples(index=False)
    assert finding.symbol == symbol
    assert finding.date == pd.Timestamp(date)
    np.testing.assert_equal(finding.value, value)
    assert symbol in finding.message
    assert date in finding.message
    assert text in finding.message
    assert rule in finding.message


def set_cell(column: str, value: float) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(bars: pd.DataFrame) -> pd.DataFrame:
        bars.loc[ROW, column] = value
        return bars

    return change


def high_below_open_close(bars: pd.DataFrame) -> pd.DataFrame:
    bars.loc[ROW, "high"] = bars.loc[ROW, ["open", "close"]].max() - 0.25
    return bars


def low_above_open_close(bars: pd.DataFrame) -> pd.DataFrame:
    bars.loc[ROW, "low"] = bars.loc[ROW, ["open", "close"]].min() + 0.25
    return bars


def filler_bar(bars: pd.DataFrame) -> pd.DataFrame:
    bars.loc[ROW, ["open", "high", "low", "close"]] = bars.loc[ROW - 1, "close"]
    bars.loc[ROW, "volume"] = 0.0
    return bars


BAR_ERROR_CASES = {
    # A negative or zero low keeps low <= min(open, close): only the price rule breaks.
    "negative price": (set_cell("low", -1.0), "prices_positive_finite", "low", "price -1 "),
    "zero price": (set_cell("low", 0.0), "prices_positive_finite", "low", "price 0 "),
    "missing price": (set_cell("close", np.nan), "prices_positive_finite", "close", "price nan"),
    "infinite price": (set_cell("high", np.inf), "prices_positive_finite", "high", "price inf"),
    "negative volume": (set_cell("volume", -5.0), "volume_non_negative", "volume", "volume -5 "),
    "high below open/close": (high_below_open_close, "high_covers_open_close", "high", "high "),
    "low above open/close": (low_above_open_close, "low_covers_open_close", "low", "low "),
    "filler bar": (filler_bar, "no_filler_bars", "close", "zero-volume copy"),
}


@pytest.mark.parametrize("case", list(BAR_ERROR_CASES))
def test_a_bar_breaking_one_error_rule_is_reported_with_rule_symbol_date_and_value(case):
    change, rule, column, text = BAR_ERROR_CASES[case]
    bars = change(make_bars())
    errors, _ = contracts.bar_violations(bars, calendar="crypto")
    value = bars.loc[ROW, column]
    assert_single_finding(
        errors, rule=rule, symbol="AAA", date=day(bars, ROW), value=value, text=text
    )


def test_a_duplicated_bar_reports_both_rows_of_the_symbol_and_date():
    bars = make_bars()
    doubled = pd.concat(
        [bars.iloc[: ROW + 1], bars.iloc[ROW : ROW + 1], bars.iloc[ROW + 1 :]], ignore_index=True
    )
    errors, _ = contracts.bar_violations(doubled, calendar="crypto")
    assert list(errors["rule"]) == ["one_row_per_symbol_date"] * 2
    assert set(errors["symbol"]) == {"AAA"}
    assert set(errors["date"]) == {bars.loc[ROW, "date"]}
    assert list(errors["value"]) == [bars.loc[ROW, "close"]] * 2
    assert all(day(bars, ROW) in message for message in errors["message"])


def test_two_dates_out_of_order_report_the_row_that_steps_back_in_time():
    bars = make_bars()
    swapped = bars.iloc[np.r_[0:ROW, ROW + 1, ROW, ROW + 2 : len(bars)]].reset_index(drop=True)
    errors, _ = contracts.bar_violations(swapped, calendar="crypto")
    assert_single_finding(
        errors,
        rule="sorted_by_symbol_date",
        symbol="AAA",
        date=day(bars, ROW),
        value=bars.loc[ROW, "close"],
        text="out of (symbol, date) order",
    )


def test_symbols_out_of_order_report_the_first_row_of_the_earlier_symbol():
    bars = make_bars()
    first_of_each = bars.groupby("symbol").head(1).index
    swapped = pd.concat([bars[bars.symbol == "BBB"], bars[bars.symbol == "AAA"]])
    errors, _ = contracts.bar_violations(swapped.reset_index(drop=True), calendar="crypto")
    assert_single_finding(
        errors,
        rule="sorted_by_symbol_date",
        symbol="AAA",
        date=day(bars, first_of_each[0]),
        value=bars.loc[first_of_each[0], "close"],
        text="out of (symbol, date) order",
    )


def with_saturday_bar(bars: pd.DataFrame) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Weekday bars plus one Saturday row of AAA, in sorted position."""
    friday = bars[(bars.symbol == "AAA") & (bars.date.dt.dayofweek == 4)].iloc[0]
    saturday = friday.copy()
    saturday["date"] = friday["date"] + pd.Timedelta(days=1)
    extended = pd.concat([bars, saturday.to_frame().T], ignore_index=True).astype(bars.dtypes)
    return extended.sort_values(["symbol", "date"], ignore_index=True), saturday["date"]


def test_a_weekend_bar_breaks_a_weekday_sleeve():
    bars, saturday = with_saturday_bar(make_bars(freq="B"))
    errors, _ = contracts.bar_violations(bars, calendar="weekday")
    close = bars.loc[bars.date == saturday, "close"].item()
    assert_single_finding(
        errors,
        rule="no_weekend_rows",
        symbol="AAA",
        date=f"{saturday:%Y-%m-%d}",
        value=close,
        text="weekend bar",
    )


def test_the_same_weekend_bar_passes_a_crypto_sleeve():
    bars, _ = with_saturday_bar(make_bars(freq="B"))
    errors, _ = contracts.bar_violations(bars, calendar="crypto")
    assert errors.empty, errors.to_string()


def test_clean_bars_pass_every_rule():
    errors, warnings = contracts.bar_violations(make_bars(), calendar="crypto")
    assert errors.empty and warnings.empty


def spiking_bars(*, trailing_bars: int, z: float) -> pd.DataFrame:
    """AAA's last volume sits exactly ``z`` sample standard deviations above its trailing mean."""
    bars = make_bars()
    aaa = bars.index[bars.symbol == "AAA"]
    bars = bars.drop(aaa[: len(aaa) - trailing_bars - 1]).reset_index(drop=True)
    aaa = bars.index[bars.symbol == "AAA"]
    before = bars.loc[aaa[:-1], "volume"]
    bars.loc[aaa[-1], "volume"] = before.mean() + z * before.std(ddof=1)
    return bars


def test_a_volume_spike_over_21_trailing_bars_is_a_warning_with_its_z_score():
    bars = spiking_bars(trailing_bars=21, z=10.5)
    errors, warnings = contracts.bar_violations(bars, calendar="crypto")
    last = bars[bars.symbol == "AAA"].index[-1]
    volumes = bars.loc[bars.symbol == "AAA", "volume"].to_numpy()
    expected = (volumes[-1] - np.mean(volumes[-22:-1])) / np.std(volumes[-22:-1], ddof=1)
    assert errors.empty
    [finding] = warnings.itertuples(index=False)
    assert (finding.rule, finding.symbol) == ("volume_spike", "AAA")
    assert finding.date == bars.loc[last, "date"]
    assert finding.value == pytest.approx(expected, rel=1e-9)
    assert finding.value == pytest.approx(10.5, rel=1e-9)
    assert f"{expected:.1f}" in finding.message and day(bars, last) in finding.message


def test_a_volume_z_score_below_the_threshold_is_not_a_spike():
    _, warnings = contracts.bar_violations(spiking_bars(trailing_bars=21, z=9.5), calendar="crypto")
    assert warnings.empty


def test_a_volume_spike_with_fewer_than_21_trailing_bars_is_not_reported():
    _, warnings = contracts.bar_violations(spiking_bars(trailing_bars=20, z=50), calendar="crypto")
    assert warnings.empty


def test_three_identical_last_closes_are_a_price_stall_warning():
    bars = make_bars()
    last = bars[bars.symbol == "BBB"].index[-1]
    bars.loc[last - 2 : last, ["open", "close"]] = 50.0
    bars.loc[last - 2 : last, ["high", "low"]] = (51.0, 49.0)
    errors, warnings = contracts.bar_violations(bars, calendar="crypto")
    assert errors.empty
    assert_single_finding(
        warnings, rule="price_stall", symbol="BBB", date=day(bars, last), value=50.0, text="50"
    )


def test_two_identical_last_closes_are_not_a_stall():
    bars = make_bars()
    last = bars[bars.symbol == "BBB"].index[-1]
    bars.loc[last - 1 : last, "close"] = 50.0
    bars.loc[last - 1 : last, "high"] = bars.loc[last - 1 : last, ["open", "high"]].max(axis=1) + 1
    bars.loc[last - 1 : last, "low"] = bars.loc[last - 1 : last, ["open", "low"]].min(axis=1) - 1
    _, warnings = contracts.bar_violations(bars, calendar="crypto")
    assert warnings.empty


def make_returns(values: dict[str, list[float]]) -> pd.DataFrame:
    frame = pd.DataFrame(values, index=pd.date_range("2024-03-01", periods=6, name="date"))
    frame.columns.name = "symbol"
    return frame


def clean_returns() -> dict[str, list[float]]:
    return {
        "AAA": [np.nan, 0.01, -0.02, 0.03, 0.01, -0.01],
        "BBB": [np.nan, np.nan, 0.02, -0.01, 0.02, 0.01],
        "CCC": [0.005, 0.01, 0.0, -0.03, 0.02, 0.04],
    }


def broken_returns(symbol: str, position: int, value: float) -> pd.DataFrame:
    values = clean_returns()
    values[symbol][position] = value
    return make_returns(values)


RETURNS_CASES = {
    "toxic return": ("AAA", 3, 5.5, "toxic_return", "+550%"),
    "return below -100%": ("CCC", 4, -1.5, "return_above_minus_100pct", "-150%"),
    "infinite return": ("BBB", 3, np.inf, "finite_return", "inf"),
    "negative infinite return": ("BBB", 3, -np.inf, "finite_return", "-inf"),
    "missing return after genesis": ("CCC", 2, np.nan, "non_null_after_genesis", "missing"),
}


@pytest.mark.parametrize("case", list(RETURNS_CASES))
def test_a_return_breaking_one_rule_is_reported_with_rule_symbol_date_and_value(case):
    symbol, position, value, rule, text = RETURNS_CASES[case]
    returns = broken_returns(symbol, position, value)
    found = contracts.returns_violations(returns)
    date = f"{returns.index[position]:%Y-%m-%d}"
    assert_single_finding(found, rule=rule, symbol=symbol, date=date, value=value, text=text)


def test_a_return_of_exactly_plus_500_percent_is_not_toxic():
    assert contracts.returns_violations(broken_returns("AAA", 3, 5.0)).empty


def test_the_toxic_threshold_parameter_is_respected():
    returns = broken_returns("AAA", 3, 4.0)
    assert contracts.returns_violations(returns).empty
    found = contracts.returns_violations(returns, toxic_threshold=3.0)
    assert list(found["rule"]) == ["toxic_return"] and found["value"].item() == 4.0


def test_missing_returns_before_genesis_are_fine():
    assert contracts.returns_violations(make_returns(clean_returns())).empty


def test_a_day_on_which_every_listed_symbol_returned_zero_is_padding():
    values = clean_returns()
    for symbol in values:
        values[symbol][2] = 0.0
    returns = make_returns(values)
    found = contracts.returns_violations(returns)
    assert set(found["rule"]) == {"no_padding"}
    assert list(found["symbol"]) == ["AAA", "BBB", "CCC"]
    assert set(found["date"]) == {returns.index[2]}
    assert (found["value"] == 0.0).all()
    assert all("2024-03-03" in message for message in found["message"])


def test_a_day_with_one_zero_return_among_moving_symbols_is_not_padding():
    assert contracts.returns_violations(broken_returns("AAA", 3, 0.0)).empty


def test_padding_is_found_after_a_symbol_delisted_inside_the_window():
    values = clean_returns()
    values["CCC"][3:] = [np.nan] * 3  # CCC's last bar is day 3
    values["AAA"][4] = values["BBB"][4] = 0.0
    found = contracts.returns_violations(make_returns(values))
    padded = found[found["rule"] == "no_padding"]
    assert list(padded["symbol"]) == ["AAA", "BBB"]


def test_the_rows_mask_limits_error_rules_to_the_selected_rows():
    bars = make_bars()
    bars.loc[3, "low"] = -1.0
    bars.loc[ROW, "volume"] = -5.0
    outside = np.zeros(len(bars), dtype=bool)
    outside[ROW + 1 :] = True
    inside = np.zeros(len(bars), dtype=bool)
    inside[ROW:] = True
    errors_outside, _ = contracts.bar_violations(bars, calendar="crypto", rows=outside)
    errors_inside, _ = contracts.bar_violations(bars, calendar="crypto", rows=inside)
    assert errors_outside.empty, errors_outside.to_string()
    assert list(errors_inside["rule"]) == ["volume_non_negative"]
    assert errors_inside["date"].item() == bars.loc[ROW, "date"]


def test_the_rows_mask_ignores_duplicates_among_unselected_rows():
    bars = make_bars()
    doubled = pd.concat([bars.iloc[:5], bars.iloc[4:]], ignore_index=True)
    tail = np.zeros(len(doubled), dtype=bool)
    tail[-3:] = True
    errors, _ = contracts.bar_violations(doubled, calendar="crypto", rows=tail)
    assert errors.empty, errors.to_string()


def test_the_rows_mask_reports_both_rows_of_a_selected_duplicate():
    bars = make_bars()
    doubled = pd.concat([bars.iloc[:5], bars.iloc[4:]], ignore_index=True)
    second = np.zeros(len(doubled), dtype=bool)
    second[5:] = True
    errors, _ = contracts.bar_violations(doubled, calendar="crypto", rows=second)
    assert list(errors["rule"]) == ["one_row_per_symbol_date"] * 2
    assert set(errors["date"]) == {bars.loc[4, "date"]}


def test_a_frame_missing_a_column_is_a_structural_failure_not_an_exception():
    prepared = contracts.prepare_bars(make_bars()).drop(columns=["volume"])
    found = contracts.violations(contracts.bars_schema(calendar="crypto"), prepared)
    assert not found.empty
    assert list(found.columns) == list(contracts.VIOLATION_COLUMNS)
    assert found["symbol"].isna().all() and found["date"].isna().all()
    assert not found["rule"].isin(list(contracts.RULES)).any()
    assert found["message"].str.contains("volume").any()


@pytest.mark.parametrize(("calendar", "n_symbols", "seed"), [("crypto", 40, 3), ("weekday", 30, 5)])
def test_a_clean_synthetic_market_passes_every_error_rule(calendar, n_symbols, seed):
    bars = generate_market(
        seed=seed, n_symbols=n_symbols, start="2024-01-01", end="2025-06-30", calendar=calendar
    )
    errors, _ = contracts.bar_violations(bars, calendar=calendar)
    window = policy.point_in_time(
        bars,
        as_of=pd.Timestamp("2025-06-30"),
        settings=settings_for(calendar, lookback=300),
        quarantine=False,
    )
    assert errors.empty, errors.head().to_string()
    assert contracts.returns_violations(window.returns).empty


RULES_WITH_THEIR_OWN_TESTS = {
    "universe_too_small",
    "one_row_per_symbol_date",
    "sorted_by_symbol_date",
    "no_weekend_rows",
    "volume_spike",
    "price_stall",
    "no_padding",
}


def test_every_rule_has_a_test_that_breaks_it():
    covered = (
        {case[1] for case in BAR_ERROR_CASES.values()}
        | {case[3] for case in RETURNS_CASES.values()}
        | RULES_WITH_THEIR_OWN_TESTS
    )
    assert covered == set(contracts.RULES)


def test_a_universe_below_min_universe_fails_and_lists_every_exclusion():
    from tvq_assets.quant.returns import exclusions

    dates = pd.date_range("2026-01-01", periods=5, name="date")
    returns = pd.DataFrame(
        0.01, index=dates, columns=pd.Index(["AAA", "BBB", "CCC"], name="symbol")
    )
    excluded = exclusions(
        [
            ("DDD", "stale_or_delisted", dates[0], 9.0, "no bar for 9 days", "ineligible"),
            ("EEE", "toxic_return", dates[2], 7.0, "return +700%", "quarantine"),
        ]
    )
    assert contracts.universe_violations(returns, excluded, minimum=3, as_of=dates[-1]).empty
    [row] = contracts.universe_violations(
        returns, excluded, minimum=4, as_of=dates[-1]
    ).itertuples()
    assert row.rule == "universe_too_small" and row.value == 3.0
    assert "3 < 4" in row.message
    assert "DDD (stale_or_delisted, ineligible: no bar for 9 days)" in row.message
    assert "EEE (toxic_return, quarantine: return +700%)" in row.message


def test_the_volume_spike_warning_is_strictly_above_sigma():
    z = np.array([10.0, np.nextafter(10.0, np.inf), np.nan])
    frame = pd.DataFrame({"volume_z": z, "stalled": [False, False, False]})
    found = contracts.violations(
        contracts.bars_warning_schema(volume_spike_sigma=10.0),
        frame.assign(symbol="S", date=pd.Timestamp("2026-01-01")),
    )
    assert list(found["value"]) == [z[1]]


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("close", np.inf, "price_non_positive"),
        ("open", -1.0, "price_non_positive"),
        ("low", 1e6, "ohlc_inconsistent"),  # low far above high
    ],
)
def test_a_missing_return_names_the_bar_defect_that_dropped_its_bar(column, value, rule):
    from tvq_assets.quant.bars import BarPolicy, clean

    raw = make_bars(days=60)
    day = raw.loc[ROW, "date"]
    raw.loc[ROW, column] = value
    cleaned = clean(raw, calendar="crypto", policy=BarPolicy(), now=pd.Timestamp("2030-01-01"))
    window = policy.point_in_time(
        cleaned.bars,
        as_of=raw["date"].max(),
        settings=settings_for("crypto", lookback=50, min_history=10, train=40),
        quarantine=False,
    )
    found = contracts.returns_violations(window.returns)
    named = contracts.name_dropped_bars(found, cleaned.defects, window.returns)
    messages = named.loc[named["symbol"] == "AAA", "message"].tolist()
    assert len(messages) == 2  # the dropped day and the next one lack a return
    for message in messages:
        assert f"because its bar of {day:%Y-%m-%d} was dropped as {rule} (" in message
        assert f"set policy.bar_actions {{{rule}: quarantine}}" in message
    # Without a dropped bar behind it (a day missing from the source) a gap keeps its plain text.
    assert named[named["symbol"] != "AAA"].equals(found[found["symbol"] != "AAA"])
    assert contracts.name_dropped_bars(found, cleaned.defects.iloc[0:0], window.returns).equals(
        found
    )


def _faulty_bars() -> tuple[pd.DataFrame, list[str]]:
    """A clean crypto market with every return defect planted in its own symbol inside the
    decision window — a +900% print, a two-day gap, a missing close, a negative close (below
    −100%), a close of 0 (an infinite return the day after), a gap running into the last bar —
    and the planted symbols."""
    bars = generate_market(seed=11, n_symbols=14, start="2024-01-01", end="2025-06-30")
    last = pd.Timestamp("2025-06-30")
    first = bars.groupby("symbol")["date"].min()
    alive = set(bars.loc[bars["date"] == last, "symbol"])
    planted = sorted(s for s in alive if first[s] <= pd.Timestamp("2024-06-01"))[:6]
    day = pd.Timestamp("2025-06-10")
    at = {s: (bars["symbol"] == s) & (bars["date"] == day) for s in planted}
    prices = ["open", "high", "low", "close"]
    bars.loc[at[planted[0]], prices] *= 10.0  # toxic_return
    gap = (bars["symbol"] == planted[1]) & bars["date"].between(day, day + pd.Timedelta(days=1))
    bars = bars[~gap].copy()  # non_null_after_genesis
    bars.loc[at[planted[2]], "close"] = np.nan  # non_null_after_genesis (a NaN price)
    bars.loc[at[planted[3]], "close"] = -1.0  # return_above_minus_100pct
    bars.loc[at[planted[4]], "close"] = 0.0  # finite_return (the next day)
    # A gap running into the last bar: no bar on 06-27..06-29, back on 06-30 (whose return needs
    # the close of 06-29), so every return after 06-26 is missing.
    tail = (bars["symbol"] == planted[5]) & bars["date"].between("2025-06-27", "2025-06-29")
    return bars[~tail].copy(), planted


@pytest.mark.parametrize("quarantine", [True, False])
def test_under_quarantine_the_contract_finds_only_a_gap_running_into_the_last_bar(quarantine):
    # Why the returns asset quarantines what its contract finds, after point_in_time excluded
    # the symbols with a dated defect: the engine sees a gap only before a later return (a
    # symbol's trailing NaN is a delisting to it), the contract sees any return missing after
    # genesis — a gap running into the as-of date is only the contract's.
    bars, planted = _faulty_bars()
    window = policy.point_in_time(
        bars,
        as_of=pd.Timestamp("2025-06-30"),
        settings=settings_for("crypto", lookback=300),
        quarantine=quarantine,
    )
    found = contracts.returns_violations(window.returns)
    quarantinable = found[found["rule"].isin(contracts.QUARANTINABLE)]
    excluded = window.excluded[window.excluded["reason"] == "quarantine"]
    if quarantine:
        assert sorted(excluded["symbol"]) == planted[:5]
        assert list(quarantinable["symbol"].unique()) == [planted[5]]
        assert set(quarantinable["rule"]) == {"non_null_after_genesis"}
    else:
        assert set(quarantinable["rule"]) == set(contracts.QUARANTINABLE)
        assert sorted(quarantinable["symbol"].unique()) == planted
        assert excluded.empty


def test_the_engine_and_the_contract_find_the_same_return_defects():
    # One declaration (quality.RETURN_DEFECT_RULES) behind both: same rule, symbol, date, value.
    returns = policy.point_in_time(
        _faulty_bars()[0],
        as_of=pd.Timestamp("2025-06-30"),
        settings=settings_for("crypto", lookback=300),
        quarantine=False,
    ).returns
    engine = quality.return_defects(returns, toxic_threshold=5.0)
    contract = contracts.returns_violations(returns, toxic_threshold=5.0)
    # The trailing gap is the contract's alone (see the test above).
    contract = contract[contract["date"] < pd.Timestamp("2025-06-27")]
    key = ["rule", "symbol", "date"]
    pd.testing.assert_frame_equal(
        engine[[*key, "value"]].sort_values(key, ignore_index=True),
        contract[[*key, "value"]].sort_values(key, ignore_index=True),
    )
