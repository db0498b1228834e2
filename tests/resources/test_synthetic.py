import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from scipy.special import comb

from tvq_resources.synthetic import (
    FAULT_KINDS,
    Fault,
    generate_market,
    planted_clusters,
    symbol_names,
)

START = "2023-11-01"
END = "2026-11-01"
STABLECOIN = re.compile(r"USDUSDT$")


@pytest.fixture(scope="module")
def crypto() -> pd.DataFrame:
    return generate_market(seed=7, n_symbols=100, start=START, end=END, calendar="crypto")


@pytest.fixture(scope="module")
def tradfi() -> pd.DataFrame:
    return generate_market(
        seed=11, n_symbols=60, n_clusters=6, start=START, end=END, calendar="weekday"
    )


def wide(bars: pd.DataFrame, column: str) -> pd.DataFrame:
    return bars.pivot(index="date", columns="symbol", values=column)


def simple_returns(bars: pd.DataFrame) -> pd.DataFrame:
    return wide(bars, "close").pct_change(fill_method=None)


def symbol_bars(bars: pd.DataFrame, symbol: str) -> pd.DataFrame:
    return bars[bars["symbol"] == symbol].reset_index(drop=True)


def adjusted_rand_index(truth: np.ndarray, labels: np.ndarray) -> float:
    """Hubert-Arabie adjusted Rand index from the contingency table."""
    table = pd.crosstab(truth, labels).to_numpy()
    pairs = comb(table, 2).sum()
    rows, columns = comb(table.sum(axis=1), 2).sum(), comb(table.sum(axis=0), 2).sum()
    expected = rows * columns / comb(table.sum(), 2)
    return float((pairs - expected) / (0.5 * (rows + columns) - expected))


def differing_rows(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    merged = left.merge(right, on=["symbol", "date"], how="outer", indicator=True)
    return merged[merged["_merge"] != "both"]


def test_the_same_arguments_give_an_identical_frame(crypto):
    again = generate_market(seed=7, n_symbols=100, start=START, end=END, calendar="crypto")
    pd.testing.assert_frame_equal(crypto, again, check_exact=True)


def test_a_different_seed_gives_a_different_market(crypto):
    other = generate_market(seed=8, n_symbols=100, start=START, end=END, calendar="crypto")
    assert not crypto["close"].equals(other["close"])


@pytest.mark.parametrize(
    ("calendar", "faults"),
    [
        ("crypto", ()),
        (
            "crypto",
            (
                Fault("toxic_spike", date="2025-03-01"),
                Fault("stall", date="2025-04-10"),
                Fault("volume_spike", date="2025-03-15"),
                Fault("gap", date="2025-02-01"),
                Fault("nan_after_genesis", date="2025-01-20"),
                Fault("toxic_spike", date="2025-06-15"),
            ),
        ),
        ("weekday", (Fault("weekend_padding", date="2025-03-03"), Fault("gap", date="2025-02-03"))),
    ],
)
def test_rows_up_to_a_date_do_not_depend_on_the_end_date(calendar, faults):
    cutoff = pd.Timestamp("2025-04-30")
    short = generate_market(
        seed=3, n_symbols=40, end="2025-04-30", calendar=calendar, faults=faults
    )
    longer = generate_market(
        seed=3, n_symbols=40, end="2025-06-29", calendar=calendar, faults=faults
    )
    prefix = longer[longer["date"] <= cutoff].reset_index(drop=True)
    assert short["date"].max() <= cutoff
    assert len(longer) > len(short)
    pd.testing.assert_frame_equal(short, prefix, check_exact=True)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    days=st.integers(1, 200),
    extra=st.integers(1, 100),
    calendar=st.sampled_from(["crypto", "weekday"]),
)
def test_prefix_stability_holds_for_any_seed_and_pair_of_end_dates(seed, days, extra, calendar):
    end = pd.Timestamp(START) + pd.Timedelta(days=days)
    later = end + pd.Timedelta(days=extra)
    short = generate_market(
        seed=seed, n_symbols=15, n_clusters=3, end=str(end.date()), calendar=calendar
    )
    longer = generate_market(
        seed=seed, n_symbols=15, n_clusters=3, end=str(later.date()), calendar=calendar
    )
    prefix = longer[longer["date"] <= end].reset_index(drop=True)
    pd.testing.assert_frame_equal(short, prefix, check_exact=True)


