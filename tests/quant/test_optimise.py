from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.cluster import hierarchy
from scipy.optimize import minimize
from scipy.spatial.distance import squareform
from sklearn.covariance import LedoitWolf

from tvq_assets.catalog import Policy
from tvq_assets.quant import optimise
from tvq_assets.quant.optimise import (
    Constraints,
    InfeasibleCap,
    allocate,
    allocate_all,
    hrp_weights,
    ledoit_wolf,
    smallest_feasible_cluster_cap,
)


def constraints(*, clusters=None, previous=None, **policy) -> Constraints:
    """Constraints of the catalog's default policy with the ``policy`` changes."""
    return Constraints.of(replace(Policy(), **policy), clusters=clusters, previous=previous)


DEFAULT = constraints()


def market(n: int, periods: int, *, seed: int = 0, drift: float = 0.0005) -> pd.DataFrame:
    """Daily simple returns with a market factor, three sectors and idiosyncratic noise."""
    rng = np.random.default_rng(seed)
    market_factor = rng.normal(0.0, 0.01, (periods, 1))
    sectors = rng.normal(0.0, 0.008, (periods, 3))
    membership = np.eye(3)[np.arange(n) % 3]
    beta = rng.uniform(0.5, 1.5, n)
    noise = rng.normal(0.0, 1.0, (periods, n)) * rng.uniform(0.005, 0.03, n)
    values = market_factor * beta + sectors @ membership.T + noise + rng.normal(drift, 0.0005, n)
    index = pd.date_range("2024-01-01", periods=periods, name="date")
    columns = pd.Index([f"S{i:03d}" for i in range(n)], name="symbol")
    return pd.DataFrame(values, index=index, columns=columns)


def independent(variances: list[float], periods: int = 400, *, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 1.0, (periods, len(variances))) * np.sqrt(variances)
    columns = pd.Index([f"A{i}" for i in range(len(variances))], name="symbol")
    return pd.DataFrame(values, index=pd.date_range("2024-01-01", periods=periods), columns=columns)


def covariance_of(returns: pd.DataFrame) -> np.ndarray:
    return ledoit_wolf(returns.fillna(0.0).to_numpy())[0]


