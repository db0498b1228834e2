"""Deflated Sharpe ratio: the expected maximum Sharpe of N luck-only trials, and PSR against it."""

import math

import numpy as np
import pytest
from scipy import stats

from tvq_assets.quant import metrics


def _with_spread(trials: int, spread: float, seed: int = 0) -> np.ndarray:
    """``trials`` Sharpe ratios whose sample standard deviation is exactly ``spread``."""
    draws = np.random.default_rng(seed).normal(size=trials)
    return (draws - draws.mean()) / draws.std(ddof=1) * spread


@pytest.mark.parametrize("trials", [10, 50, 200])
def test_expected_maximum_matches_a_monte_carlo_of_luck_only_trials(trials):
    spread = 0.05
    simulated = np.random.default_rng(1).normal(0.0, spread, size=(20000, trials)).max(axis=1)
    expected = metrics.expected_maximum_sharpe(_with_spread(trials, spread))
    # The closed form is an approximation of E[max]; within a few percent from N = 10 on.
    assert expected == pytest.approx(simulated.mean(), rel=0.04)


def test_deflated_sharpe_is_psr_against_the_expected_maximum_computed_by_hand():
    returns = np.random.default_rng(5).standard_t(df=5, size=750) * 0.01 + 0.0015
    trials = _with_spread(24, 0.03, seed=2)
    benchmark = 0.03 * (
        (1 - 0.5772156649015329) * stats.norm.ppf(1 - 1 / 24)
        + 0.5772156649015329 * stats.norm.ppf(1 - 1 / (24 * math.e))
    )
    sharpe = returns.mean() / returns.std(ddof=1)
    skew, kurtosis = stats.skew(returns), stats.kurtosis(returns, fisher=False)
    z = (sharpe - benchmark) * math.sqrt(len(returns) - 1)
    z /= math.sqrt(1 - skew * sharpe + (kurtosis - 1) / 4 * sharpe**2)
    assert metrics.deflated_sharpe_ratio(returns, trial_sharpes=trials) == pytest.approx(
        stats.norm.cdf(z), rel=1e-9
    )


def test_more_trials_deflate_more_and_one_trial_is_plain_psr():
    returns = np.random.default_rng(9).normal(0.001, 0.01, 500)
    plain = metrics.probabilistic_sharpe_ratio(returns)
    assert metrics.deflated_sharpe_ratio(returns, trial_sharpes=[0.1]) == pytest.approx(plain)
    levels = [
        metrics.deflated_sharpe_ratio(returns, trial_sharpes=_with_spread(n, 0.02))
        for n in (2, 10, 100)
    ]
    assert plain > levels[0] > levels[1] > levels[2]


def test_trials_without_a_finite_sharpe_count_as_tried_but_add_no_variance():
    finite = _with_spread(6, 0.03, seed=3)
    trials = [*finite, math.nan, math.inf, math.nan]  # never traded, riskless, never traded
    n = len(trials)
    gamma = 0.5772156649015329
    by_hand = 0.03 * (
        (1 - gamma) * stats.norm.ppf(1 - 1 / n) + gamma * stats.norm.ppf(1 - 1 / (n * math.e))
    )
    assert metrics.expected_maximum_sharpe(trials) == pytest.approx(by_hand, rel=1e-12)
    # More tried (N = 9, not 6) deflates more than the finite ones alone would.
    assert metrics.expected_maximum_sharpe(trials) > metrics.expected_maximum_sharpe(finite)
    # One finite Sharpe among untraded trials has no spread: nothing to expect from luck.
    assert metrics.expected_maximum_sharpe([0.1, math.nan, math.nan]) == 0.0