@pytest.mark.parametrize("market", ["crypto", "tradfi"])
def test_bars_follow_the_long_layout_conventions(market, request):
    bars = request.getfixturevalue(market)
    assert list(bars.columns) == ["symbol", "date", "open", "high", "low", "close", "volume"]
    assert bars["symbol"].map(type).eq(str).all()
    assert bars["date"].dtype == np.dtype("datetime64[ns]")
    assert (bars["date"] == bars["date"].dt.normalize()).all()
    for column in ["open", "high", "low", "close", "volume"]:
        assert bars[column].dtype == np.float64
    assert isinstance(bars.index, pd.RangeIndex)
    assert not bars.duplicated(["symbol", "date"]).any()
    ordered = bars.sort_values(["symbol", "date"], ignore_index=True)
    pd.testing.assert_frame_equal(bars, ordered)
    calendar = pd.date_range(START, END, freq="D" if market == "crypto" else "B")
    assert bars["date"].min() == calendar[0] and bars["date"].max() == calendar[-1]


@pytest.mark.parametrize("market", ["crypto", "tradfi"])
def test_a_clean_market_has_positive_finite_prices_and_consistent_ohlc(market, request):
    bars = request.getfixturevalue(market)
    prices = bars[["open", "high", "low", "close"]].to_numpy()
    assert np.isfinite(prices).all() and (prices > 0).all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars["volume"] > 0).all() and np.isfinite(bars["volume"]).all()


@pytest.mark.parametrize("market", ["crypto", "tradfi"])
def test_a_clean_market_trips_no_return_rule(market, request):
    returns = simple_returns(request.getfixturevalue(market))
    values = returns.to_numpy()
    observed = values[~np.isnan(values)]
    assert observed.max() <= 5.0 and observed.min() > -1.0
    first = returns.notna().idxmax()
    last = returns.notna()[::-1].idxmax()
    for symbol in returns.columns:
        inside = returns.loc[first[symbol] : last[symbol], symbol]
        assert inside.notna().all(), symbol


def test_the_open_is_the_previous_close_times_a_small_gap(crypto, tradfi):
    for bars, tolerance in [(crypto, 0.02), (tradfi, 0.1)]:
        previous_close = bars.groupby("symbol")["close"].shift(1)
        gap = (bars["open"] / previous_close - 1).dropna().abs()
        assert gap.median() < tolerance / 10
        assert gap.max() < tolerance


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_symbols=st.integers(1, 30),
    calendar=st.sampled_from(["crypto", "weekday"]),
)
def test_ohlc_invariants_hold_for_any_seed_and_size(seed, n_symbols, calendar):
    bars = generate_market(
        seed=seed, n_symbols=n_symbols, n_clusters=1, end="2024-06-01", calendar=calendar
    )
    assert (bars[["open", "high", "low", "close", "volume"]].to_numpy() > 0).all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (simple_returns(bars).stack() <= 5.0).all()


def test_the_weekday_calendar_has_no_weekend_rows(tradfi):
    assert (tradfi["date"].dt.dayofweek < 5).all()
    weekdays = pd.bdate_range(START, END)
    assert set(tradfi["date"].unique()) == set(weekdays)


def test_the_crypto_calendar_has_a_bar_every_day_for_a_symbol_listed_throughout(crypto):
    days = pd.date_range(START, END, freq="D")
    counts = crypto.groupby("symbol")["date"].nunique()
    assert (counts == len(days)).sum() > 50


def test_a_quarter_of_symbols_list_after_start_some_of_them_mid_window(crypto):
    genesis = crypto.groupby("symbol")["date"].min()
    late = genesis[genesis > pd.Timestamp(START)]
    assert 0.15 <= len(late) / len(genesis) <= 0.35
    assert (late > pd.Timestamp("2025-01-01")).any()


def test_a_few_symbols_delist_before_the_end(crypto):
    last = crypto.groupby("symbol")["date"].max()
    delisted = last[last < pd.Timestamp(END)]
    assert 1 <= len(delisted) <= 6
    assert (delisted < pd.Timestamp(END) - pd.Timedelta(days=30)).all()


def test_delisting_dates_do_not_move_with_the_end_date(crypto):
    shorter = generate_market(seed=7, n_symbols=100, end="2026-08-01")
    last_full = crypto.groupby("symbol")["date"].max()
    last_short = shorter.groupby("symbol")["date"].max()
    delisted = last_short[last_short < pd.Timestamp("2026-08-01")]
    assert len(delisted) >= 1
    pd.testing.assert_series_equal(delisted, last_full[delisted.index])