def slsqp(objective, n: int, cap: float, starts: int = 4, seed: int = 0) -> np.ndarray:
    """Reference optimum over the capped simplex by SLSQP from several starting points."""
    rng = np.random.default_rng(seed)
    best = None
    for start in [np.full(n, 1.0 / n), *rng.dirichlet(np.ones(n), starts)]:
        result = minimize(
            objective,
            start,
            method="SLSQP",
            bounds=[(0.0, cap)] * n,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if best is None or result.fun < best.fun:
            best = result
    return best.x


def bisected_cluster_cap(sizes: np.ndarray, cap: float) -> float:
    low, high = 0.0, 1.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if np.minimum(middle, sizes * cap).sum() >= 1.0 - 1e-12:
            high = middle
        else:
            low = middle
    return high


def assert_valid(allocation, *, cap: float, clusters=None, cluster_cap=None) -> None:
    weights = allocation.weights
    assert np.isfinite(weights).all()
    assert (weights >= 0).all()
    assert abs(weights.sum() - 1.0) <= 1e-12
    n = int(weights.index.size)
    assert weights.max() <= max(cap, 1.0 / n) + 1e-9
    if clusters is not None and cluster_cap is not None:
        sums = weights.groupby(clusters.reindex(weights.index)).sum()
        sizes = clusters.reindex(weights.index).value_counts().to_numpy()
        limit = max(cluster_cap, bisected_cluster_cap(sizes, max(cap, 1.0 / n)))
        assert sums.max() <= limit + 1e-9


# Ledoit-Wolf


@pytest.mark.parametrize(("periods", "n"), [(252, 10), (60, 120), (30, 2), (500, 1)])
def test_ledoit_wolf_equals_sklearn_covariance_and_shrinkage(periods, n):
    values = market(max(n, 1), periods, seed=n).to_numpy()
    covariance, shrinkage = ledoit_wolf(values)
    reference = LedoitWolf().fit(values)
    np.testing.assert_allclose(covariance, reference.covariance_, rtol=0, atol=1e-10)
    assert shrinkage == pytest.approx(reference.shrinkage_, abs=1e-10)
    assert 0.0 <= shrinkage <= 1.0


@settings(max_examples=30, deadline=None)
@given(
    periods=st.integers(3, 40),
    n=st.integers(2, 15),
    seed=st.integers(0, 10_000),
)
def test_ledoit_wolf_matches_sklearn_on_random_shapes(periods, n, seed):
    values = np.random.default_rng(seed).standard_t(3, (periods, n)) * 0.02
    covariance, shrinkage = ledoit_wolf(values)
    reference = LedoitWolf().fit(values)
    np.testing.assert_allclose(covariance, reference.covariance_, rtol=0, atol=1e-10)
    assert shrinkage == pytest.approx(reference.shrinkage_, abs=1e-10)


# min_variance


def test_min_variance_matches_the_closed_form_when_it_is_long_only_and_within_the_cap():
    returns = independent([1e-4, 1.5e-4, 2e-4, 2.5e-4, 1.2e-4, 1.8e-4, 3e-4])
    covariance = covariance_of(returns)
    inverse = np.linalg.solve(covariance, np.ones(len(returns.columns)))
    closed_form = inverse / inverse.sum()
    assert closed_form.min() > 0 and closed_form.max() < 0.25

    allocation = allocate("min_variance", returns, constraints=DEFAULT)

    np.testing.assert_allclose(allocation.weights.to_numpy(), closed_form, atol=1e-6)
    assert allocation.solver == "CLARABEL" and allocation.status == "optimal"
    assert allocation.objective == pytest.approx(closed_form @ covariance @ closed_form, rel=1e-5)


def test_min_variance_matches_slsqp_when_the_cap_binds():
    returns = independent([2e-5, 3e-5, 2e-4, 3e-4, 4e-4, 5e-4])
    covariance = covariance_of(returns)

    allocation = allocate("min_variance", returns, constraints=constraints(cap=0.3))
    reference = slsqp(lambda w: w @ covariance @ w * 1e4, 6, 0.3)

    assert allocation.weights.max() == pytest.approx(0.3, abs=1e-7)
    np.testing.assert_allclose(allocation.weights.to_numpy(), reference, atol=1e-5)


def test_min_variance_of_identical_series_is_equal_weight():
    base = market(1, 200)["S000"].to_numpy()
    returns = pd.DataFrame({f"X{i}": base for i in range(5)})
    allocation = allocate("min_variance", returns, constraints=DEFAULT)
    np.testing.assert_allclose(allocation.weights.to_numpy(), 0.2, atol=1e-6)


# risk_parity


def test_risk_parity_equalises_risk_contributions_when_no_cap_binds():
    returns = market(12, 300)
    covariance = covariance_of(returns)

    allocation = allocate("risk_parity", returns, constraints=constraints(cap=1.0))

    weights = allocation.weights.to_numpy()
    contributions = weights * (covariance @ weights)
    np.testing.assert_allclose(contributions / contributions.mean(), 1.0, rtol=1e-5)
    assert allocation.attempts == (("CLARABEL", "optimal"),)


def test_risk_parity_under_a_binding_cap_matches_the_capped_barrier_problem():
    returns = independent([1e-5, 2e-4, 2.5e-4, 3e-4, 3.5e-4, 4e-4])
    covariance = covariance_of(returns)
    uncapped = allocate("risk_parity", returns, constraints=constraints(cap=1.0)).weights
    assert uncapped.max() > 0.3

    allocation = allocate("risk_parity", returns, constraints=constraints(cap=0.3))

    barrier = uncapped.to_numpy() @ covariance @ uncapped.to_numpy() / 6
    reference = slsqp(
        lambda w: 1e4 * (0.5 * w @ covariance @ w - barrier * np.log(np.maximum(w, 1e-12)).sum()),
        6,
        0.3,
    )
    np.testing.assert_allclose(allocation.weights.to_numpy(), reference, atol=1e-5)
    assert allocation.weights.max() == pytest.approx(0.3, abs=1e-7)


def test_risk_parity_cannot_use_osqp_and_falls_back_to_hrp():
    returns = market(6, 200)
    allocation = allocate("risk_parity", returns, solvers=("OSQP",), constraints=DEFAULT)
    assert allocation.attempts == (("OSQP", "skipped: no exponential-cone support"),)
    assert allocation.fallback == "hrp"
    expected = allocate("hrp", returns, constraints=DEFAULT).weights
    pd.testing.assert_series_equal(allocation.weights, expected)


# max_sharpe


def test_max_sharpe_matches_slsqp_on_the_regularised_sharpe_ratio():
    returns = market(8, 300, seed=3, drift=0.001)
    covariance = covariance_of(returns)
    mu = returns.mean().to_numpy()
    regularised = covariance + 0.1 * np.mean(np.diag(covariance)) * np.eye(8)

    allocation = allocate("max_sharpe", returns, constraints=constraints(cap=0.3))

    reference = slsqp(lambda w: -(mu @ w) / np.sqrt(w @ regularised @ w), 8, 0.3, starts=8)
    np.testing.assert_allclose(allocation.weights.to_numpy(), reference, atol=1e-4)


def test_max_sharpe_uses_given_expected_returns():
    returns = market(6, 200)
    views = pd.Series([0.0, 0.0, 0.0, 0.0, 0.0, 0.01], index=returns.columns)
    allocation = allocate(
        "max_sharpe", returns, expected_returns=views, constraints=constraints(cap=1.0)
    )
    assert allocation.weights.idxmax() == "S005"
    assert allocation.weights["S005"] == pytest.approx(1.0, abs=1e-6)


def test_max_sharpe_without_positive_expected_returns_is_min_variance():
    returns = market(6, 200, drift=-0.01)
    allocation = allocate("max_sharpe", returns, constraints=DEFAULT)
    minimum = allocate("min_variance", returns, constraints=DEFAULT)
    assert allocation.fallback == "min_variance"
    assert "positive expected return" in allocation.reason
    np.testing.assert_allclose(allocation.weights, minimum.weights, atol=1e-7)


def test_max_sharpe_rejects_expected_returns_missing_a_symbol():
    returns = market(4, 100)
    with pytest.raises(ValueError, match="S003"):
        allocate(
            "max_sharpe", returns, expected_returns=returns.mean().iloc[:3], constraints=DEFAULT
        )


# constraints, as properties


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(2, 12),
    seed=st.integers(0, 10_000),
    cap=st.floats(0.05, 0.6),
    cluster_cap=st.floats(0.05, 0.7),
    cluster_count=st.integers(1, 5),
    profile=st.sampled_from(optimise.PROFILES),
)
def test_weights_respect_caps_and_cluster_caps_for_every_profile(
    n, seed, cap, cluster_count, cluster_cap, profile
):
    rng = np.random.default_rng(seed)
    returns = market(n, 80, seed=seed) * rng.uniform(0.2, 3.0, n)
    clusters = pd.Series(rng.integers(1, cluster_count + 1, n), index=returns.columns)
    limits = constraints(
        cap=cap, clusters=clusters, cluster_cap=cluster_cap, infeasible_cap="raise"
    )

    allocation = allocate(profile, returns, constraints=limits)

    assert_valid(allocation, cap=cap, clusters=clusters, cluster_cap=cluster_cap)
    assert allocation.fallback in (None, "min_variance")
    assert allocation.cap == cap and allocation.cluster_cap == cluster_cap
    assert allocation.effective_cap == max(cap, 1 / n)
    assert allocation.cap_raised == ("infeasible" in (allocation.reason or ""))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    cap=st.floats(0.05, 0.6),
    cluster_cap=st.floats(0.05, 0.7),
    cluster_count=st.integers(1, 5),
    profile=st.sampled_from(optimise.PROFILES),
)
def test_under_policy_fail_weights_keep_the_configured_caps_or_the_run_stops(
    n, seed, cap, cluster_count, cluster_cap, profile
):
    rng = np.random.default_rng(seed)
    returns = market(n, 80, seed=seed)
    clusters = pd.Series(rng.integers(1, cluster_count + 1, n), index=returns.columns)
    sizes = clusters.value_counts().to_numpy()
    feasible = cap * n >= 1 and bisected_cluster_cap(sizes, cap) <= cluster_cap * (1 + 1e-9)
    limits = constraints(cap=cap, clusters=clusters, cluster_cap=cluster_cap)

    if not feasible:
        with pytest.raises(InfeasibleCap, match="infeasible"):
            allocate(profile, returns, constraints=limits)
        return
    allocation = allocate(profile, returns, constraints=limits)

    weights = allocation.weights
    assert weights.max() <= cap + 1e-9
    assert weights.groupby(clusters).sum().max() <= cluster_cap + 1e-9
    assert not allocation.cap_raised and allocation.effective_cap == cap


