import math
from collections import Counter

import empyrical
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_assets.quant.features import (
    FEATURE_COLUMNS,
    MIN_OBSERVATIONS,
    compute_features,
    cvar,
    efficiency_ratio,
    hurst_rs,
    permutation_entropy,
)

PERIODS = 365
BASELINE = 1e7


def naive_permutation_entropy(series: np.ndarray, order: int = 5, delay: int = 1) -> float:
    span = (order - 1) * delay + 1
    patterns = Counter()
    for start in range(len(series) - span + 1):
        window = series[start : start + span : delay]
        if np.isnan(window).any():
            continue
        patterns[tuple(np.argsort(window, kind="stable"))] += 1
    total = sum(patterns.values())
    if total == 0:
        return math.nan
    entropy = -sum(c / total * math.log(c / total) for c in patterns.values())
    return entropy / math.log(math.factorial(order))


def naive_hurst(series: np.ndarray, min_chunk: int = 8, anis_lloyd: bool = False) -> float:
    x = series[~np.isnan(series)]
    n = len(x)
    log_sizes, log_ratios = [], []
    size = min_chunk
    while size <= n // 2:
        chunks = n // size
        ratios = []
        for k in range(chunks):
            chunk = x[n - (k + 1) * size : n - k * size]
            walk = np.cumsum(chunk - chunk.mean())
            deviation = chunk.std()
            if deviation > 0:
                ratios.append((walk.max() - walk.min()) / deviation)
        if ratios:
            expected = 1.0
            if anis_lloyd:
                expected = (
                    math.gamma((size - 1) / 2)
                    / (math.sqrt(math.pi) * math.gamma(size / 2))
                    * sum(math.sqrt((size - i) / i) for i in range(1, size))
                )
            log_sizes.append(math.log(size))
            log_ratios.append(math.log(np.mean(ratios) / expected))
        size *= 2
    if len(log_sizes) < 2:
        return math.nan
    slope = np.polyfit(log_sizes, log_ratios, 1)[0]
    return slope + 0.5 if anis_lloyd else slope


def random_returns(
    rng: np.random.Generator, rows: int, symbols: int, *, scale: float = 0.02
) -> np.ndarray:
    """Fat-tailed returns with a random NaN prefix (late listing) per symbol."""
    values = rng.standard_t(5, size=(rows, symbols)) * scale
    genesis = rng.integers(0, rows, size=symbols)
    genesis[0] = 0
    values[np.arange(rows)[:, None] < genesis[None, :]] = np.nan
    return values


def frames(values: np.ndarray, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, symbols = values.shape
    index = pd.date_range("2024-01-01", periods=rows, freq="D", name="date")
    columns = pd.Index([f"S{i:03d}" for i in range(symbols)], name="symbol")
    returns = pd.DataFrame(values, index=index, columns=columns)
    volume = rng.lognormal(mean=16.0, sigma=1.0, size=values.shape)
    dollar_volume = pd.DataFrame(
        np.where(np.isnan(values), np.nan, volume), index=index, columns=columns
    )
    return returns, dollar_volume


@pytest.fixture
def market() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(7)
    return frames(random_returns(rng, 300, 40), rng)


def test_permutation_entropy_of_a_monotone_series_is_zero():
    rising = np.arange(200.0)[:, None]
    falling = -rising
    assert permutation_entropy(np.hstack([rising, falling])) == pytest.approx([0.0, 0.0])


def test_permutation_entropy_of_long_white_noise_is_near_one():
    noise = np.random.default_rng(1).standard_normal((5000, 3))
    assert (permutation_entropy(noise) > 0.98).all()


def test_permutation_entropy_matches_a_per_symbol_loop_with_nan_prefixes():
    rng = np.random.default_rng(2)
    values = random_returns(rng, 150, 12)
    expected = [naive_permutation_entropy(values[:, j]) for j in range(12)]
    np.testing.assert_allclose(permutation_entropy(values), expected, rtol=1e-12)


def test_permutation_entropy_breaks_ties_by_order_of_appearance():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 3, size=(120, 6)).astype(float)
    expected = [naive_permutation_entropy(values[:, j], order=4, delay=2) for j in range(6)]
    np.testing.assert_allclose(permutation_entropy(values, order=4, delay=2), expected)


