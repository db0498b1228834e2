"""The meta-portfolio engine: calendar join, bounded sleeve weights, holdings, walk-forward."""

import numpy as np
import pandas as pd
import pytest

from tvq_assets.quant import meta
from tvq_checks.meta_contracts import holdings_violations


def settings(**changes) -> meta.MetaSettings:
    values = dict(
        profile="risk_parity",
        lookback=40,
        test=10,
        step=10,
        missing="fail",
        max_decision_age=3,
        calendars={"crypto": "crypto", "tradfi": "weekday"},
        caps={"crypto": 1.0, "tradfi": 1.0},
        floors={"crypto": 0.0, "tradfi": 0.0},
        cost_rates={"crypto": 0.0014, "tradfi": 0.0006},
        periods_per_year={"crypto": 365, "tradfi": 252},
        ridge=0.1,
    )
    values.update(changes)
    return meta.MetaSettings(**values)


def streams(end: str = "2026-06-30", days: int = 200, seed: int = 3) -> dict[str, pd.Series]:
    """A crypto sleeve (every day) and a weekday sleeve (Mon-Fri) with different volatilities."""
    random = np.random.default_rng(seed)
    every_day = pd.date_range(end=end, periods=days, freq="D")
    weekdays = every_day[every_day.dayofweek < 5]
    return {
        "crypto": pd.Series(random.normal(0.001, 0.03, len(every_day)), index=every_day),
        "tradfi": pd.Series(random.normal(0.0005, 0.01, len(weekdays)), index=weekdays),
    }


def decisions_of(
    runs: dict[str, dict[str, str]], as_of: str, chosen: meta.MetaSettings | None = None
) -> dict[str, meta.Decision]:
    """Each sleeve's latest decision from {sleeve: {run date: what its runs left}}."""
    return meta.latest_decisions(
        {s: {pd.Timestamp(d): why for d, why in days.items()} for s, days in runs.items()},
        chosen or settings(),
        sleeves=list(runs),
        as_of=pd.Timestamp(as_of),
    )


def fresh(as_of: str, sleeves=("crypto", "tradfi")) -> dict[str, meta.Decision]:
    """Every sleeve decided on ``as_of`` itself."""
    return decisions_of({s: {as_of: meta.STORED} for s in sleeves}, as_of)


# Sunday 2026-12-06; Friday 2026-12-04; Monday 2026-12-07.
SUNDAY, FRIDAY, MONDAY = "2026-12-06", "2026-12-04", "2026-12-07"


def test_on_a_sunday_the_weekday_sleeves_friday_decision_holds_zero_sessions_old():
    found = decisions_of({"crypto": {SUNDAY: meta.STORED}, "tradfi": {FRIDAY: meta.STORED}}, SUNDAY)
    tradfi = found["tradfi"]
    assert tradfi.date == pd.Timestamp(FRIDAY) and tradfi.usable
    assert (tradfi.age_days, tradfi.age_sessions) == (2, 0)
    assert tradfi.skipped == ()  # Saturday and Sunday are no sessions of a weekday sleeve
    assert tradfi.describe() == "decision of 2026-12-04 (Friday, 2 days, 0 sessions old)"
    assert found["crypto"].age_sessions == 0 and found["crypto"].date == pd.Timestamp(SUNDAY)


def test_on_a_monday_without_its_monday_run_the_friday_decision_is_one_session_old():
    found = decisions_of({"tradfi": {FRIDAY: meta.STORED}}, MONDAY)["tradfi"]
    assert (found.age_days, found.age_sessions) == (3, 1) and found.usable
    assert found.skipped == ((pd.Timestamp(MONDAY), meta.NO_RUN),)
    monday = decisions_of({"tradfi": {FRIDAY: meta.STORED, MONDAY: meta.STORED}}, MONDAY)
    assert monday["tradfi"].date == pd.Timestamp(MONDAY) and monday["tradfi"].age_sessions == 0