@pytest.mark.parametrize("solver", ["CLARABEL", "SCS", "OSQP"])
@pytest.mark.parametrize("profile", ["min_variance", "max_sharpe"])
def test_each_solver_gives_a_portfolio_within_the_caps(solver, profile):
    returns = market(15, 250, drift=0.002)
    clusters = pd.Series(np.arange(15) % 3 + 1, index=returns.columns)
    limits = constraints(cap=0.15, clusters=clusters, cluster_cap=0.4)
    allocation = allocate(profile, returns, constraints=limits, solvers=(solver,))
    assert allocation.solver == solver
    assert allocation.status in ("optimal", "optimal_inaccurate")
    assert_valid(allocation, cap=0.15, clusters=clusters, cluster_cap=0.4)


def test_an_infeasible_cluster_cap_under_policy_raise_is_raised_and_recorded():
    returns = market(9, 200)
    clusters = pd.Series(np.arange(9) % 3 + 1, index=returns.columns)
    limits = constraints(clusters=clusters, cluster_cap=0.01, infeasible_cap="raise")

    allocation = allocate("min_variance", returns, constraints=limits)

    sums = allocation.weights.groupby(clusters).sum()
    np.testing.assert_allclose(sums.to_numpy(), 1 / 3, atol=1e-8)
    assert "cluster_cap 0.01 is infeasible" in allocation.reason
    assert "raised to the minimum feasible cluster cap 0.333333" in allocation.reason
    assert allocation.cluster_cap == 0.01
    assert allocation.effective_cluster_cap == pytest.approx(1 / 3)
    assert allocation.cap_raised and allocation.fallback is None


