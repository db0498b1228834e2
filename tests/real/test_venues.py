"""Venue holidays on real mixed-venue weekday sleeves (../shared/data/real, never edited): on a
day one venue is closed and another trades, the closed venue's names keep their last session
instead of leaving the universe; a name that missed a session its venue held still leaves."""

import dataclasses

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import metadata, resources_for
from tests.real.folders import (
    BY_NAME,
    REAL,
    US_LONDON_FILES,
    cleaned,
    sleeve_source,
    us_london_folder,
    us_london_sleeve,
)
from tvq_assets.definitions import SLEEVE_ASSETS
from tvq_assets.quant import bars as bar_lake
from tvq_assets.quant import policy
from tvq_assets.quant.returns import ReturnsWindow, Venues
from tvq_assets.settings import policy_settings, venue_calendar
from tvq_checks import contracts
from tvq_resources.lake import ParquetLake
from tvq_resources.market_data import MarketData

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real fixtures not found at {REAL}")

US = ("CALM", "EWG", "SAND", "JENYX")
LONDON = tuple(name.split("-1d-")[0] for name in US_LONDON_FILES if "-L-" in name or "-IL-" in name)
MOEX = ("SBER", "GAZP", "YNDX", "POLY", "SI", "RTS", "BR", "SBRF")
AMERICAN = ("AAPL", "FB", "IEFA", "NVDA", "SPY", "TSLA")