def test_the_day_after_a_failed_run_the_previous_decision_is_used_and_the_failure_named():
    # The latest run of Monday failed: whatever an older run of Monday stored is not used.
    found = decisions_of({"crypto": {SUNDAY: meta.STORED, MONDAY: meta.RUN_FAILED}}, MONDAY)[
        "crypto"
    ]
    assert found.date == pd.Timestamp(SUNDAY) and found.usable
    assert (found.age_days, found.age_sessions) == (1, 1)
    assert found.skipped == ((pd.Timestamp(MONDAY), meta.RUN_FAILED),)
    assert found.describe().endswith("; skipped 2026-12-07 run failed")


def test_a_run_still_in_progress_is_not_read():
    found = decisions_of({"crypto": {SUNDAY: meta.STORED, MONDAY: meta.RUN_IN_PROGRESS}}, MONDAY)[
        "crypto"
    ]
    assert found.date == pd.Timestamp(SUNDAY)
    assert found.skipped == ((pd.Timestamp(MONDAY), meta.RUN_IN_PROGRESS),)


def test_a_first_run_has_no_decision_and_names_the_sessions_looked_at():
    found = decisions_of({"tradfi": {}}, MONDAY)["tradfi"]
    assert found.date is None and not found.usable and found.age_sessions is None
    # max_decision_age 3: Monday, Friday, Thursday and Wednesday were looked at.
    assert [d for d, _ in found.skipped] == list(
        pd.to_datetime(["2026-12-07", "2026-12-04", "2026-12-03", "2026-12-02"])
    )
    assert found.describe().startswith("no stored decision at or before 2026-12-07")


def test_a_gap_longer_than_the_bound_makes_the_decision_unusable():
    # Tuesday 2026-12-01's decision on Monday 2026-12-07: Wed, Thu, Fri, Mon = 4 sessions.
    found = decisions_of({"tradfi": {"2026-12-01": meta.STORED}}, MONDAY)["tradfi"]
    assert found.age_sessions == 4 and not found.usable
    # Wednesday's (3 sessions: Thu, Fri, Mon) is the oldest a bound of 3 accepts.
    wednesday = decisions_of({"tradfi": {"2026-12-02": meta.STORED}}, MONDAY)["tradfi"]
    assert wednesday.age_sessions == 3 and wednesday.usable
    strict = decisions_of({"tradfi": {FRIDAY: meta.STORED}}, MONDAY, settings(max_decision_age=0))
    assert not strict["tradfi"].usable
    assert meta.decision_window_start(pd.Timestamp(MONDAY), "weekday", 3) == pd.Timestamp(
        "2026-12-02"
    )
    assert meta.decision_window_start(pd.Timestamp(MONDAY), "crypto", 3) == pd.Timestamp(
        "2026-12-04"
    )


def test_decisions_after_the_as_of_date_are_never_read():
    found = decisions_of({"crypto": {SUNDAY: meta.STORED, MONDAY: meta.STORED}}, SUNDAY)
    assert found["crypto"].date == pd.Timestamp(SUNDAY)


def test_a_weekday_sessions_age_counts_only_monday_to_friday():
    assert meta.sessions_after(pd.Timestamp(FRIDAY), pd.Timestamp(SUNDAY), "weekday") == 0
    assert meta.sessions_after(pd.Timestamp(FRIDAY), pd.Timestamp(MONDAY), "weekday") == 1
    assert meta.sessions_after(pd.Timestamp(FRIDAY), pd.Timestamp(MONDAY), "crypto") == 3
    assert meta.sessions_after(pd.Timestamp(MONDAY), pd.Timestamp(MONDAY), "crypto") == 0


