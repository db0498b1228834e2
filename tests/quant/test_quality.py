"""Last-bar quality rules (stalls, volume spikes) and filler bars against per-symbol loops."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_assets.quant.quality import filler_bars, is_volume_spike, stalled_symbols, volume_spikes
from tvq_resources.synthetic import Fault, generate_market

END = "2025-05-31"


def reference_stalls(bars: pd.DataFrame, *, stall_bars: int, as_of=None) -> pd.DataFrame:
    known = bars if as_of is None else bars[bars["date"] <= pd.Timestamp(as_of)]
    rows = []
    for symbol, group in known.groupby("symbol", sort=True):
        closes = list(group["close"])
        if len(closes) >= stall_bars and all(c == closes[-1] for c in closes[-stall_bars:]):
            rows.append((symbol, group["date"].iloc[-1], closes[-1]))
    return pd.DataFrame(rows, columns=["symbol", "date", "value"])


def reference_spikes(bars: pd.DataFrame, *, sigma: float, window: int, as_of=None) -> pd.DataFrame:
    known = bars if as_of is None else bars[bars["date"] <= pd.Timestamp(as_of)]
    rows = []
    for symbol, group in known.groupby("symbol", sort=True):
        volumes = list(group["volume"])
        if len(volumes) < window + 1:
            continue
        before, last = volumes[-window - 1 : -1], volumes[-1]
        if any(np.isnan(v) for v in before) or np.isnan(last):
            continue
        mean = sum(before) / window
        std = (sum((v - mean) ** 2 for v in before) / (window - 1)) ** 0.5
        # A flat history followed by a higher volume is an infinite z-score.
        z = (last - mean) / std if std > 0 else (np.inf if last > mean else 0.0)
        if z > sigma:
            rows.append((symbol, group["date"].iloc[-1], z))
    return pd.DataFrame(rows, columns=["symbol", "date", "value"])


def reference_fillers(bars: pd.DataFrame) -> np.ndarray:
    flags = np.zeros(len(bars), dtype=bool)
    records = bars.to_dict("records")
    for k in range(1, len(records)):
        row, previous = records[k], records[k - 1]
        flags[k] = (
            row["symbol"] == previous["symbol"]
            and row["volume"] == 0
            and row["open"] == row["high"] == row["low"] == row["close"] == previous["close"]
        )
    return flags


def assert_same_findings(found: pd.DataFrame, expected: pd.DataFrame) -> None:
    found = found.reset_index(drop=True)
    assert list(found["symbol"]) == list(expected["symbol"])
    assert list(found["date"]) == list(pd.to_datetime(expected["date"]))
    np.testing.assert_allclose(found["value"], expected["value"].astype(float), rtol=1e-9)


@pytest.fixture(scope="module")
def faulty_crypto() -> pd.DataFrame:
    options = {"seed": 9, "n_symbols": 30, "start": "2024-09-01", "end": END}
    clean = generate_market(**options)
    span = clean.groupby("symbol")["date"].agg(["min", "max"])
    full = span.index[(span["min"] == options["start"]) & (span["max"] == END)]
    late_stall, early_stall, spiking = full[:3]
    return generate_market(
        **options,
        faults=[
            Fault("stall", symbol=late_stall),
            Fault("stall", symbol=early_stall, date="2025-03-01"),
            Fault("volume_spike", symbol=spiking),
            Fault("volume_spike", symbol=spiking, date="2025-04-20"),
        ],
    )


@pytest.fixture(scope="module")
def padded_weekday() -> pd.DataFrame:
    return generate_market(
        seed=2,
        n_symbols=10,
        start="2024-09-02",
        end=END,
        calendar="weekday",
        faults=[Fault("weekend_padding"), Fault("weekend_padding", date="2025-01-06")],
    )


def test_stalled_symbols_match_a_loop_on_a_market_with_injected_stalls(faulty_crypto):
    found = stalled_symbols(faulty_crypto, stall_bars=3)
    expected = reference_stalls(faulty_crypto, stall_bars=3)
    assert len(expected) >= 2  # both injected stalls are visible
    assert_same_findings(found, expected)


def test_volume_spikes_match_a_loop_on_a_market_with_an_injected_spike(faulty_crypto):
    found = volume_spikes(faulty_crypto, sigma=10.0, window=21)
    expected = reference_spikes(faulty_crypto, sigma=10.0, window=21)
    assert len(expected) >= 1
    assert_same_findings(found, expected)


def test_every_z_score_matches_the_loop_when_the_threshold_is_minus_infinity(faulty_crypto):
    found = volume_spikes(faulty_crypto, sigma=-np.inf, window=21)
    expected = reference_spikes(faulty_crypto, sigma=-np.inf, window=21)
    assert len(expected) > 20
    assert_same_findings(found, expected)


@pytest.mark.parametrize("as_of", ["2025-02-27", "2025-03-05", "2025-04-20", "2025-04-21"])
def test_as_of_restricts_every_rule_to_the_bars_dated_before_it(faulty_crypto, as_of):
    stamp = pd.Timestamp(as_of)
    assert_same_findings(
        stalled_symbols(faulty_crypto, stall_bars=3, as_of=stamp),
        reference_stalls(faulty_crypto, stall_bars=3, as_of=stamp),
    )
    assert_same_findings(
        volume_spikes(faulty_crypto, sigma=10.0, window=21, as_of=stamp),
        reference_spikes(faulty_crypto, sigma=10.0, window=21, as_of=stamp),
    )


def test_a_stall_dated_after_as_of_is_not_seen_and_one_before_it_is(faulty_crypto):
    stalled_later = set(stalled_symbols(faulty_crypto, stall_bars=3)["symbol"])
    before = set(
        stalled_symbols(faulty_crypto, stall_bars=3, as_of=pd.Timestamp("2025-02-27"))["symbol"]
    )
    during = set(
        stalled_symbols(faulty_crypto, stall_bars=3, as_of=pd.Timestamp("2025-03-05"))["symbol"]
    )
    assert len(stalled_later) == 2
    assert len(during & stalled_later) == 1 and not before & stalled_later


def test_the_volume_spike_is_found_on_its_day_only(faulty_crypto):
    on_the_day = volume_spikes(
        faulty_crypto, sigma=10.0, window=21, as_of=pd.Timestamp("2025-04-20")
    )
    next_day = volume_spikes(faulty_crypto, sigma=10.0, window=21, as_of=pd.Timestamp("2025-04-21"))
    assert list(on_the_day["date"].unique()) == [pd.Timestamp("2025-04-20")]
    assert next_day.empty


def test_filler_bars_match_a_loop_on_weekend_padding(padded_weekday):
    flags = filler_bars(padded_weekday)
    expected = reference_fillers(padded_weekday)
    np.testing.assert_array_equal(flags, expected)
    weekend = padded_weekday["date"].dt.dayofweek.to_numpy() >= 5
    assert expected.sum() == weekend.sum() > 0
    # Weekend padding repeats Friday's close; the Saturday copy is filler, so is Sunday's.
    np.testing.assert_array_equal(flags, weekend)


def test_a_clean_market_has_no_filler_bars_and_no_stalls():
    clean = generate_market(seed=5, n_symbols=15, start="2025-01-01", end=END)
    assert not filler_bars(clean).any()
    assert stalled_symbols(clean, stall_bars=3).empty


def test_the_first_bar_of_a_symbol_is_never_filler_even_if_it_copies_the_previous_symbol():
    bars = pd.DataFrame(
        {
            "symbol": ["AAA", "AAA", "BBB"],
            "date": pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-01"]),
            "open": [5.0, 5.0, 5.0],
            "high": [5.0, 5.0, 5.0],
            "low": [5.0, 5.0, 5.0],
            "close": [5.0, 5.0, 5.0],
            "volume": [0.0, 0.0, 0.0],
        }
    )
    np.testing.assert_array_equal(filler_bars(bars), [False, True, False])


def test_rules_on_an_empty_frame_find_nothing():
    empty = generate_market(seed=5, n_symbols=3, n_clusters=1, start="2025-01-01", end=END)
    empty = empty.iloc[0:0]
    assert stalled_symbols(empty, stall_bars=3).empty
    assert volume_spikes(empty, sigma=10.0, window=21).empty
    assert filler_bars(empty).shape == (0,)


@st.composite
def small_bars(draw) -> pd.DataFrame:
    """Sorted bars of up to three symbols with few distinct values, so rules often fire."""
    frames = []
    for symbol in ("AAA", "BBB", "CCC"):
        n = draw(st.integers(0, 26))
        prices = st.sampled_from([1.0, 2.0, 3.0])
        volumes = st.sampled_from([0.0, 10.0, 11.0, 12.0, 500.0, np.nan])
        close = draw(st.lists(prices, min_size=n, max_size=n))
        flat = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        other = draw(st.lists(prices, min_size=n, max_size=n))
        frames.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "date": pd.date_range("2025-01-01", periods=n),
                    "open": np.where(flat, close, other),
                    "high": np.where(flat, close, np.maximum(close, other)),
                    "low": np.where(flat, close, np.minimum(close, other)),
                    "close": np.asarray(close, dtype=float),
                    "volume": np.asarray(
                        draw(st.lists(volumes, min_size=n, max_size=n)), dtype=float
                    ),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@settings(max_examples=40, deadline=None)
@given(
    bars=small_bars(),
    stall_bars=st.integers(2, 5),
    window=st.integers(2, 22),
    sigma=st.sampled_from([-np.inf, 0.0, 1.0, 10.0]),
    as_of_day=st.integers(0, 27),
)
def test_every_rule_matches_its_loop_reference_on_random_small_frames(
    bars, stall_bars, window, sigma, as_of_day
):
    as_of = pd.Timestamp("2025-01-01") + pd.Timedelta(days=as_of_day)
    assert_same_findings(
        stalled_symbols(bars, stall_bars=stall_bars, as_of=as_of),
        reference_stalls(bars, stall_bars=stall_bars, as_of=as_of),
    )
    assert_same_findings(
        volume_spikes(bars, sigma=sigma, window=window, as_of=as_of),
        reference_spikes(bars, sigma=sigma, window=window, as_of=as_of),
    )
    np.testing.assert_array_equal(filler_bars(bars), reference_fillers(bars))


def test_a_volume_exactly_at_sigma_is_no_spike_and_one_just_above_is():
    bars = generate_market(seed=5, n_symbols=3, n_clusters=1, start="2025-01-01", end=END)
    [z] = volume_spikes(bars[bars["symbol"] == bars["symbol"].iloc[0]], sigma=-np.inf, window=21)[
        "value"
    ]
    symbol_bars = bars[bars["symbol"] == bars["symbol"].iloc[0]]
    assert volume_spikes(symbol_bars, sigma=z, window=21).empty
    assert len(volume_spikes(symbol_bars, sigma=np.nextafter(z, -np.inf), window=21)) == 1
    assert not is_volume_spike(np.array([10.0]), 10.0)[0]
    assert is_volume_spike(np.array([np.nextafter(10.0, np.inf)]), 10.0)[0]
