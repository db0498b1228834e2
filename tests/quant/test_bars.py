"""The bar lake's refresh: stored rows are kept as they are, only new (symbol, date) rows added."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_assets.quant.bars import BAR_COLUMNS, refresh
from tvq_resources.synthetic import generate_market

KEYS = ["symbol", "date"]
OPTIONS = {"seed": 21, "n_symbols": 20, "start": "2024-10-01"}


@pytest.fixture(scope="module")
def first_source() -> pd.DataFrame:
    return generate_market(end="2025-03-31", **OPTIONS)


@pytest.fixture(scope="module")
def grown_source() -> pd.DataFrame:
    return generate_market(end="2025-04-20", **OPTIONS)


def anti_join(incoming: pd.DataFrame, stored: pd.DataFrame) -> pd.DataFrame:
    """Incoming rows whose (symbol, date) is not stored, found independently of ``refresh``."""
    stored_keys = set(zip(stored["symbol"], stored["date"], strict=True))
    fresh = [
        (symbol, date) not in stored_keys
        for symbol, date in zip(incoming["symbol"], incoming["date"], strict=True)
    ]
    return incoming[np.array(fresh, dtype=bool)]


def shuffled(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_the_first_refresh_stores_every_row_sorted_by_symbol_and_date(first_source):
    result = refresh(None, shuffled(first_source))
    pd.testing.assert_frame_equal(result.bars, first_source)
    assert result.added == len(first_source) and result.revised == 0
    assert result.added_rows.dtype == bool and result.added_rows.all()
    assert result.new_symbols == tuple(sorted(first_source["symbol"].unique()))


def test_an_empty_store_is_refreshed_like_a_first_refresh(first_source):
    result = refresh(first_source.iloc[0:0], shuffled(first_source))
    pd.testing.assert_frame_equal(result.bars, first_source)
    assert result.added == len(first_source)


def test_a_grown_source_adds_exactly_the_new_rows(first_source, grown_source):
    result = refresh(first_source, shuffled(grown_source, seed=1))
    expected_new = anti_join(grown_source, first_source)
    assert len(expected_new) > 0
    assert result.added == len(expected_new) == len(grown_source) - len(first_source)
    listed_since = set(grown_source["symbol"]) - set(first_source["symbol"])
    assert result.revised == 0 and result.new_symbols == tuple(sorted(listed_since))
    added = result.bars[result.added_rows].reset_index(drop=True)
    pd.testing.assert_frame_equal(added, expected_new.reset_index(drop=True))
    pd.testing.assert_frame_equal(result.bars, grown_source)


def test_refreshing_with_an_unchanged_source_adds_nothing(first_source):
    result = refresh(first_source, first_source)
    assert result.added == 0 and result.revised == 0 and not result.added_rows.any()
    pd.testing.assert_frame_equal(result.bars, first_source)


def test_a_new_symbol_with_full_history_is_added_completely(first_source, grown_source):
    newcomer = grown_source[grown_source["symbol"] == grown_source["symbol"].iloc[0]].assign(
        symbol="NEWUSDT"
    )
    incoming = pd.concat([grown_source, newcomer], ignore_index=True)
    result = refresh(first_source, incoming)
    listed_since = set(grown_source["symbol"]) - set(first_source["symbol"])
    assert result.new_symbols == tuple(sorted(listed_since | {"NEWUSDT"}))
    stored_new = result.bars[result.bars["symbol"] == "NEWUSDT"].reset_index(drop=True)
    pd.testing.assert_frame_equal(stored_new, newcomer.reset_index(drop=True))
    assert result.added_rows[result.bars["symbol"].to_numpy() == "NEWUSDT"].all()
    assert result.added == len(anti_join(incoming, first_source))


def test_a_revised_stored_row_is_kept_as_stored_and_counted(first_source, grown_source):
    revised = grown_source.copy()
    changed = revised.index[[10, 500, 900]]
    revised.loc[changed[0], "close"] *= 1.5
    revised.loc[changed[1], "volume"] = 0.0
    revised.loc[changed[2], ["open", "high"]] = np.nan
    result = refresh(first_source, revised)
    assert result.revised == 3
    kept = result.bars.merge(first_source, on=KEYS, suffixes=("", "_stored"))
    for column in BAR_COLUMNS[2:]:
        np.testing.assert_array_equal(kept[column], kept[f"{column}_stored"])
    assert result.added == len(anti_join(revised, first_source))


def test_stored_rows_are_never_changed_or_lost(first_source, grown_source):
    scrambled = grown_source.copy()
    scrambled[["open", "high", "low", "close"]] *= 2.0
    result = refresh(first_source, scrambled)
    stored_again = result.bars[~result.added_rows].reset_index(drop=True)
    pd.testing.assert_frame_equal(stored_again, first_source)
    assert result.revised == len(first_source)


def test_a_source_that_dropped_old_rows_does_not_delete_them(first_source, grown_source):
    recent = grown_source[grown_source["date"] >= "2025-04-01"]
    result = refresh(first_source, recent)
    pd.testing.assert_frame_equal(result.bars, grown_source)
    assert result.added == len(recent)


def test_the_input_frames_are_not_modified(first_source, grown_source):
    stored, incoming = first_source.copy(), grown_source.copy()
    refresh(stored, incoming)
    pd.testing.assert_frame_equal(stored, first_source)
    pd.testing.assert_frame_equal(incoming, grown_source)


@st.composite
def stored_and_incoming(draw) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Small stored and incoming bar sets over overlapping (symbol, date) keys."""
    keys = [(s, d) for s in ("AAA", "BBB", "CCC") for d in range(6)]

    def bars(chosen: list[tuple[str, int]], prices: list[float]) -> pd.DataFrame:
        frame = pd.DataFrame(chosen, columns=KEYS)
        frame["date"] = pd.Timestamp("2025-01-01") + pd.to_timedelta(frame["date"], unit="D")
        for column in BAR_COLUMNS[2:]:
            frame[column] = np.asarray(prices, dtype=float)
        return frame.sort_values(KEYS, ignore_index=True)

    stored = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
    incoming = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
    price = st.sampled_from([1.0, 2.0])
    stored_prices = draw(st.lists(price, min_size=len(stored), max_size=len(stored)))
    incoming_prices = draw(st.lists(price, min_size=len(incoming), max_size=len(incoming)))
    return bars(stored, stored_prices), bars(incoming, incoming_prices)


@settings(max_examples=40, deadline=None)
@given(frames=stored_and_incoming())
def test_refresh_agrees_with_an_anti_join_on_random_key_sets(frames):
    stored, incoming = frames
    result = refresh(stored, incoming)
    expected_new = anti_join(incoming, stored)
    assert result.added == len(expected_new) == int(result.added_rows.sum())
    added = result.bars[result.added_rows].sort_values(KEYS, ignore_index=True)
    pd.testing.assert_frame_equal(added, expected_new.sort_values(KEYS, ignore_index=True))
    union = pd.concat([stored, expected_new]).sort_values(KEYS, ignore_index=True)
    pd.testing.assert_frame_equal(result.bars, union)
    if not stored.empty:
        kept = result.bars[~result.added_rows].reset_index(drop=True)
        pd.testing.assert_frame_equal(kept, stored)
        overlap = incoming.merge(stored, on=KEYS, suffixes=("", "_stored"))
        assert result.revised == int((overlap["close"] != overlap["close_stored"]).sum())
    assert result.new_symbols == tuple(sorted(set(incoming["symbol"]) - set(stored["symbol"])))