def test_permutation_entropy_without_a_complete_window_is_nan():
    values = np.full((30, 2), np.nan)
    values[-4:, 0] = [1.0, 2.0, 3.0, 4.0]
    values[-6:, 1] = [1.0, 3.0, 2.0, 5.0, 4.0, 6.0]
    result = permutation_entropy(values)
    assert np.isnan(result[0])
    assert result[1] == pytest.approx(naive_permutation_entropy(values[:, 1]))


def test_hurst_of_iid_gaussian_returns_is_near_one_half():
    noise = np.random.default_rng(4).standard_normal((2000, 20))
    plain = hurst_rs(noise)
    corrected = hurst_rs(noise, anis_lloyd=True)
    # Plain R/S is biased upwards on finite samples (about 0.56 at 2000 observations).
    assert ((plain > 0.45) & (plain < 0.65)).all()
    assert 0.47 < corrected.mean() < 0.53


def test_anis_lloyd_correction_centres_short_iid_samples_on_one_half():
    noise = np.random.default_rng(5).standard_normal((120, 400))
    assert 0.47 < hurst_rs(noise, anis_lloyd=True).mean() < 0.53
    assert hurst_rs(noise).mean() > 0.55


def test_hurst_of_a_persistent_series_is_higher_than_of_noise():
    rng = np.random.default_rng(6)
    noise = rng.standard_normal((1000, 5))
    persistent = np.cumsum(rng.standard_normal((1000, 5)), axis=0)
    assert (hurst_rs(persistent) > 0.85).all()
    assert hurst_rs(persistent).min() > hurst_rs(noise).max()


@pytest.mark.parametrize("anis_lloyd", [False, True])
def test_hurst_matches_a_per_symbol_loop_with_nan_prefixes(anis_lloyd):
    rng = np.random.default_rng(8)
    values = random_returns(rng, 200, 15)
    values[-10:, 3] = np.nan  # a delisting leaves trailing NaN
    expected = [naive_hurst(values[:, j], anis_lloyd=anis_lloyd) for j in range(15)]
    np.testing.assert_allclose(hurst_rs(values, anis_lloyd=anis_lloyd), expected, rtol=1e-10)


def test_hurst_needs_two_chunk_sizes():
    values = np.full((100, 2), np.nan)
    values[-31:, 0] = np.random.default_rng(9).standard_normal(31)
    values[-32:, 1] = np.random.default_rng(9).standard_normal(32)
    result = hurst_rs(values)
    assert np.isnan(result[0]) and np.isfinite(result[1])


def test_efficiency_ratio_of_a_constant_positive_return_series_is_one():
    assert efficiency_ratio(np.full((50, 1), 0.01)) == pytest.approx([1.0])


def test_efficiency_ratio_of_alternating_returns_is_near_zero():
    alternating = np.tile([0.02, -0.02], 50)[:, None]
    assert efficiency_ratio(alternating)[0] == pytest.approx(0.0, abs=1e-12)
    assert efficiency_ratio(alternating[:-1])[0] == pytest.approx(0.02 / 1.98)


def test_efficiency_ratio_of_a_flat_series_is_zero_and_of_an_empty_one_nan():
    values = np.zeros((10, 2))
    values[:, 1] = np.nan
    result = efficiency_ratio(values)
    assert result[0] == 0.0 and np.isnan(result[1])


def test_cvar_is_the_mean_of_the_worst_tail_by_hand():
    returns = np.array([0.03, -0.10, 0.01, -0.04, 0.02, -0.07, 0.00, 0.05, -0.01, 0.04] * 4)
    # 40 observations: floor(39 · 0.05) + 1 = 2 worst returns, both -0.10.
    assert cvar(returns[:, None])[0] == pytest.approx(-0.10)
    tail = np.sort(returns)[:2]
    assert cvar(returns[:, None], level=0.95)[0] == pytest.approx(tail.mean())
    # 10 observations at level 0.5: floor(9 · 0.5) + 1 = 5 worst returns.
    worst_five = np.sort(returns[:10])[:5]
    assert cvar(returns[:10, None], level=0.5)[0] == pytest.approx(worst_five.mean())