def test_an_infeasible_cluster_cap_under_policy_fail_stops_naming_both_values():
    returns = market(9, 200)
    clusters = pd.Series(np.arange(9) % 3 + 1, index=returns.columns)
    limits = constraints(clusters=clusters, cluster_cap=0.01)

    with pytest.raises(InfeasibleCap) as failure:
        allocate("min_variance", returns, constraints=limits)

    message = str(failure.value)
    assert "cluster_cap 0.01 is infeasible for 3 clusters" in message
    assert "at least 0.333333" in message and "infeasible_cap: raise" in message


@pytest.mark.parametrize("profile", optimise.PROFILES)
def test_a_one_percent_cap_with_three_winners_stops_the_run_under_policy_fail(profile):
    returns = market(3, 200)

    with pytest.raises(InfeasibleCap) as failure:
        allocate(profile, returns, constraints=constraints(cap=0.01))

    message = str(failure.value)
    assert "cap 0.01 is infeasible for 3 names" in message
    assert "a cap of at least 0.333333 (1/3)" in message


@pytest.mark.parametrize("profile", optimise.PROFILES)
def test_a_one_percent_cap_with_three_winners_is_raised_and_recorded_under_policy_raise(profile):
    returns = market(3, 200)

    allocation = allocate(
        profile, returns, constraints=constraints(cap=0.01, infeasible_cap="raise")
    )

    np.testing.assert_allclose(allocation.weights.to_numpy(), 1 / 3, atol=1e-12)
    assert allocation.cap == 0.01 and allocation.effective_cap == pytest.approx(1 / 3)
    assert allocation.cap_raised
    assert "cap 0.01 is infeasible for 3 names: raised to the minimum feasible cap 0.333333" in (
        allocation.reason
    )


def test_symbols_missing_from_the_cluster_labelling_count_as_their_own_cluster():
    returns = market(6, 200)
    clusters = pd.Series([1, 1, 1, 1], index=returns.columns[:4])
    limits = constraints(cap=0.5, clusters=clusters, cluster_cap=0.4)
    allocation = allocate("equal_weight", returns, constraints=limits)
    weights = allocation.weights
    np.testing.assert_allclose(weights.iloc[:4].to_numpy(), 0.1, atol=1e-12)
    np.testing.assert_allclose(weights.iloc[4:].to_numpy(), 0.3, atol=1e-12)