def test_planted_sectors_are_recovered_by_ward_clustering_of_correlations(crypto):
    returns = simple_returns(crypto).iloc[1:]
    returns = returns.loc[:, returns.notna().all()]
    truth = planted_clusters(seed=7, n_symbols=100, n_clusters=8)[returns.columns]
    distance = np.sqrt(np.clip(0.5 * (1 - returns.corr().to_numpy()), 0, None))
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="ward")
    labels = fcluster(tree, t=truth.nunique(), criterion="maxclust")
    assert adjusted_rand_index(truth.to_numpy(), labels) > 0.8


@pytest.mark.parametrize(
    ("market", "seed", "n_symbols", "n_clusters"),
    [("crypto", 7, 100, 8), ("tradfi", 11, 60, 6)],
)
def test_correlation_inside_a_sector_clearly_exceeds_correlation_across(
    market, seed, n_symbols, n_clusters, request
):
    returns = simple_returns(request.getfixturevalue(market)).iloc[1:]
    returns = returns.loc[:, returns.notna().all()]
    calendar = "crypto" if market == "crypto" else "weekday"
    truth = planted_clusters(
        seed=seed, n_symbols=n_symbols, n_clusters=n_clusters, calendar=calendar
    )[returns.columns]
    risky = truth <= n_clusters
    rho = returns.loc[:, risky].corr().to_numpy()
    labels = truth[risky].to_numpy()
    within, across = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            (within if labels[i] == labels[j] else across).append(rho[i, j])
    assert 0.45 < np.mean(within) < 0.85
    assert 0.05 < np.mean(across) < 0.35
    assert np.mean(within) - np.mean(across) > 0.25


def test_the_adjusted_rand_index_reference_scores_relabelled_and_random_partitions():
    truth = np.repeat([1, 2, 3], 10)
    assert adjusted_rand_index(truth, 4 - truth) == pytest.approx(1.0)
    shuffled = np.random.default_rng(0).permutation(truth)
    assert abs(adjusted_rand_index(truth, shuffled)) < 0.2


def test_planted_clusters_cover_every_symbol_with_ids_from_one(crypto):
    truth = planted_clusters(seed=7, n_symbols=100, n_clusters=8)
    assert truth.name == "cluster" and truth.index.name == "symbol"
    assert truth.dtype == np.int64
    assert list(truth.index) == symbol_names(100, calendar="crypto")
    assert set(truth.index) == set(crypto["symbol"])
    assert set(truth) == set(range(1, 10))
    stablecoins = [symbol for symbol in truth.index if STABLECOIN.search(symbol)]
    assert (truth[stablecoins] == 9).all()


def test_returns_have_fat_tails_and_volatility_clustering(crypto):
    returns = simple_returns(crypto)
    risky = [symbol for symbol in returns.columns if not STABLECOIN.search(symbol)]
    standardised = (returns[risky] - returns[risky].mean()) / returns[risky].std()
    assert standardised.kurt().median() > 1.0
    squared = standardised**2
    autocorrelation = [squared[symbol].autocorr(lag=1) for symbol in risky]
    assert np.nanmedian(autocorrelation) > 0.05
    lag_one = [returns[symbol].autocorr(lag=1) for symbol in risky]
    assert abs(np.nanmedian(lag_one)) < 0.05


def test_drifts_and_volatilities_differ_between_symbols(crypto):
    returns = simple_returns(crypto)
    risky = [symbol for symbol in returns.columns if not STABLECOIN.search(symbol)]
    volatility = returns[risky].std() * np.sqrt(365)
    assert volatility.quantile(0.9) / volatility.quantile(0.1) > 1.4
    assert 0.3 < volatility.median() < 1.2
    log_growth = np.log1p(returns[risky]).mean() * 365
    assert log_growth.std() > 0.2


@pytest.mark.parametrize(("market", "low", "high"), [("crypto", 5e6, 50e6), ("tradfi", 200e6, 2e9)])
def test_median_dollar_volume_has_a_realistic_scale(market, low, high, request):
    bars = request.getfixturevalue(market)
    median = (bars["close"] * bars["volume"]).groupby(bars["symbol"]).median()
    assert low <= median.median() <= high
    assert median.max() / median.min() > 20


