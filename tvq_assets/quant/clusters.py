"""Correlation clustering of a returns window (DOMAIN §6, partitioning).

Input is the wide frame of *simple* daily returns (index date ascending, one column per symbol,
NaN before a symbol's first return and after a delisting). Correlations are pairwise-complete:
each pair uses the dates on which both symbols have a return, so a symbol that listed mid-window
is compared with everyone on its own history only.
"""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

UNINFORMATIVE_DISTANCE = math.sqrt(0.5)
"""Distance of a pair without a usable correlation: ``sqrt(0.5 * (1 - 0))``, i.e. rho = 0."""

# A per-observation variance below this (a standard deviation of 1e-14 in return units) is
# floating-point residue of centring a constant series, not dispersion.
_DEGENERATE_VARIANCE = 1e-28


def _fitting_lookbacks(lookbacks: Sequence[int], rows: int) -> list[int]:
    """Lookbacks that fit inside ``rows`` bars; the full window when none does."""
    if any(lookback < 1 for lookback in lookbacks):
        raise ValueError(f"lookbacks must be positive bar counts, got {tuple(lookbacks)}")
    fitting = sorted({int(lookback) for lookback in lookbacks if lookback <= rows})
    return fitting or [rows]


def _pairwise_correlation(values: np.ndarray, min_overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise-complete Pearson correlation of the columns of ``values`` (NaN = missing).

    Returns ``(rho, usable)``: ``usable`` is False where the pair shares fewer than ``min_overlap``
    observations or either side is constant on the shared dates (rho is set to 0 there).
    Computed with masked matrix products, O(T·n²) without a loop over pairs.
    """
    present = np.isfinite(values)
    mask = present.astype(np.float64)
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        column_means = np.where(counts > 0, np.nansum(values, axis=0) / counts, 0.0)
    # Centring on each column's own mean changes no pairwise correlation (each pair re-centres on
    # its overlap below) but avoids cancellation in the sums of squares.
    centred = np.where(present, values - column_means, 0.0)

    overlap = mask.T @ mask
    sums = centred.T @ mask  # [i, j]: sum of x_i over the dates where j is present
    squares = (centred * centred).T @ mask
    cross = centred.T @ centred
    with np.errstate(invalid="ignore", divide="ignore"):
        covariance = cross - sums * sums.T / overlap
        variance = squares - sums * sums / overlap
        variance_t = variance.T
        usable = (
            (overlap >= min_overlap)
            & (variance > _DEGENERATE_VARIANCE * overlap)
            & (variance_t > _DEGENERATE_VARIANCE * overlap)
        )
        rho = np.where(usable, covariance / np.sqrt(variance * variance_t), 0.0)
    return np.clip(rho, -1.0, 1.0), usable


def correlation_distance(
    returns: pd.DataFrame, *, lookbacks: Sequence[int] = (60, 120, 200), min_overlap: int = 20
) -> pd.DataFrame:
    """Correlation distance ``sqrt(0.5 * (1 - rho))`` in [0, 1] averaged over several lookbacks.

    Each lookback that fits (``lookback <= len(returns)``; the full window if none fits) takes the
    last ``lookback`` rows and computes pairwise-complete correlations over the dates both symbols
    have a return. A lookback contributes to a pair only if the pair shares at least
    ``min_overlap`` returns there and neither series is constant on them; the distance is the mean
    over the contributing lookbacks. A pair with no contributing lookback (too little overlap, a
    flat stablecoin-like series, a symbol with no returns) gets ``1/sqrt(2)`` — the distance of
    rho = 0, i.e. treated as unrelated rather than guessed. Diagonal is 0; the result is symmetric,
    indexed and columned by symbol in the order of ``returns.columns``.
    """
    symbols = pd.Index(returns.columns, name="symbol")
    values = returns.to_numpy(dtype=np.float64, copy=False)
    n_symbols = values.shape[1]
    total = np.zeros((n_symbols, n_symbols))
    contributions = np.zeros((n_symbols, n_symbols))
    for lookback in _fitting_lookbacks(lookbacks, len(returns)):
        rho, usable = _pairwise_correlation(values[-lookback:], min_overlap)
        total += np.where(usable, np.sqrt(0.5 * (1.0 - rho)), 0.0)
        contributions += usable
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(contributions > 0, total / contributions, UNINFORMATIVE_DISTANCE)
    distance = 0.5 * (distance + distance.T)
    np.fill_diagonal(distance, 0.0)
    return pd.DataFrame(distance, index=symbols, columns=symbols.copy())


def _renumber(labels: np.ndarray, symbols: pd.Index) -> np.ndarray:
    """Cluster ids 1..k by descending size, ties broken by the cluster's first symbol (sorted)."""
    frame = pd.DataFrame({"label": labels, "symbol": symbols.astype(str)})
    summary = frame.groupby("label")["symbol"].agg(["size", "min"])
    order = summary.sort_values(["size", "min"], ascending=[False, True]).index
    mapping = pd.Series(np.arange(1, len(order) + 1, dtype=np.int64), index=order)
    return mapping.loc[labels].to_numpy()


def cluster_symbols(
    returns: pd.DataFrame,
    *,
    lookbacks: Sequence[int] = (60, 120, 200),
    threshold: float = 0.7,
    max_clusters: int = 25,
) -> pd.Series:
    """Ward clustering of :func:`correlation_distance`, cut at ``threshold``.

    The Ward dendrogram (scipy, on the condensed distance) is cut at merge height ``threshold``;
    if that leaves more than ``max_clusters`` clusters it is cut into ``max_clusters`` instead
    (``criterion="maxclust"``). Labels are ints 1..k, numbered by descending cluster size, ties by
    the alphabetically first symbol of the cluster. Columns are sorted before linkage so the
    partition and labels do not depend on column order. Returns a Series named ``cluster``
    indexed by symbol in the order of ``returns.columns``; one symbol is cluster 1, no symbols
    give an empty Series.
    """
    if max_clusters < 1:
        raise ValueError(f"max_clusters must be at least 1, got {max_clusters}")
    original = pd.Index(returns.columns, name="symbol")
    if len(original) == 0:
        return pd.Series([], index=original, name="cluster", dtype=np.int64)
    if len(original) == 1:
        return pd.Series([1], index=original, name="cluster", dtype=np.int64)

    ordered = returns.reindex(columns=sorted(original))
    distance = correlation_distance(ordered, lookbacks=lookbacks)
    linkage = hierarchy.linkage(
        squareform(distance.to_numpy(), checks=False), method="ward", optimal_ordering=False
    )
    labels = hierarchy.fcluster(linkage, t=threshold, criterion="distance")
    if labels.max() > max_clusters:
        labels = hierarchy.fcluster(linkage, t=max_clusters, criterion="maxclust")
    clusters = pd.Series(
        _renumber(labels, distance.index), index=distance.index, name="cluster", dtype=np.int64
    )
    return clusters.reindex(original)
