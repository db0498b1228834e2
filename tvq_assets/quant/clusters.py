"""Correlation clustering of a returns window (DOMAIN §6, partitioning).

Input is the wide frame of *simple* daily returns (index date ascending, one column per symbol,
NaN before a symbol's first return and after a delisting). Correlations are pairwise-complete:
each pair uses the dates on which both symbols have a return, so a symbol that listed mid-window
is compared with everyone on its own history only.

Two methods cut the same Ward tree on the same distance scale (:func:`cluster_symbols`):

- ``exact``: Ward (scipy) on the full N×N pairwise-complete distance matrix averaged over the
  lookbacks. Memory Θ(N²), time Θ(N²·T); the decisions of every sleeve of today's sizes.
- ``vector``: each symbol becomes a point whose Euclidean distances approximate those
  (:func:`correlation_embedding`), grouped into at most ``MICRO_CLUSTERS`` micro-clusters by
  k-means (Ward's own objective), then Ward on the micro-clusters' centroids weighted by their
  sizes. Memory Θ(N·T), time Θ(N·T·MICRO_CLUSTERS) per k-means pass: linear in N. With at most
  ``MICRO_CLUSTERS`` symbols, no NaN and one lookback it is exact Ward on the exact distance.
"""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

UNINFORMATIVE_DISTANCE = math.sqrt(0.5)
"""Distance of a pair without a usable correlation: ``sqrt(0.5 * (1 - 0))``, i.e. rho = 0."""

MIN_OVERLAP = 20
"""Shared returns a pair needs inside a lookback for that lookback's correlation to count."""

CLUSTER_METHODS: tuple[str, ...] = ("auto", "exact", "vector")
"""``auto``: exact up to ``exact_max`` symbols, vector above; ``exact`` / ``vector``: always."""

MICRO_CLUSTERS = 256
"""Most micro-clusters the vector method's k-means forms before Ward (ten times the default
``max_clusters``): enough that the top of the tree, where the cut falls, is Ward's own."""

IMPUTATION_FACTORS = 8
"""Leading principal factors of the complete series that fill a gappy series' missing dates in
the vector method (a series needs ``MIN_OVERLAP`` = 20 dates, so at most 8 loadings are fitted on
20 points); the synthetic market plants 8 sectors."""

MICRO_CLUSTER_PASSES = 5
"""Most k-means (Lloyd) passes of the vector method; it stops earlier once no point moves. More
passes change no cut measurably (1 to 20 passes at 1000 and 3000 synthetic symbols: the
agreement with the exact method moves by under 0.04 adjusted Rand) and cost 0.1 s each at
10,000 symbols."""

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


def _filled_from_factors(standardised: np.ndarray, present: np.ndarray, usable: np.ndarray):
    """Fill the missing dates of the usable columns with gaps, in place, from the leading
    principal factors of the complete usable columns.

    ``standardised`` (dates × symbols) holds each column standardised on its own observed dates
    (0 where missing). The factors are the top ``IMPUTATION_FACTORS`` eigenvectors of the
    dates × dates Gram matrix of the complete columns (Θ(T²·N) time, Θ(T²) memory); each gappy
    column is regressed on them over its own dates and takes the fit on its missing ones. Without
    two complete columns the gaps stay 0.
    """
    rows = len(standardised)
    gappy = np.flatnonzero(usable & ~present.all(axis=0))
    complete = usable & present.all(axis=0)
    factors = min(IMPUTATION_FACTORS, int(complete.sum()) - 1, rows - 1)
    if not gappy.size or factors < 1:
        return
    complete_columns = standardised[:, complete]
    _, vectors = np.linalg.eigh(complete_columns @ complete_columns.T)
    basis = vectors[:, ::-1][:, :factors]  # dates × factors, orthonormal
    observed = present[:, gappy].astype(np.float64)
    # Per gappy column j: (Bᵀ diag(observed_j) B) β_j = Bᵀ z_j, one k×k system each.
    products = (basis[:, :, None] * basis[:, None, :]).reshape(rows, factors * factors)
    normal = (observed.T @ products).reshape(len(gappy), factors, factors)
    normal += 1e-9 * np.eye(factors)  # a column observed on fewer dates than factors
    loadings = np.linalg.solve(normal, (basis.T @ standardised[:, gappy]).T[:, :, None])[:, :, 0]
    fitted = basis @ loadings.T
    standardised[:, gappy] = np.where(observed > 0, standardised[:, gappy], fitted)