def test_weekend_crypto_returns_compound_onto_the_next_common_date():
    # Thu 2026-06-04 .. Wed 2026-06-10 for crypto; Fri, Mon, Tue for the weekday sleeve.
    crypto = pd.Series(
        [0.50, 0.01, 0.02, -0.01, 0.03, 0.005, 0.07],
        index=pd.date_range("2026-06-04", "2026-06-10", freq="D"),
    )
    tradfi = pd.Series(
        [0.002, -0.004, 0.001], index=pd.to_datetime(["2026-06-05", "2026-06-08", "2026-06-09"])
    )
    joined = meta.join_calendars({"crypto": crypto, "tradfi": tradfi}, as_of="2026-06-10")
    dates = pd.to_datetime(["2026-06-05", "2026-06-08", "2026-06-09"])
    assert list(joined.returns.index) == list(dates)
    # Friday: its own return only (Thursday precedes the join); Monday: Sat × Sun × Mon.
    expected_crypto = [0.01, 1.02 * 0.99 * 1.03 - 1, 0.005]
    np.testing.assert_allclose(joined.returns["crypto"], expected_crypto, rtol=0, atol=1e-15)
    np.testing.assert_allclose(joined.returns["tradfi"], [0.002, -0.004, 0.001], atol=1e-15)
    assert list(joined.compounded["crypto"]) == [1, 3, 1]
    # Wednesday's crypto return waits for the next common date (a later run): reported, not used.
    assert joined.pending["crypto"] == 1 and joined.pending["tradfi"] == 0


def test_a_venue_holiday_is_compounded_too():
    days = pd.date_range("2026-06-01", "2026-06-05", freq="D")  # Mon..Fri
    crypto = pd.Series([0.01, 0.02, 0.03, 0.04, 0.05], index=days)
    tradfi = pd.Series([0.0, 0.0, 0.0, 0.0], index=days.delete(2))  # Wednesday a holiday
    joined = meta.join_calendars({"crypto": crypto, "tradfi": tradfi}, as_of="2026-06-05")
    assert joined.returns.loc["2026-06-04", "crypto"] == pytest.approx(1.03 * 1.04 - 1, abs=1e-15)
    assert joined.returns["crypto"].add(1).prod() == pytest.approx(
        crypto.iloc[0:].add(1).prod(), abs=1e-12
    )


def test_data_after_the_as_of_date_never_changes_the_meta_portfolio():
    as_of = pd.Timestamp("2026-06-30")
    base = streams(end="2026-06-30")
    later = streams(end="2026-08-31", days=262)  # the same seed: another history, longer
    # Append 62 days after D to each sleeve; each case must give the same decision as none.
    extended = {
        name: pd.concat([series, later[name][later[name].index > as_of]])
        for name, series in base.items()
    }
    portfolios = {
        "crypto": pd.Series({"BTC": 0.6, "ETH": 0.4}),
        "tradfi": pd.Series({"SPY": 1.0}),
    }
    champions = {"crypto": "a/b", "tradfi": "c/d"}
    sleeves = ["crypto", "tradfi"]
    decided = fresh("2026-06-30", sleeves)
    reference = meta.decide(base, portfolios, champions, settings(), decisions=decided, as_of=as_of)
    for name in sleeves:
        changed = {**base, name: extended[name]}
        again = meta.decide(
            changed, portfolios, champions, settings(), decisions=decided, as_of=as_of
        )
        pd.testing.assert_frame_equal(again.sleeves, reference.sleeves)
        pd.testing.assert_frame_equal(again.holdings, reference.holdings)
        pd.testing.assert_frame_equal(again.returns, reference.returns)


def test_caps_bind_and_the_rest_goes_to_the_other_sleeves():
    raw = pd.Series({"a": 0.9, "b": 0.1})
    weights = meta.bounded_weights(raw, {"a": 0.7, "b": 0.8}, {"a": 0.2, "b": 0.2})
    np.testing.assert_allclose(weights, [0.7, 0.3], atol=1e-12)


