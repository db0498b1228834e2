import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_assets.quant.features import FEATURE_COLUMNS, compute_features
from tvq_assets.quant.inference import (
    ASCENDING,
    DEFAULT_WEIGHTS,
    DESCENDING,
    PROBABILITY_FLOOR,
    feature_probabilities,
    log_mps,
    rank_ic,
)

PERIODS = 365
BASELINE = 1e7


def naive_percentile(values: list[float], value: float) -> float:
    """Average-rank percentile of ``value`` among the known ``values`` (best = 1)."""
    known = [v for v in values if not math.isnan(v)]
    below = sum(v < value for v in known)
    equal = sum(v == value for v in known)
    return (below + (equal + 1) / 2) / len(known)


def random_features(rng: np.random.Generator, symbols: int) -> pd.DataFrame:
    data = rng.normal(size=(symbols, len(FEATURE_COLUMNS)))
    index = pd.Index([f"S{i:03d}" for i in range(symbols)], name="symbol")
    return pd.DataFrame(data, index=index, columns=list(FEATURE_COLUMNS))


def market(
    rng: np.random.Generator, rows: int, symbols: int, *, drift_spread: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns with a persistent per-symbol drift (so past momentum predicts the future)."""
    drift = rng.uniform(-drift_spread, drift_spread, size=symbols)
    values = drift + rng.normal(0.0, 0.01, size=(rows, symbols))
    genesis = rng.integers(0, rows // 3, size=symbols)
    values[np.arange(rows)[:, None] < genesis[None, :]] = np.nan
    index = pd.date_range("2024-01-01", periods=rows, freq="D", name="date")
    columns = pd.Index([f"S{i:03d}" for i in range(symbols)], name="symbol")
    returns = pd.DataFrame(values, index=index, columns=columns)
    volume = rng.lognormal(mean=16.0, sigma=1.0, size=values.shape)
    dollar_volume = pd.DataFrame(
        np.where(np.isnan(values), np.nan, volume), index=index, columns=columns
    )
    return returns, dollar_volume


def test_default_weights_sum_to_one_over_directional_features():
    assert sum(DEFAULT_WEIGHTS.values()) == pytest.approx(1.0)
    assert all(weight > 0 for weight in DEFAULT_WEIGHTS.values())
    assert set(DEFAULT_WEIGHTS) <= set(ASCENDING) | set(DESCENDING)
    assert set(ASCENDING) | set(DESCENDING) <= set(FEATURE_COLUMNS)


def test_probabilities_are_average_percentile_ranks_in_the_documented_direction():
    rng = np.random.default_rng(1)
    features = random_features(rng, 30).round(1)  # rounding creates ties
    features.iloc[[3, 7], features.columns.get_loc("momentum")] = np.nan
    result = feature_probabilities(features)
    for name in (*ASCENDING, *DESCENDING):
        raw = features[name].abs() if name == "skew" else features[name]
        signed = raw if name in ASCENDING else -raw
        values = signed.tolist()
        expected = [
            PROBABILITY_FLOOR
            if math.isnan(v)
            else max(PROBABILITY_FLOOR, naive_percentile(values, v))
            for v in values
        ]
        np.testing.assert_allclose(result[f"p_{name}"], expected, err_msg=name)


def test_a_missing_feature_gets_the_floor_probability():
    features = random_features(np.random.default_rng(2), 5)
    features.loc["S002", "entropy"] = np.nan
    assert feature_probabilities(features).loc["S002", "p_entropy"] == PROBABILITY_FLOOR


def test_skew_is_penalised_by_its_magnitude():
    features = random_features(np.random.default_rng(3), 3)
    features["skew"] = [-3.0, 0.1, 2.0]
    assert feature_probabilities(features)["p_skew"].tolist() == pytest.approx([1 / 3, 1, 2 / 3])


def test_log_mps_is_the_weighted_geometric_mean_of_probabilities():
    features = random_features(np.random.default_rng(4), 25)
    result = log_mps(features)
    probabilities = feature_probabilities(features)
    for symbol in features.index:
        expected = math.prod(
            probabilities.loc[symbol, f"p_{name}"] ** weight
            for name, weight in DEFAULT_WEIGHTS.items()
        )
        assert result.loc[symbol, "score"] == pytest.approx(expected, rel=1e-12)
    assert list(result.columns) == ["score", *(f"p_{n}" for n in DEFAULT_WEIGHTS), "model"]
    assert (result["model"] == "log_mps").all()
    assert result.attrs["weights"] == pytest.approx(dict(DEFAULT_WEIGHTS))


def test_the_symbol_that_dominates_on_every_feature_gets_the_top_score():
    features = random_features(np.random.default_rng(5), 40)
    best = {name: features[name].max() + 1 for name in ASCENDING}
    best |= {name: features[name].min() - 1 for name in DESCENDING if name != "skew"}
    best["skew"] = 0.0
    features.loc["HERO"] = pd.Series(best)
    features.loc["HERO", ["dollar_volume", "history", "hurst"]] = 1.0
    result = log_mps(features)
    assert result["score"].idxmax() == "HERO"
    assert result.loc["HERO", "score"] == pytest.approx(1.0)


def test_log_mps_normalises_custom_weights_and_rejects_unknown_features():
    features = random_features(np.random.default_rng(6), 10)
    doubled = log_mps(features, weights={"momentum": 2.0, "entropy": 2.0})
    single = log_mps(features, weights={"momentum": 0.5, "entropy": 0.5})
    np.testing.assert_allclose(doubled["score"], single["score"])
    with pytest.raises(ValueError, match="history"):
        log_mps(features, weights={"history": 1.0})


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    symbols=st.integers(1, 30),
    missing=st.floats(0.0, 0.9),
)
def test_probabilities_and_scores_stay_in_their_ranges(seed, symbols, missing):
    rng = np.random.default_rng(seed)
    features = random_features(rng, symbols)
    features = features.mask(rng.random(features.shape) < missing)
    probabilities = feature_probabilities(features)
    assert ((probabilities >= PROBABILITY_FLOOR) & (probabilities <= 1)).all().all()
    scores = log_mps(features)["score"]
    assert ((scores > 0) & (scores <= 1)).all()
    shuffled = log_mps(features.iloc[rng.permutation(symbols)])
    pd.testing.assert_series_equal(shuffled["score"].loc[scores.index], scores)


def test_rank_ic_weights_the_planted_predictive_feature_most():
    returns, dollar_volume = market(np.random.default_rng(7), 300, 150, drift_spread=0.004)
    result = rank_ic(returns, dollar_volume, periods_per_year=PERIODS, liquidity_baseline=BASELINE)
    weights = result.attrs["weights"]
    assert result.attrs["fallback"] is None
    assert max(weights, key=weights.get) == "momentum"
    assert sum(weights.values()) == pytest.approx(1.0)
    assert len(result.attrs["anchor_ics"]) == 6
    assert result.attrs["mean_ic"]["momentum"] > 0.3


def test_rank_ic_has_the_log_mps_shape_and_scores_in_range():
    returns, dollar_volume = market(np.random.default_rng(8), 260, 60, drift_spread=0.002)
    result = rank_ic(returns, dollar_volume, periods_per_year=PERIODS, liquidity_baseline=BASELINE)
    features = compute_features(
        returns, dollar_volume, periods_per_year=PERIODS, liquidity_baseline=BASELINE
    )
    reference = log_mps(features)
    assert list(result.columns) == list(reference.columns)
    assert list(result.index) == list(reference.index)
    assert (result["model"] == "rank_ic").all()
    assert ((result["score"] >= PROBABILITY_FLOOR) & (result["score"] <= 1)).all()
    weights = pd.Series(result.attrs["weights"])
    probabilities = result[[f"p_{name}" for name in weights.index]].to_numpy()
    np.testing.assert_allclose(result["score"], probabilities @ weights.to_numpy())


def test_rank_ic_falls_back_to_default_weights_when_no_anchor_fits():
    returns, dollar_volume = market(np.random.default_rng(9), 130, 20)
    result = rank_ic(returns, dollar_volume, periods_per_year=PERIODS, liquidity_baseline=BASELINE)
    assert result.attrs["weights"] == dict(DEFAULT_WEIGHTS)
    assert result.attrs["fallback"] == "no anchor fits inside the window"
    assert result.attrs["anchor_ics"] == {}


def test_rank_ic_reads_nothing_after_the_last_return_date():
    returns, dollar_volume = market(np.random.default_rng(10), 320, 50, drift_spread=0.002)
    as_of = returns.index[279]
    kwargs = {"periods_per_year": PERIODS, "liquidity_baseline": BASELINE}
    altered_future = dollar_volume.copy()
    altered_future.loc[altered_future.index > as_of] *= 1e6
    cut = rank_ic(returns.loc[:as_of], dollar_volume.loc[:as_of], **kwargs)
    with_future = rank_ic(returns.loc[:as_of], altered_future, **kwargs)
    pd.testing.assert_frame_equal(cut, with_future)
    assert cut.attrs == with_future.attrs


def test_changing_the_last_horizon_rows_only_moves_the_anchor_whose_forward_window_uses_them():
    rng = np.random.default_rng(11)
    returns, dollar_volume = market(rng, 300, 80, drift_spread=0.002)
    changed = returns.copy()
    changed.iloc[-20:] = rng.normal(0.0, 0.05, size=(20, returns.shape[1]))
    kwargs = {"periods_per_year": PERIODS, "liquidity_baseline": BASELINE, "horizon": 20}
    base = rank_ic(returns, dollar_volume, **kwargs).attrs["anchor_ics"]
    moved = rank_ic(changed, dollar_volume, **kwargs).attrs["anchor_ics"]
    latest_anchor = returns.index[-1 - 20]
    assert list(base) == list(moved)
    for anchor in base:
        if anchor == latest_anchor:
            assert base[anchor] != pytest.approx(moved[anchor])
        else:
            assert moved[anchor] == base[anchor]


def test_each_anchor_ic_is_the_spearman_correlation_with_the_next_horizon_compounded_return():
    returns, dollar_volume = market(np.random.default_rng(12), 240, 60, drift_spread=0.003)
    kwargs = {"periods_per_year": PERIODS, "liquidity_baseline": BASELINE}
    result = rank_ic(returns, dollar_volume, horizon=15, fits=3, **kwargs)
    anchors = [returns.index[-1 - 15 * k] for k in (1, 2, 3)]
    assert sorted(result.attrs["anchor_ics"]) == sorted(anchors)
    for anchor in anchors:
        position = returns.index.get_loc(anchor)
        past = compute_features(
            returns.iloc[: position + 1], dollar_volume.iloc[: position + 1], **kwargs
        )
        probabilities = feature_probabilities(past)
        forward = (1 + returns.iloc[position + 1 : position + 16]).prod(min_count=15) - 1
        keep = forward.notna()
        for name in DEFAULT_WEIGHTS:
            expected = scipy.stats.spearmanr(probabilities[f"p_{name}"][keep], forward[keep])[0]
            got = result.attrs["anchor_ics"][anchor][name]
            if np.isnan(expected):
                assert np.isnan(got)
            else:
                assert got == pytest.approx(expected, abs=1e-12)