def correlation_embedding(
    values: np.ndarray, lookbacks: Sequence[int], min_overlap: int = MIN_OVERLAP
) -> np.ndarray:
    """Points whose Euclidean distance is the correlation distance: shape ``(N, D)``, linear in N.

    For each fitting lookback ``l`` of ``L`` and each column of ``values`` (dates × symbols):
    standardise the column on its own observed dates, fill its missing dates from the market's
    leading factors (:func:`_filled_from_factors`), centre it and scale it to Euclidean norm 1/2;
    plus one coordinate that is 0. For unit vectors ``u``,
    ``‖u_i/2 − u_j/2‖² = (2 − 2·u_i·u_j)/4 = 0.5·(1 − ρ_ij)``: the squared correlation distance.
    A column not usable in the lookback (fewer than ``min_overlap`` observations, or constant on
    them) gets the zero block and 1/2 on the extra coordinate instead: norm 1/2 again, orthogonal
    to every usable column, so its distance to each of them is ``UNINFORMATIVE_DISTANCE`` as in
    the exact method. The blocks are concatenated, each scaled by ``1/sqrt(L)``, so the squared
    distance is the mean over the lookbacks of the squared correlation distances.

    Where this differs from :func:`correlation_distance` (measured by
    ``benchmarks/bench_clusters.py``):

    - lookbacks are averaged as the root mean square of the distances, not their mean (equal for
      one lookback; the RMS is never below the mean);
    - a series with gaps is correlated on the whole lookback with its gaps filled from the
      factors, not pairwise on the dates both have; filling with 0 instead would shrink its
      correlations toward 0 by the share of dates it misses and set late listings apart as
      clusters of their own. A pair's ``min_overlap`` is checked per series, not per pair;
    - two columns unusable in the same lookback are at distance 0 there (exact: uninformative),
      so flat or too-short series group together.

    On complete columns with one lookback the distance is the exact one (floating point aside).
    """
    n_columns = values.shape[1]
    fitting = _fitting_lookbacks(lookbacks, len(values))
    weight = 0.5 / math.sqrt(len(fitting))
    blocks = []
    for lookback in fitting:
        window = values[-lookback:]
        present = np.isfinite(window)
        counts = present.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, np.where(present, window, 0.0).sum(axis=0) / counts, 0.0)
        block = np.where(present, window - means, 0.0)
        squares = (block * block).sum(axis=0)
        usable = (counts >= min_overlap) & (squares > _DEGENERATE_VARIANCE * counts)
        block *= np.where(usable, np.sqrt(counts / np.where(usable, squares, 1.0)), 0.0)
        _filled_from_factors(block, present, usable)
        block -= block.mean(axis=0)
        norms = np.sqrt((block * block).sum(axis=0))
        block *= np.where(usable, weight / np.where(usable, norms, 1.0), 0.0)
        blocks.append(block)
        blocks.append(np.where(usable, 0.0, weight)[None, :])
        del window, present
    embedding = np.empty((n_columns, sum(len(block) for block in blocks)))
    column = 0
    for block in blocks:
        embedding[:, column : column + len(block)] = block.T
        column += len(block)
    return embedding


def _squared_distances_to(
    points: np.ndarray, centres: np.ndarray, point_squares: np.ndarray | None = None
) -> np.ndarray:
    """``‖p − c‖²`` of every point to every centre, ``(len(points), len(centres))``, ≥ 0.
    ``point_squares``: the points' ``‖p‖²`` when already known."""
    if point_squares is None:
        point_squares = np.einsum("ij,ij->i", points, points)
    squared = points @ centres.T
    squared *= -2.0
    squared += point_squares[:, None]
    squared += np.einsum("ij,ij->i", centres, centres)[None, :]
    return np.maximum(squared, 0.0, out=squared)


