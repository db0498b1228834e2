"""Conviction scores: per-symbol features mapped to probabilities and combined into a score.

Two scorers share one probability map (cross-sectional percentile ranks):
- ``log_mps``, the default: a weighted geometric mean of the probabilities, fixed weights.
- ``rank_ic``, the challenger: a weighted arithmetic mean whose weights are the average Spearman
  rank information coefficients of the probabilities against forward returns, fitted walk-forward
  on anchors inside the window only.
"""

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import pandas as pd

from tvq_assets.quant import features as feature_engine

PROBABILITY_FLOOR = 0.01

ASCENDING: tuple[str, ...] = (
    "momentum",
    "stability",
    "hurst_clean",
    "liquidity",
    "survival",
    "efficiency",
    "cvar_95",
)
"""Features where a higher value is better (cvar_95 is a return: less negative tail is better)."""

DESCENDING: tuple[str, ...] = ("entropy", "kurtosis", "skew", "volatility")
"""Features where a lower value is better; skew is ranked by its magnitude |skew|."""

DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        # The return signal itself: cross-sectional trend persistence.
        "momentum": 0.25,
        # Trend quality: the net move achieved per unit of path travelled.
        "efficiency": 0.15,
        # Low-risk premium. Stability ranks exactly as descending volatility, so the risk
        # evidence is counted once, through stability, whose NaN for a flat (pegged) series
        # drives that series to the floor instead of to the top of a volatility ranking.
        "stability": 0.10,
        # Ordinal regularity: a less random sequence of moves is more forecastable.
        "entropy": 0.10,
        # Tail risk: fat tails mean jumps, pump-and-dumps and unstable estimates.
        "kurtosis": 0.10,
        # Tradability at the sleeve's size; below the baseline, capacity and costs bite.
        "liquidity": 0.10,
        # Prior against recent listings: short histories fail more often and estimate worse.
        "survival": 0.10,
        # A small sanity prior: on 120 bars a Hurst far from 0.5 usually reflects pegs, stale
        # prints or a one-off regime rather than durable memory.
        "hurst_clean": 0.05,
        # Lopsided distributions (lottery tickets or crash-prone) are penalised lightly.
        "skew": 0.05,
    }
)
"""Log-MPS weights; they sum to 1, so the score is a weighted geometric mean of probabilities."""


def feature_probabilities(features: pd.DataFrame) -> pd.DataFrame:
    """Map each directional feature to a probability in [PROBABILITY_FLOOR, 1] per symbol.

    p = cross-sectional percentile rank among the symbols where the feature is known (average
    rank for ties, best symbol = 1, worst = 1/n), ascending or descending as listed in ASCENDING
    and DESCENDING (skew by |skew|), floored at 0.01. A NaN feature gets the floor: a symbol is
    never rewarded for evidence it cannot show. Columns ``p_<feature>`` for every directional
    feature present in ``features``; index as ``features``.
    """
    names = [name for name in (*ASCENDING, *DESCENDING) if name in features.columns]
    values = features[names].to_numpy(dtype=np.float64, copy=True)
    for position, name in enumerate(names):
        if name == "skew":
            values[:, position] = np.abs(values[:, position])
        if name in DESCENDING:
            values[:, position] = -values[:, position]
    # One ranking call for every feature: negating a descending feature ranks it descending.
    ranks = pd.DataFrame(values).rank(method="average", pct=True).to_numpy()
    probabilities = np.clip(np.nan_to_num(ranks, nan=PROBABILITY_FLOOR), PROBABILITY_FLOOR, 1.0)
    return pd.DataFrame(
        probabilities, index=features.index, columns=[f"p_{name}" for name in names]
    )


