"""Portfolio allocation: Ledoit-Wolf covariance, a registry of risk profiles, solver fallbacks.

Conventions shared by every function here:

- Returns are simple per-period returns of the training window (rows = periods, columns =
  symbols). Covariances, variances and objectives are per period (not annualised); nothing here
  needs the number of periods per year.
- Portfolios are long-only and fully invested: weights are non-negative and sum to 1 within 1e-12.
- Risk limits are never changed silently. A per-asset ``cap`` below ``1/n`` (``n`` = symbols with
  at least one finite return), or a cluster cap below the smallest one admitting a fully invested
  portfolio, is infeasible: ``Constraints.infeasible_cap`` either raises :class:`InfeasibleCap`
  ("fail") or proceeds with the minimum feasible cap ("raise"), and the :class:`Allocation`
  records the configured and the effective caps.
- NaN returns (a symbol listed inside the window, or delisted before its end) are treated as a
  zero return for the covariance and the mean. This understates the variance of short histories,
  which the selection stage limits with its minimum-history rule. Columns without any finite value
  get weight 0 and take no part in the optimisation; rows without any finite value are dropped.
"""

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

import cvxpy as cp
import numpy as np
import pandas as pd
import scipy.sparse as sparse
from scipy import optimize
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform


class Profile(StrEnum):
    """The risk profiles; each is a function of :data:`PROFILE_FUNCTIONS` with one signature."""

    MIN_VARIANCE = "min_variance"
    RISK_PARITY = "risk_parity"
    MAX_SHARPE = "max_sharpe"
    HRP = "hrp"
    EQUAL_WEIGHT = "equal_weight"


PROFILES: tuple[str, ...] = tuple(profile.value for profile in Profile)
SOLVERS: tuple[str, ...] = ("CLARABEL", "SCS", "OSQP")
INFEASIBLE_CAP_POLICIES: tuple[str, ...] = ("fail", "raise")

