import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster import hierarchy
from scipy.spatial.distance import pdist, squareform
from sklearn.metrics import adjusted_rand_score

from tests.settings import settings_for
from tvq_assets.quant.clusters import (
    MICRO_CLUSTERS,
    cluster_symbols,
    clustering_method,
    correlation_distance,
    correlation_embedding,
    weighted_ward,
)
from tvq_assets.quant.policy import cluster


def _wide(values: np.ndarray, symbols: list[str] | None = None) -> pd.DataFrame:
    rows, columns = values.shape
    symbols = symbols or [f"S{i:02d}" for i in range(columns)]
    return pd.DataFrame(
        values,
        index=pd.date_range("2024-01-01", periods=rows, name="date"),
        columns=pd.Index(symbols, name="symbol"),
    )


def _planted(
    *, factors: int = 4, per_factor: int = 8, rows: int = 250, noise: float = 0.8, seed: int = 7
) -> tuple[pd.DataFrame, np.ndarray]:
    """Returns where each symbol loads on exactly one factor, and the planted labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(factors), per_factor)
    factor_returns = rng.standard_normal((rows, factors))
    values = 0.01 * (factor_returns[:, labels] + noise * rng.standard_normal((rows, len(labels))))
    order = rng.permutation(len(labels))  # interleave so column order carries no information
    return _wide(values[:, order]), labels[order]


def _naive_distance(
    returns: pd.DataFrame, lookbacks: tuple[int, ...], min_overlap: int
) -> pd.DataFrame:
    """Per-pair pandas reference: dropna on the pair, Series.corr, mean over usable lookbacks."""
    fitting = [lookback for lookback in lookbacks if lookback <= len(returns)] or [len(returns)]
    symbols = list(returns.columns)
    result = pd.DataFrame(0.0, index=symbols, columns=symbols)
    for a in symbols:
        for b in symbols:
            if a == b:
                continue
            distances = []
            for lookback in fitting:
                pair = returns.iloc[-lookback:][[a, b]].dropna()
                if len(pair) < min_overlap:
                    continue
                with np.errstate(invalid="ignore", divide="ignore"):
                    rho = pair[a].corr(pair[b])  # NaN for a constant series
                if np.isnan(rho):
                    continue
                distances.append(math.sqrt(0.5 * (1.0 - rho)))
            result.loc[a, b] = np.mean(distances) if distances else math.sqrt(0.5)
    return result


def test_planted_factor_blocks_are_recovered():
    returns, planted = _planted()
    returns.iloc[:120, 3] = np.nan  # a symbol that listed mid-window
    returns.iloc[:60, 10] = np.nan

    clusters = cluster_symbols(returns)

    assert adjusted_rand_score(planted, clusters.loc[returns.columns].to_numpy()) > 0.9


def test_correlation_distance_matches_a_naive_pairwise_computation_with_nan_prefixes():
    rng = np.random.default_rng(3)
    common = rng.standard_normal((230, 1))
    values = 0.02 * (0.6 * common + rng.standard_normal((230, 7)))
    returns = _wide(values)
    returns.iloc[:100, 1] = np.nan  # genesis mid-window
    returns.iloc[:200, 2] = np.nan  # 30 returns: usable in every lookback
    returns.iloc[:215, 3] = np.nan  # 15 returns: too little overlap anywhere
    returns.iloc[-150:, 4] = np.nan  # delisted: absent from the short lookbacks
    returns.iloc[:, 5] = 0.001  # a flat stablecoin-like series
    lookbacks = (60, 120, 200)

    distance = correlation_distance(returns, lookbacks=lookbacks, min_overlap=20)
    expected = _naive_distance(returns, lookbacks, 20)

    np.testing.assert_allclose(distance.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    assert distance.loc["S03", "S00"] == pytest.approx(math.sqrt(0.5))
    assert distance.loc["S05", "S06"] == pytest.approx(math.sqrt(0.5))
    assert list(distance.index) == list(returns.columns)
    assert distance.index.name == "symbol"


def test_a_window_shorter_than_every_lookback_uses_the_full_window():
    returns, _ = _planted(rows=45, factors=2, per_factor=3)

    short = correlation_distance(returns, lookbacks=(60, 120, 200))
    full = correlation_distance(returns, lookbacks=(45,))

    pd.testing.assert_frame_equal(short, full)
    np.testing.assert_allclose(
        short.to_numpy(), _naive_distance(returns, (45,), 20).to_numpy(), atol=1e-12
    )


def test_perfectly_correlated_and_anticorrelated_pairs_have_distance_zero_and_one():
    rng = np.random.default_rng(11)
    base = rng.standard_normal(100)
    returns = _wide(np.column_stack([base, 2.0 * base + 0.01, -base]))

    distance = correlation_distance(returns)

    assert distance.loc["S00", "S01"] == pytest.approx(0.0, abs=1e-7)
    assert distance.loc["S00", "S02"] == pytest.approx(1.0, abs=1e-12)


def test_too_many_clusters_at_the_threshold_fall_back_to_max_clusters():
    rng = np.random.default_rng(5)
    returns = _wide(0.01 * rng.standard_normal((200, 30)))
    distance = correlation_distance(returns)
    linkage = hierarchy.linkage(squareform(distance.to_numpy(), checks=False), method="ward")
    at_threshold = hierarchy.fcluster(linkage, t=0.7, criterion="distance").max()
    assert at_threshold > 6  # independent series: the distance cut leaves many clusters

    clusters = cluster_symbols(returns, max_clusters=6)

    assert clusters.nunique() == 6
    assert sorted(clusters.unique()) == list(range(1, 7))


def test_labels_are_numbered_by_descending_size_and_do_not_depend_on_column_order():
    returns, _ = _planted(factors=5, per_factor=6)
    rng = np.random.default_rng(0)
    # Uneven blocks: drop symbols so that sizes differ.
    returns = returns.iloc[:, : len(returns.columns) - 4]

    clusters = cluster_symbols(returns)
    shuffled = cluster_symbols(returns.iloc[:, rng.permutation(returns.shape[1])])

    pd.testing.assert_series_equal(shuffled.loc[clusters.index], clusters)
    assert list(clusters.index) == list(returns.columns)
    sizes = clusters.value_counts().sort_index()
    assert list(sizes.index) == list(range(1, len(sizes) + 1))
    assert sizes.is_monotonic_decreasing
    assert clusters.name == "cluster"
    assert clusters.dtype == np.int64


def test_equal_sized_clusters_are_ordered_by_their_first_symbol():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 150))
    noise = 0.05 * rng.standard_normal((150, 4))
    returns = _wide(np.column_stack([a, a, b, b]) + noise, symbols=["ZED", "ZOO", "ALPHA", "AMBER"])

    clusters = cluster_symbols(returns)

    assert clusters.to_dict() == {"ALPHA": 1, "AMBER": 1, "ZED": 2, "ZOO": 2}


def test_a_single_symbol_is_cluster_one_and_no_symbols_give_an_empty_series():
    one = cluster_symbols(_wide(np.random.default_rng(1).standard_normal((50, 1))))
    none = cluster_symbols(_wide(np.empty((50, 0))))

    assert one.to_dict() == {"S00": 1}
    assert none.empty and none.name == "cluster"


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    symbols=st.integers(2, 8),
    rows=st.integers(10, 90),
    scale=st.floats(0.01, 100.0),
    shift=st.floats(-1.0, 1.0),
)
def test_correlation_distance_is_a_symmetric_unit_bounded_affine_invariant_matrix(
    seed, symbols, rows, scale, shift
):
    rng = np.random.default_rng(seed)
    values = rng.standard_t(3, size=(rows, symbols)) * 0.02
    starts = rng.integers(0, rows, size=symbols)
    values[np.arange(rows)[:, None] < starts[None, :]] = np.nan
    returns = _wide(values)
    transformed = returns.copy()
    transformed["S00"] = transformed["S00"] * scale + shift * 0.01

    distance = correlation_distance(returns, lookbacks=(20, 60), min_overlap=5).to_numpy()
    moved = correlation_distance(transformed, lookbacks=(20, 60), min_overlap=5).to_numpy()

    assert np.array_equal(distance, distance.T)
    assert np.all(np.diag(distance) == 0.0)
    assert np.all((distance >= 0.0) & (distance <= 1.0))
    np.testing.assert_allclose(moved, distance, atol=1e-9)


# --- the vector method (linear memory) ---------------------------------------------------------


def _pairwise(points: np.ndarray) -> np.ndarray:
    return squareform(pdist(points))


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    symbols=st.integers(2, 12),
    rows=st.integers(25, 120),
    common=st.floats(0.0, 3.0),
)
def test_on_complete_data_the_embedding_distance_is_the_correlation_distance(
    seed, symbols, rows, common
):
    rng = np.random.default_rng(seed)
    values = 0.01 * (common * rng.standard_normal((rows, 1)) + rng.standard_t(4, (rows, symbols)))

    exact = correlation_distance(_wide(values), lookbacks=(rows,)).to_numpy()
    embedded = _pairwise(correlation_embedding(values, (rows,)))

    np.testing.assert_allclose(embedded, exact, rtol=0, atol=1e-7)


def test_over_several_lookbacks_the_squared_distance_is_the_mean_of_the_squared_ones():
    rng = np.random.default_rng(4)
    values = 0.01 * (rng.standard_normal((220, 1)) + rng.standard_normal((220, 9)))
    lookbacks = (60, 120, 200)

    per_lookback = [correlation_distance(_wide(values), lookbacks=(lb,)) for lb in lookbacks]
    embedded = _pairwise(correlation_embedding(values, lookbacks))

    mean_of_squares = np.mean([d.to_numpy() ** 2 for d in per_lookback], axis=0)
    np.testing.assert_allclose(embedded**2, mean_of_squares, rtol=0, atol=1e-12)
    # The exact method averages the distances themselves: the RMS is never below their mean.
    exact = correlation_distance(_wide(values), lookbacks=lookbacks).to_numpy()
    assert np.all(embedded >= exact - 1e-12)


def test_a_flat_or_unobserved_series_is_at_the_uninformative_distance_from_every_usable_one():
    rng = np.random.default_rng(8)
    values = 0.01 * rng.standard_normal((120, 5))
    values[:, 3] = 0.001  # flat, stablecoin-like
    values[:, 4] = np.nan  # no return at all
    values[:110, 2] = np.nan  # 10 returns: under MIN_OVERLAP

    distance = _pairwise(correlation_embedding(values, (60, 120)))

    for unusable in (2, 3, 4):
        np.testing.assert_allclose(distance[unusable, :2], math.sqrt(0.5), atol=1e-12)
    # Documented difference: unusable series sit together (the exact method keeps them apart).
    np.testing.assert_allclose(distance[2:, 2:], 0.0, atol=1e-12)


def test_a_late_listing_stays_nearest_its_sector_when_its_gap_is_filled_from_the_factors():
    returns, planted = _planted(factors=3, per_factor=10, rows=200, noise=0.5, seed=2)
    returns.iloc[:150, 0] = np.nan  # listed for the last 50 of 200 rows
    peers = planted[1:] == planted[0]

    embedded = _pairwise(correlation_embedding(returns.to_numpy(), (200,)))[0, 1:]
    exact = correlation_distance(returns, lookbacks=(200,)).to_numpy()[0, 1:]

    # Zeros in the gap would shrink rho by about sqrt(50/200) and push it away from its sector;
    # the fill carries no idiosyncratic noise, so it draws it nearer instead (documented).
    assert embedded[peers].max() < embedded[~peers].min()
    assert np.all(embedded[peers] <= exact[peers] + 0.01)


def test_weighted_ward_on_groups_equals_scipy_ward_on_the_points_repeated():
    rng = np.random.default_rng(12)
    centres = rng.standard_normal((9, 4))
    sizes = rng.integers(1, 5, size=9)
    points = np.repeat(centres, sizes, axis=0)

    ours = weighted_ward(centres, sizes)
    theirs = hierarchy.linkage(points, method="ward")

    above_duplicates = theirs[:, 2][theirs[:, 2] > 1e-9]  # merges of identical points: height 0
    np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(above_duplicates), rtol=1e-9)
    assert ours[-1, 3] == len(centres)  # scipy's count column: groups, checked against M


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    factors=st.integers(2, 6),
    per_factor=st.integers(3, 12),
    threshold=st.sampled_from([0.3, 0.5, 0.7, 1.0]),
    max_clusters=st.integers(2, 25),
)
def test_on_complete_data_with_one_lookback_the_vector_cut_is_the_exact_cut(
    seed, factors, per_factor, threshold, max_clusters
):
    # Up to MICRO_CLUSTERS symbols every symbol is its own micro-cluster: Ward on the same
    # distances, so the partition (and its labels) are the exact method's.
    returns, _ = _planted(factors=factors, per_factor=per_factor, rows=150, seed=seed % 1000)
    assert returns.shape[1] <= MICRO_CLUSTERS

    kwargs = {"lookbacks": (150,), "threshold": threshold, "max_clusters": max_clusters}
    exact = cluster_symbols(returns, method="exact", **kwargs)
    vector = cluster_symbols(returns, method="vector", **kwargs)

    pd.testing.assert_series_equal(vector, exact)


def _gappy_market(symbols: int, *, noise: float = 1.2, seed: int = 21) -> pd.DataFrame:
    """A planted 6-factor market over 230 rows where a quarter of the symbols list mid-window."""
    returns, _ = _planted(factors=6, per_factor=symbols // 6, rows=230, noise=noise, seed=seed)
    rng = np.random.default_rng(seed)
    for column in rng.choice(returns.shape[1], size=returns.shape[1] // 4, replace=False):
        returns.iloc[: int(rng.integers(30, 200)), column] = np.nan
    return returns


def test_the_vector_method_recovers_planted_blocks_through_micro_clusters_and_gaps():
    returns, planted = _planted(factors=5, per_factor=80, rows=230, noise=0.6, seed=3)
    returns.iloc[:150, :60] = np.nan  # 60 late listings, 80 returns each
    assert returns.shape[1] > MICRO_CLUSTERS  # k-means groups symbols before Ward

    clusters = cluster_symbols(returns, method="vector").loc[returns.columns].to_numpy()

    assert adjusted_rand_score(planted, clusters) == 1.0  # late listings with their sector


def test_the_vector_method_respects_max_clusters_and_ignores_column_order():
    rng = np.random.default_rng(5)
    returns = _wide(0.01 * rng.standard_normal((200, 300)), [f"S{i:03d}" for i in range(300)])

    clusters = cluster_symbols(returns, method="vector", max_clusters=6)
    shuffled = cluster_symbols(
        returns.iloc[:, rng.permutation(returns.shape[1])], method="vector", max_clusters=6
    )

    assert sorted(clusters.unique()) == list(range(1, 7))
    pd.testing.assert_series_equal(shuffled.loc[clusters.index], clusters)


def test_auto_switches_to_the_vector_method_above_the_configured_size():
    returns = _gappy_market(60, noise=4.0)
    symbols = returns.shape[1]
    exact = cluster_symbols(returns, method="exact")
    vector = cluster_symbols(returns, method="vector")
    assert not exact.equals(vector)  # gaps and three lookbacks: the methods differ here

    at_the_limit = cluster_symbols(returns, method="auto", exact_max=symbols)
    above_it = cluster_symbols(returns, method="auto", exact_max=symbols - 1)

    pd.testing.assert_series_equal(at_the_limit, exact)
    pd.testing.assert_series_equal(above_it, vector)
    assert clustering_method(2000, exact_max=2000) == "exact"
    assert clustering_method(2001, exact_max=2000) == "vector"
    assert clustering_method(5, method="vector", exact_max=2000) == "vector"
    assert clustering_method(10**6, method="exact", exact_max=2000) == "exact"


def test_an_unknown_cluster_method_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"one of \('auto', 'exact', 'vector'\), got 'ward'"):
        cluster_symbols(_gappy_market(12), method="ward")


def test_the_policy_settings_choose_the_method():
    returns = _gappy_market(60, noise=4.0)
    auto = settings_for(cluster_exact_max=returns.shape[1] - 1)
    exact = settings_for(cluster_method="exact", cluster_exact_max=returns.shape[1] - 1)
    assert not cluster_symbols(returns, method="exact").equals(
        cluster_symbols(returns, method="vector")
    )

    pd.testing.assert_series_equal(
        cluster(returns, auto), cluster_symbols(returns, method="vector")
    )
    pd.testing.assert_series_equal(
        cluster(returns, exact), cluster_symbols(returns, method="exact")
    )


def test_the_vector_method_never_builds_a_symbols_by_symbols_array():
    symbols, rows = 6000, 60
    square = symbols * symbols * 8  # one N×N float64 matrix: 288 MB
    budget = square // 4
    values = 0.01 * np.random.default_rng(6).standard_normal((rows, symbols), dtype=np.float32)
    returns = _wide(values.astype(np.float64), [f"S{i:05d}" for i in range(symbols)])

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        clusters = cluster_symbols(returns, lookbacks=(rows,), method="vector")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(clusters) == symbols
    assert peak < budget, f"peak {peak / 1e6:.0f} MB, budget {budget / 1e6:.0f} MB"