def day(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


@pytest.fixture(scope="module")
def us_london(tmp_path_factory):
    """(sleeve, cleaned bars and defects) of the US + London files as of 2024-08-30."""
    folder = us_london_folder(tmp_path_factory.mktemp("real") / "us_london", until="2024-08-30")
    sleeve = us_london_sleeve(folder)
    batch = MarketData(sources={"s": sleeve_source(sleeve)}).fetch("s")
    assert batch.errors == () and batch.files == len(US_LONDON_FILES)
    result = bar_lake.clean(
        batch.bars,
        calendar="weekday",
        policy=sleeve.policy.bar_policy,
        now=pd.Timestamp("2024-09-02", tz="UTC"),
        superseded=batch.superseded,
    )
    return sleeve, result


def run_of(us_london, as_of: str, *, venues="declared") -> ReturnsWindow:
    """What the ``returns`` asset computes at ``as_of`` (venues: as declared, none, or
    inferred from the data)."""
    sleeve, result = us_london
    settings = policy_settings(sleeve)
    if venues != "declared":
        settings = dataclasses.replace(settings, venues=None if venues == "none" else Venues())
    return policy.point_in_time(
        result.bars,
        as_of=day(as_of),
        settings=settings,
        quarantine=True,
        bar_exclusions=bar_lake.bar_exclusions(
            result.defects, start=pd.Timestamp.min, end=day(as_of)
        ),
    )


def lagging(window: ReturnsWindow) -> set[str]:
    excluded = window.excluded
    return set(excluded.loc[excluded["rule"] == "no_bar_on_last_day", "symbol"])


def test_the_fixture_sleeve_names_us_and_london_symbols_on_their_venues(us_london):
    sleeve, result = us_london
    assert set(result.bars["symbol"]) == set(US) | set(LONDON)
    venues = policy_settings(sleeve).venues
    assert {venues.venue_of(s) for s in US} == {"XNYS"}
    assert {venues.venue_of(s) for s in LONDON} == {"XLON"}


@pytest.mark.parametrize("holiday", ["2024-02-19", "2024-06-19", "2024-07-04"])
def test_on_a_us_holiday_london_trades_and_every_us_name_stays(us_london, holiday):
    run = run_of(us_london, holiday)
    assert run.returns.index[-1] == day(holiday)
    assert not lagging(run) and set(US) <= set(run.returns.columns)
    assert (run.returns.loc[day(holiday), list(US)] == 0.0).all()
    assert run.returns.loc[day(holiday), list(set(LONDON) & set(run.returns.columns))].ne(0).any()
    assert contracts.returns_violations(run.returns).empty
    # Before venues, the same day dropped every US name as lagging.
    assert lagging(run_of(us_london, holiday, venues="none")) == set(US)


@pytest.mark.parametrize("holiday", ["2024-04-01", "2024-05-06"])
def test_on_a_london_holiday_new_york_trades_and_every_london_name_stays(us_london, holiday):
    run = run_of(us_london, holiday)
    assert run.returns.index[-1] == day(holiday) and not lagging(run)
    kept = set(LONDON) & set(run.returns.columns)
    assert kept == set(LONDON) - set(run.excluded["symbol"])  # only quarantine left any out
    assert (run.returns.loc[day(holiday), sorted(kept)] == 0.0).all()
    assert lagging(run_of(us_london, holiday, venues="none")) >= kept


def test_on_2024_08_26_london_names_on_fridays_session_stay_and_files_ending_earlier_lag(
    us_london,
):
    run = run_of(us_london, "2024-08-26")  # London closed (bank holiday), New York open
    assert run.returns.index[-1] == day("2024-08-26")
    assert "TENT-L" in run.returns.columns  # its last bar is London's last session, 2024-08-23
    assert run.returns.loc[day("2024-08-26"), "TENT-L"] == 0.0
    # The other London files end on 2024-08-22: they missed a session London held.
    details = run.excluded.set_index("symbol")["detail"]
    for symbol in ("ABDP-L", "KMR-L", "HSBK-IL"):
        assert details[symbol].endswith("XLON traded on 2024-08-23"), details[symbol]
    assert details["CALM"].endswith("XNYS traded on 2024-08-26")  # its file ends 2024-08-21


def test_a_name_that_missed_a_session_its_venue_held_still_lags(us_london):
    # TENT-L's 2024-06-14 bar is dropped (its close is above its high): London traded that day.
    run = run_of(us_london, "2024-06-14")
    assert lagging(run) == {"TENT-L"}
    [detail] = run.excluded.loc[run.excluded["symbol"] == "TENT-L", "detail"]
    assert detail == "last bar 2024-06-13, window ends 2024-06-14; XLON traded on 2024-06-14"


def test_an_inferred_venue_keeps_the_holiday_names_and_shows_its_documented_limit(us_london):
    # Without declared venues the names' qualifiers group them (-L, -IL, none).
    assert not lagging(run_of(us_london, "2024-06-19", venues="inferred"))
    assert not lagging(run_of(us_london, "2024-05-06", venues="inferred"))
    # Both -IL files miss 2024-04-19 while London trades: a calendar knows they lag; from the
    # data alone two names of one qualifier stopping together look like their venue's holiday.
    assert {"HSBK-IL", "KAP-IL"} <= lagging(run_of(us_london, "2024-04-19"))
    assert not {"HSBK-IL", "KAP-IL"} & lagging(run_of(us_london, "2024-04-19", venues="inferred"))


@pytest.mark.parametrize("weekend", ["2024-06-22", "2024-06-23"])
def test_a_weekend_as_of_date_gives_fridays_decision(us_london, weekend):
    friday, later = run_of(us_london, "2024-06-21"), run_of(us_london, weekend)
    for field in ("returns", "dollar_volume", "history"):
        pd.testing.assert_frame_equal(getattr(later, field), getattr(friday, field))
    # The same symbols are left out for the same rules (a stale one by more days of silence).
    rules = ["symbol", "rule", "date", "reason"]
    pd.testing.assert_frame_equal(later.excluded[rules], friday.excluded[rules])


CLOSED = {"2024-04-01": LONDON, "2024-05-06": LONDON, "2024-06-19": US, "2024-07-04": US}


def test_walk_forward_windows_deciding_on_venue_holidays_keep_the_closed_venues_names(us_london):
    sleeve, _ = us_london
    run = run_of(us_london, "2024-08-21")
    settings = policy_settings(sleeve)
    history, volume = run.history, run.history_dollar_volume.reindex_like(run.history)
    for holiday, closed in CLOSED.items():
        stop = history.index.get_loc(day(holiday)) + 1
        rows = slice(stop - settings.lookback, stop)
        chosen = {
            name: policy.universe(
                history.iloc[rows],
                volume.iloc[rows],
                as_of=day(holiday),
                settings=dataclasses.replace(settings, venues=venues),
                defects=run.defects,
            )
            for name, venues in (("declared", settings.venues), ("none", None))
        }
        assert not lagging(chosen["declared"]), holiday
        assert set(chosen["declared"].returns.columns) >= set(closed) - {"CLC-L"}, holiday
        assert lagging(chosen["none"]) >= set(closed) - {"CLC-L"}, holiday


# --------------------------------------------------------------------------------------------
# US + MOEX (Yahoo and MOEX exports) and a lone US name (TradingView's TSLA)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moex():
    return cleaned(BY_NAME["tradfi_yahoo_moex_zenoftrading"])[1].bars


def moex_run(bars, as_of: str, venues) -> ReturnsWindow:
    from tests.quant.test_policy import settings_for

    settings = dataclasses.replace(settings_for("weekday", lookback=250, train=120), venues=venues)
    return policy.point_in_time(bars, as_of=day(as_of), settings=settings, quarantine=True)


def us_moex() -> Venues:
    """MOEX's shares and futures on Moscow's calendar, every other name on New York's."""
    return Venues(
        patterns=(*((symbol, "XMOS") for symbol in MOEX), ("*", "XNYS")),
        calendars=(venue_calendar("XMOS"), venue_calendar("XNYS")),
    )


@pytest.mark.parametrize(
    ("holiday", "closed"),
    [
        ("2021-07-05", AMERICAN),
        ("2021-05-31", AMERICAN),
        ("2021-02-23", MOEX),
        ("2021-03-08", MOEX),
    ],
)
def test_us_and_moex_names_keep_their_last_session_on_their_own_venues_holidays(
    moex, holiday, closed
):
    run = moex_run(moex, holiday, us_moex())
    assert run.returns.index[-1] == day(holiday) and not lagging(run)
    present = [s for s in closed if s in run.returns.columns]
    assert len(present) >= len(closed) - 1 and (run.returns.loc[day(holiday), present] == 0).all()
    assert lagging(moex_run(moex, holiday, None)) >= set(present)


def test_moex_names_share_no_qualifier_so_without_declared_venues_nothing_is_inferred(moex):
    # AAPL and SBER are bare tickers: one inferred venue, never silent as a whole on a grid date.
    assert lagging(moex_run(moex, "2021-07-05", Venues())) >= {"AAPL", "SPY", "NVDA"}


@pytest.mark.parametrize("venues", ["none", "inferred", "declared"])
@pytest.mark.parametrize("as_of", ["2022-07-04", "2022-07-02", "2022-07-03"])
def test_a_lone_us_name_on_a_us_holiday_or_a_weekend_gives_the_last_sessions_window(venues, as_of):
    bars = cleaned(BY_NAME["tradfi_tradingview_uzanbtc"])[1].bars
    venues = {"none": None, "inferred": Venues(), "declared": us_moex()}[venues]
    friday = moex_run(bars, "2022-07-01", venues)
    later = moex_run(bars, as_of, venues)
    assert later.returns.index[-1] == day("2022-07-01") and later.excluded.empty
    pd.testing.assert_frame_equal(later.returns, friday.returns)


# --------------------------------------------------------------------------------------------
# The fixture sleeve of us_london.yaml, replayed day by day through the whole graph
# --------------------------------------------------------------------------------------------
REPLAY_DAYS = (
    "2024-03-15",
    "2024-04-01",  # London closed
    "2024-05-06",  # London closed
    "2024-06-19",  # New York closed
    "2024-06-22",  # a Saturday: Friday's decision
    "2024-07-04",  # New York closed
    "2024-08-21",  # the US files' last bar
)


@pytest.mark.slow
def test_the_us_london_fixture_sleeve_runs_green_each_day_of_a_replay(
    instance, lake_root, tmp_path, monkeypatch
):
    from tvq_assets.partitions import catalog

    # The catalog refuses a folder that does not exist: the replay's first day makes it.
    folder = us_london_folder(tmp_path / "us_london", until=REPLAY_DAYS[0])
    sleeve = us_london_sleeve(folder)
    monkeypatch.setitem(catalog.sleeves, "tradfi", dataclasses.replace(sleeve, name="tradfi"))
    resources = resources_for(lake_root, tradfi=sleeve_source(sleeve))
    for as_of in REPLAY_DAYS:
        us_london_folder(folder, until=as_of)
        monkeypatch.setenv(
            "TVQ_NOW", f"{day(as_of) + pd.Timedelta(days=1):%Y-%m-%d}T06:00:00+00:00"
        )
        assert dg.materialize(
            [SLEEVE_ASSETS[0]], partition_key="tradfi", resources=resources, instance=instance
        ).success
        result = dg.materialize(
            SLEEVE_ASSETS,
            partition_key=f"{as_of}|tradfi",
            selection=[asset.key for asset in SLEEVE_ASSETS[1:]],
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        failures = [
            e.step_failure_data.error.message for e in result.all_events if e.is_step_failure
        ]
        assert result.success, (as_of, failures)
        stored = ParquetLake(root=lake_root).read(["returns"], f"{as_of}|tradfi")
        assert not lagging(stored) & set(CLOSED.get(as_of, ())), as_of
        assert metadata(result, "returns")["symbols"] >= 12


def test_a_mixed_venue_sleeve_is_annualised_with_the_rows_a_year_its_venues_trade(us_london):
    """New York with London trade on 257 weekdays a year, not 252: the real files' grid of 2023
    has as many rows as the sleeve's periods per year, within the days every file missed."""
    sleeve, result = us_london
    assert sleeve.periods_per_year == 257
    dates = pd.DatetimeIndex(result.bars["date"].unique())
    rows_2023 = ((dates >= "2023-01-01") & (dates <= "2023-12-31")).sum()
    assert abs(rows_2023 - sleeve.periods_per_year) <= 2, rows_2023
