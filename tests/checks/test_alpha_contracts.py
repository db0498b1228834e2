"""Every rule of the alpha contracts, each broken alone by a crafted frame (no Dagster)."""

import functools
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_assets.quant import features as feature_engine
from tvq_assets.quant import inference as inference_engine
from tvq_checks import alpha_contracts

AS_OF = pd.Timestamp("2026-06-30")
SYMBOLS = [f"S{i:02d}" for i in range(8)]
MIN_HISTORY = 90


def engine_features() -> pd.DataFrame:
    """Features of seeded fat-tailed returns, as the features asset stores them (a fresh copy)."""
    return _engine_features().copy()


@functools.cache
def _engine_features() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    dates = pd.date_range("2025-12-01", periods=160, freq="D", name="date")
    returns = pd.DataFrame(
        0.02 * rng.standard_t(4, size=(len(dates), len(SYMBOLS))) + 0.001,
        index=dates,
        columns=pd.Index(SYMBOLS, name="symbol"),
    )
    volume = pd.DataFrame(5e6, index=dates, columns=returns.columns)
    table = feature_engine.compute_features(
        returns, volume, periods_per_year=365, liquidity_baseline=10e6
    )
    return table.assign(stalled=False, volume_spike=False)


def engine_inference(features: pd.DataFrame) -> pd.DataFrame:
    """Scores as the inference asset stores them (champion, challenger, model names)."""
    champion = inference_engine.log_mps(features)
    return champion.drop(columns="model").assign(
        model="log_mps", challenger_score=champion["score"] ** 2, challenger_model="rank_ic"
    )


def engine_clusters() -> pd.Series:
    labels = [1, 1, 2, 2, 3, 3, 3, 1]
    return pd.Series(labels, index=pd.Index(SYMBOLS, name="symbol"), name="cluster")


def winners_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "score": [0.9, 0.8, 0.7],
            "direction": "long",
            "cluster": [1, 2, 3],
            "stage": 1,
            "stage_name": "strict",
            "reason": "stage 1",
        },
        index=pd.Index(SYMBOLS[:3], name="symbol"),
    )


def features_violations(table: pd.DataFrame, universe=SYMBOLS) -> pd.DataFrame:
    return alpha_contracts.features_violations(
        table, universe=universe, as_of=AS_OF, min_history=MIN_HISTORY
    )


def selection_violations(winners: pd.DataFrame, **sets) -> pd.DataFrame:
    known = {"features": SYMBOLS, "quarantined": [], "stalled": [], "excluded": []}
    return alpha_contracts.selection_violations(winners, as_of=AS_OF, **{**known, **sets})


def with_cell(table: pd.DataFrame, symbol: str, column: str, value: float) -> pd.DataFrame:
    changed = table.copy()
    changed.loc[symbol, column] = value
    return changed


def with_cell_series(labels: pd.Series, symbol: str, value: int) -> pd.Series:
    changed = labels.copy()
    changed[symbol] = value
    return changed


def appended_copy(table: pd.DataFrame, symbol: str) -> pd.DataFrame:
    return pd.concat([table, table.loc[[symbol]]])


# Each case: rule -> (violation table of a frame breaking only that rule, symbols, values).
Case = Callable[[], tuple[pd.DataFrame, list, list]]


def _features_cases() -> dict[str, Case]:
    clean = engine_features
    return {
        "finite_feature": lambda: (
            features_violations(with_cell(clean(), "S03", "skew", np.inf)),
            ["S03"],
            [np.inf],
        ),
        "feature_in_unit_interval": lambda: (
            features_violations(with_cell(clean(), "S02", "entropy", 1.25)),
            ["S02"],
            [1.25],
        ),
        "volatility_non_negative": lambda: (
            features_violations(with_cell(clean(), "S01", "volatility", -0.3)),
            ["S01"],
            [-0.3],
        ),
        "feature_defined": lambda: (
            features_violations(with_cell(clean(), "S04", "momentum", np.nan)),
            ["S04"],
            [np.nan],
        ),
        "history_at_least_minimum": lambda: (
            features_violations(with_cell(clean(), "S05", "history", 60.0)),
            ["S05"],
            [60.0],
        ),
        "symbol_eligible_upstream": lambda: (
            features_violations(clean(), universe=[s for s in SYMBOLS if s != "S06"]),
            ["S06"],
            [6.0],  # its row number in the features table
        ),
    }


