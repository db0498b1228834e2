import ast
import inspect
import math

import empyrical
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from tvq_assets.quant import metrics

PERIODS = (252, 365)


@pytest.fixture(scope="module")
def fat_tailed_returns() -> pd.Series:
    """Two years of daily returns with Student-t tails and a positive drift."""
    rng = np.random.default_rng(7)
    values = 0.0004 + 0.012 * rng.standard_t(df=4, size=730)
    return pd.Series(values, index=pd.date_range("2024-01-01", periods=730, name="date"))


@pytest.fixture(scope="module")
def first_day_loss_returns() -> np.ndarray:
    """Starts with a loss and never regains the initial capital."""
    return np.array([-0.10, 0.02, 0.03, -0.01, 0.04, 0.0, 0.01])


@pytest.fixture(scope="module")
def policy_returns(fat_tailed_returns: pd.Series) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    frame = pd.DataFrame(
        {
            "min_variance": fat_tailed_returns.to_numpy(),
            "equal_weight": rng.normal(0.0003, 0.02, len(fat_tailed_returns)),
        },
        index=fat_tailed_returns.index,
    )
    frame.iloc[:5, 1] = np.nan
    return frame


def assert_close(actual: float, expected: float) -> None:
    assert actual == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("periods_per_year", PERIODS)
def test_sharpe_matches_the_empyrical_definition(fat_tailed_returns, periods_per_year):
    for risk_free in (0.0, 0.0001):
        assert_close(
            metrics.sharpe_ratio(
                fat_tailed_returns, periods_per_year=periods_per_year, risk_free=risk_free
            ),
            empyrical.sharpe_ratio(
                fat_tailed_returns, risk_free=risk_free, annualization=periods_per_year
            ),
        )


@pytest.mark.parametrize("periods_per_year", PERIODS)
def test_sortino_matches_the_empyrical_definition(fat_tailed_returns, periods_per_year):
    for required_return in (0.0, 0.0005):
        assert_close(
            metrics.sortino_ratio(
                fat_tailed_returns,
                periods_per_year=periods_per_year,
                required_return=required_return,
            ),
            empyrical.sortino_ratio(
                fat_tailed_returns,
                required_return=required_return,
                annualization=periods_per_year,
            ),
        )


@pytest.mark.parametrize("periods_per_year", PERIODS)
def test_volatility_matches_the_empyrical_definition(fat_tailed_returns, periods_per_year):
    assert_close(
        metrics.annual_volatility(fat_tailed_returns, periods_per_year=periods_per_year),
        empyrical.annual_volatility(fat_tailed_returns, annualization=periods_per_year),
    )


@pytest.mark.parametrize("periods_per_year", PERIODS)
def test_cagr_matches_empyrical_cagr_and_annual_return(fat_tailed_returns, periods_per_year):
    ours = metrics.cagr(fat_tailed_returns, periods_per_year=periods_per_year)
    assert_close(ours, empyrical.cagr(fat_tailed_returns, annualization=periods_per_year))
    assert_close(ours, empyrical.annual_return(fat_tailed_returns, annualization=periods_per_year))


def test_max_drawdown_matches_empyrical(fat_tailed_returns):
    expected = empyrical.max_drawdown(fat_tailed_returns)
    assert_close(metrics.max_drawdown(fat_tailed_returns), expected)


def test_a_first_day_loss_counts_as_a_drawdown_from_the_initial_capital(first_day_loss_returns):
    ours = metrics.max_drawdown(first_day_loss_returns)
    assert_close(ours, empyrical.max_drawdown(first_day_loss_returns))
    assert ours == pytest.approx(-0.10, rel=1e-12)


@pytest.mark.parametrize("periods_per_year", PERIODS)
def test_calmar_matches_empyrical_including_a_first_day_loss(
    fat_tailed_returns, first_day_loss_returns, periods_per_year
):
    for returns in (fat_tailed_returns, first_day_loss_returns):
        assert_close(
            metrics.calmar_ratio(returns, periods_per_year=periods_per_year),
            empyrical.calmar_ratio(returns, annualization=periods_per_year),
        )