def test_stablecoin_like_series_stay_near_one_with_tiny_volatility(crypto):
    stablecoins = [symbol for symbol in crypto["symbol"].unique() if STABLECOIN.search(symbol)]
    assert len(stablecoins) >= 2
    bars = crypto[crypto["symbol"].isin(stablecoins)]
    assert bars["close"].between(0.99, 1.01).all()
    assert (bars["volume"] > 0).all()
    volatility = simple_returns(bars).std() * np.sqrt(365)
    assert (volatility < 0.05).all()


def test_two_identities_are_quoted_twice_with_nearly_identical_returns(crypto):
    symbols = set(crypto["symbol"])
    second_quotes = sorted(symbol for symbol in symbols if symbol.endswith("USDC"))
    assert len(second_quotes) == 2
    returns = simple_returns(crypto)
    for symbol in second_quotes:
        first_quote = symbol[: -len("USDC")] + "USDT"
        assert first_quote in symbols
        assert returns[symbol].corr(returns[first_quote]) > 0.99
        assert not np.array_equal(returns[symbol].dropna(), returns[first_quote].dropna())


@settings(max_examples=15, deadline=None)
@given(n_symbols=st.integers(1, 1200), calendar=st.sampled_from(["crypto", "weekday"]))
def test_symbol_names_are_unique_sorted_and_alphanumeric(n_symbols, calendar):
    names = symbol_names(n_symbols, calendar=calendar)
    assert len(names) == n_symbols == len(set(names))
    assert names == sorted(names)
    pattern = r"[A-Z0-9]+USD[TC]" if calendar == "crypto" else r"[A-Z]{2,4}"
    assert all(re.fullmatch(pattern, name) for name in names)


def test_symbol_names_do_not_depend_on_the_seed():
    first = planted_clusters(seed=1, n_symbols=20, n_clusters=3).index
    second = planted_clusters(seed=2, n_symbols=20, n_clusters=3).index
    assert list(first) == list(second) == symbol_names(20, calendar="crypto")


def test_a_toxic_spike_makes_a_return_above_500_percent_then_falls_back(crypto):
    spiked = generate_market(seed=7, n_symbols=100, end=END, faults=[Fault("toxic_spike")])
    returns = simple_returns(spiked)
    symbol, date = returns.stack().idxmax()[::-1]
    assert returns.to_numpy()[~returns.isna().to_numpy()].max() > 5.0
    following = returns[symbol].shift(-1)[date]
    assert following < -0.8
    bars = symbol_bars(spiked, symbol)
    assert bars["date"].iloc[-11] == date
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (
        len(
            differing_rows(
                spiked.drop(columns=["close", "high"]), crypto.drop(columns=["close", "high"])
            )
        )
        == 0
    )


def test_a_stall_freezes_the_last_four_bars_with_volume_still_positive():
    bars = generate_market(seed=7, n_symbols=100, end=END, faults=[Fault("stall", "BOJEUSDT")])
    tail = symbol_bars(bars, "BOJEUSDT").tail(5)
    stalled = tail.tail(4)
    assert stalled[["open", "high", "low", "close"]].nunique().max() == 1
    assert (stalled["close"] == tail["close"].iloc[0]).all()
    assert (stalled["volume"] > 0).all()
    assert tail["close"].tail(3).nunique() == 1


def trailing_volume_zscore(volume: pd.Series, window: int = 21) -> float:
    history = volume.iloc[-1 - window : -1].to_list()
    mean = sum(history) / len(history)
    std = (sum((value - mean) ** 2 for value in history) / (len(history) - 1)) ** 0.5
    return (volume.iloc[-1] - mean) / std


def test_a_volume_spike_makes_the_last_bar_volume_z_score_far_above_ten(crypto):
    spiked = generate_market(seed=7, n_symbols=100, end=END, faults=[Fault("volume_spike")])
    scores = spiked.groupby("symbol")["volume"].apply(trailing_volume_zscore)
    clean_scores = crypto.groupby("symbol")["volume"].apply(trailing_volume_zscore)
    assert (scores > 10).sum() == 1 and scores.max() > 30
    assert (clean_scores < 10).all()