def test_hrp_is_capped_by_redistributing_the_excess_in_proportion():
    returns = independent([1e-6, 1e-4, 2e-4, 4e-4, 8e-4])
    raw = hrp_weights(covariance_of(returns))
    assert raw.max() > 0.3

    weights = allocate("hrp", returns, constraints=constraints(cap=0.3)).weights.to_numpy()

    free = weights < 0.3 - 1e-12
    assert weights.max() == pytest.approx(0.3, abs=1e-12)
    np.testing.assert_allclose(weights[free] / weights[free].sum(), raw[free] / raw[free].sum())


# turnover


@pytest.mark.parametrize("profile", ["min_variance", "risk_parity", "max_sharpe"])
def test_a_large_turnover_penalty_keeps_the_previous_weights(profile):
    returns = market(8, 250, drift=0.002)
    previous = pd.Series([0.2, 0.05, 0.2, 0.05, 0.2, 0.1, 0.1, 0.1], index=returns.columns)
    limits = constraints(previous=previous, turnover_penalty=10.0)
    allocation = allocate(profile, returns, constraints=limits)
    np.testing.assert_allclose(allocation.weights.to_numpy(), previous.to_numpy(), atol=1e-6)


@pytest.mark.parametrize("profile", ["min_variance", "risk_parity", "max_sharpe"])
def test_a_zero_turnover_penalty_gives_the_unpenalised_portfolio(profile):
    returns = market(8, 250, drift=0.002)
    previous = pd.Series(1 / 8, index=returns.columns)
    penalised = allocate(
        profile, returns, constraints=constraints(previous=previous, turnover_penalty=0.0)
    )
    plain = allocate(profile, returns, constraints=DEFAULT)
    np.testing.assert_allclose(penalised.weights, plain.weights, atol=1e-9)


def test_a_moderate_turnover_penalty_moves_part_of_the_way():
    returns = market(8, 250)
    previous = pd.Series(1 / 8, index=returns.columns)
    target = allocate("min_variance", returns, constraints=DEFAULT).weights
    covariance = covariance_of(returns)
    penalty = 0.05 * float(target @ covariance @ target)
    moved = allocate(
        "min_variance",
        returns,
        constraints=constraints(previous=previous, turnover_penalty=penalty),
    ).weights
    distance_moved = (moved - previous).abs().sum()
    assert 0 < distance_moved < (target - previous).abs().sum()


# degenerate inputs and fallbacks


def test_an_empty_window_gives_an_empty_allocation():
    empty = pd.DataFrame(columns=pd.Index([], name="symbol"), dtype=float)
    for profile in optimise.PROFILES:
        allocation = allocate(profile, empty, constraints=DEFAULT)
        assert allocation.status == "empty"
        assert allocation.weights.empty


@pytest.mark.parametrize("profile", optimise.PROFILES)
def test_a_single_winner_gets_all_the_weight_when_the_cap_allows_it(profile):
    returns = market(1, 100)
    for limits in (constraints(cap=1.0), constraints(infeasible_cap="raise")):
        allocation = allocate(profile, returns, constraints=limits)
        assert allocation.weights.tolist() == [1.0]
        assert allocation.status == "closed_form"
    with pytest.raises(InfeasibleCap, match=r"cap 0\.25 is infeasible for 1 names"):
        allocate(profile, returns, constraints=DEFAULT)


@pytest.mark.parametrize("profile", optimise.PROFILES)
def test_degenerate_windows_still_give_valid_portfolios(profile):
    singular = market(30, 10)
    singular["S001"] = singular["S000"]
    flat = market(5, 100)
    flat["S004"] = 0.0
    constant = pd.DataFrame(0.0, index=range(50), columns=["A", "B", "C", "D"])
    for returns in (singular, flat, constant):
        assert_valid(allocate(profile, returns, constraints=DEFAULT), cap=0.25)


@pytest.mark.parametrize("profile", optimise.PROFILES)
def test_a_column_without_returns_gets_zero_weight(profile):
    returns = market(6, 200)
    returns["S005"] = np.nan
    returns.iloc[:100, 4] = np.nan
    allocation = allocate(profile, returns, constraints=DEFAULT)
    assert allocation.weights["S005"] == 0.0
    assert allocation.weights.iloc[:5].sum() == pytest.approx(1.0, abs=1e-12)
    assert allocation.weights.max() <= 0.25 + 1e-9
    assert "S005" in allocation.reason


