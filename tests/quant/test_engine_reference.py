"""The vectorised engine against straightforward reference implementations kept only here.

The references are the earlier, simpler formulations (masked products for every pair, one
feature table per anchor date, ``nansum`` moments, 3-D ordinal windows); they are independent
cross-checks of the fast paths on random frames with NaN (listings and delistings), constant
columns and ties.
"""

import math

import numpy as np
import pandas as pd
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tvq_assets.quant import clusters, features, inference
from tvq_assets.quant.features import FEATURE_COLUMNS

PERIODS = 365
BASELINE = 1e7


# --- references --------------------------------------------------------------------------------


def reference_distance(values: np.ndarray, lookbacks, min_overlap: int) -> np.ndarray:
    """Pairwise-complete correlation distance: masked products over every pair and lookback."""
    fitting = sorted({lb for lb in lookbacks if lb <= len(values)}) or [len(values)]
    n = values.shape[1]
    total, contributions = np.zeros((n, n)), np.zeros((n, n))
    for lookback in fitting:
        window = values[-lookback:]
        present = np.isfinite(window)
        mask = present.astype(float)
        counts = mask.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, np.nansum(window, axis=0) / counts, 0.0)
            centred = np.where(present, window - means, 0.0)
            overlap = mask.T @ mask
            sums = centred.T @ mask
            covariance = centred.T @ centred - sums * sums.T / overlap
            variance = (centred * centred).T @ mask - sums * sums / overlap
            usable = (
                (overlap >= min_overlap)
                & (variance > 1e-28 * overlap)
                & (1e-28 * overlap < variance.T)
            )
            rho = np.clip(np.where(usable, covariance / np.sqrt(variance * variance.T), 0.0), -1, 1)
        total += np.where(usable, np.sqrt(0.5 * (1.0 - rho)), 0.0)
        contributions += usable
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(contributions > 0, total / contributions, math.sqrt(0.5))
    distance = 0.5 * (distance + distance.T)
    np.fill_diagonal(distance, 0.0)
    return distance


def reference_moments(window: np.ndarray) -> dict[str, np.ndarray]:
    n = (~np.isnan(window)).sum(axis=0).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.nansum(window, axis=0) / n
        deviation = window - mean
        m2 = np.nansum(deviation**2, axis=0) / n
        m3 = np.nansum(deviation**3, axis=0) / n
        m4 = np.nansum(deviation**4, axis=0) / n
        constant = m2 <= (np.finfo(np.float64).eps * mean) ** 2
        skew = np.sqrt(n * (n - 1)) / (n - 2) * m3 / m2**1.5
        kurtosis = ((n * n - 1) * m4 / m2**2 - 3 * (n - 1) ** 2) / ((n - 2) * (n - 3))
    return {
        "n": n,
        "mean": np.where(n > 0, mean, np.nan),
        "std": np.where(n > 1, np.sqrt(m2 * n / (n - 1)), np.nan),
        "skew": np.where(~constant & (n > 2), skew, np.nan),
        "kurtosis": np.where(~constant & (n > 3), kurtosis, np.nan),
    }


def reference_entropy(values: np.ndarray, order: int = 5) -> np.ndarray:
    """Ordinal patterns by a stable argsort of every complete window, counted per column."""
    rows, columns = values.shape
    result = np.full(columns, np.nan)
    for column in range(columns):
        patterns = {}
        for start in range(rows - order + 1):
            window = values[start : start + order, column]
            if np.isnan(window).any():
                continue
            key = tuple(np.argsort(window, kind="stable"))
            patterns[key] = patterns.get(key, 0) + 1
        total = sum(patterns.values())
        if total:
            p = np.array(list(patterns.values())) / total
            result[column] = abs(-(p * np.log(p)).sum() / math.log(math.factorial(order)))
    return result


def reference_anchor_ics(returns, volume, *, lookback, horizon, fits) -> dict:
    """rank_ic's anchors the simple way: one ``compute_features`` per anchor on the past rows."""
    names = list(inference.DEFAULT_WEIGHTS)
    rows = len(returns)
    growth = np.log1p(returns.to_numpy())
    result = {}
    for k in range(1, fits + 1):
        t = rows - 1 - horizon * k
        if t + 1 < max(lookback, features.MIN_OBSERVATIONS):
            continue
        past = features.compute_features(
            returns.iloc[: t + 1],
            volume,
            periods_per_year=PERIODS,
            lookback=lookback,
            liquidity_baseline=BASELINE,
        )
        p = inference.feature_probabilities(past)[[f"p_{n}" for n in names]].to_numpy()
        forward = np.expm1(growth[t + 1 : t + 1 + horizon].sum(axis=0))
        keep = np.isfinite(forward)
        if keep.sum() < 3:
            ic = np.full(len(names), np.nan)
        else:
            ic = np.array(
                [
                    pd.Series(p[keep, j]).corr(pd.Series(forward[keep]), method="spearman")
                    for j in range(len(names))
                ]
            )
        result[returns.index[t]] = dict(zip(names, ic, strict=True))
    return result