def _inference_cases() -> dict[str, Case]:
    def scores() -> pd.DataFrame:
        return engine_inference(engine_features())

    def broken(symbol: str, column: str, value: float) -> pd.DataFrame:
        return alpha_contracts.inference_violations(
            with_cell(scores(), symbol, column, value), as_of=AS_OF
        )

    return {
        "score_in_unit_interval": lambda: (broken("S01", "score", 0.0), ["S01"], [0.0]),
        "probability_in_range": lambda: (broken("S02", "p_momentum", 0.005), ["S02"], [0.005]),
    }


def _clusters_cases() -> dict[str, Case]:
    def check(labels: pd.Series, *, universe=SYMBOLS, max_clusters: int = 25) -> pd.DataFrame:
        return alpha_contracts.clusters_violations(
            labels, universe=universe, as_of=AS_OF, max_clusters=max_clusters
        )

    labels = engine_clusters
    return {
        "every_symbol_clustered": lambda: (check(labels().drop("S03")), ["S03"], [np.nan]),
        "cluster_id_positive": lambda: (check(with_cell_series(labels(), "S01", 0)), ["S01"], [0]),
        "cluster_count_within_bounds": lambda: (check(labels(), max_clusters=2), [None], [3.0]),
    }


def _selection_cases() -> dict[str, Case]:
    winners = winners_table
    return {
        "winner_not_quarantined": lambda: (
            selection_violations(winners(), quarantined=["S01"]),
            ["S01"],
            [0.8],
        ),
        "winner_not_stalled": lambda: (
            selection_violations(winners(), stalled=["S02", "S07"]),
            ["S02"],
            [0.7],
        ),
        "winner_not_excluded": lambda: (
            selection_violations(winners(), excluded=["S00"]),
            ["S00"],
            [0.9],
        ),
        "winner_in_features": lambda: (
            selection_violations(winners(), features=SYMBOLS[1:]),
            ["S00"],
            [0.9],
        ),
        "winner_count_within_bounds": lambda: (
            alpha_contracts.winner_count_violations(
                3, as_of=AS_OF, minimum=5, maximum=10, reasons=("universe too small",)
            ),
            [None],
            [3.0],
        ),
    }


CASES: dict[str, Case] = {
    **_features_cases(),
    **_inference_cases(),
    **_clusters_cases(),
    **_selection_cases(),
}


