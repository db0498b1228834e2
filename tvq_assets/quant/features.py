"""Per-symbol features of a returns window, vectorised across symbols.

Inputs are wide frames of simple daily returns (rows = the sleeve's calendar, columns = symbols).
Every building block takes a 2-D array (time x symbols) in which NaN marks a missing observation
and returns one value per symbol; no function loops over symbols.
"""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import gammaln

FEATURE_COLUMNS: tuple[str, ...] = (
    "momentum",
    "volatility",
    "stability",
    "entropy",
    "efficiency",
    "hurst",
    "hurst_clean",
    "skew",
    "kurtosis",
    "cvar_95",
    "dollar_volume",
    "liquidity",
    "history",
    "survival",
)

MIN_OBSERVATIONS = 20
"""Valid returns a symbol needs inside the feature window for its return-based features."""

SURVIVAL_HALF_LIFE_BARS = 252
"""History (in bars) at which the survival prior reaches 1/2, whatever the periods per year."""

_ZERO_VOLATILITY = 1e-12


def _as_2d(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        return array[:, None]
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array (time x symbols), got shape {array.shape}")
    return array


def _right_aligned(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each column's valid values to the bottom rows, keeping their time order.

    Returns the aligned array (NaN above the valid values) and the count of valid values.
    Interior gaps, which the returns contract forbids, are closed up.
    """
    valid = ~np.isnan(values)
    order = np.argsort(valid, axis=0, kind="stable")
    return np.take_along_axis(values, order, axis=0), valid.sum(axis=0)


def permutation_entropy(values: np.ndarray, *, order: int = 5, delay: int = 1) -> np.ndarray:
    """Normalised permutation entropy (Bandt-Pompe) of each column, in [0, 1].

    Ordinal patterns of ``order`` values spaced ``delay`` apart; ties are broken by order of
    appearance (the earlier value ranks lower, as a stable argsort). Only windows without NaN
    are counted. The Shannon entropy of the pattern frequencies is divided by log(order!), so a
    monotone series gives 0 and white noise tends to 1. NaN when a column has no complete window.
    Short series are biased downwards: n windows can show at most n of the order! patterns.
    """
    if order < 2 or delay < 1:
        raise ValueError(
            f"permutation_entropy needs order >= 2 and delay >= 1, got {order}, {delay}"
        )
    array = _as_2d(values)
    n_rows, n_cols = array.shape
    span = (order - 1) * delay + 1
    n_patterns = math.factorial(order)
    if n_rows < span:
        return np.full(n_cols, np.nan)
    n_windows = n_rows - span + 1
    # Element k of every window, as one 2-D slice per k: windows x columns, no 3-D temporary.
    lagged = [array[k * delay : k * delay + n_windows] for k in range(order)]
    complete = np.ones_like(lagged[0], dtype=bool)  # the input's memory order, C or F
    for values in lagged:
        complete &= ~np.isnan(values)
    # Lehmer code of the ordinal pattern: c_i counts later values strictly below value i, which
    # is exactly the stable-argsort tie rule, and maps the order! patterns onto 0..order!-1.
    # Narrow integers (the code is below order!) keep the passes over windows x columns cheap.
    code_type = np.int16 if n_patterns <= np.iinfo(np.int16).max else np.int64
    code = np.zeros_like(lagged[0], dtype=code_type)
    for i in range(order):
        later_below = np.zeros_like(code)
        for j in range(i + 1, order):
            later_below += lagged[j] < lagged[i]
        code = code * code_type(order - i) + later_below
    flat = code.astype(np.int64) + np.arange(n_cols, dtype=np.int64) * n_patterns
    counts = np.bincount(flat[complete], minlength=n_cols * n_patterns).reshape(n_cols, n_patterns)
    totals = counts.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        probabilities = counts / totals[:, None]
        terms = np.where(counts > 0, probabilities * np.log(probabilities), 0.0)
    entropy = -terms.sum(axis=1) / math.log(n_patterns)
    return np.where(totals > 0, np.abs(entropy), np.nan)


def _expected_rescaled_range(sizes: np.ndarray) -> np.ndarray:
    """Anis-Lloyd expected R/S of i.i.d. Gaussian chunks of each size (std with ddof=0).

    Peters' extra (m − ½)/m factor is not applied: without it the expectation matches simulated
    i.i.d. chunks to within 0.5% from m = 8 upwards, with it the small sizes are 6% low.
    """
    out = np.empty(len(sizes))
    for position, size in enumerate(sizes):
        i = np.arange(1, size)
        gamma_ratio = math.exp(gammaln((size - 1) / 2) - gammaln(size / 2)) / math.sqrt(math.pi)
        out[position] = gamma_ratio * np.sqrt((size - i) / i).sum()
    return out


def hurst_rs(values: np.ndarray, *, min_chunk: int = 8, anis_lloyd: bool = False) -> np.ndarray:
    """Rescaled-range (R/S) Hurst exponent of each column of returns.

    Each column uses its own valid observations (n of them, NaN dropped). Chunk sizes are the
    powers of two m = min_chunk, 2·min_chunk, ... with m <= n/2; for each size the series is cut
    into floor(n/m) non-overlapping chunks aligned to the most recent observation (the oldest
    n mod m values are unused), R/S = range of the cumulated demeaned chunk / its std (ddof=0),
    averaged over chunks (chunks with zero std are skipped). H is the least-squares slope of
    log(R/S) on log(m). NaN unless at least two sizes qualify, i.e. n >= 4·min_chunk.

    Plain R/S (the default) is biased upwards on short samples: for i.i.d. returns it gives
    about 0.60 on 120 observations and 0.56 on 2000. With ``anis_lloyd=True`` the slope is
    taken on log(R/S) − log(E[R/S]) (Anis-Lloyd expectation) and 0.5 is added, which centres
    i.i.d. returns near 0.5 at any length (0.495 at 120 observations).
    """
    if min_chunk < 2:
        raise ValueError(f"hurst_rs needs min_chunk >= 2, got {min_chunk}")
    aligned, counts = _right_aligned(_as_2d(values))
    n_rows, n_cols = aligned.shape
    sizes = []
    size = min_chunk
    while size <= n_rows // 2:
        sizes.append(size)
        size *= 2
    sizes_array = np.array(sizes, dtype=np.int64)
    expected = _expected_rescaled_range(sizes_array) if anis_lloyd else np.ones(len(sizes))

    sum_x = np.zeros(n_cols)
    sum_y = np.zeros(n_cols)
    sum_xx = np.zeros(n_cols)
    sum_xy = np.zeros(n_cols)
    used = np.zeros(n_cols)
    for size, expectation in zip(sizes_array, expected, strict=True):
        n_chunks = n_rows // size
        chunks = aligned[n_rows - n_chunks * size :].reshape(n_chunks, size, n_cols)
        demeaned = chunks - chunks.mean(axis=1, keepdims=True)
        walk = np.cumsum(demeaned, axis=1)
        ranges = walk.max(axis=1) - walk.min(axis=1)
        deviation = np.sqrt((demeaned**2).mean(axis=1))
        # A chunk containing NaN lies before the column's first valid value: it stays NaN.
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(deviation > 0, ranges / deviation, np.nan)
        n_ratio = (~np.isnan(ratio)).sum(axis=0)
        mean_ratio = np.where(n_ratio > 0, np.nansum(ratio, axis=0) / np.maximum(n_ratio, 1), 0.0)
        qualifies = (counts >= 2 * size) & (n_ratio > 0)
        x = math.log(size)
        with np.errstate(divide="ignore"):
            y = np.where(qualifies, np.log(np.where(qualifies, mean_ratio, 1.0) / expectation), 0.0)
        sum_x += qualifies * x
        sum_y += y
        sum_xx += qualifies * x * x
        sum_xy += y * x
        used += qualifies
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (used * sum_xy - sum_x * sum_y) / (used * sum_xx - sum_x**2)
    slope = np.where(used >= 2, slope, np.nan)
    return slope + 0.5 if anis_lloyd else slope


def efficiency_ratio(values: np.ndarray) -> np.ndarray:
    """Kaufman efficiency ratio |Σr| / Σ|r| of each column, in [0, 1]; NaN ignored.

    A column that never moves (Σ|r| = 0) has no directional efficiency and gets 0; a column
    without observations gets NaN.
    """
    array = _as_2d(values)
    observed = (~np.isnan(array)).sum(axis=0)
    net = np.abs(np.nansum(array, axis=0))
    path = np.nansum(np.abs(array), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(path > 0, net / path, 0.0)
    return np.where(observed > 0, ratio, np.nan)


def cvar(values: np.ndarray, *, level: float = 0.95) -> np.ndarray:
    """Historical CVaR (expected shortfall) of each column of simple returns, as a return.

    The mean of the k worst returns with k = floor((n − 1)·(1 − level)) + 1 over the n valid
    observations: the convention of ``empyrical.conditional_value_at_risk(cutoff=1 − level)``.
    Reported as a return, so a loss-making tail is negative (−0.08 = an 8% average tail loss).
    NaN ignored; NaN for a column without observations.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"cvar level must lie in (0, 1), got {level}")
    array = _as_2d(values)
    ordered = np.sort(array, axis=0)  # NaN sort to the end
    counts = (~np.isnan(array)).sum(axis=0)
    cutoff = round(1.0 - level, 12)
    tail = np.floor((np.maximum(counts, 1) - 1) * cutoff).astype(np.int64) + 1
    cumulative = np.cumsum(np.nan_to_num(ordered, nan=0.0), axis=0)
    tail_sum = np.take_along_axis(cumulative, (tail - 1)[None, :], axis=0)[0]
    return np.where(counts > 0, tail_sum / tail, np.nan)


def _median(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values, axis=0)
    counts = (~np.isnan(values)).sum(axis=0)
    low = np.take_along_axis(ordered, np.maximum((counts - 1) // 2, 0)[None, :], axis=0)[0]
    high = np.take_along_axis(ordered, np.maximum(counts // 2, 0)[None, :], axis=0)[0]
    return np.where(counts > 0, (low + high) / 2, np.nan)


def _moments(window: np.ndarray) -> dict[str, np.ndarray]:
    """NaN-aware count, mean, std (ddof=1), bias-corrected skew and excess kurtosis per column.

    Skew and kurtosis follow scipy.stats.skew(bias=False) and kurtosis(fisher=True, bias=False),
    including scipy's rule that a numerically constant column gives NaN.
    """
    valid = ~np.isnan(window)
    n = valid.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(valid, window, 0.0).sum(axis=0) / n
        # Missing observations contribute an exact 0 to every power sum, as nansum would.
        deviation = np.where(valid, window - mean, 0.0)
        squared = deviation * deviation
        m2 = squared.sum(axis=0) / n
        m3 = (squared * deviation).sum(axis=0) / n
        m4 = (squared * squared).sum(axis=0) / n
        std = np.sqrt(m2 * n / (n - 1))
        constant = m2 <= (np.finfo(np.float64).eps * mean) ** 2
        skew = np.sqrt(n * (n - 1)) / (n - 2) * m3 / m2**1.5
        kurtosis = ((n * n - 1) * m4 / m2**2 - 3 * (n - 1) ** 2) / ((n - 2) * (n - 3))
    return {
        "n": n,
        "mean": np.where(n > 0, mean, np.nan),
        "std": np.where(n > 1, std, np.nan),
        "skew": np.where(~constant & (n > 2), skew, np.nan),
        "kurtosis": np.where(~constant & (n > 3), kurtosis, np.nan),
    }


def _check_parameters(lookback: int, periods_per_year: int, liquidity_baseline: float) -> None:
    if lookback < 2:
        raise ValueError(f"compute_features needs lookback >= 2, got {lookback}")
    if periods_per_year <= 0:
        raise ValueError(f"compute_features needs periods_per_year > 0, got {periods_per_year}")
    if not liquidity_baseline > 0:
        raise ValueError(f"compute_features needs liquidity_baseline > 0, got {liquidity_baseline}")


def _feature_block(
    window: np.ndarray,
    volume_window: np.ndarray,
    history: np.ndarray,
    *,
    periods_per_year: int,
    liquidity_baseline: float,
    entropy_order: int,
) -> dict[str, np.ndarray]:
    """Every feature of each column of a (time x columns) window; see :func:`compute_features`.

    Each column is computed on its own, so windows of several dates can be laid side by side
    and computed in one call.
    """
    moments = _moments(window)
    enough = moments["n"] >= MIN_OBSERVATIONS
    volatility = moments["std"] * math.sqrt(periods_per_year)
    with np.errstate(divide="ignore"):
        stability = np.where(volatility > _ZERO_VOLATILITY, 1.0 / volatility, np.nan)
    hurst = hurst_rs(window, anis_lloyd=True)
    with np.errstate(divide="ignore"):
        survival = np.where(
            history > 0, 1.0 / (1.0 + (SURVIVAL_HALF_LIFE_BARS / history) ** 2), 0.0
        )
    median_volume = _median(volume_window)

    def masked(values: np.ndarray) -> np.ndarray:
        return np.where(enough, values, np.nan)

    return {
        "momentum": masked(moments["mean"] * periods_per_year),
        "volatility": masked(volatility),
        "stability": masked(stability),
        "entropy": masked(permutation_entropy(window, order=entropy_order)),
        "efficiency": masked(efficiency_ratio(window)),
        "hurst": masked(hurst),
        "hurst_clean": masked(1.0 - 2.0 * np.abs(hurst - 0.5)),
        "skew": masked(moments["skew"]),
        "kurtosis": masked(moments["kurtosis"]),
        "cvar_95": masked(cvar(window, level=0.95)),
        "dollar_volume": median_volume,
        "liquidity": np.minimum(1.0, median_volume / liquidity_baseline),
        "history": history,
        "survival": survival,
    }


def _table(columns: dict[str, np.ndarray], symbols: pd.Index) -> pd.DataFrame:
    index = pd.Index(symbols.astype(str), name="symbol")
    return pd.DataFrame(columns, index=index, columns=list(FEATURE_COLUMNS), dtype=np.float64)


def compute_features(
    returns: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    *,
    periods_per_year: int,
    lookback: int = 120,
    liquidity_baseline: float,
    entropy_order: int = 5,
) -> pd.DataFrame:
    """Per-symbol features of the last ``lookback`` rows of a wide frame of simple returns.

    - momentum: mean return × periods_per_year; volatility: std (ddof=1) × √periods_per_year.
    - stability: 1 / volatility; NaN when volatility is zero (a flat series has no risk to invert).
    - entropy: permutation entropy of order ``entropy_order`` in [0, 1].
    - efficiency: Kaufman |Σr| / Σ|r| (0 for a series that never moves).
    - hurst: R/S Hurst exponent with the Anis-Lloyd correction (i.i.d. returns ≈ 0.5
      whatever the sample length); hurst_clean = 1 − 2|H − 0.5| (1 at H = 0.5, may be < 0).
    - skew, kurtosis: bias-corrected sample skew and excess kurtosis (scipy, bias=False).
    - cvar_95: historical CVaR 95% as a (negative for losses) daily return.
    - dollar_volume: median daily dollar volume in the window; liquidity = min(1, it / baseline).
    - history: valid returns in the whole frame; survival = 1 / (1 + (252 / history)²).

    Recent listings use the observations they have. Return-based features are NaN below
    MIN_OBSERVATIONS (20) valid returns in the window; hurst additionally needs 32 (two chunk
    sizes of 8). ``dollar_volume`` is aligned to ``returns``' rows and columns; symbols without
    any dollar volume in the window get NaN liquidity. Index: symbol, in ``returns.columns`` order.
    """
    _check_parameters(lookback, periods_per_year, liquidity_baseline)
    all_returns = returns.to_numpy(dtype=np.float64)
    volume = dollar_volume.reindex(index=returns.index, columns=returns.columns)
    columns = _feature_block(
        all_returns[-lookback:],
        volume.to_numpy(dtype=np.float64)[-lookback:],
        (~np.isnan(all_returns)).sum(axis=0).astype(np.float64),
        periods_per_year=periods_per_year,
        liquidity_baseline=liquidity_baseline,
        entropy_order=entropy_order,
    )
    return _table(columns, returns.columns)


def compute_features_at(
    returns: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    ends: Sequence[int],
    *,
    periods_per_year: int,
    lookback: int = 120,
    liquidity_baseline: float,
    entropy_order: int = 5,
) -> dict[int, pd.DataFrame]:
    """The feature tables at several row positions of one frame, computed in one pass.

    ``result[t]`` equals ``compute_features(returns.iloc[: t + 1], dollar_volume, ...)``: the
    features of the ``lookback`` rows ending at row ``t`` (fewer near the start), with
    ``history`` counted from the first row to ``t`` (one cumulative count for every ``t``).
    The windows of all positions with the same length are laid side by side and computed in a
    single call of every building block, instead of one call per position.
    """
    _check_parameters(lookback, periods_per_year, liquidity_baseline)
    n_rows, n_cols = returns.shape
    if any(not 0 <= t < n_rows for t in ends):
        raise ValueError(f"compute_features_at needs row positions in [0, {n_rows}), got {ends}")
    all_returns = returns.to_numpy(dtype=np.float64)
    volume = dollar_volume.reindex(index=returns.index, columns=returns.columns)
    all_volume = volume.to_numpy(dtype=np.float64)
    cumulative_valid = np.cumsum(~np.isnan(all_returns), axis=0)
    layout = np.asfortranarray if all_returns.flags.f_contiguous else np.ascontiguousarray
    by_length: dict[int, list[int]] = {}
    for t in dict.fromkeys(int(t) for t in ends):
        by_length.setdefault(min(lookback, t + 1), []).append(t)
    tables = {}
    for length, group in by_length.items():
        # The memory order of the frame's own values, so that every per-column reduction sums
        # in the same order as a single-date call and the tables are equal bit for bit.
        window = layout(np.hstack([all_returns[t + 1 - length : t + 1] for t in group]))
        volume_window = np.hstack([all_volume[t + 1 - length : t + 1] for t in group])
        history = np.concatenate([cumulative_valid[t] for t in group]).astype(np.float64)
        columns = _feature_block(
            window,
            volume_window,
            history,
            periods_per_year=periods_per_year,
            liquidity_baseline=liquidity_baseline,
            entropy_order=entropy_order,
        )
        for position, t in enumerate(group):
            part = slice(position * n_cols, (position + 1) * n_cols)
            tables[t] = _table({k: v[part] for k, v in columns.items()}, returns.columns)
    return {int(t): tables[int(t)] for t in ends}