# --- random frames -----------------------------------------------------------------------------


def random_frame(seed: int, rows: int, columns: int, *, constant: bool) -> pd.DataFrame:
    """Factor returns with listings (NaN prefix), delistings (NaN suffix), a flat column, ties."""
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((rows, 2))
    values = 0.02 * (
        factor @ rng.standard_normal((2, columns)) + rng.standard_normal((rows, columns))
    )
    for column in range(columns):
        kind = rng.integers(0, 4)
        if kind == 1:
            values[: rng.integers(1, rows), column] = np.nan
        elif kind == 2:
            values[rng.integers(1, rows) :, column] = np.nan
    if constant and columns > 2:
        values[:, 0] = 0.0  # a pegged coin
        values[:, 1] = np.round(values[:, 1], 2)  # coarse prices: ties in ordinal patterns
    if columns > 3:
        values[:, 3] = values[:, 2]  # an identical listing on a second quote
    index = pd.date_range("2024-01-01", periods=rows, name="date")
    return pd.DataFrame(values, index=index, columns=[f"S{i:02d}" for i in range(columns)])


frames = st.builds(
    random_frame,
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(25, 220),
    columns=st.integers(2, 25),
    constant=st.booleans(),
)


# --- clustering ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(frame=frames, min_overlap=st.sampled_from([5, 20, 60]))
def test_correlation_distance_equals_the_masked_reference(frame, min_overlap):
    lookbacks = (60, 120, 200)
    new = clusters.correlation_distance(frame, lookbacks=lookbacks, min_overlap=min_overlap)
    expected = reference_distance(frame.to_numpy(), lookbacks, min_overlap)
    got = new.to_numpy()
    # Squared distances (0.5 * (1 - rho)) agree to 1e-12; the square root itself amplifies the
    # last bit of a correlation of exactly 1 (an identical listing) to ~1e-8.
    np.testing.assert_allclose(got**2, expected**2, rtol=0, atol=1e-12)
    assert (got == got.T).all()
    assert (np.diag(got) == 0).all()


def test_cluster_labels_equal_the_reference_linkage_on_a_realistic_window():
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    frame = random_frame(3, 250, 120, constant=True)
    ordered = frame[sorted(frame.columns)]
    expected = hierarchy.fcluster(
        hierarchy.linkage(
            squareform(reference_distance(ordered.to_numpy(), (60, 120, 200), 20), checks=False),
            method="ward",
        ),
        t=25,
        criterion="maxclust",
    )
    labels = clusters.cluster_symbols(frame, threshold=1e-9, max_clusters=25)
    got = labels.reindex(ordered.columns).to_numpy()
    # Same partition (the numbering is ours: by size, then first symbol).
    pairs = pd.crosstab(got, expected)
    assert ((pairs > 0).sum(axis=1) == 1).all() and ((pairs > 0).sum(axis=0) == 1).all()


# --- features ------------------------------------------------------------------------------------


def cancellation_floors(window: np.ndarray) -> dict[str, np.ndarray]:
    """Per column, the absolute error two summation orders may leave in a moment whose sum has
    terms of both signs: a float sum of n terms is exact to n * eps * sum(|terms|), however small
    the sum itself (the relative error of a near-zero mean or skew is unbounded).

    mean: sum(x) / n, so the floor is n * eps * mean|x|.
    skew: c * m3 / m2**1.5 with m3 a signed sum of cubed deviations, so the floor is
        n * eps * c * mean|z|**3 (z the standardised deviations; positive m2 only scales it).
    kurtosis: (A * m4 / m2**2 - B) / C subtracts two terms of similar size when the excess
        kurtosis is near 0; m4 and m2 are sums of positive terms, each within n * eps / 2 of exact,
        so m4 / m2**2 is within 3 * n * eps / 2 per implementation: the floor is
        3 * n * eps * A * (m4 / m2**2) / C.
    n and std (a positive sum), and the entropy (a sum of -p log p >= 0 over exact pattern
    counts) suffer no cancellation and are compared relatively only.
    """
    eps = np.finfo(np.float64).eps
    moments = reference_moments(window)
    n, mean = moments["n"], moments["mean"]
    with np.errstate(divide="ignore", invalid="ignore"):
        deviation = window - mean
        m2 = np.nansum(deviation**2, axis=0) / n
        z = deviation / np.sqrt(m2)
        standardised_abs3 = np.nansum(np.abs(z) ** 3, axis=0) / n
        b2 = np.nansum(deviation**4, axis=0) / n / m2**2
        floors = {
            "mean": n * eps * np.nansum(np.abs(window), axis=0) / n,
            "skew": n * eps * np.sqrt(n * (n - 1)) / (n - 2) * standardised_abs3,
            "kurtosis": 3 * n * eps * (n * n - 1) * b2 / ((n - 2) * (n - 3)),
        }
    # Where the quantity is undefined (NaN on both sides) no floor is needed.
    return {name: np.nan_to_num(floor, nan=0.0, posinf=0.0) for name, floor in floors.items()}