def test_every_alpha_rule_has_a_crafted_case_or_a_duplicate_row_case():
    # one_row_per_symbol is shared by three contracts and has its own parametrised test below.
    assert set(CASES) | {"one_row_per_symbol"} == set(alpha_contracts.RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_a_frame_breaking_one_alpha_rule_is_reported_with_rule_symbol_and_value(rule):
    table, symbols, values = CASES[rule]()
    assert list(table["rule"]) == [rule], table.to_string()
    [finding] = table.itertuples(index=False)
    np.testing.assert_allclose(finding.value, values[0])
    if symbols[0] is None:
        # Count rules concern the whole run: no single symbol is at fault.
        assert finding.symbol is None or finding.symbol in SYMBOLS
    else:
        assert finding.symbol == symbols[0]
        assert finding.symbol in finding.message
        assert rule in finding.message
    assert finding.date == AS_OF


def test_the_winner_count_warning_carries_the_selection_reason_and_the_bounds():
    [message] = alpha_contracts.winner_count_violations(
        3, as_of=AS_OF, minimum=5, maximum=10, reasons=("universe too small",)
    )["message"]
    assert "3 winners" in message and "[5, 10]" in message and "universe too small" in message


def test_the_winner_count_rule_is_a_warning_and_the_others_are_errors():
    severities = {name: rule.severity for name, rule in alpha_contracts.RULES.items()}
    assert severities.pop("winner_count_within_bounds") == "WARN"
    assert set(severities.values()) == {"ERROR"}


@pytest.mark.parametrize(
    "violations",
    [
        lambda: features_violations(appended_copy(engine_features(), "S02")),
        lambda: alpha_contracts.inference_violations(
            appended_copy(engine_inference(engine_features()), "S02"), as_of=AS_OF
        ),
        lambda: alpha_contracts.clusters_violations(
            appended_copy(engine_clusters(), "S02"),
            universe=SYMBOLS,
            as_of=AS_OF,
            max_clusters=25,
        ),
    ],
    ids=["features", "inference", "clusters"],
)
def test_a_symbol_listed_twice_is_reported_on_both_rows(violations):
    table = violations()
    assert set(table["rule"]) == {"one_row_per_symbol"}, table.to_string()
    assert list(table["symbol"]) == ["S02", "S02"]
    # The value is the row number: the original row 2 and the appended last row.
    assert sorted(table["value"]) == [2.0, float(len(SYMBOLS))]


def test_a_symbol_clustered_but_not_in_the_universe_is_reported():
    labels = pd.concat([engine_clusters(), pd.Series({"ZZZ": 2})])
    table = alpha_contracts.clusters_violations(
        labels, universe=SYMBOLS, as_of=AS_OF, max_clusters=25
    )
    assert list(table["rule"]) == ["symbol_eligible_upstream"]
    assert list(table["symbol"]) == ["ZZZ"]


def test_frames_made_by_the_engine_satisfy_every_alpha_contract():
    table = engine_features()
    assert features_violations(table).empty
    assert alpha_contracts.inference_violations(engine_inference(table), as_of=AS_OF).empty
    labels = engine_clusters()
    assert alpha_contracts.clusters_violations(
        labels, universe=SYMBOLS, as_of=AS_OF, max_clusters=3
    ).empty
    assert selection_violations(winners_table(), stalled=["S07"], excluded=["S05"]).empty
    assert alpha_contracts.winner_count_violations(
        15, as_of=AS_OF, minimum=15, maximum=25, reasons=()
    ).empty


def test_nan_features_that_are_allowed_to_be_missing_do_not_fail():
    # A recent listing has no Hurst exponent or skew yet; only the core features are required.
    table = with_cell(with_cell(engine_features(), "S01", "hurst", np.nan), "S01", "skew", np.nan)
    assert features_violations(table).empty


@settings(max_examples=30, deadline=None)
@given(
    value=st.one_of(
        st.floats(min_value=-2.0, max_value=3.0), st.sampled_from([0.0, 1.0, np.inf, -np.inf])
    )
)
def test_a_unit_interval_feature_fails_exactly_when_it_leaves_zero_one(value):
    table = features_violations(with_cell(engine_features(), "S04", "efficiency", value))
    expected = set()
    if math.isinf(value):
        expected.add("finite_feature")
    if not 0.0 <= value <= 1.0:
        expected.add("feature_in_unit_interval")
    assert set(table["rule"]) == expected
    assert set(table["symbol"]) <= {"S04"}


@settings(max_examples=30, deadline=None)
@given(value=st.one_of(st.floats(min_value=-1.0, max_value=2.0), st.just(np.nan)))
def test_a_score_fails_exactly_when_it_is_outside_the_half_open_unit_interval(value):
    scores = with_cell(engine_inference(engine_features()), "S03", "challenger_score", value)
    table = alpha_contracts.inference_violations(scores, as_of=AS_OF)
    failing = not (0.0 < value <= 1.0)  # NaN compares false: a missing score fails
    assert list(table["rule"]) == (["score_in_unit_interval"] if failing else [])


@settings(max_examples=30, deadline=None)
@given(
    labels=st.dictionaries(
        st.sampled_from([*SYMBOLS, "X1", "X2"]), st.integers(min_value=-1, max_value=6)
    ),
    max_clusters=st.integers(min_value=1, max_value=8),
)
def test_cluster_findings_match_a_loop_over_the_symbols(labels, max_clusters):
    series = pd.Series(labels, dtype=np.int64)
    table = alpha_contracts.clusters_violations(
        series, universe=SYMBOLS, as_of=AS_OF, max_clusters=max_clusters
    )
    expected = set()
    for symbol in SYMBOLS:
        if symbol not in labels:
            expected.add(("every_symbol_clustered", symbol))
    for symbol, label in labels.items():
        if label < 1:
            expected.add(("cluster_id_positive", symbol))
        if symbol not in SYMBOLS:
            expected.add(("symbol_eligible_upstream", symbol))
    found = set(zip(table["rule"], table["symbol"], strict=True))
    counted = {pair for pair in found if pair[0] == "cluster_count_within_bounds"}
    assert found - counted == expected
    assert len(counted) == (1 if len(set(labels.values())) > max_clusters else 0)