def test_floors_bind_and_the_others_keep_their_proportions():
    raw = pd.Series({"a": 0.6, "b": 0.38, "c": 0.02})
    bounds = {"a": 1.0, "b": 1.0, "c": 1.0}
    weights = meta.bounded_weights(raw, bounds, {"a": 0.1, "b": 0.1, "c": 0.1})
    assert weights["c"] == pytest.approx(0.1, abs=1e-12)
    assert weights["a"] / weights["b"] == pytest.approx(0.6 / 0.38, rel=1e-12)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_risk_parity_across_sleeves_respects_a_binding_cap():
    data = streams()
    joined = meta.join_calendars(data, as_of="2026-06-30").returns.tail(40)
    free = meta.sleeve_weights(joined, settings())
    # The calmer weekday sleeve gets most of the risk budget under risk parity...
    assert free.weights["tradfi"] > 0.6
    capped = meta.sleeve_weights(joined, settings(caps={"crypto": 1.0, "tradfi": 0.6}))
    # ...and exactly its cap when the catalog caps it.
    assert capped.weights["tradfi"] == pytest.approx(0.6, abs=1e-12)
    assert capped.weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_bounds_without_a_fully_invested_portfolio_fail_naming_them():
    with pytest.raises(meta.MetaInfeasible, match=r"caps of \['a', 'b'\] sum to 0.9"):
        meta.bounded_weights(
            pd.Series({"a": 0.5, "b": 0.5}), {"a": 0.4, "b": 0.5}, {"a": 0, "b": 0}
        )


def test_holdings_are_sleeve_weight_times_sleeve_portfolio_and_sum_to_one():
    weights = pd.Series({"crypto": 0.4, "tradfi": 0.6})
    holdings = meta.firm_holdings(
        weights, {"crypto": pd.Series({"BTC": 0.75, "ETH": 0.25}), "tradfi": pd.Series(dtype=float)}
    )
    table = holdings.set_index(["sleeve", "symbol"])["weight"]
    assert table[("crypto", "BTC")] == pytest.approx(0.3)
    assert table[("crypto", "ETH")] == pytest.approx(0.1)
    assert table[("tradfi", meta.CASH)] == pytest.approx(0.6)  # a cash sleeve keeps its share
    assert holdings["weight"].sum() == pytest.approx(1.0, abs=1e-12)
    caps, floors = {"crypto": 0.5, "tradfi": 0.7}, {"crypto": 0.1, "tradfi": 0.1}
    ok = holdings_violations(
        holdings,
        sleeves=["crypto", "tradfi"],
        missing={},
        caps=caps,
        floors=floors,
        as_of="2026-1-1",
    )
    assert ok.empty


def test_the_holdings_contract_names_every_broken_rule():
    holdings = pd.DataFrame(
        {
            "sleeve": ["crypto", "crypto", "tradfi"],
            "symbol": ["BTC", "ETH", "SPY"],
            "weight": [0.6, -0.1, np.nan],
        }
    )
    found = holdings_violations(
        holdings,
        sleeves=["crypto", "tradfi", "rates"],
        missing={},
        caps={"crypto": 0.4, "tradfi": 1.0, "rates": 1.0},
        floors={"crypto": 0.0, "tradfi": 0.0, "rates": 0.0},
        as_of=pd.Timestamp("2026-06-30"),
    )
    assert set(found["rule"]) == {
        "holding_finite",
        "holding_non_negative",
        "sleeve_within_limits",
        "holdings_sum_to_one",
        "sleeve_accounted",
    }
    assert any("rates:" in m for m in found["message"])
    explained = holdings_violations(
        holdings.assign(weight=[0.3, 0.1, 0.6]),
        sleeves=["crypto", "tradfi", "rates"],
        missing={"rates": "no run"},
        caps={"crypto": 0.4, "tradfi": 1.0, "rates": 1.0},
        floors={"crypto": 0.0, "tradfi": 0.0, "rates": 0.5},
        as_of=pd.Timestamp("2026-06-30"),
    )
    assert explained.empty


