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

MIN_OVERLAP = 20
"""Shared returns a pair needs inside a lookback for that lookback's correlation to count."""

# A per-observation variance below this (a standard deviation of 1e-14 in return units) is
# floating-point residue of centring a constant series, not dispersion.
_DEGENERATE_VARIANCE = 1e-28


def _fitting_lookbacks(lookbacks: Sequence[int], rows: int) -> list[int]:
    """Lookbacks that fit inside ``rows`` bars; the full window when none does."""
    if any(lookback < 1 for lookback in lookbacks):
        raise ValueError(f"lookbacks must be positive bar counts, got {tuple(lookbacks)}")
    fitting = sorted({int(lookback) for lookback in lookbacks if lookback <= rows})
    return fitting or [rows]


def _masked_rows(
    values: np.ndarray, rows: np.ndarray, min_overlap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise-complete correlation of the columns ``rows`` against every column.

    Masked matrix products, O(T·|rows|·n): each pair re-centres on the dates both have. Returns
    ``(rho, usable)`` of shape ``(len(rows), n)``; ``usable`` is False where the pair shares fewer
    than ``min_overlap`` observations or either side is constant on them (rho is 0 there).
    """
    present = np.isfinite(values)
    mask = present.astype(np.float64)
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        column_means = np.where(
            counts > 0, np.where(present, values, 0.0).sum(axis=0) / counts, 0.0
        )
    # Centring on each column's own mean changes no pairwise correlation (each pair re-centres on
    # its overlap below) but avoids cancellation in the sums of squares.
    centred = np.where(present, values - column_means, 0.0)
    mask_rows, centred_rows = mask[:, rows], centred[:, rows]
    overlap = mask_rows.T @ mask
    sums_row = centred_rows.T @ mask  # [i, j]: sum of x_i over the dates where j is present
    sums_col = mask_rows.T @ centred  # [i, j]: sum of x_j over the dates where i is present
    squares_row = (centred_rows * centred_rows).T @ mask
    squares_col = mask_rows.T @ (centred * centred)
    cross = centred_rows.T @ centred
    with np.errstate(invalid="ignore", divide="ignore"):
        covariance = cross - sums_row * sums_col / overlap
        variance_row = squares_row - sums_row * sums_row / overlap
        variance_col = squares_col - sums_col * sums_col / overlap
        usable = (
            (overlap >= min_overlap)
            & (variance_row > _DEGENERATE_VARIANCE * overlap)
            & (variance_col > _DEGENERATE_VARIANCE * overlap)
        )
        rho = np.where(usable, covariance / np.sqrt(variance_row * variance_col), 0.0)
    return np.clip(rho, -1.0, 1.0), usable


def _lookback_distance(values: np.ndarray, min_overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlation distance of one lookback's rows and where it is defined (pairwise-complete).

    Returns ``(distance, usable)``: ``sqrt(0.5 * (1 - rho))`` (0 where not usable) and a uint8
    matrix of the usable pairs. Columns observed on every row of the lookback (almost all of a
    sleeve) need no masking: their correlations are one product of standardised columns in
    float64 BLAS (a symmetric rank-k update, so the result is exactly symmetric). Only columns
    with a gap (listed or delisted inside the lookback) take the masked products, for their rows
    and columns alone. The distance is transformed in place: one N×N temporary per lookback.
    """
    n_rows = values.shape[0]
    complete = np.isfinite(values).all(axis=0)
    observed = np.where(complete, values, 0.0)
    centred = np.where(complete, observed - observed.mean(axis=0), 0.0)
    sums = centred.sum(axis=0)
    variance = (centred * centred).sum(axis=0) - sums * sums / n_rows
    usable_column = complete & (variance > _DEGENERATE_VARIANCE * n_rows) & (n_rows >= min_overlap)
    scale = np.where(usable_column, 1.0 / np.sqrt(np.where(usable_column, variance, 1.0)), 0.0)
    standardised = centred * scale
    distance = standardised.T @ standardised  # rho; zero rows and columns where not usable
    np.clip(distance, -1.0, 1.0, out=distance)
    np.subtract(1.0, distance, out=distance)
    distance *= 0.5
    np.sqrt(distance, out=distance)
    usable = np.multiply.outer(usable_column.astype(np.uint8), usable_column.astype(np.uint8))
    distance *= usable
    gaps = np.flatnonzero(~complete)
    if gaps.size:
        rho, usable_gaps = _masked_rows(values, gaps, min_overlap)
        # Symmetric by construction: the gap-by-gap block takes the mean of its two orientations.
        block = rho[:, gaps]
        rho[:, gaps] = 0.5 * (block + block.T)
        rows = np.where(usable_gaps, np.sqrt(0.5 * (1.0 - rho)), 0.0)
        distance[gaps, :] = rows
        distance[:, gaps] = rows.T
        usable[gaps, :] = usable_gaps
        usable[:, gaps] = usable_gaps.T
    return distance, usable


def _distance_matrix(values: np.ndarray, lookbacks: Sequence[int], min_overlap: int) -> np.ndarray:
    """The mean correlation distance over the fitting lookbacks as a symmetric ndarray."""
    n_columns = values.shape[1]
    total = np.zeros((n_columns, n_columns))
    contributions = np.zeros(
        (n_columns, n_columns), dtype=np.int64 if len(lookbacks) > 255 else np.uint8
    )
    for lookback in _fitting_lookbacks(lookbacks, len(values)):
        distance, usable = _lookback_distance(values[-lookback:], min_overlap)
        total += distance
        contributions += usable
        del distance, usable
    np.divide(total, contributions, out=total, where=contributions > 0)
    total[contributions == 0] = UNINFORMATIVE_DISTANCE
    np.fill_diagonal(total, 0.0)
    return total


def correlation_distance(
    returns: pd.DataFrame,
    *,
    lookbacks: Sequence[int] = (60, 120, 200),
    min_overlap: int = MIN_OVERLAP,
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
    distance = _distance_matrix(values, lookbacks, min_overlap)
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

    ordered = pd.Index(sorted(original), name="symbol")
    values = returns.reindex(columns=ordered).to_numpy(dtype=np.float64)
    distance = _distance_matrix(values, lookbacks, MIN_OVERLAP)
    condensed = squareform(distance, checks=False)
    del distance  # the square matrix is not needed by the linkage: free N² floats first
    linkage = hierarchy.linkage(condensed, method="ward", optimal_ordering=False)
    labels = hierarchy.fcluster(linkage, t=threshold, criterion="distance")
    if labels.max() > max_clusters:
        labels = hierarchy.fcluster(linkage, t=max_clusters, criterion="maxclust")
    clusters = pd.Series(_renumber(labels, ordered), index=ordered, name="cluster", dtype=np.int64)
    return clusters.reindex(original)
