"""Performance metrics of a stream of simple returns.

Conventions shared by every function:

- Input is one stream of *simple* per-period returns (``p_t / p_{t-1} - 1``) as a 1-D array or
  Series. NaN entries are dropped before anything is computed, so a metric of a series with NaN
  equals the metric of the same series with the NaN removed (empyrical does the same for every
  metric here except CAGR, where it keeps NaN in the period count; see :func:`cagr`).
- ``periods_per_year`` is always explicit: 252 for weekday sleeves, 365 for crypto sleeves.
- Definitions follow empyrical (``empyrical-reloaded``) so that numbers agree with it to
  floating-point precision; where empyrical and a textbook differ the docstring says so.
- Too few observations give NaN rather than an exception.
"""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

ReturnStream = Sequence[float] | np.ndarray | pd.Series
"""One stream of simple per-period returns."""

METRIC_COLUMNS = (
    "sharpe",
    "sortino",
    "calmar",
    "cagr",
    "volatility",
    "max_drawdown",
    "cvar_95",
    "avg_turnover",
    "hit_rate",
    "rebalances",
)


def _clean(returns: ReturnStream) -> np.ndarray:
    """Float64 1-D array of the returns with NaN removed."""
    values = np.asarray(returns, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D stream of returns, got shape {values.shape}")
    return values[~np.isnan(values)]


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator with IEEE semantics (±inf, NaN) instead of an exception."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.divide(np.float64(numerator), np.float64(denominator)))


def _dispersion(values: np.ndarray) -> float:
    """Sample standard deviation (ddof=1); exactly 0 for a constant series.

    The floating-point mean of identical values can miss them in the last bit, which would turn an
    infinite ratio into a meaningless number near 1e15 (empyrical guards the same way).
    """
    if values.max() == values.min():
        return 0.0
    return float(np.std(values, ddof=1))


def sharpe_ratio(
    returns: ReturnStream,
    *,
    periods_per_year: int,
    risk_free: float = 0.0,
) -> float:
    """Annualised Sharpe ratio ``mean(r - rf) / std(r - rf, ddof=1) * sqrt(N)``.

    ``risk_free`` is a per-period rate. NaN for fewer than two observations; a constant series
    gives ±inf (NaN when its excess mean is 0), as empyrical.
    """
    excess = _clean(returns) - risk_free
    if excess.size < 2:
        return math.nan
    return _ratio(excess.mean(), _dispersion(excess)) * math.sqrt(periods_per_year)


def sortino_ratio(
    returns: ReturnStream,
    *,
    periods_per_year: int,
    required_return: float = 0.0,
) -> float:
    """Annualised Sortino ratio ``mean(r - MAR) * N / (sqrt(mean(min(r - MAR, 0)²)) * sqrt(N))``.

    The downside deviation averages the squared shortfalls over *all* observations (days above
    the minimum acceptable return contribute 0), as empyrical; it is not the standard deviation
    of the negative days. ``required_return`` (MAR) is per period. NaN for fewer than two
    observations; no shortfall at all gives +inf (NaN when the mean excess is 0).
    """
    excess = _clean(returns) - required_return
    if excess.size < 2:
        return math.nan
    shortfall = np.minimum(excess, 0.0)
    downside = math.sqrt(np.mean(shortfall * shortfall)) * math.sqrt(periods_per_year)
    return _ratio(excess.mean() * periods_per_year, downside)


def annual_volatility(returns: ReturnStream, *, periods_per_year: int) -> float:
    """Annualised volatility ``std(r, ddof=1) * sqrt(N)``; NaN for fewer than two observations."""
    values = _clean(returns)
    if values.size < 2:
        return math.nan
    return _dispersion(values) * math.sqrt(periods_per_year)


def cagr(returns: ReturnStream, *, periods_per_year: int) -> float:
    """Compound annual growth rate ``prod(1 + r) ** (N / n) - 1`` (empyrical ``annual_return``).

    ``n`` counts the non-NaN observations; empyrical counts NaN days in ``n`` while skipping them
    in the product, which understates growth, so the two differ only when NaN are present. NaN for
    an empty series or when the compounded wealth turns negative (returns below -100%).
    """
    values = _clean(returns)
    if values.size == 0:
        return math.nan
    wealth = float(np.prod(1.0 + values))
    if wealth < 0.0:
        return math.nan
    return wealth ** (periods_per_year / values.size) - 1.0


def max_drawdown(returns: ReturnStream) -> float:
    """Maximum drawdown of the compounded curve, a number in [-1, 0] (0: never below a peak).

    The curve starts from an initial capital of 1, which counts as the first peak: a loss on the
    first day is a drawdown (empyrical's convention). NaN for an empty series.
    """
    values = _clean(returns)
    if values.size == 0:
        return math.nan
    wealth = np.cumprod(1.0 + values)
    peak = np.maximum(np.maximum.accumulate(wealth), 1.0)
    return float(np.min((wealth - peak) / peak))


def calmar_ratio(returns: ReturnStream, *, periods_per_year: int) -> float:
    """Calmar ratio ``CAGR / |max drawdown|`` over the whole series (not a trailing 36 months).

    NaN when there is no drawdown (max drawdown 0) or the ratio is infinite, as empyrical.
    """
    drawdown = max_drawdown(returns)
    if not drawdown < 0.0:
        return math.nan
    ratio = cagr(returns, periods_per_year=periods_per_year) / abs(drawdown)
    return math.nan if math.isinf(ratio) else ratio


def cvar(returns: ReturnStream, *, level: float = 0.95) -> float:
    """Historical conditional value at risk: mean of the worst ``1 - level`` share of returns.

    A per-period simple return, negative for a loss (not a positive loss number). The tail holds
    the ``int((n - 1) * (1 - level)) + 1`` lowest observations, as empyrical's
    ``conditional_value_at_risk(cutoff=1 - level)``. NaN for an empty series.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"cvar level must lie in (0, 1), got {level}")
    values = _clean(returns)
    if values.size == 0:
        return math.nan
    # Rounding keeps 1 - 0.95 from landing a hair above 0.05 and shifting the tail size.
    cutoff = round(1.0 - level, 12)
    tail_size = int((values.size - 1) * cutoff) + 1
    return float(np.mean(np.partition(values, tail_size - 1)[:tail_size]))


def hit_rate(returns: ReturnStream) -> float:
    """Share of periods with a strictly positive return (flat days are misses); NaN if empty."""
    values = _clean(returns)
    if values.size == 0:
        return math.nan
    return float(np.mean(values > 0.0))


def probabilistic_sharpe_ratio(returns: ReturnStream, *, benchmark_sharpe: float = 0.0) -> float:
    """Probabilistic Sharpe ratio (Bailey & López de Prado, 2012): P(true SR > benchmark).

    ``PSR = Φ((SR - SR*) · sqrt(n - 1) / sqrt(1 - γ3·SR + (γ4 - 1)/4 · SR²))`` with the
    *per-period* (not annualised) Sharpe ``SR = mean / std(ddof=1)``, the benchmark ``SR*`` per
    period too, and the sample skewness γ3 and (non-excess) kurtosis γ4 as biased moment
    estimators. NaN for fewer than three observations or a constant series.
    """
    values = _clean(returns)
    if values.size < 3:
        return math.nan
    deviation = _dispersion(values)
    if deviation == 0.0:
        return math.nan
    sharpe = values.mean() / deviation
    skewness = float(stats.skew(values))
    kurtosis = float(stats.kurtosis(values, fisher=False))
    variance = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if not variance > 0.0:
        return math.nan
    z = (sharpe - benchmark_sharpe) * math.sqrt(values.size - 1) / math.sqrt(variance)
    return float(stats.norm.cdf(z))


def metrics_table(
    returns: pd.DataFrame, *, periods_per_year: int, turnover: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per policy (column of ``returns``), columns :data:`METRIC_COLUMNS`.

    ``returns``: dates x policies, net simple returns; each column's NaN are dropped. ``turnover``:
    rebalance dates x policies, one-sided turnover ``½·Σ|w_t − w_t⁻|`` per rebalance (1.0 = the
    whole book traded once). ``avg_turnover`` is its mean per rebalance and ``rebalances`` the count
    of non-NaN entries; both are NaN for a policy without turnover data. ``cvar_95`` is a negative
    per-period return. The index is named "policy".
    """
    rows = {}
    for policy in returns.columns:
        series = returns[policy]
        traded = (
            turnover[policy].dropna()
            if turnover is not None and policy in turnover.columns
            else None
        )
        rows[policy] = {
            "sharpe": sharpe_ratio(series, periods_per_year=periods_per_year),
            "sortino": sortino_ratio(series, periods_per_year=periods_per_year),
            "calmar": calmar_ratio(series, periods_per_year=periods_per_year),
            "cagr": cagr(series, periods_per_year=periods_per_year),
            "volatility": annual_volatility(series, periods_per_year=periods_per_year),
            "max_drawdown": max_drawdown(series),
            "cvar_95": cvar(series, level=0.95),
            "avg_turnover": float(traded.mean()) if traded is not None else math.nan,
            "hit_rate": hit_rate(series),
            "rebalances": float(len(traded)) if traded is not None else math.nan,
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_COLUMNS))
    table.index = pd.Index(list(returns.columns), name="policy")
    return table.astype(np.float64)