@settings(max_examples=60, deadline=None)
@given(frame=frames)
# Failed under a relative tolerance alone: a near-symmetric column's skew of 3.7e-5 came out
# 2.0e-12 apart relatively, 7.5e-17 absolutely.
@example(frame=random_frame(5, 176, 5, constant=False))
def test_moments_and_entropy_equal_their_references(frame):
    for layout in (np.ascontiguousarray, np.asfortranarray):
        window = layout(frame.to_numpy())
        got, expected = features._moments(window), reference_moments(window)
        floors = cancellation_floors(window)
        for name in expected:
            floor = floors.get(name, np.zeros(window.shape[1]))
            for column in range(window.shape[1]):
                np.testing.assert_allclose(
                    got[name][column],
                    expected[name][column],
                    rtol=1e-12,
                    atol=floor[column],
                    err_msg=f"{name} of column {column}",
                )
        np.testing.assert_allclose(
            features.permutation_entropy(window), reference_entropy(window), rtol=1e-12, atol=0
        )


def _volume(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    volume = pd.DataFrame(
        rng.lognormal(16, 1, frame.shape), index=frame.index, columns=frame.columns
    )
    return volume.where(frame.notna())


@settings(max_examples=40, deadline=None)
@given(frame=frames, lookback=st.sampled_from([20, 60, 120]), data=st.data())
def test_features_at_several_dates_equal_one_table_per_date(frame, lookback, data):
    frame = frame.copy() if data.draw(st.booleans()) else frame.T.copy().T  # both memory orders
    volume = _volume(frame, 1)
    ends = data.draw(st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=6, unique=True))
    tables = features.compute_features_at(
        frame,
        volume,
        ends,
        periods_per_year=PERIODS,
        lookback=lookback,
        liquidity_baseline=BASELINE,
    )
    assert list(tables) == ends
    for t in ends:
        expected = features.compute_features(
            frame.iloc[: t + 1],
            volume,
            periods_per_year=PERIODS,
            lookback=lookback,
            liquidity_baseline=BASELINE,
        )
        pd.testing.assert_frame_equal(tables[t], expected, check_exact=True)
        assert list(tables[t].columns) == list(FEATURE_COLUMNS)


# --- rank_ic -------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    frame=st.builds(
        random_frame,
        seed=st.integers(0, 2**32 - 1),
        rows=st.integers(60, 220),
        columns=st.integers(4, 25),
        constant=st.booleans(),
    )
)
def test_rank_ic_equals_the_one_table_per_anchor_reference(frame):
    volume = _volume(frame, 2)
    parameters = {"periods_per_year": PERIODS, "lookback": 40, "liquidity_baseline": BASELINE}
    table = features.compute_features(frame, volume, **parameters)
    given_table = inference.rank_ic(
        frame, volume, features=table.assign(stalled=False), **parameters
    )
    computed = inference.rank_ic(frame, volume, **parameters)
    pd.testing.assert_frame_equal(given_table, computed)
    for name in ("weights", "mean_ic", "fallback"):
        assert given_table.attrs[name] == computed.attrs[name]
    pd.testing.assert_frame_equal(
        pd.DataFrame(given_table.attrs["anchor_ics"]), pd.DataFrame(computed.attrs["anchor_ics"])
    )
    expected = reference_anchor_ics(frame, volume, lookback=40, horizon=20, fits=6)
    assert list(computed.attrs["anchor_ics"]) == list(expected)
    for anchor, ics in expected.items():
        np.testing.assert_allclose(
            [computed.attrs["anchor_ics"][anchor][n] for n in ics],
            list(ics.values()),
            rtol=1e-9,
            atol=1e-12,
        )


def test_rank_ic_refuses_a_feature_table_of_other_symbols():
    frame = random_frame(5, 80, 6, constant=False)
    volume = _volume(frame, 2)
    parameters = {"periods_per_year": PERIODS, "lookback": 40, "liquidity_baseline": BASELINE}
    table = features.compute_features(frame, volume, **parameters)
    try:
        inference.rank_ic(frame, volume, features=table.iloc[1:], **parameters)
    except ValueError as error:
        assert "symbols differ" in str(error)
    else:
        raise AssertionError("a table of other symbols was accepted")
