"""Venue holidays on a mixed-venue weekday sleeve: a symbol whose venue was closed keeps its last
session (a carried zero return, still eligible); one that missed a session its venue held, or that
delisted, is still dropped. Hand-made bars and hand-made venue calendars (no exchange library)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from tests.settings import settings_for
from tvq_assets.quant import policy
from tvq_assets.quant.returns import (
    ReturnsWindow,
    VenueCalendar,
    Venues,
    exchange_qualifier,
    returns_history,
    venue_sessions,
)
from tvq_resources.synthetic import Fault, generate_market

US_HOLIDAYS = ("2024-05-27", "2024-06-19", "2024-07-04")  # Memorial Day, Juneteenth, July 4th
UK_HOLIDAYS = ("2024-05-06", "2024-05-27")  # Early May and Spring bank holidays
US = ("AAPL", "MSFT", "NVDA")
UK = ("VOD.L", "BARC.L", "HSBA.L")
FIRST, LAST = "2024-01-02", "2024-08-30"
KNOWN = Venues(
    patterns=(("*.L", "XLON"), ("*", "XNYS")),
    calendars=(
        VenueCalendar("XNYS", FIRST, LAST, US_HOLIDAYS),
        VenueCalendar("XLON", FIRST, LAST, UK_HOLIDAYS),
    ),
)
INFERRED = Venues()  # nothing declared: ".L" names form one venue, the others another


def day(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


def sessions(holidays) -> pd.DatetimeIndex:
    return pd.bdate_range(FIRST, LAST).difference(pd.DatetimeIndex(holidays))


def venue_bars(*, drop=(), until=None) -> pd.DataFrame:
    """Each symbol trades every session of its venue; ``drop``: (symbol, date) bars missing;
    ``until``: symbol -> its last bar (a delisting)."""
    rng = np.random.default_rng(5)
    rows = []
    for symbols, holidays in ((US, US_HOLIDAYS), (UK, UK_HOLIDAYS)):
        dates = sessions(holidays)
        for symbol in symbols:
            closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(dates))))
            for date, close in zip(dates, closes, strict=True):
                if (symbol, f"{date:%Y-%m-%d}") in drop:
                    continue
                if until and symbol in until and date > day(until[symbol]):
                    continue
                rows.append((symbol, date, close, close, close, close, 1e6))
    return pd.DataFrame(rows, columns=["symbol", "date", "open", "high", "low", "close", "volume"])


def window(bars, as_of, venues, **options) -> ReturnsWindow:
    """The production run's window (``policy.point_in_time``, nothing quarantined) of a weekday
    sleeve on ``venues`` (lookback 60, min_history 20 unless given)."""
    settings = settings_for("weekday", **{"lookback": 60, "min_history": 20, **options})
    settings = dataclasses.replace(settings, venues=venues)
    return policy.point_in_time(bars, as_of=day(as_of), settings=settings, quarantine=False)


def lagging(result: ReturnsWindow) -> list[str]:
    excluded = result.excluded
    return sorted(excluded.loc[excluded["rule"] == "no_bar_on_last_day", "symbol"])


def closes(bars: pd.DataFrame, symbol: str) -> pd.Series:
    return bars[bars["symbol"] == symbol].set_index("date")["close"]


@pytest.mark.parametrize("venues", [KNOWN, INFERRED], ids=["calendar", "inferred"])
@pytest.mark.parametrize("holiday", ["2024-06-19", "2024-07-04"])
def test_on_a_us_holiday_with_london_open_the_us_names_stay_with_a_zero_return(venues, holiday):
    bars = venue_bars()
    result = window(bars, holiday, venues)
    assert result.returns.index[-1] == day(holiday)  # London traded: the day is a grid row
    assert lagging(result) == [] and result.excluded.empty
    assert set(result.returns.columns) == set(US) | set(UK)
    assert (result.returns.loc[day(holiday), list(US)] == 0.0).all()
    vod = closes(bars, "VOD.L")
    before = vod.index[vod.index.get_loc(day(holiday)) - 1]
    assert result.returns.loc[day(holiday), "VOD.L"] == vod[day(holiday)] / vod[before] - 1
    assert result.returns.notna().all().all()  # no NaN after genesis reaches the contract


@pytest.mark.parametrize("venues", [KNOWN, INFERRED], ids=["calendar", "inferred"])
def test_on_a_london_holiday_with_new_york_open_the_london_names_stay(venues):
    result = window(venue_bars(), "2024-05-06", venues)
    assert result.returns.index[-1] == day("2024-05-06")
    assert result.excluded.empty
    assert (result.returns.loc[day("2024-05-06"), list(UK)] == 0.0).all()
    assert (result.returns.loc[day("2024-05-06"), list(US)] != 0.0).all()


def test_without_venues_a_venue_holiday_drops_its_names_as_before():
    result = window(venue_bars(), "2024-06-19", None)
    assert lagging(result) == sorted(US)
    assert set(result.returns.columns) == set(UK)


def test_the_return_across_a_holiday_runs_from_the_last_close_on_the_holiday_and_after_it():
    bars = venue_bars()
    on_the_day = window(bars, "2024-06-19", KNOWN).returns
    next_day = window(bars, "2024-06-20", KNOWN).returns
    # The holiday row reads the same whether it ends the window or sits inside it.
    pd.testing.assert_series_equal(
        on_the_day.loc[day("2024-06-19")], next_day.loc[day("2024-06-19")], check_exact=True
    )
    aapl = closes(bars, "AAPL")
    expected = aapl[day("2024-06-20")] / aapl[day("2024-06-18")] - 1
    assert next_day.loc[day("2024-06-20"), "AAPL"] == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("as_of", ["2024-06-18", "2024-06-19"])
def test_a_feed_that_missed_a_session_its_venue_held_is_still_no_bar_on_last_day(as_of):
    bars = venue_bars(drop={("MSFT", "2024-06-18")})
    result = window(bars, as_of, KNOWN)
    assert lagging(result) == ["MSFT"]
    [detail] = result.excluded.loc[result.excluded["symbol"] == "MSFT", "detail"]
    assert detail.endswith("XNYS traded on 2024-06-18")
    assert {"AAPL", "NVDA"} <= set(result.returns.columns)


def test_an_inferred_venue_tells_one_lagging_feed_from_its_venues_holiday():
    bars = venue_bars(drop={("MSFT", "2024-06-18")})
    result = window(bars, "2024-06-19", INFERRED)
    # AAPL and NVDA stopped together after 2024-06-18 while London traded: a US holiday;
    # MSFT stopped a session earlier than its venue: a lag.
    assert lagging(result) == ["MSFT"]
    assert (result.returns.loc[day("2024-06-19"), ["AAPL", "NVDA"]] == 0.0).all()


def test_one_symbol_alone_cannot_infer_its_venues_holiday():
    bars = venue_bars(drop={("MSFT", "2024-06-18"), ("NVDA", "2024-06-18")})
    assert lagging(window(bars, "2024-06-19", INFERRED)) == sorted(US)
    # A declared calendar knows 2024-06-18 was a session and 2024-06-19 was not.
    assert lagging(window(bars, "2024-06-19", KNOWN)) == ["MSFT", "NVDA"]


@pytest.mark.parametrize("venues", [KNOWN, INFERRED], ids=["calendar", "inferred"])
def test_a_delisted_symbol_lags_while_its_venue_trades_and_then_goes_stale(venues):
    bars = venue_bars(until={"NVDA": "2024-06-12"})
    early = window(bars, "2024-06-14", venues)
    assert lagging(early) == ["NVDA"]
    late = window(bars, "2024-06-19", venues)  # a US holiday, seven days after its last bar
    stale = late.excluded[late.excluded["rule"] == "stale_or_delisted"]
    assert list(stale["symbol"]) == ["NVDA"] and lagging(late) == []
    assert "NVDA" not in late.returns.columns and {"AAPL", "MSFT"} <= set(late.returns.columns)


@pytest.mark.parametrize("venues", [None, KNOWN, INFERRED], ids=["none", "calendar", "inferred"])
def test_a_weekend_as_of_date_gives_fridays_window(venues):
    bars = venue_bars()
    friday = window(bars, "2024-06-21", venues)
    for weekend in ("2024-06-22", "2024-06-23"):
        result = window(bars, weekend, venues)
        pd.testing.assert_frame_equal(result.returns, friday.returns, check_exact=True)
        pd.testing.assert_frame_equal(result.excluded, friday.excluded, check_exact=True)
    assert friday.returns.index[-1] == day("2024-06-21") and friday.excluded.empty


def test_a_date_outside_the_venue_calendar_falls_back_to_inference():
    short = Venues(
        patterns=KNOWN.patterns,
        calendars=(VenueCalendar("XNYS", FIRST, "2024-06-01", ()), KNOWN.calendars[1]),
    )
    last_bar = pd.Series(
        [day("2024-06-18"), day("2024-06-18"), day("2024-06-17"), day("2024-06-19")],
        index=pd.Index(["AAPL", "NVDA", "MSFT", "VOD.L"]),
    )
    table = venue_sessions(last_bar, end=day("2024-06-19"), venues=short)
    assert not table.loc["AAPL", "known"] and table.loc["VOD.L", "known"]
    assert table.loc["AAPL", "venue"] == "XNYS"  # the declared venue names the inferred group
    assert table.loc["AAPL", "last_session"] == day("2024-06-18")
    assert list(table["held"]) == [True, True, False, True]


def test_a_symbols_venue_is_the_first_pattern_it_matches_case_insensitively():
    assert KNOWN.venue_of("vod.l") == "XLON" and KNOWN.venue_of("AAPL") == "XNYS"
    assert Venues(patterns=(("*-L", "XLON"),)).venue_of("AAPL") is None
    assert [exchange_qualifier(s) for s in ("VOD.L", "LSE:VOD", "ABDP-L", "AAPL")] == [
        "L",
        "LSE",
        "L",
        "",
    ]


def test_venues_survive_their_plain_config_unchanged():
    assert Venues.from_config(KNOWN.config()) == KNOWN
    assert Venues.from_config(INFERRED.config()) == INFERRED


# --------------------------------------------------------------------------------------------
# The walk-forward decides with the same rule on a window ending at a venue holiday
# --------------------------------------------------------------------------------------------
def weekday_settings(venues) -> policy.PolicySettings:
    """Every row a decision (step 1, test 1) over the last 8 rows; a universe of one venue's
    names alone is too small."""
    from tests.quant.test_policy import settings_for

    base = settings_for("weekday", lookback=30, train=22, test=1, step=1, min_history=20)
    return dataclasses.replace(base, venues=venues, min_universe=len(UK) + 1)


@pytest.mark.parametrize("venues", [KNOWN, INFERRED], ids=["calendar", "inferred"])
def test_a_walk_forward_window_deciding_on_a_us_holiday_keeps_the_us_names(venues):
    settings = weekday_settings(venues)
    history = returns_history(
        venue_bars(), as_of=day("2024-08-30"), rows=150, calendar="weekday", venues=venues
    )
    volume = history.dollar_volume
    end = history.returns.index.get_loc(day("2024-06-19")) + 1
    train = history.returns.iloc[end - 30 : end]
    chosen = policy.universe(
        train, volume.loc[train.index], as_of=train.index[-1], settings=settings
    )
    assert chosen.excluded.empty and not policy.too_small(chosen, settings)
    before = policy.universe(
        train,
        volume.loc[train.index],
        as_of=train.index[-1],
        settings=dataclasses.replace(settings, venues=None),
    )
    assert sorted(before.excluded["symbol"]) == sorted(US) and policy.too_small(before, settings)


@pytest.mark.parametrize("venues", [KNOWN, INFERRED], ids=["calendar", "inferred"])
def test_the_walk_forward_holds_cash_on_no_window_that_decides_on_a_venue_holiday(venues):
    settings = weekday_settings(venues)
    bars = venue_bars()
    flat: dict[str, set] = {"without": set(), "with": set()}
    for as_of in ("2024-05-08", "2024-06-21", "2024-07-05"):
        for name, chosen in (
            ("without", dataclasses.replace(settings, venues=None)),
            ("with", settings),
        ):
            run = policy.point_in_time(bars, as_of=day(as_of), settings=chosen, quarantine=True)
            walked = policy.walk_forward(
                run, chosen, scorers=("log_mps",), profiles=("equal_weight",)
            )
            decided = [run.history.index[w.train.stop - 1] for w in walked.windows]
            cash = walked.targets["baseline_universe"]
            flat[name] |= {decided[k] for k, target in cash.items() if target.empty}
    # Without venues, each day one venue was closed decided on the other venue's names alone.
    assert flat["without"] == {day("2024-05-06"), day("2024-06-19"), day("2024-07-04")}
    assert flat["with"] == set()


# --------------------------------------------------------------------------------------------
# Sleeves without venue holidays decide exactly as before
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("faults", [(), (Fault("gap"),)], ids=["clean", "gap"])
def test_a_single_venue_weekday_sleeve_decides_bit_identically_with_inferred_venues(faults):
    from tests.quant.test_policy import settings_for

    bars = generate_market(
        seed=11, n_symbols=30, calendar="weekday", end="2025-06-30", faults=list(faults)
    )
    settings = settings_for("weekday", lookback=300, train=240, test=20, step=20)
    assert settings.venues == Venues()  # what the catalog gives a weekday sleeve by default
    for as_of in ("2025-06-27", "2025-06-28", "2025-06-30"):
        runs = [
            policy.point_in_time(bars, as_of=day(as_of), settings=s, quarantine=True)
            for s in (settings, dataclasses.replace(settings, venues=None))
        ]
        for field in ("returns", "dollar_volume", "excluded", "history", "defects"):
            pd.testing.assert_frame_equal(
                getattr(runs[0], field), getattr(runs[1], field), check_exact=True
            )


@pytest.mark.parametrize("venues", [KNOWN, INFERRED], ids=["calendar", "inferred"])
def test_the_models_input_replays_the_holiday_universe_of_the_run(venues):
    settings = weekday_settings(venues)
    run = policy.point_in_time(
        venue_bars(), as_of=day("2024-07-04"), settings=settings, quarantine=True
    )
    # A registered model sees only the history (no bars): its last bars come from the volumes.
    replayed = policy.window_from_input(policy.model_input(run), settings)
    chosen = policy.universe(
        replayed.returns, replayed.dollar_volume, as_of=day("2024-07-04"), settings=settings
    )
    assert list(chosen.returns.columns) == list(run.returns.columns) == sorted(US + UK)
    pd.testing.assert_frame_equal(chosen.returns, run.returns, check_names=False, check_freq=False)


def test_the_engine_reads_venue_calendars_as_plain_data_and_never_imports_the_library():
    import ast
    from pathlib import Path

    import tvq_assets.quant

    importers = []
    for path in Path(tvq_assets.quant.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name.split(".")[0] == "exchange_calendars" for name in names):
                importers.append(path.name)
    assert importers == []