_SOLVED = (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
# Solvers of cvxpy able to handle the exponential cone that log terms compile to.
_EXPONENTIAL_CONE_SOLVERS = frozenset({"CLARABEL", "SCS", "ECOS", "MOSEK", "COPT"})
# Interior-point solutions leave weights of ~1e-9 instead of exact zeros: a position below
# one ten-thousandth of a basis point is not tradeable and is set to zero.
_DUST = 1e-8
_CAP_TOLERANCE = 1e-9
# From a few hundred assets the KKT system is dense (n x n covariance): Clarabel's supernodal faer
# factorisation needs about half the CPU time of its default QDLDL there.
_DENSE_FROM = 200


class InfeasibleCap(ValueError):
    """A configured cap admits no fully invested portfolio and the policy says ``fail``."""


# eq=False: fields hold pandas objects, whose == is element-wise
@dataclass(frozen=True, eq=False, kw_only=True)
class Constraints:
    """Portfolio constraints shared by all profiles, without policy defaults of their own.

    Build them from the sleeve's catalog policy with :meth:`of` (``catalog.Policy`` is the one
    home of every default).

    cap: per-asset maximum weight.
    cluster_cap: maximum total weight per cluster, or None. Needs ``clusters``.
    turnover_penalty: λ in ``objective + λ·‖w − w_prev‖₁``, in the units of the profile's
        objective (per-period variance for min_variance). Ignored by hrp and equal_weight.
    ridge: L2 regularisation of max_sharpe as a fraction of the average asset variance: the
        covariance becomes ``Σ + ridge·mean(diag Σ)·I``.
    infeasible_cap: "fail" or "raise": what to do when ``cap < 1/n`` or the cluster cap admits no
        fully invested portfolio (see the module docstring).
    clusters: symbol -> cluster id. Symbols missing from it form clusters of their own.
    previous: previous weights (symbols missing = 0) for the L1 turnover penalty; without them
        every fully invested portfolio has the same turnover and the penalty is skipped.
    """

    cap: float
    cluster_cap: float | None
    turnover_penalty: float
    ridge: float
    infeasible_cap: str
    clusters: pd.Series | None = None
    previous: pd.Series | None = None

    def __post_init__(self) -> None:
        if not self.cap > 0:
            raise ValueError(f"Constraints: cap must be > 0, got {self.cap}")
        if self.cluster_cap is not None and not self.cluster_cap > 0:
            raise ValueError(f"Constraints: cluster_cap must be > 0, got {self.cluster_cap}")
        if not self.turnover_penalty >= 0:
            raise ValueError(
                f"Constraints: turnover_penalty must be >= 0, got {self.turnover_penalty}"
            )
        if not self.ridge >= 0:
            raise ValueError(f"Constraints: ridge must be >= 0, got {self.ridge}")
        if self.infeasible_cap not in INFEASIBLE_CAP_POLICIES:
            raise ValueError(
                f"Constraints: infeasible_cap must be one of {INFEASIBLE_CAP_POLICIES}, got "
                f"{self.infeasible_cap!r}"
            )

    @classmethod
    def of(
        cls,
        policy: Any,
        *,
        clusters: pd.Series | None = None,
        previous: pd.Series | None = None,
    ) -> "Constraints":
        """The policy-valued fields read by name from a sleeve policy (``catalog.Policy``)."""
        names = [f.name for f in fields(cls) if f.name not in ("clusters", "previous")]
        values = {name: getattr(policy, name) for name in names}
        return cls(**values, clusters=clusters, previous=previous)


@dataclass(frozen=True, eq=False)
class Allocation:
    """The weights of one profile and how they were obtained.

    status: "optimal", "optimal_inaccurate", "closed_form", "empty", or the failing status of the
        last solver tried when a fallback was used.
    objective: optimal value of the convex problem solved, in the covariance's per-period units
        (see ``allocate``); None for closed-form portfolios.
    fallback: None, or the profile actually used: "hrp" or "equal_weight" when the requested
        profile could not be solved, "min_variance" when max_sharpe had no positive expected return.
    reason: why a fallback, an inaccurate status or a raised cap happened.
    attempts: (solver, status or error) in the order tried.
    cap, cluster_cap: the configured limits; effective_cap, effective_cluster_cap: the limits the
        weights were built under. They differ only when ``infeasible_cap="raise"`` raised them.
    """

    profile: str
    weights: pd.Series
    solver: str | None
    status: str
    seconds: float
    objective: float | None
    fallback: str | None
    reason: str | None
    attempts: tuple[tuple[str, str], ...]
    cap: float
    effective_cap: float
    cluster_cap: float | None
    effective_cluster_cap: float | None

    @property
    def cap_raised(self) -> bool:
        raised_cluster = (
            self.cluster_cap is not None
            and self.effective_cluster_cap is not None
            and self.effective_cluster_cap > self.cluster_cap
        )
        return self.effective_cap > self.cap or raised_cluster


def ledoit_wolf(returns: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrinkage towards the scaled identity ``mean(diag S)·I``.

    ``returns`` is a T x N array without NaN. The sample covariance is the biased one (divides by
    T, data centred on its mean), exactly as ``sklearn.covariance.LedoitWolf()``. Returns the
    shrunk covariance (N x N) and the shrinkage intensity in [0, 1]. One column gets shrinkage 0;
    fewer than one row gives an N x N matrix of NaN.
    """
    x = np.asarray(returns, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"ledoit_wolf: expected a T x N array, got shape {x.shape}")
    n_samples, n_features = x.shape
    if n_samples == 0:
        return np.full((n_features, n_features), np.nan), 0.0
    x = x - x.mean(axis=0)
    sample = x.T @ x / n_samples
    if n_features == 1:
        return sample, 0.0
    squared = x**2
    column_variance = squared.sum(axis=0) / n_samples
    mu = column_variance.sum() / n_features
    # Σ_ij Σ_t x_ti² x_tj² = Σ_t (Σ_i x_ti²)², which avoids an N x N product
    beta_sum = float((squared.sum(axis=1) ** 2).sum())
    delta_sum = float((sample**2).sum())
    beta = (beta_sum / n_samples - delta_sum) / (n_features * n_samples)
    delta = (delta_sum - 2.0 * mu * column_variance.sum() + n_features * mu**2) / n_features
    beta = min(beta, delta)
    shrinkage = 0.0 if beta <= 0 or delta <= 0 else float(beta / delta)
    shrunk = (1.0 - shrinkage) * sample
    shrunk.flat[:: n_features + 1] += shrinkage * mu
    return shrunk, shrinkage


def hrp_weights(covariance: np.ndarray, *, labels: Sequence[str] | None = None) -> np.ndarray:
    """Hierarchical risk parity (López de Prado, 2016), long-only, summing to 1, uncapped.

    Ward linkage on the correlation distance ``sqrt(0.5·(1 − ρ))``, assets in the dendrogram's
    leaf order (quasi-diagonalisation), then recursive bisection of that order into halves, each
    half weighted by the inverse of its inverse-variance portfolio's variance. Zero variances are
    floored at 1e-12 x the largest variance (the limit of inverse-variance weighting); an all-zero
    covariance gives equal weights. ``labels`` only name assets in error messages. Raises
    ValueError on a non-square or non-finite covariance.
    """
    cov = np.asarray(covariance, dtype=float)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"hrp_weights: covariance must be square, got shape {cov.shape}")
    n = cov.shape[0]
    if labels is not None and len(labels) != n:
        raise ValueError(f"hrp_weights: {len(labels)} labels for a {n} x {n} covariance")
    bad = ~np.isfinite(cov).all(axis=1)
    if bad.any():
        names = [labels[i] for i in np.flatnonzero(bad)] if labels is not None else None
        where = names if names is not None else np.flatnonzero(bad).tolist()
        raise ValueError(f"hrp_weights: covariance is not finite for {where[:5]}")
    if n <= 1:
        return np.ones(n)
    variance = np.diag(cov).copy()
    largest = variance.max()
    if largest <= 0:
        return np.full(n, 1.0 / n)
    variance = np.maximum(variance, 1e-12 * largest)
    cov = cov.copy()
    np.fill_diagonal(cov, variance)

    volatility = np.sqrt(variance)
    correlation = np.clip(cov / np.outer(volatility, volatility), -1.0, 1.0)
    np.fill_diagonal(correlation, 1.0)
    distance = np.sqrt(np.clip(0.5 * (1.0 - correlation), 0.0, None))
    np.fill_diagonal(distance, 0.0)
    linkage = hierarchy.linkage(squareform(distance, checks=False), method="ward")
    order = hierarchy.leaves_list(linkage)

    ordered = cov[np.ix_(order, order)]
    inverse_variance = 1.0 / np.diag(ordered)
    scaled = ordered * np.outer(inverse_variance, inverse_variance)
    # row-wise prefix sums: a block's sum is a difference of two entries per row, computed for
    # every segment of one bisection level at once
    row_prefix = np.zeros((n, n + 1))
    row_prefix[:, 1:] = np.cumsum(scaled, axis=1)
    inverse_prefix = np.concatenate([[0.0], np.cumsum(inverse_variance)])

    def segment_variance(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        lengths = ends - starts
        segment = np.repeat(np.arange(starts.size), lengths)
        rows = _concatenated_ranges(starts, lengths)
        row_sums = row_prefix[rows, ends[segment]] - row_prefix[rows, starts[segment]]
        block = np.bincount(segment, weights=row_sums, minlength=starts.size)
        total = inverse_prefix[ends] - inverse_prefix[starts]
        return block / total**2

    weights = np.ones(n)
    starts, ends = np.array([0]), np.array([n])
    while starts.size:
        mids = starts + (ends - starts) // 2
        left, right = segment_variance(starts, mids), segment_variance(mids, ends)
        total = left + right
        alpha = np.divide(right, total, out=np.full(total.size, 0.5), where=total > 0)
        child_starts = np.concatenate([starts, mids])
        child_ends = np.concatenate([mids, ends])
        lengths = child_ends - child_starts
        positions = _concatenated_ranges(child_starts, lengths)
        weights[positions] *= np.repeat(np.concatenate([alpha, 1.0 - alpha]), lengths)
        keep = lengths > 1
        starts, ends = child_starts[keep], child_ends[keep]

    result = np.empty(n)
    result[order] = weights
    return result / result.sum()


def allocate(
    profile: str,
    returns: pd.DataFrame,
    *,
    constraints: Constraints,
    expected_returns: pd.Series | None = None,
    solvers: Sequence[str] = SOLVERS,
) -> Allocation:
    """Weights of one profile for the training window ``returns`` (T x n, simple returns).

    Profiles (Σ = Ledoit-Wolf covariance, per period; λ = turnover_penalty, p = previous weights):

    - min_variance: minimise ``w'Σw + λ‖w − p‖₁`` (covariance form).
    - risk_parity: equal risk contribution from ``min ½y'Σy − (1/n)Σ log y, y > 0`` with
      ``w = y / Σy``. When that solution breaks a cap, or a turnover penalty applies, solve
      ``min ½w'Σw − c·Σ log w + λ‖w − p‖₁`` over the capped simplex with ``c = σ²_erc / n``
      (σ²_erc the variance of the uncapped solution), a choice under which the uncapped optimum
      of this problem is exactly the equal-risk portfolio.
    - max_sharpe: maximise ``μ'w / sqrt(w'(Σ + γI)w)`` with ``γ = ridge·mean(diag Σ)`` through the
      homogenisation ``y = κw`` (Cornuéjols-Tütüncü): ``min y'(Σ + γI)y + λ‖y − κp‖₁`` subject to
      ``μ'y = 1, Σy = κ, 0 ≤ y ≤ cap·κ`` and cluster sums ``≤ cluster_cap·κ`` (all linear). The
      turnover term is thus weighted by ``κ = 1/μ'w``. μ defaults to the window mean with NaN as 0,
      which shrinks short histories towards 0. When no capped portfolio has ``μ'w > 0`` (all
      expected returns ≤ 0 in particular) the min_variance problem is solved instead
      (``fallback="min_variance"``).
    - hrp: ``hrp_weights`` then the caps; equal_weight: 1/n then the cluster caps.

    Solvers are tried in order; "optimal" and "optimal_inaccurate" are accepted, OSQP is skipped
    for log (exponential-cone) problems. When none succeeds the profile falls back to hrp, then to
    equal weight. Every result goes through the same post-processing: negatives and dust
    (< 1e-8) set to 0, then capped water-filling (clusters first, then assets within clusters,
    proportional to the solved weights) which sums to 1 and never exceeds a cap. Raises
    :class:`InfeasibleCap` when a cap is infeasible and ``constraints.infeasible_cap == "fail"``.
    """
    start = time.perf_counter()
    chosen = _profile(profile)
    universe = _universe(returns, constraints)
    request = _request(universe, expected_returns, solvers)
    return _allocate(chosen, universe, request, start)


def allocate_all(
    returns: pd.DataFrame,
    *,
    constraints: Constraints,
    profiles: Sequence[str] = PROFILES,
    expected_returns: pd.Series | None = None,
    solvers: Sequence[str] = SOLVERS,
) -> dict[str, Allocation]:
    """``allocate`` for several profiles, estimating the covariance once.

    Each allocation's ``seconds`` covers its own solve and post-processing; the shared covariance
    estimate is counted in the first profile only.
    """
    chosen = [_profile(profile) for profile in profiles]
    start = time.perf_counter()
    universe = _universe(returns, constraints)
    request = _request(universe, expected_returns, solvers)
    result = {}
    for profile in chosen:
        result[profile.value] = _allocate(profile, universe, request, start)
        start = time.perf_counter()
    return result


@dataclass(frozen=True, eq=False)
class _Universe:
    """Everything the profiles need, derived once from the returns window and constraints."""

    symbols: pd.Index
    usable: np.ndarray
    covariance: np.ndarray | None
    mean: np.ndarray
    cap: float  # effective
    groups: np.ndarray | None  # cluster index per usable symbol, None when no cluster cap binds
    cluster_cap: float | None  # effective, None when it does not bind
    previous: np.ndarray | None
    turnover_penalty: float
    ridge: float
    notes: tuple[str, ...]
    configured_cap: float
    configured_cluster_cap: float | None
    effective_cluster_cap: float | None

    @property
    def usable_symbols(self) -> pd.Index:
        return self.symbols[self.usable]

    @property
    def size(self) -> int:
        return int(self.usable.sum())


@dataclass(frozen=True)
class _Request:
    """What a profile is asked for besides the universe: solvers and expected returns."""

    solvers: tuple[str, ...]
    expected: np.ndarray  # per usable symbol


@dataclass(frozen=True, eq=False)
class _Solution:
    """A profile's weights before the caps' post-processing, and how they were found."""

    weights: np.ndarray
    solver: str | None
    status: str
    objective: float | None = None
    attempts: tuple[tuple[str, str], ...] = ()
    fallback: str | None = None
    notes: tuple[str, ...] = ()


class _NotSolved(Exception):
    def __init__(self, status: str, detail: str, attempts: tuple[tuple[str, str], ...] = ()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.attempts = attempts


ProfileFunction = Callable[[_Universe, _Request], _Solution]


def _profile(profile: str) -> Profile:
    try:
        return Profile(profile)
    except ValueError:
        raise ValueError(
            f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}"
        ) from None


def _universe(returns: pd.DataFrame, constraints: Constraints) -> _Universe:
    symbols = pd.Index(returns.columns.astype(str), name="symbol")
    values = returns.to_numpy(dtype=float, na_value=np.nan)
    finite = np.isfinite(values)
    usable = finite.any(axis=0)
    notes = []
    if usable.size and not usable.any():
        notes.append("no finite returns in the window")
    elif not usable.all():
        dropped = ", ".join(symbols[~usable][:10])
        notes.append(f"no finite returns for {dropped}: weight 0")
    if not usable.any():
        usable = np.ones(symbols.size, dtype=bool)
    n = int(usable.sum())

    window = values[:, usable]
    observed = finite[:, usable]
    window = np.where(observed, window, 0.0)[observed.any(axis=1)]
    covariance = ledoit_wolf(window)[0] if window.shape[0] >= 2 else None
    if covariance is not None and not np.isfinite(covariance).all():
        covariance = None
    mean = window.mean(axis=0) if window.shape[0] else np.zeros(n)

    cap = _feasible_cap(constraints, n, notes)
    groups, cluster_cap, effective_cluster_cap = None, None, constraints.cluster_cap
    if constraints.clusters is not None and constraints.cluster_cap is not None and n:
        members = symbols[usable]
        labels = constraints.clusters.reindex(members)
        keys = np.where(
            labels.notna().to_numpy(),
            ("cluster:" + labels.astype(str)).to_numpy(),
            ("symbol:" + members).to_numpy(),
        )
        groups = pd.factorize(keys)[0]
        sizes = np.bincount(groups)
        cluster_cap = _feasible_cluster_cap(constraints, sizes, cap, notes)
        effective_cluster_cap = cluster_cap
        if cluster_cap >= sizes.max() * cap:
            groups, cluster_cap = None, None

    previous = None
    if constraints.previous is not None and constraints.turnover_penalty > 0:
        previous = constraints.previous.reindex(symbols[usable]).fillna(0.0).to_numpy(dtype=float)
    return _Universe(
        symbols=symbols,
        usable=usable,
        covariance=covariance,
        mean=mean,
        cap=cap,
        groups=groups,
        cluster_cap=cluster_cap,
        previous=previous,
        turnover_penalty=constraints.turnover_penalty,
        ridge=constraints.ridge,
        notes=tuple(notes),
        configured_cap=constraints.cap,
        configured_cluster_cap=constraints.cluster_cap,
        effective_cluster_cap=effective_cluster_cap,
    )


def _feasible_cap(constraints: Constraints, n: int, notes: list[str]) -> float:
    """The per-asset cap in force: the configured one, or 1/n when it is below and may be raised."""
    needed = 1.0 / n if n else 0.0
    if constraints.cap >= needed * (1 - 1e-12):
        return constraints.cap
    if constraints.infeasible_cap == "fail":
        raise InfeasibleCap(
            f"cap {constraints.cap:g} is infeasible for {n} names: a fully invested long-only "
            f"portfolio needs a cap of at least {needed:.6g} (1/{n}); raise `cap` to at least "
            f"{needed:.6g}, or set `infeasible_cap: raise` to proceed with it under a WARN"
        )
    notes.append(
        f"cap {constraints.cap:g} is infeasible for {n} names: raised to the minimum feasible "
        f"cap {needed:.6g} (infeasible_cap: raise)"
    )
    return needed


def _feasible_cluster_cap(
    constraints: Constraints, sizes: np.ndarray, cap: float, notes: list[str]
) -> float:
    """The cluster cap in force: the configured one, or the smallest feasible one when allowed."""
    configured = constraints.cluster_cap
    assert configured is not None
    needed = smallest_feasible_cluster_cap(sizes, cap)
    if needed <= configured * (1 + 1e-12):
        return configured
    if constraints.infeasible_cap == "fail":
        raise InfeasibleCap(
            f"cluster_cap {configured:g} is infeasible for {sizes.size} clusters of sizes "
            f"{sorted(sizes.tolist(), reverse=True)} under the asset cap {cap:g}: a fully "
            f"invested portfolio needs a cluster cap of at least {needed:.6g}; raise "
            f"`cluster_cap`, or set `infeasible_cap: raise` to proceed with it under a WARN"
        )
    notes.append(
        f"cluster_cap {configured:g} is infeasible for {sizes.size} clusters: raised to the "
        f"minimum feasible cluster cap {needed:.6g} (infeasible_cap: raise)"
    )
    return needed


def _request(
    universe: _Universe, expected_returns: pd.Series | None, solvers: Sequence[str]
) -> _Request:
    if expected_returns is None:
        return _Request(tuple(solvers), universe.mean)
    aligned = expected_returns.reindex(universe.usable_symbols)
    missing = aligned.index[~np.isfinite(aligned.to_numpy(dtype=float, na_value=np.nan))]
    if len(missing):
        raise ValueError(
            f"expected_returns: no finite value for {', '.join(missing[:10])}; pass one per symbol"
        )
    return _Request(tuple(solvers), aligned.to_numpy(dtype=float))


def _allocate(profile: Profile, universe: _Universe, request: _Request, start: float) -> Allocation:
    n = universe.size
    if universe.symbols.size == 0:
        solution = _Solution(np.zeros(0), None, "empty", notes=("no symbols",))
    elif n == 1:
        solution = _Solution(np.ones(1), None, "closed_form")
    else:
        solution = _solve(profile, universe, request)
        if solution.solver is not None and solution.status != cp.OPTIMAL:
            solution = replace(
                solution, notes=(*solution.notes, f"{solution.solver} returned {solution.status}")
            )
        solution = replace(solution, weights=_apply_caps(solution.weights, universe))
    full = np.zeros(universe.symbols.size)
    full[universe.usable] = solution.weights
    notes = (*universe.notes, *solution.notes)
    return Allocation(
        profile=profile.value,
        weights=pd.Series(full, index=universe.symbols.copy(), name="weight"),
        solver=solution.solver,
        status=solution.status,
        seconds=time.perf_counter() - start,
        objective=solution.objective,
        fallback=solution.fallback,
        reason="; ".join(notes) or None,
        attempts=solution.attempts,
        cap=universe.configured_cap,
        effective_cap=universe.cap,
        cluster_cap=universe.configured_cluster_cap,
        effective_cluster_cap=universe.effective_cluster_cap,
    )


def _solve(profile: Profile, universe: _Universe, request: _Request) -> _Solution:
    """The profile's solution, or its fallback's (hrp, then equal weight) when it is not solved."""
    try:
        return PROFILE_FUNCTIONS[profile](universe, request)
    except _NotSolved as failure:
        fallback = _FALLBACKS[profile]
        rescue = _solve(fallback, universe, request)
        return _Solution(
            weights=rescue.weights,
            solver=None,
            status=failure.status,
            attempts=failure.attempts,
            fallback=rescue.fallback or fallback.value,
            notes=(f"{profile} not solved ({failure.detail}): {fallback} used", *rescue.notes),
        )


def _optimised(function: ProfileFunction) -> ProfileFunction:
    """A solver-based profile: needs a covariance; a cap of exactly 1/n leaves only equal weight."""

    def profile(universe: _Universe, request: _Request) -> _Solution:
        if universe.covariance is None:
            raise _NotSolved("no_covariance", "fewer than two observations: no covariance")
        n = universe.size
        if n * universe.cap <= 1.0 + 1e-12:
            note = f"cap {universe.cap:.6g} with {n} symbols admits only equal weight"
            return _Solution(np.ones(n), None, "closed_form", notes=(note,))
        return function(universe, request)

    return profile


def _equal_weight(universe: _Universe, request: _Request) -> _Solution:
    return _Solution(np.ones(universe.size), None, "closed_form")


def _hrp(universe: _Universe, request: _Request) -> _Solution:
    if universe.covariance is None:
        raise _NotSolved("failed", "fewer than two observations: no covariance")
    raw = hrp_weights(universe.covariance, labels=list(universe.usable_symbols))
    return _Solution(raw, None, "closed_form")


def _turnover(universe: _Universe, weights, *, budget=1.0, norm1=cp.norm1):
    """The L1 turnover term ``λ·‖w − budget·p‖₁``: a cvxpy expression, or with ``norm1=_l1`` its
    value; 0 without previous weights. ``budget`` is κ in max_sharpe's homogenised variables."""
    if universe.previous is None:
        return 0.0
    return universe.turnover_penalty * norm1(weights - budget * universe.previous)


