import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score

from tvq_assets.quant.clusters import cluster_symbols, correlation_distance


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