def _micro_clusters(points: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means (Lloyd) of ``points`` into at most ``count`` groups: ``(assignment, centres,
    sizes)``, groups numbered 0..k-1 with no empty group. Deterministic: the starting centres are
    ``count`` points drawn with a fixed seed. Memory Θ(N·count). With ``count >= N`` every point
    is its own group."""
    n_points = len(points)
    if count >= n_points:
        return np.arange(n_points), points, np.ones(n_points)
    chosen = np.sort(np.random.default_rng(0).choice(n_points, size=count, replace=False))
    centres = points[chosen]
    assignment = np.full(n_points, -1)
    point_squares = np.einsum("ij,ij->i", points, points)
    for _ in range(MICRO_CLUSTER_PASSES):
        nearest = _squared_distances_to(points, centres, point_squares).argmin(axis=1)
        if np.array_equal(nearest, assignment):
            break
        assignment = nearest
        members = sparse.csr_matrix(
            (np.ones(n_points), (assignment, np.arange(n_points))), shape=(len(centres), n_points)
        )
        sizes = np.asarray(members.sum(axis=1)).ravel()
        kept = sizes > 0  # a centre that lost every point is dropped
        centres = (members[kept] @ points) / sizes[kept, None]
        renumber = np.cumsum(kept) - 1
        assignment = renumber[assignment]
    sizes = np.bincount(assignment, minlength=len(centres)).astype(np.float64)
    return assignment, centres, sizes


def weighted_ward(centres: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Ward's tree over groups of ``sizes`` points with centroids ``centres``, in scipy's linkage
    format: leaves 0..M-1 are the groups, and the fourth column counts groups (scipy checks it
    against M), not points.

    Heights on scipy's scale: merging A and B costs ``sqrt(2·n_a·n_b/(n_a+n_b))·‖c_a − c_b‖``,
    which for two single points is their distance; updates by the Lance–Williams formula for
    Ward. Groups of one point give exactly Ward on the points' Euclidean distances. Θ(M²)
    memory, Θ(M³) time: for the micro-clusters (M ≤ ``MICRO_CLUSTERS``), not for N symbols.
    """
    n_groups = len(centres)
    sizes = np.asarray(sizes, dtype=np.float64).copy()
    pair_sizes = np.multiply.outer(sizes, sizes)
    cost = np.sqrt(
        2.0 * pair_sizes / np.add.outer(sizes, sizes) * _squared_distances_to(centres, centres)
    )
    np.fill_diagonal(cost, np.inf)
    ids = np.arange(n_groups)
    leaves = np.ones(n_groups)
    linkage = np.empty((max(n_groups - 1, 0), 4))
    for step in range(n_groups - 1):
        a, b = divmod(int(np.argmin(cost)), n_groups)
        a, b = min(a, b), max(a, b)
        height = cost[a, b]
        n_a, n_b = sizes[a], sizes[b]
        merged = n_a + n_b
        # Lance–Williams for Ward on heights: d(k, A∪B)² = ((n_a+n_k)·d(k,A)² +
        # (n_b+n_k)·d(k,B)² − n_k·d(A,B)²) / (n_a+n_b+n_k).
        with np.errstate(invalid="ignore"):
            updated = np.sqrt(
                np.maximum(
                    (
                        (n_a + sizes) * cost[a] ** 2
                        + (n_b + sizes) * cost[b] ** 2
                        - sizes * height**2
                    )
                    / (merged + sizes),
                    0.0,
                )
            )
        updated[~np.isfinite(cost[a]) | ~np.isfinite(cost[b])] = np.inf
        cost[a, :] = updated
        cost[:, a] = updated
        cost[b, :] = np.inf
        cost[:, b] = np.inf
        cost[a, a] = np.inf
        leaves[a] += leaves[b]
        linkage[step] = (min(ids[a], ids[b]), max(ids[a], ids[b]), height, leaves[a])
        sizes[a] = merged
        ids[a] = n_groups + step
    return linkage


def clustering_method(n_symbols: int, *, method: str = "auto", exact_max: int = 2000) -> str:
    """``exact`` or ``vector`` for ``n_symbols`` symbols under ``method`` (see
    :data:`CLUSTER_METHODS`): ``auto`` keeps the exact method up to ``exact_max`` symbols."""
    if method not in CLUSTER_METHODS:
        raise ValueError(f"cluster method must be one of {CLUSTER_METHODS}, got {method!r}")
    if method == "auto":
        return "exact" if n_symbols <= exact_max else "vector"
    return method


def _exact_linkage(values: np.ndarray, lookbacks: Sequence[int]) -> np.ndarray:
    distance = _distance_matrix(values, lookbacks, MIN_OVERLAP)
    condensed = squareform(distance, checks=False)
    del distance  # the square matrix is not needed by the linkage: free N² floats first
    return hierarchy.linkage(condensed, method="ward", optimal_ordering=False)


def cluster_symbols(
    returns: pd.DataFrame,
    *,
    lookbacks: Sequence[int] = (60, 120, 200),
    threshold: float = 0.7,
    max_clusters: int = 25,
    method: str = "auto",
    exact_max: int = 2000,
) -> pd.Series:
    """Ward clustering of the correlation distance, cut at ``threshold``.

    ``method`` (see :data:`CLUSTER_METHODS` and the module docstring) picks how the Ward tree is
    built: ``exact`` on :func:`correlation_distance`, ``vector`` on
    :func:`correlation_embedding` via micro-clusters; ``auto`` is exact up to ``exact_max``
    symbols. Both trees' heights are on scipy's Ward scale of the correlation distance, so the
    one ``threshold`` means the same in both. The dendrogram is cut at merge height
    ``threshold``; if that leaves more than ``max_clusters`` clusters it is cut into
    ``max_clusters`` instead (``criterion="maxclust"``). Labels are ints 1..k, numbered by
    descending cluster size, ties by the alphabetically first symbol of the cluster. Columns are
    sorted before linkage so the partition and labels do not depend on column order. Returns a
    Series named ``cluster`` indexed by symbol in the order of ``returns.columns``; one symbol is
    cluster 1, no symbols give an empty Series.
    """
    if max_clusters < 1:
        raise ValueError(f"max_clusters must be at least 1, got {max_clusters}")
    chosen = clustering_method(returns.shape[1], method=method, exact_max=exact_max)
    original = pd.Index(returns.columns, name="symbol")
    if len(original) == 0:
        return pd.Series([], index=original, name="cluster", dtype=np.int64)
    if len(original) == 1:
        return pd.Series([1], index=original, name="cluster", dtype=np.int64)

    ordered = pd.Index(sorted(original), name="symbol")
    values = returns.reindex(columns=ordered).to_numpy(dtype=np.float64)
    if chosen == "exact":
        linkage = _exact_linkage(values, lookbacks)
        group_of_symbol = np.arange(len(ordered))
    else:
        points = correlation_embedding(values, lookbacks, MIN_OVERLAP)
        del values
        group_of_symbol, centres, sizes = _micro_clusters(points, MICRO_CLUSTERS)
        del points
        if len(centres) == 1:  # every symbol at one point (all flat, say): one cluster
            return pd.Series(1, index=original, name="cluster", dtype=np.int64)
        linkage = weighted_ward(centres, sizes)
    labels = hierarchy.fcluster(linkage, t=threshold, criterion="distance")
    if labels.max() > max_clusters:
        labels = hierarchy.fcluster(linkage, t=max_clusters, criterion="maxclust")
    labels = labels[group_of_symbol]
    clusters = pd.Series(_renumber(labels, ordered), index=ordered, name="cluster", dtype=np.int64)
    return clusters.reindex(original)