def _l1(values: np.ndarray) -> float:
    return float(np.abs(values).sum())


def _min_variance(universe: _Universe, request: _Request) -> _Solution:
    covariance = universe.covariance
    scale = _scale(universe)
    w = cp.Variable(universe.size)
    objective = cp.quad_form(w, cp.psd_wrap(covariance / scale)) + _turnover(universe, w) / scale
    problem = cp.Problem(cp.Minimize(objective), _linear_constraints(w, 1.0, universe))
    solver, status, attempts = _run(problem, request.solvers, exponential_cone=False)
    weights = w.value
    value = float(weights @ covariance @ weights) + _turnover(universe, weights, norm1=_l1)
    return _Solution(weights, solver, status, value, attempts)


def _risk_parity(universe: _Universe, request: _Request) -> _Solution:
    covariance = universe.covariance
    scale = _scale(universe)
    n = universe.size
    y = cp.Variable(n)
    erc = cp.Problem(
        cp.Minimize(0.5 * cp.quad_form(y, cp.psd_wrap(covariance / scale)) - cp.sum(cp.log(y)) / n)
    )
    solver, status, attempts = _run(erc, request.solvers, exponential_cone=True)
    y_value = _polish_equal_risk(covariance / scale, y.value) / math.sqrt(scale)
    weights = y_value / y_value.sum()
    if _within_caps(weights, universe) and universe.previous is None:
        value = (
            0.5 * float(y_value @ covariance @ y_value)
            - float(np.log(np.maximum(y_value, 1e-300)).sum()) / n
        )
        return _Solution(weights, solver, status, value, attempts)

    barrier = float(weights @ covariance @ weights) / n
    w = cp.Variable(n)
    objective = (
        0.5 * cp.quad_form(w, cp.psd_wrap(covariance / scale))
        - (barrier / scale) * cp.sum(cp.log(w))
        + _turnover(universe, w) / scale
    )
    capped = cp.Problem(cp.Minimize(objective), _linear_constraints(w, 1.0, universe))
    solver, status, attempts = _run(
        capped, request.solvers, exponential_cone=True, attempts=attempts
    )
    # The log barrier keeps the solution interior; a solver may still return tiny negatives.
    clipped = np.clip(w.value, 0.0, None)
    value = (
        0.5 * float(clipped @ covariance @ clipped)
        - barrier * float(np.log(np.maximum(clipped, 1e-300)).sum())
        + _turnover(universe, clipped, norm1=_l1)
    )
    return _Solution(clipped, solver, status, value, attempts)