def test_a_missing_sleeve_fails_or_is_left_out_as_the_rule_says():
    data = streams()
    present = {"crypto": data["crypto"]}
    portfolios = {"crypto": pd.Series({"BTC": 1.0})}
    # tradfi's last decision is 8 sessions old on 2026-06-30 (a Tuesday).
    runs = {"crypto": {"2026-06-30": meta.STORED}, "tradfi": {"2026-06-18": meta.STORED}}
    decided = decisions_of(runs, "2026-06-30")
    with pytest.raises(meta.MissingSleeve) as raised:
        meta.decide(present, portfolios, {}, settings(), decisions=decided, as_of="2026-06-30")
    message = str(raised.value)
    assert "['tradfi']" in message and "'fail'" in message
    assert "max_decision_age = 3" in message
    assert "decision of 2026-06-18 (Thursday, 12 days, 8 sessions old)" in message
    assert "allocate_present" in message  # the other way out: crypto is there
    record = meta.decide(
        present,
        portfolios,
        {},
        settings(missing="allocate_present"),
        decisions=decided,
        as_of=pd.Timestamp("2026-06-30"),
    )
    assert record.sleeves.loc["crypto", "weight"] == 1.0
    assert record.sleeves.loc["tradfi", "weight"] == 0.0
    assert set(record.missing) == {"tradfi"}
    assert "8 sessions old" in record.missing["tradfi"]
    assert "missing_sleeve = allocate_present" in record.missing["tradfi"]
    assert record.sleeves.loc["tradfi", "decision_date"] == pd.Timestamp("2026-06-18")
    assert record.sleeves.loc["tradfi", "decision_age_sessions"] == 8
    assert set(record.holdings["sleeve"]) == {"crypto"}


def test_with_no_sleeve_left_even_allocate_present_fails_saying_nothing_is_left():
    decided = decisions_of({"crypto": {}, "tradfi": {}}, "2026-06-30")
    with pytest.raises(meta.MissingSleeve, match="nothing left to allocate") as raised:
        meta.decide(
            {}, {}, {}, settings(missing="allocate_present"), decisions=decided, as_of="2026-06-30"
        )
    assert "set meta.missing_sleeve" not in str(raised.value)


def test_a_meta_portfolio_of_one_sleeve_is_that_sleeve_at_100_percent():
    data = streams()
    one = settings(caps={"crypto": 1.0}, floors={"crypto": 0.0}, calendars={"crypto": "crypto"})
    book = pd.Series({"BTC": 0.75, "ETH": 0.25})
    record = meta.decide(
        {"crypto": data["crypto"]},
        {"crypto": book},
        {"crypto": "a/b"},
        one,
        decisions=fresh("2026-06-30", ("crypto",)),
        as_of="2026-06-30",
    )
    assert record.sleeves["weight"].tolist() == [1.0]
    holdings = record.holdings.set_index("symbol")["weight"]
    pd.testing.assert_series_equal(holdings, book, check_names=False, check_index_type=False)
    # The walk-forward of one sleeve is the sleeve itself, as is the baseline.
    pd.testing.assert_series_equal(
        record.returns[meta.META], record.returns[meta.BASELINE], check_names=False
    )


def test_young_sleeves_without_a_common_out_of_sample_date_split_the_capital_equally():
    """A first run of young sleeves: their as-promoted records are empty or do not overlap yet,
    so no profile can be estimated; the split is equal within the floors and caps, and said."""
    portfolios = {"crypto": pd.Series({"BTC": 1.0}), "tradfi": pd.Series({"SPY": 1.0})}
    champions = {"crypto": "a/b", "tradfi": "c/d"}
    empty = pd.Series(dtype=float, index=pd.DatetimeIndex([]))
    record = meta.decide(
        {"crypto": empty, "tradfi": empty},
        portfolios,
        champions,
        settings(caps={"crypto": 0.3, "tradfi": 1.0}),
        decisions=fresh("2026-06-30"),
        as_of="2026-06-30",
    )
    weights = record.sleeves["weight"]
    assert weights.to_dict() == pytest.approx({"crypto": 0.3, "tradfi": 0.7})  # 0.5 capped
    assert set(record.sleeves["weighting"]) == {"equal: 0 common date(s), the profile needs 2"}
    assert record.holdings["weight"].sum() == pytest.approx(1.0)
    # With a history the profile decides, and says so.
    data = streams()
    profiled = meta.decide(
        data, portfolios, champions, settings(), decisions=fresh("2026-06-30"), as_of="2026-06-30"
    )
    assert set(profiled.sleeves["weighting"]) == {settings().profile}