@pytest.mark.parametrize("size", [1, 2, 20, 21, 100, 730])
def test_cvar_matches_empyrical_conditional_value_at_risk(fat_tailed_returns, size):
    returns = fat_tailed_returns.to_numpy()[:size]
    assert_close(
        metrics.cvar(returns, level=0.95),
        empyrical.conditional_value_at_risk(returns, cutoff=0.05),
    )
    assert_close(
        metrics.cvar(returns, level=0.99),
        empyrical.conditional_value_at_risk(returns, cutoff=0.01),
    )


def test_nan_are_dropped_so_a_metric_equals_that_of_the_clean_series(fat_tailed_returns):
    with_gaps = fat_tailed_returns.copy()
    with_gaps.iloc[[0, 1, 100, 400]] = np.nan
    clean = with_gaps.dropna()
    for name in ("sharpe_ratio", "sortino_ratio", "annual_volatility", "cagr", "calmar_ratio"):
        function = getattr(metrics, name)
        assert function(with_gaps, periods_per_year=365) == function(clean, periods_per_year=365)
    for function in (metrics.max_drawdown, metrics.cvar, metrics.hit_rate):
        assert function(with_gaps) == function(clean)
    # empyrical drops NaN the same way for these.
    assert_close(metrics.max_drawdown(with_gaps), empyrical.max_drawdown(with_gaps))
    assert_close(
        metrics.sharpe_ratio(with_gaps, periods_per_year=365),
        empyrical.sharpe_ratio(with_gaps, annualization=365),
    )


def test_the_metrics_module_does_not_delegate_to_empyrical():
    tree = ast.parse(inspect.getsource(metrics))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imported <= {"math", "collections", "numpy", "pandas", "scipy"}


def test_degenerate_inputs_give_nan_not_errors():
    assert math.isnan(metrics.sharpe_ratio([0.01], periods_per_year=252))
    assert math.isnan(metrics.annual_volatility([], periods_per_year=252))
    assert math.isnan(metrics.cagr([np.nan], periods_per_year=252))
    assert math.isnan(metrics.max_drawdown([]))
    assert math.isnan(metrics.cvar([]))
    assert math.isnan(metrics.hit_rate([]))
    assert math.isnan(metrics.calmar_ratio([0.01, 0.02], periods_per_year=252))
    assert math.isnan(metrics.sharpe_ratio([0.0, 0.0, 0.0], periods_per_year=252))


def test_a_riskless_positive_stream_has_infinite_sharpe_as_in_empyrical():
    returns = np.full(10, 0.001)
    assert metrics.sharpe_ratio(returns, periods_per_year=252) == math.inf
    assert empyrical.sharpe_ratio(returns, annualization=252) == math.inf


def test_hit_rate_counts_strictly_positive_periods():
    assert metrics.hit_rate([0.01, 0.0, -0.02, 0.03, np.nan]) == 0.5


def reference_psr(returns: np.ndarray, benchmark: float) -> float:
    """Bailey & Lopez de Prado (2012), eq. for PSR, with moments written out by hand."""
    n = len(returns)
    mean = sum(returns) / n
    centred = [r - mean for r in returns]
    sample_std = math.sqrt(sum(c * c for c in centred) / (n - 1))
    m2 = sum(c**2 for c in centred) / n
    m3 = sum(c**3 for c in centred) / n
    m4 = sum(c**4 for c in centred) / n
    skewness = m3 / m2**1.5
    kurtosis = m4 / m2**2
    sharpe = mean / sample_std
    z = (
        (sharpe - benchmark)
        * math.sqrt(n - 1)
        / math.sqrt(1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe**2)
    )
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("benchmark", [0.0, 0.02, 0.05, -0.03])
def test_psr_matches_the_bailey_lopez_de_prado_formula(fat_tailed_returns, benchmark):
    values = fat_tailed_returns.to_numpy()
    assert_close(
        metrics.probabilistic_sharpe_ratio(values, benchmark_sharpe=benchmark),
        reference_psr(list(values), benchmark),
    )