def _max_sharpe(universe: _Universe, request: _Request) -> _Solution:
    mu = request.expected
    if _best_capped_return(mu, universe) <= 0:
        solution = _min_variance(universe, request)
        note = "no capped portfolio has a positive expected return: min_variance used"
        return replace(solution, fallback=Profile.MIN_VARIANCE.value, notes=(note,))
    covariance = universe.covariance
    scale = _scale(universe)
    n = universe.size
    regularised = covariance + universe.ridge * scale * np.eye(n)
    # μ'y = 1 with daily means of ~1e-3 would make y of ~1e3: normalise μ to a maximum of 1
    top = float(mu.max())
    y = cp.Variable(n)
    kappa = cp.Variable(nonneg=True)
    objective = cp.quad_form(y, cp.psd_wrap(regularised / scale)) + (top / scale) * _turnover(
        universe, y, budget=kappa
    )
    constraints = [(mu / top) @ y == 1, *_linear_constraints(y, kappa, universe)]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    solver, status, attempts = _run(problem, request.solvers, exponential_cone=False)
    if kappa.value is None or not kappa.value > 0:
        raise _NotSolved(status, f"{solver} returned a non-positive scale κ", attempts)
    weights = y.value / kappa.value
    y_value, kappa_value = y.value / top, float(kappa.value) / top
    value = float(y_value @ regularised @ y_value) + _turnover(
        universe, y_value, budget=kappa_value, norm1=_l1
    )
    return _Solution(weights, solver, status, value, attempts)