def test_a_window_without_any_return_falls_back_to_equal_weight():
    returns = pd.DataFrame(np.nan, index=range(10), columns=["A", "B", "C", "D"])
    allocation = allocate("min_variance", returns, constraints=DEFAULT)
    assert allocation.fallback == "equal_weight"
    np.testing.assert_allclose(allocation.weights.to_numpy(), 0.25)


def test_an_unknown_solver_falls_back_to_hrp_and_says_why():
    returns = market(8, 200)
    allocation = allocate("min_variance", returns, solvers=("NOT_A_SOLVER",), constraints=DEFAULT)
    assert allocation.fallback == "hrp"
    assert allocation.solver is None and allocation.objective is None
    assert allocation.attempts[0][0] == "NOT_A_SOLVER"
    assert "NOT_A_SOLVER" in allocation.reason
    pd.testing.assert_series_equal(
        allocation.weights, allocate("hrp", returns, constraints=DEFAULT).weights
    )


def test_the_next_solver_is_tried_after_a_failure():
    returns = market(8, 200)
    allocation = allocate(
        "min_variance", returns, solvers=("NOT_A_SOLVER", "CLARABEL"), constraints=DEFAULT
    )
    assert allocation.solver == "CLARABEL" and allocation.fallback is None
    assert [solver for solver, _ in allocation.attempts] == ["NOT_A_SOLVER", "CLARABEL"]


def test_a_cap_that_admits_only_equal_weight_needs_no_solver():
    returns = market(4, 100)
    allocation = allocate("max_sharpe", returns, constraints=DEFAULT)
    np.testing.assert_allclose(allocation.weights.to_numpy(), 0.25)
    assert allocation.status == "closed_form" and allocation.attempts == ()


def test_allocate_all_equals_separate_allocations():
    returns = market(10, 200, drift=0.001)
    clusters = pd.Series(np.arange(10) % 3 + 1, index=returns.columns)
    limits = constraints(clusters=clusters, cluster_cap=0.4)
    together = allocate_all(returns, constraints=limits)
    assert list(together) == list(optimise.PROFILES)
    for profile, allocation in together.items():
        alone = allocate(profile, returns, constraints=limits)
        np.testing.assert_allclose(allocation.weights, alone.weights, atol=1e-12)
        assert allocation.profile == profile


def test_an_unknown_profile_is_rejected():
    with pytest.raises(ValueError, match="unknown profile"):
        allocate("kelly", market(3, 50), constraints=DEFAULT)


# HRP


def reference_hrp(covariance: np.ndarray) -> np.ndarray:
    """López de Prado's recursive bisection, written with lists as in the original paper."""
    volatility = np.sqrt(np.diag(covariance))
    correlation = covariance / np.outer(volatility, volatility)
    distance = np.sqrt(np.clip(0.5 * (1 - correlation), 0, None))
    np.fill_diagonal(distance, 0.0)
    order = list(
        hierarchy.leaves_list(hierarchy.linkage(squareform(distance, checks=False), "ward"))
    )
    weights = pd.Series(1.0, index=order)
    items = [order]

    def cluster_variance(members):
        block = covariance[np.ix_(members, members)]
        inverse = 1 / np.diag(block)
        inverse /= inverse.sum()
        return inverse @ block @ inverse

    while items:
        items = [
            part[start:end]
            for part in items
            for start, end in ((0, len(part) // 2), (len(part) // 2, len(part)))
            if len(part) > 1
        ]
        for i in range(0, len(items), 2):
            left, right = items[i], items[i + 1]
            left_variance, right_variance = cluster_variance(left), cluster_variance(right)
            alpha = 1 - left_variance / (left_variance + right_variance)
            weights[left] *= alpha
            weights[right] *= 1 - alpha
    return weights.sort_index().to_numpy()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 10_000))
def test_hrp_matches_the_reference_recursive_bisection(n, seed):
    covariance = covariance_of(market(n, 120, seed=seed) * np.linspace(0.5, 2.0, n))
    np.testing.assert_allclose(hrp_weights(covariance), reference_hrp(covariance), atol=1e-12)


def test_hrp_of_two_uncorrelated_assets_is_inverse_variance():
    weights = hrp_weights(np.diag([0.04, 0.01]))
    np.testing.assert_allclose(weights, [0.2, 0.8], atol=1e-14)