EULER_GAMMA = 0.5772156649015329


def expected_maximum_sharpe(trial_sharpes: Sequence[float]) -> float:
    """Expected maximum of ``N`` per-period Sharpe ratios under the null of no skill (Bailey and
    López de Prado, 2014): ``sqrt(V) · ((1 − γ)·Φ⁻¹(1 − 1/N) + γ·Φ⁻¹(1 − 1/(N·e)))``, with ``V``
    the variance (ddof=1) of the trials' Sharpe ratios and γ the Euler–Mascheroni constant.
    NaN-Sharpe trials count as tried but add no variance; zero for a single trial."""
    values = np.asarray(trial_sharpes, dtype=float)
    trials = values.size
    finite = values[np.isfinite(values)]
    if trials < 2 or finite.size < 2:
        return 0.0
    spread = math.sqrt(float(np.var(finite, ddof=1)))
    quantile = stats.norm.ppf
    return spread * (
        (1 - EULER_GAMMA) * quantile(1 - 1 / trials)
        + EULER_GAMMA * quantile(1 - 1 / (trials * math.e))
    )


def deflated_sharpe_ratio(returns: ReturnStream, *, trial_sharpes: Sequence[float]) -> float:
    """Deflated Sharpe ratio: the probabilistic Sharpe ratio of ``returns`` against the Sharpe a
    search over ``len(trial_sharpes)`` policies would find by luck alone
    (:func:`expected_maximum_sharpe`). ``trial_sharpes`` are *per-period* Sharpe ratios of every
    policy tried (the selected one included). A probability in [0, 1]; NaN as for PSR."""
    return probabilistic_sharpe_ratio(
        returns, benchmark_sharpe=expected_maximum_sharpe(trial_sharpes)
    )
