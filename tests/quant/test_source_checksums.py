"""The source's checksums: a revision older than the re-read margin is found by comparing the
delivery with per-month (and recent per-day) checksums, and only then."""

import numpy as np
import pandas as pd

from tvq_assets.quant import bars as bar_lake

DATES = pd.date_range("2024-01-01", "2024-06-30")
LAST = DATES[-1]
SINCE = LAST - pd.Timedelta(days=bar_lake.REVISION_DAYS)


def delivery(symbols=("AAA", "BBB"), dates=DATES) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frames = []
    for symbol in symbols:
        close = (100 + rng.normal(size=len(DATES)).cumsum())[: len(dates)]
        frames.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "date": dates,
                    "open": close,
                    "high": close + 1,
                    "low": close - 1,
                    "close": close,
                    "volume": 1000.0,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def revised(bars: pd.DataFrame, symbol: str, day: str, column: str = "close") -> pd.DataFrame:
    bars = bars.copy()
    bars.loc[(bars["symbol"] == symbol) & (bars["date"] == day), column] += 0.01
    return bars


def stored_after_full(bars: pd.DataFrame) -> pd.DataFrame:
    return bar_lake.check_source(None, bars, since=None, last=bars["date"].max()).checksums


def test_old_months_are_stored_as_month_checksums_and_recent_ones_day_by_day():
    stored = stored_after_full(delivery())
    months = stored[stored["period"].str.len() == 7]
    days = stored[stored["period"].str.len() == 10]
    assert set(months["period"]) == {"2024-01", "2024-02", "2024-03", "2024-04"}
    assert months["rows"].sum() + days["rows"].sum() == 2 * len(DATES)
    assert set(days["period"].str[:7]) == {"2024-05", "2024-06"}


def test_an_unchanged_source_agrees_and_keeps_its_checksums():
    bars = delivery()
    stored = stored_after_full(bars)
    check = bar_lake.check_source(stored, bars, since=SINCE, last=LAST)
    assert check.disagreements.empty and check.baselined == 0
    pd.testing.assert_frame_equal(check.checksums, stored)


def test_a_revision_in_an_old_month_names_symbol_and_month():
    stored = stored_after_full(delivery())
    check = bar_lake.check_source(
        stored, revised(delivery(), "AAA", "2024-02-10"), since=SINCE, last=LAST
    )
    assert check.disagreements.to_dict("records") == [
        {"symbol": "AAA", "period": "2024-02", "dates": ""}  # the dates come from the lake
    ]


def test_a_revision_of_a_recent_day_before_the_margin_names_the_day():
    stored = stored_after_full(delivery())
    bars = revised(revised(delivery(), "BBB", "2024-06-01", "volume"), "BBB", "2024-06-02")
    check = bar_lake.check_source(stored, bars, since=SINCE, last=LAST)
    assert check.disagreements.to_dict("records") == [
        {"symbol": "BBB", "period": "2024-06", "dates": "2024-06-01, 2024-06-02"}
    ]


def test_a_revision_inside_the_margin_is_taken_in_not_reported():
    stored = stored_after_full(delivery())
    bars = revised(delivery(), "AAA", f"{LAST - pd.Timedelta(days=2):%Y-%m-%d}")
    check = bar_lake.check_source(stored, bars, since=SINCE, last=LAST)
    assert check.disagreements.empty
    assert not check.checksums.equals(stored)  # the re-read day's new checksum is kept


def test_a_disagreement_stays_until_a_full_refresh():
    stored = stored_after_full(delivery())
    bars = revised(delivery(), "AAA", "2024-01-05")
    first = bar_lake.check_source(stored, bars, since=SINCE, last=LAST)
    second = bar_lake.check_source(first.checksums, bars, since=SINCE, last=LAST)
    assert len(first.disagreements) == len(second.disagreements) == 1
    full = bar_lake.check_source(second.checksums, bars, since=None, last=LAST)
    third = bar_lake.check_source(full.checksums, bars, since=SINCE, last=LAST)
    assert third.disagreements.empty


def test_a_bar_the_source_added_or_dropped_in_the_past_is_a_disagreement():
    stored = stored_after_full(delivery())
    bars = delivery()
    dropped = bars.drop(bars.index[(bars["symbol"] == "AAA") & (bars["date"] == "2024-03-03")])
    check = bar_lake.check_source(stored, dropped, since=SINCE, last=LAST)
    assert check.disagreements[["symbol", "period"]].values.tolist() == [["AAA", "2024-03"]]


def test_a_symbol_missing_from_the_delivery_is_not_compared_and_keeps_its_checksums():
    stored = stored_after_full(delivery())
    check = bar_lake.check_source(stored, delivery(symbols=("AAA",)), since=SINCE, last=LAST)
    assert check.disagreements.empty
    assert set(check.checksums["symbol"]) == {"AAA", "BBB"}


def test_a_symbol_never_checksummed_is_taken_as_delivered():
    stored = stored_after_full(delivery(symbols=("AAA",)))
    check = bar_lake.check_source(stored, delivery(), since=SINCE, last=LAST)
    assert check.disagreements.empty and check.baselined == 6  # BBB's six months


def test_months_roll_up_as_the_store_moves_on_and_still_catch_old_revisions():
    stored = stored_after_full(delivery(dates=DATES[:-70]))
    assert "2024-04" not in set(stored["period"])  # April is checksummed day by day
    later = delivery()  # the same history plus 70 new days: April is now long past
    resumed = DATES[-71] - pd.Timedelta(days=bar_lake.REVISION_DAYS)  # from the stored last date
    step = bar_lake.check_source(stored, later, since=resumed, last=LAST)
    assert step.disagreements.empty
    assert "2024-04" in set(step.checksums["period"])  # April's days rolled up into one
    check = bar_lake.check_source(
        step.checksums, revised(later, "BBB", "2024-04-09"), since=SINCE, last=LAST
    )
    assert check.disagreements[["symbol", "period"]].values.tolist() == [["BBB", "2024-04"]]


def with_quote_volume(bars: pd.DataFrame) -> pd.DataFrame:
    return bars.assign(quote_volume=bars["close"] * bars["volume"])


def test_a_row_without_quote_volume_has_the_checksum_of_its_ohlcv_alone():
    bars = delivery()
    unknown = bars.assign(quote_volume=np.nan)  # an exchange that did not report it
    pd.testing.assert_frame_equal(
        bar_lake.day_checksums(unknown), bar_lake.day_checksums(bars), check_exact=True
    )


def test_a_revision_of_the_quote_volume_alone_changes_the_checksums_of_its_day_and_month():
    bars = with_quote_volume(delivery())
    before, after = (
        bar_lake.day_checksums(bars),
        bar_lake.day_checksums(revised(bars, "AAA", "2024-02-10", column="quote_volume")),
    )
    differs = before.merge(after, on=["symbol", "period"], suffixes=("", "_after"))
    differs = differs[differs["checksum"] != differs["checksum_after"]]
    assert differs[["symbol", "period"]].values.tolist() == [["AAA", "2024-02-10"]]
    stored = bar_lake.check_source(None, bars, since=None, last=LAST).checksums
    check = bar_lake.check_source(
        stored, revised(bars, "AAA", "2024-02-10", column="quote_volume"), since=SINCE, last=LAST
    )
    assert check.disagreements[["symbol", "period"]].values.tolist() == [["AAA", "2024-02"]]