def test_the_record_names_each_sleeves_decision_and_age():
    data = streams(end=SUNDAY)
    friday = data["tradfi"][data["tradfi"].index <= FRIDAY]
    decided = decisions_of(
        {"crypto": {SUNDAY: meta.STORED}, "tradfi": {FRIDAY: meta.STORED}}, SUNDAY
    )
    record = meta.decide(
        {"crypto": data["crypto"], "tradfi": friday},
        {"crypto": pd.Series({"BTC": 1.0}), "tradfi": pd.Series({"SPY": 1.0})},
        {"crypto": "a/b", "tradfi": "c/d"},
        settings(),
        decisions=decided,
        as_of=SUNDAY,
    )
    table = record.sleeves
    assert table["decision_date"].tolist() == [pd.Timestamp(SUNDAY), pd.Timestamp(FRIDAY)]
    assert table["decision_age_days"].tolist() == [0, 2]
    assert table["decision_age_sessions"].tolist() == [0, 0]
    assert table["present"].all() and record.missing == {}
    # Crypto's Saturday and Sunday wait for the next common date (Monday).
    assert record.joined.index[-1] == pd.Timestamp(FRIDAY)
    assert table.loc["crypto", "pending_rows"] == 2


def test_walk_forward_charges_each_sleeves_own_costs():
    data = streams()
    joined = meta.join_calendars(data, as_of="2026-06-30").returns
    chosen = settings(profile="equal_weight")
    result = meta.walk_forward(joined, chosen)
    # Equal weight across sleeves is the baseline: same windows, same costs, same returns.
    pd.testing.assert_series_equal(
        result.returns[meta.META], result.returns[meta.BASELINE], check_names=False
    )
    first = result.returns.index[0]
    gross = joined.loc[first].mean()
    cost = 0.0014 * 0.5 + 0.0006 * 0.5  # from cash: half the book bought in each sleeve
    assert result.returns.loc[first, meta.BASELINE] == pytest.approx(gross - cost, abs=1e-15)
    assert result.metrics.index.tolist() == [meta.META, meta.BASELINE]
    assert len(result.targets) == len(result.turnover)


def test_the_joined_stream_uses_the_sparsest_calendar():
    assert settings().joined_periods_per_year(["crypto", "tradfi"]) == 252
    assert settings().joined_periods_per_year(["crypto"]) == 365


def test_the_engine_settings_have_no_defaults_of_their_own():
    # One home for every default: the catalog's MetaPolicy (tvq_assets/catalog.py).
    import dataclasses

    assert all(
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        for f in dataclasses.fields(meta.MetaSettings)
    )


def test_zero_weight_sleeves_share_what_the_capped_ones_leave_by_their_room():
    # The profile puts everything on x; x is capped at 40%, so the 60% left tops up the sleeves
    # with raw weight 0 in proportion to their room under the cap: equal room, equal shares.
    raw = pd.Series({"x": 1.0, "a": 0.0, "b": 0.0})
    weights = meta.bounded_weights(raw, {"x": 0.4, "a": 1.0, "b": 1.0}, dict.fromkeys(raw.index, 0))
    np.testing.assert_allclose(weights, [0.4, 0.3, 0.3], atol=1e-12)
    # Room 0.2 and 1.0: the 60% splits 1 : 5, so no sleeve passes its cap.
    capped = meta.bounded_weights(raw, {"x": 0.4, "a": 0.2, "b": 1.0}, dict.fromkeys(raw.index, 0))
    np.testing.assert_allclose(capped, [0.4, 0.1, 0.5], atol=1e-12)