def test_psr_is_one_half_at_the_observed_sharpe_and_falls_as_the_benchmark_rises(
    fat_tailed_returns,
):
    values = fat_tailed_returns.to_numpy()
    observed = values.mean() / values.std(ddof=1)
    assert metrics.probabilistic_sharpe_ratio(values, benchmark_sharpe=observed) == pytest.approx(
        0.5
    )
    levels = [
        metrics.probabilistic_sharpe_ratio(values, benchmark_sharpe=b)
        for b in (-0.1, 0.0, 0.05, 0.1)
    ]
    assert levels == sorted(levels, reverse=True)


def test_psr_of_gaussian_returns_is_close_to_the_plain_sharpe_z_test():
    values = np.random.default_rng(3).normal(0.001, 0.01, 5000)
    sharpe = values.mean() / values.std(ddof=1)
    plain = stats.norm.cdf(sharpe * math.sqrt(len(values) - 1) / math.sqrt(1 + sharpe**2 / 2))
    assert metrics.probabilistic_sharpe_ratio(values) == pytest.approx(plain, abs=2e-3)


def test_metrics_table_has_one_row_per_policy_and_matches_the_single_metrics(policy_returns):
    rebalance_dates = policy_returns.index[::20]
    turnover = pd.DataFrame(
        {"min_variance": 0.1, "equal_weight": 0.02}, index=rebalance_dates, dtype=float
    )
    turnover.iloc[0] = 0.5
    table = metrics.metrics_table(policy_returns, periods_per_year=365, turnover=turnover)

    assert list(table.columns) == list(metrics.METRIC_COLUMNS)
    assert list(table.index) == ["min_variance", "equal_weight"]
    assert table.index.name == "policy"
    for policy in policy_returns.columns:
        series = policy_returns[policy].dropna()
        row = table.loc[policy]
        assert_close(row["sharpe"], empyrical.sharpe_ratio(series, annualization=365))
        assert_close(row["sortino"], empyrical.sortino_ratio(series, annualization=365))
        assert_close(row["calmar"], empyrical.calmar_ratio(series, annualization=365))
        assert_close(row["cagr"], empyrical.cagr(series, annualization=365))
        assert_close(row["volatility"], empyrical.annual_volatility(series, annualization=365))
        assert_close(row["max_drawdown"], empyrical.max_drawdown(series))
        assert_close(row["cvar_95"], empyrical.conditional_value_at_risk(series))
        assert row["hit_rate"] == pytest.approx((series > 0).mean())
        assert row["rebalances"] == len(rebalance_dates)
        assert row["avg_turnover"] == pytest.approx(turnover[policy].mean())


def test_metrics_table_without_turnover_leaves_the_turnover_columns_empty(policy_returns):
    table = metrics.metrics_table(policy_returns, periods_per_year=252)
    assert table[["avg_turnover", "rebalances"]].isna().all().all()
    assert table["sharpe"].notna().all()


finite_returns = arrays(
    np.float64,
    st.integers(min_value=2, max_value=200),
    elements=st.floats(min_value=-0.99, max_value=3.0, allow_nan=False, width=64),
)


@settings(max_examples=100, deadline=None)
@given(returns=finite_returns)
def test_max_drawdown_lies_between_minus_one_and_zero(returns):
    drawdown = metrics.max_drawdown(returns)
    assert -1.0 <= drawdown <= 0.0
    assert_close(drawdown, empyrical.max_drawdown(returns))


@settings(max_examples=100, deadline=None)
@given(returns=finite_returns, scale=st.floats(min_value=0.01, max_value=100.0))
def test_sharpe_is_invariant_under_positive_scaling(returns, scale):
    original = metrics.sharpe_ratio(returns, periods_per_year=365)
    scaled = metrics.sharpe_ratio(returns * scale, periods_per_year=365)
    if math.isfinite(original) and np.ptp(returns) > 1e-6:
        assert scaled == pytest.approx(original, rel=1e-7, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(returns=finite_returns, scale=st.floats(min_value=0.01, max_value=100.0))
def test_volatility_scales_linearly(returns, scale):
    original = metrics.annual_volatility(returns, periods_per_year=252)
    scaled = metrics.annual_volatility(returns * scale, periods_per_year=252)
    assert scaled == pytest.approx(scale * original, rel=1e-7, abs=1e-12)