PROFILE_FUNCTIONS: Mapping[Profile, ProfileFunction] = {
    Profile.MIN_VARIANCE: _optimised(_min_variance),
    Profile.RISK_PARITY: _optimised(_risk_parity),
    Profile.MAX_SHARPE: _optimised(_max_sharpe),
    Profile.HRP: _hrp,
    Profile.EQUAL_WEIGHT: _equal_weight,
}
_FALLBACKS: Mapping[Profile, Profile] = {
    Profile.MIN_VARIANCE: Profile.HRP,
    Profile.RISK_PARITY: Profile.HRP,
    Profile.MAX_SHARPE: Profile.HRP,
    Profile.HRP: Profile.EQUAL_WEIGHT,
}


def smallest_feasible_cluster_cap(sizes: np.ndarray, cap: float) -> float:
    """Smallest c with Σ_k min(c, size_k·cap) ≥ 1: below it no fully invested portfolio exists."""
    capacity = np.sort(sizes * cap)
    count = capacity.size
    prefix = np.concatenate([[0.0], np.cumsum(capacity)])[:-1]
    candidate = (1.0 - prefix) / (count - np.arange(count))
    first = int(np.argmax(candidate <= capacity * (1 + 1e-12)))
    return float(candidate[first])


def _polish_equal_risk(covariance: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Damped Newton steps on ``½y'Σy − (1/n)Σ log y`` from a conic solver's solution.

    Conic solvers stop at risk contributions equal to about 1e-5; the problem is smooth and
    strictly convex near its optimum, so a few Newton steps reach machine precision.
    """
    n = start.size
    y = np.maximum(start, 1e-12)

    def value(point: np.ndarray) -> float:
        return 0.5 * float(point @ covariance @ point) - float(np.log(point).sum()) / n

    for _ in range(20):
        gradient = covariance @ y - 1.0 / (n * y)
        if np.abs(gradient * y).max() < 1e-15:
            break
        hessian = covariance + np.diag(1.0 / (n * y**2))
        try:
            step = -np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            break
        size = 1.0
        while size > 1e-6 and (
            (y + size * step <= 0).any() or value(y + size * step) > value(y) + 1e-15
        ):
            size *= 0.5
        if size <= 1e-6:
            break
        y = y + size * step
    return y


def _best_capped_return(mu: np.ndarray, universe: _Universe) -> float:
    """Largest μ'w over the long-only, fully invested portfolios within the asset and cluster caps.

    Without cluster caps the best assets are filled to the cap; with them it is a small linear
    programme (HiGHS), so a cluster cap that rules out every positive-return portfolio is seen
    here and max_sharpe falls back to min_variance instead of failing as infeasible.
    """
    if universe.groups is None:
        ranked = np.sort(mu)[::-1]
        fill = np.clip(1.0 - universe.cap * np.arange(ranked.size), 0.0, universe.cap)
        return float(ranked @ fill)
    labels = np.unique(universe.groups)
    membership = (universe.groups[None, :] == labels[:, None]).astype(float)
    solution = optimize.linprog(
        -mu,
        A_ub=membership,
        b_ub=np.full(labels.size, universe.cluster_cap),
        A_eq=np.ones((1, mu.size)),
        b_eq=[1.0],
        bounds=(0.0, universe.cap),
        method="highs",
    )
    return float(-solution.fun) if solution.status == 0 else -math.inf


def _scale(universe: _Universe) -> float:
    """Average variance: dividing by it keeps the solver's data of order one."""
    assert universe.covariance is not None
    average = float(np.mean(np.diag(universe.covariance)))
    return average if average > 0 else 1.0


def _linear_constraints(w: cp.Variable, budget: cp.Expression | float, universe: _Universe):
    constraints = [w >= 0, cp.sum(w) == budget, w <= universe.cap * budget]
    if universe.groups is not None:
        n = w.shape[0]
        sizes = np.bincount(universe.groups)
        binding = np.flatnonzero(sizes * universe.cap > universe.cluster_cap)
        member = np.isin(universe.groups, binding)
        rows = np.searchsorted(binding, universe.groups[member])
        matrix = sparse.csr_matrix(
            (np.ones(member.sum()), (rows, np.flatnonzero(member))), shape=(binding.size, n)
        )
        constraints.append(matrix @ w <= universe.cluster_cap * budget)
    return constraints


def _run(
    problem: cp.Problem,
    solvers: Sequence[str],
    *,
    exponential_cone: bool,
    attempts: tuple[tuple[str, str], ...] = (),
) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """Solve with the first solver that returns an accepted status and finite values.

    Returns the solver, its status and every attempt so far (``attempts`` first); raises
    ``_NotSolved`` with all of them when no solver succeeds.
    """
    tried = list(attempts)
    installed = set(cp.installed_solvers())
    for solver in solvers:
        if solver not in installed:
            tried.append((solver, "error: solver not installed"))
            continue
        if exponential_cone and solver not in _EXPONENTIAL_CONE_SOLVERS:
            tried.append((solver, "skipped: no exponential-cone support"))
            continue
        options = {}
        if solver == "CLARABEL" and max(v.size for v in problem.variables()) >= _DENSE_FROM:
            options["direct_solve_method"] = "faer"
        try:
            problem.solve(solver=solver, **options)
        except Exception as error:  # solver back ends raise many types; each is one attempt
            tried.append((solver, f"error: {type(error).__name__}: {error}"))
            continue
        status = problem.status
        values = [variable.value for variable in problem.variables()]
        if status in _SOLVED and all(
            value is not None and np.isfinite(value).all() for value in values
        ):
            tried.append((solver, status))
            return solver, status, tuple(tried)
        tried.append((solver, status if status not in _SOLVED else f"{status} without values"))
    detail = ", ".join(f"{solver} {outcome}" for solver, outcome in tried) or "no solver given"
    last = tried[-1][1].split(":")[0] if tried else "no_solver"
    raise _NotSolved(last, detail, tuple(tried))


def _within_caps(weights: np.ndarray, universe: _Universe) -> bool:
    if weights.max() > universe.cap + _CAP_TOLERANCE:
        return False
    if universe.groups is None:
        return True
    sums = np.bincount(universe.groups, weights=weights)
    return bool(sums.max() <= universe.cluster_cap + _CAP_TOLERANCE)


def _apply_caps(weights: np.ndarray, universe: _Universe) -> np.ndarray:
    """Non-negative weights summing to 1 within every cap, proportional to ``weights`` where free.

    Negatives and dust are set to 0. Cluster totals are water-filled first (each at most
    ``min(cluster_cap, size·cap)``), then assets within each cluster; an excess is shared by the
    members still below their cap in proportion to their weights. A solver's output that already
    meets the caps only changes by rounding.
    """
    keys = np.where(weights > _DUST, weights, 0.0)
    n = keys.size
    caps = np.full(n, universe.cap)
    if universe.groups is None:
        return _capped_fill(np.ones(1), keys, caps, np.zeros(n, dtype=int))
    groups = universe.groups
    count = int(groups.max()) + 1
    capacity = np.minimum(universe.cluster_cap, np.bincount(groups, weights=caps, minlength=count))
    mass = np.bincount(groups, weights=keys, minlength=count)
    totals = _capped_fill(np.ones(1), mass, capacity, np.zeros(count, dtype=int))
    return _capped_fill(totals, keys, caps, groups)


def _capped_fill(
    totals: np.ndarray, keys: np.ndarray, caps: np.ndarray, groups: np.ndarray
) -> np.ndarray:
    """Split ``totals[g]`` among group g in proportion to ``keys``, none above its cap.

    Members whose share would exceed their cap are fixed at it and the rest share the excess; a
    group whose free members all have key 0 shares its remainder equally among them. Assumes
    ``totals[g]`` does not exceed the sum of the caps in group g.
    """
    count = totals.size
    keys = keys.astype(float).copy()
    fixed = np.zeros(keys.size, dtype=bool)
    shares = np.zeros(keys.size)
    for _ in range(keys.size + 1):
        free = ~fixed
        remaining = totals - np.bincount(groups[fixed], weights=caps[fixed], minlength=count)
        key_sum = np.bincount(groups[free], weights=keys[free], minlength=count)
        starved = (key_sum <= 0) & (remaining > 0)
        if starved.any():
            keys[free & starved[groups]] = 1.0
            key_sum = np.bincount(groups[free], weights=keys[free], minlength=count)
        ratio = np.divide(
            np.maximum(remaining, 0.0), key_sum, out=np.zeros(count), where=key_sum > 0
        )
        shares = np.where(fixed, caps, ratio[groups] * keys)
        over = free & (shares > caps)
        if not over.any():
            break
        fixed |= over
    return shares


def _concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + l) for s, l in zip(starts, lengths)])`` without the loop."""
    offsets = np.cumsum(lengths) - lengths
    return np.arange(lengths.sum()) - np.repeat(offsets, lengths) + np.repeat(starts, lengths)