def test_cvar_matches_empyrical_with_nan_prefixes():
    rng = np.random.default_rng(10)
    values = random_returns(rng, 400, 10)
    expected = [empyrical.conditional_value_at_risk(values[:, j], cutoff=0.05) for j in range(10)]
    np.testing.assert_allclose(cvar(values), expected, rtol=1e-12)
    assert (cvar(values) < 0).all()
    short = values[-7:, :1]
    expected_short = empyrical.conditional_value_at_risk(short[:, 0], cutoff=0.3)
    assert cvar(short, level=0.7)[0] == pytest.approx(expected_short)


def test_moment_features_match_pandas_and_scipy_per_symbol(market):
    returns, dollar_volume = market
    result = compute_features(
        returns, dollar_volume, periods_per_year=PERIODS, lookback=120, liquidity_baseline=BASELINE
    )
    window = returns.iloc[-120:]
    for symbol in returns.columns:
        column = window[symbol].dropna()
        row = result.loc[symbol]
        if len(column) < MIN_OBSERVATIONS:
            assert row[["momentum", "volatility", "skew", "kurtosis"]].isna().all()
            continue
        assert row["momentum"] == pytest.approx(column.mean() * PERIODS, rel=1e-10)
        assert row["volatility"] == pytest.approx(column.std() * math.sqrt(PERIODS), rel=1e-10)
        assert row["stability"] == pytest.approx(1 / row["volatility"], rel=1e-12)
        assert row["skew"] == pytest.approx(scipy.stats.skew(column, bias=False), rel=1e-9)
        assert row["kurtosis"] == pytest.approx(
            scipy.stats.kurtosis(column, fisher=True, bias=False), rel=1e-9
        )
        assert row["entropy"] == pytest.approx(naive_permutation_entropy(column.to_numpy()))
        assert row["hurst"] == pytest.approx(naive_hurst(column.to_numpy(), anis_lloyd=True))
        assert row["hurst_clean"] == pytest.approx(1 - 2 * abs(row["hurst"] - 0.5))
        assert row["cvar_95"] == pytest.approx(
            empyrical.conditional_value_at_risk(column, cutoff=0.05)
        )


def test_history_survival_and_liquidity_follow_their_definitions(market):
    returns, dollar_volume = market
    result = compute_features(
        returns, dollar_volume, periods_per_year=PERIODS, lookback=120, liquidity_baseline=BASELINE
    )
    history = returns.notna().sum()
    median_volume = dollar_volume.iloc[-120:].median()
    np.testing.assert_array_equal(result["history"], history)
    np.testing.assert_allclose(result["survival"], 1 / (1 + (252 / history) ** 2))
    np.testing.assert_allclose(result["dollar_volume"], median_volume)
    np.testing.assert_allclose(result["liquidity"], np.minimum(1, median_volume / BASELINE))


def test_features_are_indexed_by_symbol_in_input_order_with_the_published_columns(market):
    returns, dollar_volume = market
    result = compute_features(
        returns, dollar_volume, periods_per_year=PERIODS, liquidity_baseline=BASELINE
    )
    assert tuple(result.columns) == FEATURE_COLUMNS
    assert result.index.name == "symbol"
    assert list(result.index) == list(returns.columns)
    assert (result.dtypes == np.float64).all()


def test_a_recent_listing_uses_the_observations_it_has_and_short_ones_are_nan():
    rng = np.random.default_rng(11)
    values = rng.normal(0.001, 0.02, size=(200, 3))
    values[: 200 - 60, 1] = np.nan  # 60 returns: full features from the 60 it has
    values[: 200 - 10, 2] = np.nan  # 10 returns: below the minimum
    returns, dollar_volume = frames(values, rng)
    result = compute_features(
        returns, dollar_volume, periods_per_year=PERIODS, lookback=120, liquidity_baseline=BASELINE
    )
    recent = returns.iloc[-60:, 1]
    assert result.iloc[1]["momentum"] == pytest.approx(recent.mean() * PERIODS)
    assert result.iloc[1][list(FEATURE_COLUMNS)].notna().all()
    return_based = ["momentum", "volatility", "entropy", "efficiency", "hurst", "skew", "cvar_95"]
    assert result.iloc[2][return_based].isna().all()
    assert result.iloc[2]["history"] == 10
    assert result.iloc[2]["dollar_volume"] == pytest.approx(dollar_volume.iloc[-10:, 2].median())