def _normalised(weights: Mapping[str, float]) -> dict[str, float]:
    if any(value < 0 or not np.isfinite(value) for value in weights.values()):
        raise ValueError(f"weights must be finite and non-negative, got {dict(weights)}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError(f"weights must have a positive sum, got {dict(weights)}")
    return {name: float(value) / total for name, value in weights.items()}


def _weighted_probabilities(
    features: pd.DataFrame, weights: Mapping[str, float]
) -> tuple[pd.DataFrame, np.ndarray]:
    probabilities = feature_probabilities(features)
    missing = [name for name in weights if f"p_{name}" not in probabilities.columns]
    if missing:
        raise ValueError(
            f"weights name features without a probability: {missing}; "
            f"expected a subset of {(*ASCENDING, *DESCENDING)} present in the features"
        )
    chosen = probabilities[[f"p_{name}" for name in weights]]
    return chosen, np.array(list(weights.values()))


def log_mps(
    features: pd.DataFrame, *, weights: Mapping[str, float] = DEFAULT_WEIGHTS
) -> pd.DataFrame:
    """Log-MPS conviction score: exp(Σ w_f · log p_f) with weights normalised to sum to 1.

    The score is a weighted geometric mean of the probabilities, so it lies in
    [PROBABILITY_FLOOR, 1] ⊂ (0, 1] and one very weak feature cannot be averaged away.
    Columns: score, p_<feature> for each weighted feature, model ("log_mps"); the normalised
    weights are in ``attrs["weights"]``.
    """
    normalised = _normalised(weights)
    probabilities, vector = _weighted_probabilities(features, normalised)
    score = np.exp(np.log(probabilities.to_numpy()) @ vector)
    frame = pd.DataFrame({"score": score}, index=features.index)
    frame = pd.concat([frame, probabilities], axis=1)
    frame["model"] = "log_mps"
    frame.attrs["weights"] = normalised
    return frame


def _spearman_by_column(probabilities: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column with ``forward`` over rows where forward is finite."""
    keep = np.isfinite(forward)
    if keep.sum() < 3:
        return np.full(probabilities.shape[1], np.nan)
    ranks = pd.DataFrame(probabilities[keep]).rank(method="average").to_numpy()
    target = pd.Series(forward[keep]).rank(method="average").to_numpy()
    ranks = ranks - ranks.mean(axis=0)
    target = target - target.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        ic = (ranks * target[:, None]).sum(axis=0) / np.sqrt(
            (ranks**2).sum(axis=0) * (target**2).sum()
        )
    return np.where(np.isfinite(ic), ic, np.nan)


def rank_ic(
    returns: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    *,
    periods_per_year: int,
    lookback: int = 120,
    liquidity_baseline: float,
    horizon: int = 20,
    fits: int = 6,
    features: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Challenger score: rank-IC-weighted mean of feature probabilities, fitted walk-forward.

    Anchors are the rows t = T−1−horizon, T−1−2·horizon, ... (at most ``fits`` of them, T the
    number of rows), keeping those with a full feature window (t + 1 >= lookback). At each
    anchor the features use rows <= t only and are compared with the forward compounded return
    Π(1 + r) − 1 over rows t+1 .. t+horizon, all inside the window; symbols with a missing
    return in that span are left out of that anchor. The Spearman IC of each probability in
    DEFAULT_WEIGHTS is averaged over anchors (undefined ICs skipped), negative averages are
    clipped to 0 and the rest normalised to sum to 1. With no usable anchor, or no positive IC,
    DEFAULT_WEIGHTS are used. The score of the last row's features is Σ w_f · p_f, which lies
    in [PROBABILITY_FLOOR, 1]. Same columns as ``log_mps`` with model "rank_ic"; ``attrs`` hold
    "weights", "mean_ic" (per feature, NaN read as 0), "anchor_ics" ({anchor date: {feature:
    IC}}) and "fallback" (None, or why DEFAULT_WEIGHTS were used).

    ``features``: the caller's feature table of this same ``returns`` / ``dollar_volume`` with the
    same parameters (``compute_features``, extra columns allowed), reused for the last row
    instead of being computed again; its index must be ``returns.columns``. The anchors' tables
    are computed together in one pass (``compute_features_at``).
    """
    if horizon < 1 or fits < 0:
        raise ValueError(f"rank_ic needs horizon >= 1 and fits >= 0, got {horizon}, {fits}")
    names = list(DEFAULT_WEIGHTS)
    values = returns.to_numpy(dtype=np.float64)
    n_rows = len(returns)
    anchors = [
        t
        for t in (n_rows - 1 - horizon * k for k in range(1, fits + 1))
        if t + 1 >= max(lookback, feature_engine.MIN_OBSERVATIONS)
    ]
    with np.errstate(invalid="ignore"):
        growth = np.log1p(values)  # a return below -100% is invalid input: NaN, left out
    parameters = {
        "periods_per_year": periods_per_year,
        "lookback": lookback,
        "liquidity_baseline": liquidity_baseline,
    }
    past_tables = feature_engine.compute_features_at(returns, dollar_volume, anchors, **parameters)
    anchor_ics = {}
    for t in anchors:
        probabilities = feature_probabilities(past_tables[t])[[f"p_{name}" for name in names]]
        forward = np.expm1(growth[t + 1 : t + 1 + horizon].sum(axis=0))
        anchor_ics[returns.index[t]] = _spearman_by_column(probabilities.to_numpy(), forward)
    anchor_frame = pd.DataFrame.from_dict(anchor_ics, orient="index", columns=names).astype(
        np.float64
    )
    anchor_frame.index.name = "anchor"

    mean_ic = anchor_frame.mean(axis=0, skipna=True).fillna(0.0)
    positive = mean_ic.clip(lower=0.0)
    weights = dict(DEFAULT_WEIGHTS)
    if anchor_frame.empty:
        fallback = "no anchor fits inside the window"
    elif positive.sum() <= 0:
        fallback = "no feature has a positive mean rank IC"
    else:
        fallback = None
        weights = {name: float(positive[name] / positive.sum()) for name in names}

    if features is None:
        latest = feature_engine.compute_features(returns, dollar_volume, **parameters)
    elif not features.index.equals(pd.Index(returns.columns.astype(str))):
        raise ValueError(
            "rank_ic: the feature table's symbols differ from the returns' columns "
            f"({len(features)} rows vs {returns.shape[1]} columns); pass the table of these returns"
        )
    else:
        latest = features
    probabilities, vector = _weighted_probabilities(latest, _normalised(weights))
    score = np.clip(probabilities.to_numpy() @ vector, PROBABILITY_FLOOR, 1.0)
    frame = pd.DataFrame({"score": score}, index=latest.index)
    frame = pd.concat([frame, probabilities], axis=1)
    frame["model"] = "rank_ic"
    frame.attrs["weights"] = weights
    frame.attrs["mean_ic"] = mean_ic.to_dict()
    # Plain dicts, not a frame: pandas compares attrs when concatenating frames.
    frame.attrs["anchor_ics"] = anchor_frame.to_dict(orient="index")
    frame.attrs["fallback"] = fallback
    return frame
