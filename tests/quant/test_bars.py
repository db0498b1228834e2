"""The bar lake: dirty history cleaned under a policy and recorded; newest source value wins."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_assets.quant.bars import (
    BAR_COLUMNS,
    DEFAULT_ACTIONS,
    BarHistory,
    BarPolicy,
    Cleaned,
    FutureBarError,
    bar_exclusions,
    clean,
    defect_summary,
    empty_defects,
    refresh,
)
from tvq_resources.synthetic import generate_market

NOW = pd.Timestamp("2025-06-11 15:00", tz="UTC")
KEYS = ["symbol", "date"]


def bar(symbol, date, o, h, low, c, v=100.0):
    return (symbol, pd.Timestamp(date), float(o), float(h), float(low), float(c), float(v))


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(BAR_COLUMNS))


def defect(cleaned: Cleaned, symbol: str, date: str) -> dict:
    rows = cleaned.defects[
        (cleaned.defects["symbol"] == symbol) & (cleaned.defects["date"] == pd.Timestamp(date))
    ]
    return dict(zip(rows["rule"], rows["action"], strict=True))


@pytest.fixture
def dirty() -> tuple[pd.DataFrame, pd.DataFrame]:
    """One symbol per defect, each next to clean bars (Mon 2025-06-02 .. Fri 06-06)."""
    rows = [bar("OK", f"2025-06-0{d}", 10, 11, 9, 10.5) for d in range(2, 7)]
    rows += [
        bar("DUP", "2025-06-02", 10, 11, 9, 10),
        bar("CONFLICT", "2025-06-02", 10, 11, 9, 10.2),
        bar("WEEKEND", "2025-06-07", 10, 11, 9, 10),  # a Saturday
        bar("WEEKEND", "2025-06-06", 10, 11, 9, 10),
        bar("EMPTY", "2025-06-03", np.nan, np.nan, np.nan, np.nan, np.nan),
        bar("ZERO", "2025-06-03", 0, 0, 0, 0),
        bar("NEGVOL", "2025-06-03", 10, 11, 9, 10, -5),
        bar("SMALL", "2025-06-03", 10, 10.5, 9, 10.55),  # high 0.5% under the close
        bar("LARGE", "2025-06-03", 10, 11, 9, 12),  # high 8% under the close
        bar("FILL", "2025-06-02", 10, 11, 9, 10),
        bar("FILL", "2025-06-03", 10, 10, 10, 10, 0),  # zero-volume copy of the close
    ]
    superseded = frame(
        [bar("DUP", "2025-06-02", 10, 11, 9, 10), bar("CONFLICT", "2025-06-02", 10, 11, 9, 10.1)]
    )
    return frame(rows), superseded


def test_every_defect_is_recorded_per_symbol_date_and_rule_with_its_default_action(dirty):
    raw, superseded = dirty
    cleaned = clean(raw, calendar="weekday", policy=BarPolicy(), now=NOW, superseded=superseded)

    assert defect(cleaned, "DUP", "2025-06-02") == {"duplicate_exact": "repaired"}
    assert defect(cleaned, "CONFLICT", "2025-06-02") == {"duplicate_conflict": "repaired"}
    assert defect(cleaned, "WEEKEND", "2025-06-07") == {"weekend_row": "dropped"}
    assert defect(cleaned, "EMPTY", "2025-06-03") == {"price_missing": "dropped"}
    assert defect(cleaned, "ZERO", "2025-06-03") == {"price_non_positive": "dropped"}
    assert defect(cleaned, "NEGVOL", "2025-06-03") == {"volume_invalid": "dropped"}
    assert defect(cleaned, "SMALL", "2025-06-03") == {"ohlc_inconsistent": "repaired"}
    assert defect(cleaned, "LARGE", "2025-06-03") == {"ohlc_inconsistent": "dropped"}
    assert defect(cleaned, "FILL", "2025-06-03") == {"filler_bar": "dropped"}
    assert not (cleaned.defects["symbol"] == "OK").any()
    kept = cleaned.bars.set_index(KEYS)
    assert not kept.index.duplicated().any()
    assert kept.loc[("CONFLICT", pd.Timestamp("2025-06-02")), "close"] == 10.2  # last report
    assert kept.loc[("SMALL", pd.Timestamp("2025-06-03")), "high"] == 10.55  # widened
    for symbol in ("EMPTY", "ZERO", "NEGVOL", "LARGE"):
        assert symbol not in kept.index.get_level_values("symbol")
    assert ("FILL", pd.Timestamp("2025-06-03")) not in kept.index
    assert (cleaned.bars["date"].dt.dayofweek < 5).all()
    assert cleaned.bars.equals(cleaned.bars.sort_values(KEYS, ignore_index=True))


def test_weekend_rows_are_normal_on_a_crypto_calendar(dirty):
    raw, _ = dirty
    cleaned = clean(raw, calendar="crypto", policy=BarPolicy(), now=NOW)
    assert "weekend_row" not in set(cleaned.defects["rule"])
    assert (cleaned.bars["date"] == pd.Timestamp("2025-06-07")).any()


def test_the_ohlc_tolerance_is_a_policy_parameter(dirty):
    raw, _ = dirty
    strict = clean(raw, calendar="crypto", policy=BarPolicy.of(None, 0.001), now=NOW)
    loose = clean(raw, calendar="crypto", policy=BarPolicy.of(None, 0.10), now=NOW)
    assert defect(strict, "SMALL", "2025-06-03") == {"ohlc_inconsistent": "dropped"}
    assert defect(loose, "LARGE", "2025-06-03") == {"ohlc_inconsistent": "repaired"}
    large = loose.bars[loose.bars["symbol"] == "LARGE"].iloc[0]
    assert (large["high"], large["low"]) == (12.0, 9.0)


def test_quarantine_removes_the_bar_and_excludes_the_symbol_only_in_windows_with_the_date(dirty):
    raw, _ = dirty
    policy = BarPolicy.of({"price_missing": "quarantine"}, 0.01)
    cleaned = clean(raw, calendar="crypto", policy=policy, now=NOW)
    assert defect(cleaned, "EMPTY", "2025-06-03") == {"price_missing": "quarantined"}

    inside = bar_exclusions(
        cleaned.defects, start=pd.Timestamp("2025-06-01"), end=NOW.tz_localize(None)
    )
    before = bar_exclusions(
        cleaned.defects, start=pd.Timestamp("2025-05-01"), end=pd.Timestamp("2025-06-02")
    )
    after = bar_exclusions(
        cleaned.defects, start=pd.Timestamp("2025-06-04"), end=pd.Timestamp("2025-06-30")
    )
    assert inside["symbol"].tolist() == ["EMPTY"]
    assert inside["rule"].tolist() == ["price_missing"]
    assert inside["date"].tolist() == [pd.Timestamp("2025-06-03")]
    assert before.empty and after.empty


def test_a_repair_is_refused_for_a_rule_without_an_unambiguous_fix():
    with pytest.raises(ValueError, match="filler_bar: no unambiguous repair"):
        BarPolicy.of({"filler_bar": "repair"}, 0.01)
    with pytest.raises(ValueError, match="unknown bar rules"):
        BarPolicy.of({"fillerbar": "drop"}, 0.01)
    assert set(BarPolicy().actions) == set(DEFAULT_ACTIONS)


def test_a_bar_from_the_future_is_refused_naming_symbol_and_date():
    raw = frame([bar("OK", "2025-06-10", 10, 11, 9, 10), bar("AHEAD", "2031-01-02", 10, 11, 9, 10)])
    with pytest.raises(FutureBarError, match="AHEAD on 2031-01-02"):
        clean(raw, calendar="crypto", policy=BarPolicy(), now=NOW)


def test_a_session_ahead_of_utc_by_one_day_is_not_from_the_future():
    raw = frame([bar("SYD", "2025-06-12", 10, 11, 9, 10)])  # Sydney is already on the 12th
    cleaned = clean(raw, calendar="weekday", policy=BarPolicy(), now=NOW)
    assert defect(cleaned, "SYD", "2025-06-12") == {"unfinished_bar": "dropped"}


def test_an_in_progress_bar_is_held_back_and_never_stored_as_final():
    raw = frame(
        [bar("BTC", "2025-06-10", 10, 11, 9, 10), bar("BTC", "2025-06-11", 10, 11, 9, 10.3)]
    )
    cleaned = clean(raw, calendar="crypto", policy=BarPolicy(), now=NOW)
    assert cleaned.bars["date"].tolist() == [pd.Timestamp("2025-06-10")]
    assert defect(cleaned, "BTC", "2025-06-11") == {"unfinished_bar": "dropped"}
    stored = refresh(None, cleaned, seen_at=NOW).history
    assert stored.defects.empty  # held back, not a defect of history

    final = frame(
        [bar("BTC", "2025-06-10", 10, 11, 9, 10), bar("BTC", "2025-06-11", 10, 12, 9, 11)]
    )
    tomorrow = NOW + pd.Timedelta(days=1)
    update = refresh(
        stored, clean(final, calendar="crypto", policy=BarPolicy(), now=tomorrow), seen_at=tomorrow
    )
    assert update.added == 1 and update.revised == 0
    assert update.history.bars["close"].tolist() == [10.0, 11.0]


def history_of(bars: pd.DataFrame) -> BarHistory:
    return refresh(None, Cleaned(bars, empty_defects()), seen_at=NOW).history


@pytest.fixture(scope="module")
def first_source() -> pd.DataFrame:
    return generate_market(seed=21, n_symbols=20, start="2024-10-01", end="2025-03-31")


@pytest.fixture(scope="module")
def grown_source() -> pd.DataFrame:
    return generate_market(seed=21, n_symbols=20, start="2024-10-01", end="2025-04-20")


def test_a_grown_source_adds_exactly_the_new_rows(first_source, grown_source):
    update = refresh(history_of(first_source), Cleaned(grown_source, empty_defects()), seen_at=NOW)
    pd.testing.assert_frame_equal(update.history.bars, grown_source)
    assert update.added == len(grown_source) - len(first_source)
    assert update.revised == 0 and update.history.revisions.empty


def test_a_revised_bar_takes_the_newest_value_and_the_revision_is_recorded(first_source):
    revised = first_source.copy()
    revised.loc[5, "close"] *= 1.01
    revised.loc[5, "volume"] += 1
    seen = pd.Timestamp("2025-04-02 06:00", tz="UTC")
    update = refresh(history_of(first_source), Cleaned(revised, empty_defects()), seen_at=seen)

    assert update.revised == 1 and update.added == 0
    pd.testing.assert_frame_equal(update.history.bars, revised)
    table = update.history.revisions
    assert table["column"].tolist() == ["close", "volume"]
    assert table["old"].tolist() == [first_source.loc[5, "close"], first_source.loc[5, "volume"]]
    assert table["new"].tolist() == [revised.loc[5, "close"], revised.loc[5, "volume"]]
    assert (table["symbol"] == first_source.loc[5, "symbol"]).all()
    assert (table["seen_at"] == pd.Timestamp("2025-04-02 06:00")).all()
    again = refresh(update.history, Cleaned(first_source, empty_defects()), seen_at=NOW)
    assert len(again.history.revisions) == 4  # every revision stays queryable


def test_a_source_that_dropped_old_rows_does_not_delete_them(first_source, grown_source):
    recent = grown_source[grown_source["date"] > pd.Timestamp("2025-02-01")]
    update = refresh(history_of(first_source), Cleaned(recent, empty_defects()), seen_at=NOW)
    pd.testing.assert_frame_equal(update.history.bars, grown_source)


def test_a_stored_bar_that_a_new_defect_drops_is_removed_from_the_lake(first_source):
    broken = first_source.copy()
    broken.loc[7, ["open", "high", "low", "close"]] = np.nan
    cleaned = clean(broken, calendar="crypto", policy=BarPolicy(), now=NOW)
    update = refresh(history_of(first_source), cleaned, seen_at=NOW)
    assert update.removed == 1
    assert len(update.history.bars) == len(first_source) - 1
    assert defect_summary(update.history.defects).to_dict("records") == [
        {"rule": "price_missing", "repaired": 0, "dropped": 1, "quarantined": 0, "symbols": 1}
    ]


@st.composite
def key_sets(draw):
    symbols = ["A", "B", "C"]
    dates = pd.date_range("2025-01-01", periods=6)
    pairs = [(s, d) for s in symbols for d in dates]
    stored = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=12))
    incoming = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=12))
    changed = draw(st.lists(st.booleans(), min_size=len(incoming), max_size=len(incoming)))
    return stored, incoming, changed


def rows_of(pairs, bump) -> pd.DataFrame:
    bars = frame([bar(s, d, 10, 11, 9, 10 + b) for (s, d), b in zip(pairs, bump, strict=True)])
    return bars.sort_values(KEYS, ignore_index=True)


@settings(max_examples=60, deadline=None)
@given(key_sets())
def test_refresh_agrees_with_a_dictionary_merge_on_random_key_sets(sets):
    stored_pairs, incoming_pairs, changed = sets
    stored = rows_of(stored_pairs, [0] * len(stored_pairs))
    incoming = rows_of(incoming_pairs, [0.5 if c else 0 for c in changed])
    update = refresh(history_of(stored), Cleaned(incoming, empty_defects()), seen_at=NOW)

    expected = {
        (s, d): c for s, d, c in zip(stored["symbol"], stored["date"], stored["close"], strict=True)
    }
    before = dict(expected)
    expected.update(
        {
            (s, d): c
            for s, d, c in zip(incoming["symbol"], incoming["date"], incoming["close"], strict=True)
        }
    )
    got = update.history.bars
    assert (
        dict(zip(zip(got["symbol"], got["date"], strict=True), got["close"], strict=True))
        == expected
    )
    assert update.added == len(set(expected) - set(before))
    assert update.revised == sum(1 for k, v in before.items() if expected[k] != v)
    assert not got.duplicated(KEYS).any()


def test_a_revised_quote_volume_is_a_revision_and_a_first_one_is_stored_without_one():
    stored = history_of(
        frame([bar("AAA", "2024-01-01", 10, 11, 9, 10), bar("AAA", "2024-01-02", 10, 11, 9, 10)])
    )
    given = frame(
        [bar("AAA", "2024-01-01", 10, 11, 9, 10), bar("AAA", "2024-01-02", 10, 11, 9, 10)]
    ).assign(quote_volume=[1000.0, 1010.0])
    now = pd.Timestamp("2024-01-05")
    # Bars stored without a quote volume (a source before it was kept): the one given now is
    # stored with the rows, and no value was revised.
    first = refresh(stored, Cleaned(bars=given, defects=empty_defects()), seen_at=now)
    assert first.new_revisions.empty and first.revised == 0
    assert first.changed["quote_volume"].tolist() == [1000.0, 1010.0]
    assert first.history.bars["quote_volume"].tolist() == [1000.0, 1010.0]
    # A later delivery revising the quote volume alone: one revision of that column.
    again = given.assign(quote_volume=[1000.0, 999.0])
    second = refresh(first.history, Cleaned(bars=again, defects=empty_defects()), seen_at=now)
    assert second.revised == 1
    assert second.new_revisions[["date", "column", "old", "new"]].values.tolist() == [
        [pd.Timestamp("2024-01-02"), "quote_volume", 1010.0, 999.0]
    ]
    assert second.changed["date"].tolist() == [pd.Timestamp("2024-01-02")]


def test_bars_without_quote_volume_keep_exactly_their_ohlcv_columns(first_source):
    cleaned = clean(
        first_source, calendar="crypto", policy=BarPolicy(), now=pd.Timestamp("2030-01-01")
    )
    assert tuple(cleaned.bars.columns) == BAR_COLUMNS
    merged = refresh(None, cleaned, seen_at=pd.Timestamp("2030-01-01"))
    assert tuple(merged.history.bars.columns) == BAR_COLUMNS
    assert tuple(merged.changed.columns) == BAR_COLUMNS


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 12), st.integers(5, 40), st.randoms(use_true_random=False))
def test_a_first_load_is_the_same_whatever_order_the_delivery_comes_in(symbols, days, shuffle):
    """A sorted first delivery is taken as the history itself (no merge, no copy); a shuffled one
    goes through the merge: both give the same history, changed rows and counts."""
    market = generate_market(
        n_symbols=symbols, n_clusters=1, start="2025-01-01", end="2025-03-01", seed=3
    )
    raw = market[market["date"] < market["date"].min() + pd.Timedelta(days=days)]
    cleaned = clean(raw, calendar="crypto", policy=BarPolicy(), now=NOW)
    order = list(range(len(cleaned.bars)))
    shuffle.shuffle(order)
    shuffled = Cleaned(
        bars=cleaned.bars.iloc[order].reset_index(drop=True), defects=cleaned.defects
    )
    sorted_first = refresh(None, cleaned, seen_at=NOW)
    merged_first = refresh(None, shuffled, seen_at=NOW)
    pd.testing.assert_frame_equal(sorted_first.history.bars, merged_first.history.bars)
    pd.testing.assert_frame_equal(
        sorted_first.changed,
        merged_first.changed.sort_values(KEYS, ignore_index=True),
    )
    assert sorted_first.changed is sorted_first.history.bars  # one frame, not two copies
    assert (sorted_first.added, sorted_first.revised, sorted_first.removed) == (
        merged_first.added,
        merged_first.revised,
        merged_first.removed,
    )
    pd.testing.assert_frame_equal(sorted_first.history.defects, merged_first.history.defects)