def test_a_flat_series_has_no_stability_and_no_efficiency():
    rng = np.random.default_rng(12)
    values = rng.normal(0, 0.02, size=(150, 2))
    values[:, 1] = 0.0
    returns, dollar_volume = frames(values, rng)
    result = compute_features(
        returns, dollar_volume, periods_per_year=PERIODS, liquidity_baseline=BASELINE
    )
    flat = result.iloc[1]
    assert flat["volatility"] == 0.0
    assert np.isnan(flat["stability"]) and flat["efficiency"] == 0.0
    assert np.isnan(flat["skew"]) and np.isnan(flat["kurtosis"])
    assert flat["entropy"] == 0.0  # every window is one tie pattern


def test_dollar_volume_after_the_last_return_date_is_ignored(market):
    returns, dollar_volume = market
    later = dollar_volume.copy()
    later.iloc[-50:] = 1e12
    truncated = returns.iloc[:-50]
    kwargs = {"periods_per_year": PERIODS, "liquidity_baseline": BASELINE}
    pd.testing.assert_frame_equal(
        compute_features(truncated, later, **kwargs),
        compute_features(truncated, dollar_volume.iloc[:-50], **kwargs),
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-3, 1e3),
    rows=st.integers(40, 160),
    symbols=st.integers(1, 8),
)
def test_scaling_returns_leaves_shape_features_unchanged_and_scales_volatility(
    seed, scale, rows, symbols
):
    rng = np.random.default_rng(seed)
    values = random_returns(rng, rows, symbols, scale=0.001)
    returns, dollar_volume = frames(values, rng)
    kwargs = {"periods_per_year": 252, "lookback": 120, "liquidity_baseline": BASELINE}
    base = compute_features(returns, dollar_volume, **kwargs)
    scaled = compute_features(returns * scale, dollar_volume, **kwargs)
    invariant = ["entropy", "efficiency", "hurst", "skew", "kurtosis"]
    np.testing.assert_allclose(scaled[invariant], base[invariant], rtol=1e-7, atol=1e-9)
    # Volatility comes from a sum of squares (no cancellation): relative only.
    np.testing.assert_allclose(scaled["volatility"], base["volatility"] * scale, rtol=1e-9)
    # Momentum is an annualised mean, a sum of returns of both signs: scaled returns round
    # differently, and a sum of n terms is only exact to n * eps * mean|r| however near 0 it is,
    # so a momentum near 0 gets that absolute floor (at most ~1e-14 * scale here).
    window = np.abs(values[-kwargs["lookback"] :]) * scale
    floor = kwargs["periods_per_year"] * np.finfo(np.float64).eps * np.nansum(window, axis=0).max()
    np.testing.assert_allclose(scaled["momentum"], base["momentum"] * scale, rtol=1e-9, atol=floor)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(30, 200), symbols=st.integers(2, 10))
def test_symbol_order_does_not_change_any_symbols_features(seed, rows, symbols):
    rng = np.random.default_rng(seed)
    returns, dollar_volume = frames(random_returns(rng, rows, symbols), rng)
    permutation = rng.permutation(symbols)
    kwargs = {"periods_per_year": PERIODS, "lookback": 120, "liquidity_baseline": BASELINE}
    base = compute_features(returns, dollar_volume, **kwargs)
    shuffled = compute_features(returns.iloc[:, permutation], dollar_volume.iloc[:, ::-1], **kwargs)
    assert list(shuffled.index) == list(returns.columns[permutation])
    pd.testing.assert_frame_equal(shuffled.loc[base.index], base, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 80), symbols=st.integers(1, 6))
def test_building_blocks_stay_in_their_ranges(seed, rows, symbols):
    values = random_returns(np.random.default_rng(seed), rows, symbols)
    entropy = permutation_entropy(values)
    efficiency = efficiency_ratio(values)
    known = ~np.isnan(entropy)
    assert ((entropy[known] >= 0) & (entropy[known] <= 1 + 1e-12)).all()
    known = ~np.isnan(efficiency)
    assert ((efficiency[known] >= 0) & (efficiency[known] <= 1 + 1e-12)).all()
    tail = cvar(values)
    observed = ~np.isnan(values).all(axis=0)
    np.testing.assert_array_equal(~np.isnan(tail), observed)
    assert (tail[observed] <= np.nanmean(values[:, observed], axis=0) + 1e-15).all()