def test_hrp_gives_equal_weight_within_equal_blocks():
    block = 0.02 * (0.5 * np.ones((4, 4)) + 0.5 * np.eye(4))
    covariance = np.zeros((8, 8))
    covariance[:4, :4] = block
    covariance[4:, 4:] = 2 * block
    weights = hrp_weights(covariance)
    np.testing.assert_allclose(weights[:4], weights[0], atol=1e-14)
    np.testing.assert_allclose(weights[4:], weights[4], atol=1e-14)
    # uncorrelated halves of equal structure split by inverse variance: 2 to 1
    assert weights[:4].sum() == pytest.approx(2 / 3, abs=1e-14)


def test_hrp_gives_zero_variance_assets_the_weight():
    weights = hrp_weights(np.diag([0.0, 0.01, 0.02]))
    assert weights[0] == pytest.approx(1.0, abs=1e-9)
    assert weights.sum() == pytest.approx(1.0)


def test_hrp_rejects_a_non_finite_covariance_naming_the_asset():
    covariance = np.eye(3)
    covariance[1, 1] = np.nan
    with pytest.raises(ValueError, match="B"):
        hrp_weights(covariance, labels=["A", "B", "C"])


def test_max_sharpe_falls_back_to_min_variance_when_cluster_caps_leave_no_positive_return():
    # Found by the cap property: both assets with positive drift sit in one cluster capped at
    # 1/3; the asset caps alone would allow +3%, the cluster cap leaves only negative portfolios.
    returns = market(6, 120, seed=11)
    expected = pd.Series([0.03, 0.03, -0.02, -0.02, -0.02, -0.02], index=returns.columns)
    clusters = pd.Series([1, 1, 2, 2, 3, 3], index=returns.columns)
    limits = constraints(cap=0.5, clusters=clusters, cluster_cap=1 / 3)
    allocation = allocate("max_sharpe", returns, constraints=limits, expected_returns=expected)
    assert allocation.fallback == "min_variance"
    assert_valid(allocation, cap=0.5, clusters=clusters, cluster_cap=1 / 3)


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=8),
    cap=st.floats(0.01, 1.0),
)
def test_the_smallest_feasible_cluster_cap_matches_a_bisection(sizes, cap):
    sizes = np.array(sizes)
    cap = max(cap, 1.0 / sizes.sum())
    assert smallest_feasible_cluster_cap(sizes, cap) == pytest.approx(
        bisected_cluster_cap(sizes, cap), abs=1e-9
    )


# the registry of profiles


def test_every_profile_name_is_a_registered_function_and_accepted_as_a_string():
    assert optimise.PROFILES == (
        "min_variance",
        "risk_parity",
        "max_sharpe",
        "hrp",
        "equal_weight",
    )
    assert set(optimise.PROFILE_FUNCTIONS) == set(optimise.Profile)
    returns = market(6, 200)
    for name in optimise.PROFILES:
        by_name = allocate(name, returns, constraints=DEFAULT)
        by_enum = allocate(optimise.Profile(name), returns, constraints=DEFAULT)
        assert by_name.profile == name and type(by_name.profile) is str
        pd.testing.assert_series_equal(by_name.weights, by_enum.weights)


def test_risk_parity_returns_the_clipped_weights_its_objective_is_computed_on():
    returns = independent([1e-5, 2e-4, 2.5e-4, 3e-4, 3.5e-4, 4e-4])
    universe = optimise._universe(returns, constraints(cap=0.3))
    request = optimise._request(universe, None, optimise.SOLVERS)

    solution = optimise.PROFILE_FUNCTIONS[optimise.Profile.RISK_PARITY](universe, request)

    weights = solution.weights
    assert (weights >= 0).all()
    covariance = universe.covariance
    uncapped = allocate("risk_parity", returns, constraints=constraints(cap=1.0)).weights
    barrier = float(uncapped @ covariance @ uncapped) / 6
    expected = 0.5 * weights @ covariance @ weights - barrier * np.log(weights).sum()
    assert solution.objective == pytest.approx(expected, rel=1e-12)


def test_no_engine_dataclass_of_the_optimiser_holds_a_mutable_container():
    from dataclasses import fields, is_dataclass

    for name in dir(optimise):
        cls = getattr(optimise, name)
        if isinstance(cls, type) and is_dataclass(cls) and cls.__module__ == optimise.__name__:
            assert cls.__dataclass_params__.frozen, name
            for field in fields(cls):
                assert not str(field.type).startswith(("dict", "list", "set")), (name, field)