def test_a_gap_removes_three_consecutive_bars_after_genesis(crypto):
    gapped = generate_market(
        seed=7, n_symbols=100, end=END, faults=[Fault("gap", date="2026-03-03")]
    )
    missing = differing_rows(crypto[["symbol", "date"]], gapped[["symbol", "date"]])
    assert missing["symbol"].nunique() == 1
    assert list(missing["date"]) == list(pd.date_range("2026-03-03", periods=3))
    returns = simple_returns(gapped)[missing["symbol"].iloc[0]]
    assert returns.loc["2026-03-03":"2026-03-06"].isna().all()
    assert returns.loc[:"2026-03-02"].iloc[1:].notna().all()


def test_a_nan_after_genesis_leaves_one_bar_without_prices(crypto):
    broken = generate_market(seed=7, n_symbols=100, end=END, faults=[Fault("nan_after_genesis")])
    holes = broken[broken["close"].isna()]
    assert len(holes) == 1
    symbol = holes["symbol"].iloc[0]
    assert holes[["open", "high", "low"]].isna().all(axis=None)
    assert holes["date"].iloc[0] > crypto.loc[crypto["symbol"] == symbol, "date"].min()
    assert crypto["close"].notna().all()


def test_weekend_padding_inserts_flat_zero_volume_weekend_rows(tradfi):
    padded = generate_market(
        seed=11,
        n_symbols=60,
        n_clusters=6,
        end=END,
        calendar="weekday",
        faults=[Fault("weekend_padding")],
    )
    weekend = padded[padded["date"].dt.dayofweek >= 5]
    assert weekend["symbol"].nunique() == 1 and 7 <= len(weekend) <= 9
    assert (weekend["volume"] == 0).all()
    assert (weekend[["open", "high", "low"]].to_numpy() == weekend[["close"]].to_numpy()).all()
    bars = symbol_bars(padded, weekend["symbol"].iloc[0])
    previous_close = bars["close"].shift(1)
    on_weekend = bars["date"].dt.dayofweek >= 5
    assert (bars.loc[on_weekend, "close"] == previous_close[on_weekend]).all()
    assert not padded.duplicated(["symbol", "date"]).any()
    pd.testing.assert_frame_equal(
        padded[padded["date"].dt.dayofweek < 5].reset_index(drop=True), tradfi
    )


def test_weekend_padding_is_refused_on_the_crypto_calendar():
    with pytest.raises(ValueError, match="weekday"):
        generate_market(end=END, faults=[Fault("weekend_padding")])


def test_an_unknown_fault_kind_raises_an_error_naming_the_allowed_kinds():
    with pytest.raises(ValueError) as error:
        Fault("meteor")
    assert all(kind in str(error.value) for kind in FAULT_KINDS)


def test_an_unknown_fault_symbol_raises_an_error_naming_the_symbol():
    with pytest.raises(ValueError, match="NOPEUSDT"):
        generate_market(end=END, faults=[Fault("stall", "NOPEUSDT")])


def test_a_fault_dated_after_the_end_is_not_visible(crypto):
    faults = [Fault(kind, date="2027-01-15") for kind in ("toxic_spike", "gap", "stall")]
    pd.testing.assert_frame_equal(generate_market(end=END, faults=faults), crypto)


def test_default_fault_symbols_are_distinct_and_listed_throughout(crypto):
    kinds = [kind for kind in FAULT_KINDS if kind != "weekend_padding"]
    faulty = generate_market(end=END, faults=[Fault(kind) for kind in kinds])
    changed = crypto.merge(faulty, on=["symbol", "date"], how="left", suffixes=("", "_faulty"))
    touched = changed.loc[
        ~np.isclose(changed["close"], changed["close_faulty"])
        | ~np.isclose(changed["volume"], changed["volume_faulty"]),
        "symbol",
    ].unique()
    assert len(touched) == len(kinds)
    spans = crypto.groupby("symbol")["date"].agg(["min", "max"]).loc[touched]
    assert (spans["min"] == pd.Timestamp(START)).all() and (spans["max"] == pd.Timestamp(END)).all()
    assert not any(STABLECOIN.search(symbol) or symbol.endswith("USDC") for symbol in touched)


def test_invalid_arguments_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="calendar"):
        generate_market(end=END, calendar="lunar")
    with pytest.raises(ValueError, match="before start"):
        generate_market(end="2020-01-01")
    with pytest.raises(ValueError, match="n_clusters"):
        generate_market(end=END, n_symbols=5, n_clusters=6)
