import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_assets import messages
from tvq_assets.catalog import Policy
from tvq_assets.quant.selection import (
    SAFETY_RULES,
    STAGES,
    Code,
    Selection,
    SelectionPolicy,
    WarningCode,
    economic_identity,
    select,
)


def selection_policy(**changes) -> SelectionPolicy:
    """The catalog's default selection policy with ``changes``."""
    return SelectionPolicy.of(replace(Policy(), **changes))


DEFAULT = selection_policy()

BENIGN = {
    "momentum": 0.5,
    "volatility": 0.6,
    "entropy": 0.85,
    "efficiency": 0.1,
    "kurtosis": 3.0,
    "dollar_volume": 1e9,
    "liquidity": 1.0,
    "history": 500.0,
}


def _universe(
    sizes: list[int], *, seed: int = 0, prefix: str = "S"
) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Features passing every veto, distinct random scores, and clusters of the given sizes."""
    rng = np.random.default_rng(seed)
    symbols = [f"{prefix}{i:03d}" for i in range(sum(sizes))]
    index = pd.Index(symbols, name="symbol")
    features = pd.DataFrame({column: value for column, value in BENIGN.items()}, index=index)
    scores = pd.Series(rng.permutation(len(symbols)) / len(symbols) + 0.01, index=index)
    clusters = pd.Series(np.repeat(np.arange(1, len(sizes) + 1), sizes), index=index)
    return features, scores, clusters.rename("cluster")


def _admissions(selection: Selection) -> pd.DataFrame:
    return selection.audit[selection.audit["decision"] == "admitted"].set_index("symbol")


def _assert_every_winner_is_explained(selection: Selection) -> None:
    admissions = _admissions(selection)
    assert sorted(admissions.index) == sorted(selection.winners.index)
    rendered = messages.render_selection(selection)
    for symbol, winner in rendered.winners.iterrows():
        assert admissions.loc[symbol, "stage"] == winner["stage"]
        assert winner["stage_name"] == STAGES[winner["stage"] - 1]
        assert winner["reason"].startswith(f"stage {winner['stage']} ({winner['stage_name']})")
    details = rendered.audit[rendered.audit["decision"] == "admitted"].set_index("symbol")
    assert (details["detail"].reindex(rendered.winners.index) == rendered.winners["reason"]).all()


def _reasons(selection: Selection) -> pd.Series:
    return messages.render_selection(selection).winners["reason"]


def _warnings(selection: Selection) -> tuple[str, ...]:
    return messages.selection_warnings(selection.warnings)


def test_strict_stage_takes_the_best_top_n_of_every_cluster():
    features, scores, clusters = _universe([3] * 10)

    selection = select(features, scores, clusters, policy=DEFAULT)

    expected = scores.groupby(clusters).nlargest(2).index.get_level_values(-1)
    assert selection.stage_reached == 1
    assert sorted(selection.winners.index) == sorted(expected)
    assert selection.winners.groupby("cluster").size().max() == 2
    assert (selection.winners["stage_name"] == "strict").all()
    assert selection.warnings == ()
    _assert_every_winner_is_explained(selection)
    not_recruited = selection.audit[selection.audit["decision"] == "not_recruited"]
    assert set(not_recruited["symbol"]) == set(scores.index) - set(expected)
    assert (not_recruited["rule"] == "top_n").all() and (not_recruited["value"] == 3).all()


def test_winners_are_ordered_by_score_and_carry_score_cluster_and_direction():
    features, scores, clusters = _universe([3] * 10)
    features.loc["S004", "momentum"] = -0.4

    winners = select(features, scores, clusters, policy=DEFAULT).winners

    assert winners["score"].is_monotonic_decreasing
    assert winners.index.name == "symbol"
    assert list(winners.columns) == ["score", "direction", "cluster", "stage", "stage_name"]
    pd.testing.assert_series_equal(
        winners["cluster"], clusters.loc[winners.index], check_names=False
    )
    expected_direction = np.where(features.loc[winners.index, "momentum"] >= 0, "long", "short")
    assert list(winners["direction"]) == list(expected_direction)


def test_the_selection_is_capped_at_max_winners_by_score():
    features, scores, clusters = _universe([2] * 20)

    selection = select(features, scores, clusters, policy=DEFAULT)

    assert len(selection.winners) == 25
    assert sorted(selection.winners.index) == sorted(scores.nlargest(25).index)
    capped = selection.audit[selection.audit["rule"] == "max_winners"]
    assert sorted(capped["symbol"]) == sorted(scores.nsmallest(15).index)
    assert (capped["decision"] == "not_recruited").all()


def test_relaxed_stage_admits_symbols_vetoed_only_by_strict_entropy_and_efficiency():
    features, scores, clusters = _universe([3] * 8)
    # In every cluster the two best fail the strict entropy or efficiency threshold (but pass the
    # relaxed ones) and the third is heavy-tailed, which relaxation does not forgive.
    noisy = scores.groupby(clusters).nlargest(2).index.get_level_values(-1)
    features.loc[noisy[::2], "entropy"] = 0.99
    features.loc[noisy[1::2], "efficiency"] = 0.018
    heavy_tailed = scores.groupby(clusters).nsmallest(1).index.get_level_values(-1)
    features.loc[heavy_tailed, "kurtosis"] = 40.0

    selection = select(features, scores, clusters, policy=DEFAULT)

    assert selection.stage_reached == 2
    relaxed = selection.winners[selection.winners["stage"] == 2]
    assert sorted(relaxed.index) == sorted(noisy)
    assert not set(heavy_tailed) & set(selection.winners.index)
    assert len(selection.winners) == 16
    _assert_every_winner_is_explained(selection)
    vetoes = selection.audit[
        (selection.audit["decision"] == "vetoed") & (selection.audit["stage"] == 1)
    ]
    entropy = vetoes[vetoes["rule"] == "entropy"].set_index("symbol")
    assert sorted(entropy.index) == sorted(noisy[::2])
    assert (entropy["value"] == 0.99).all() and (entropy["threshold"] == 0.90).all()
    efficiency = vetoes[vetoes["rule"] == "efficiency"]
    assert sorted(efficiency["symbol"]) == sorted(noisy[1::2])
    assert "relaxed thresholds" in _reasons(selection)[relaxed.index[0]]
    stage_two_vetoes = selection.audit[
        (selection.audit["decision"] == "vetoed") & (selection.audit["stage"] == 2)
    ]
    assert set(stage_two_vetoes["rule"]) == {"kurtosis"}
    assert (stage_two_vetoes["threshold"] == 20.0).all()


def test_cluster_rescue_admits_the_best_non_stalled_member_of_a_fully_vetoed_cluster():
    features, scores, clusters = _universe([3] * 6)
    vetoed_cluster = clusters.index[clusters == 6]
    features.loc[vetoed_cluster, "kurtosis"] = 35.0
    best, second = scores.loc[vetoed_cluster].sort_values(ascending=False).index[:2]

    policy = selection_policy(min_winners=11)  # five clean clusters give 10 winners at stage 1

    selection = select(features, scores, clusters, policy=policy, stalled=[best])

    assert selection.stage_reached == 3
    rescued = selection.winners[selection.winners["stage"] == 3]
    assert list(rescued.index) == [second]
    assert rescued.loc[second, "stage_name"] == "cluster_rescue"
    assert "kurtosis=35" in _reasons(selection)[second]
    assert best not in selection.winners.index
    admission = _admissions(selection).loc[second]
    assert admission["rule"] == "cluster_rescue" and admission["stage"] == 3
    _assert_every_winner_is_explained(selection)
    assert any("stage 3" in warning for warning in _warnings(selection))
    assert [w.code for w in selection.warnings] == [WarningCode.RESCUED]


def test_global_fill_takes_the_best_remaining_scores_until_min_winners():
    features, scores, clusters = _universe([10] * 3)

    selection = select(features, scores, clusters, policy=DEFAULT)

    stage_one = scores.groupby(clusters).nlargest(2).index.get_level_values(-1)
    remaining = scores.drop(stage_one).sort_values(ascending=False)
    filled = selection.winners[selection.winners["stage"] == 4]
    assert selection.stage_reached == 4
    assert len(selection.winners) == 15
    assert list(filled.sort_values("score", ascending=False).index) == list(remaining.index[:9])
    fills = _admissions(selection).loc[filled.index]
    assert (fills["rule"] == "global_fill").all()
    assert sorted(fills["value"]) == list(range(1, 10))
    reasons = _reasons(selection)[filled.index]
    assert all("feature vetoes overridden: none" in reason for reason in reasons)
    _assert_every_winner_is_explained(selection)


def test_global_fill_overrides_feature_vetoes_but_never_stalls_or_quarantines():
    features, scores, clusters = _universe([10] * 2)
    features["volatility"] = 3.0
    top = scores.sort_values(ascending=False).index

    selection = select(
        features, scores, clusters, policy=DEFAULT, stalled=[top[0]], quarantined=[top[1]]
    )

    assert selection.stage_reached == 4
    assert len(selection.winners) == 15
    assert not {top[0], top[1]} & set(selection.winners.index)
    assert sorted(selection.winners.index) == sorted(top[2:17])
    hard = selection.audit[selection.audit["rule"].isin(["stalled", "quarantined"])]
    assert sorted(hard["stage"].unique()) == [1, 2, 3, 4]
    assert (hard["decision"] == "vetoed").all()
    assert set(hard["code"]) == {Code.STALLED, Code.QUARANTINED}


def test_one_symbol_per_economic_identity_keeps_the_better_score():
    features, scores, clusters = _universe([4, 3])
    renamed = {"S000": "BTCUSDT", "S001": "BINANCE:BTCUSDT", "S004": "BTCUSDC", "S002": "ETHUSDT"}
    features, scores, clusters = (
        frame.rename(index=renamed) for frame in (features, scores, clusters)
    )
    scores.loc[["BINANCE:BTCUSDT", "BTCUSDT", "ETHUSDT", "BTCUSDC"]] = [0.95, 0.9, 0.5, 0.99]
    policy = selection_policy(min_winners=0)

    selection = select(features, scores, clusters, policy=policy)

    # BTCUSDC (cluster 2) outranks both BTCUSDT listings in cluster 1, whose slots pass on.
    assert "BTCUSDC" in selection.winners.index
    assert not {"BTCUSDT", "BINANCE:BTCUSDT"} & set(selection.winners.index)
    assert "ETHUSDT" in selection.winners.index
    assert (selection.winners.groupby("cluster").size() == 2).all()
    duplicates = selection.audit[selection.audit["decision"] == "duplicate"]
    assert sorted(duplicates["symbol"]) == ["BINANCE:BTCUSDT", "BTCUSDT"]
    assert set(duplicates["argument"]) == {"BTCUSDC"}
    assert (duplicates["code"] == Code.DUPLICATE_IDENTITY).all()
    details = messages.audit_details(duplicates, selection.policy)
    assert all("BTC is already held by BTCUSDC" in d for d in details)


def test_a_duplicate_identity_is_not_readmitted_by_later_stages():
    features, scores, clusters = _universe([2, 2])
    features, scores, clusters = (
        frame.rename(index={"S000": "ETHUSDT", "S001": "ETHUSDC"})
        for frame in (features, scores, clusters)
    )

    selection = select(features, scores, clusters, policy=DEFAULT)

    assert len({economic_identity(s) for s in selection.winners.index}) == len(selection.winners)
    assert len(selection.winners) == 3
    duplicates = selection.audit[selection.audit["decision"] == "duplicate"]
    assert len(duplicates) == 1


@pytest.mark.parametrize(
    ("symbol", "identity"),
    [
        ("BINANCE:BTCUSDT", "BTC"),
        ("BTCUSDC", "BTC"),
        ("BTCUSDT", "BTC"),
        ("COINBASE:BTC-USD", "BTC"),
        ("ETHUSDT.P", "ETH"),
        ("BTC-PERP", "BTC"),
        ("SOLFDUSD", "SOL"),
        ("AAPL", "AAPL"),
        ("NASDAQ:MSFT", "MSFT"),
        ("BRK.B", "BRK.B"),
        ("USDT", "USDT"),
    ],
)
def test_economic_identity_strips_venue_prefix_and_quote_suffix(symbol, identity):
    assert economic_identity(symbol) == identity


def test_a_universe_smaller_than_min_winners_is_selected_whole_with_a_warning():
    features, scores, clusters = _universe([3, 2])
    features.loc["S000", "kurtosis"] = 50.0  # a feature veto: global fill overrides it

    selection = select(features, scores, clusters, policy=DEFAULT, stalled=["S004"])

    assert sorted(selection.winners.index) == ["S000", "S001", "S002", "S003"]
    assert selection.stage_reached == 4
    [shortfall] = [w for w in selection.warnings if w.code == WarningCode.SHORTFALL]
    assert shortfall.numbers["winners"] == 4 and shortfall.numbers["min_winners"] == 15
    assert shortfall.numbers["universe"] == 5 and shortfall.numbers["vetoed_for_safety"] == 1
    [warning] = [w for w in _warnings(selection) if "min_winners" in w]
    assert "only 4 winners for min_winners=15" in warning
    assert "5 symbols" in warning and "1 of them vetoed for safety (1 stalled" in warning
    assert "kurtosis=50" in _reasons(selection)["S000"]
    _assert_every_winner_is_explained(selection)


def test_an_empty_universe_gives_no_winners_and_a_warning():
    features, scores, clusters = _universe([3])

    selection = select(features, scores.rename(lambda s: s + "X"), clusters, policy=DEFAULT)

    assert selection.winners.empty
    assert list(selection.winners.columns) == [
        "score",
        "direction",
        "cluster",
        "stage",
        "stage_name",
    ]
    assert "reason" in messages.render_selection(selection).winners.columns
    assert [w.code for w in selection.warnings] == [WarningCode.EMPTY_UNIVERSE]
    assert "empty" in _warnings(selection)[0]
    missing = selection.audit[selection.audit["rule"] == "missing_input"]
    assert len(missing) == 6 and (missing["decision"] == "excluded").all()

    nothing = select(pd.DataFrame(), pd.Series(dtype=float), pd.Series(dtype=int), policy=DEFAULT)
    assert nothing.winners.empty and nothing.audit.empty and nothing.warnings


def test_excluded_symbols_are_audited_and_never_win():
    features, scores, clusters = _universe([5] * 4)
    best = scores.idxmax()

    selection = select(
        features, scores, clusters, policy=DEFAULT, excluded={best: "stale: last bar 9 days ago"}
    )

    assert best not in selection.winners.index
    row = selection.audit[selection.audit["symbol"] == best]
    assert list(row["decision"]) == ["excluded"]
    assert row["argument"].iloc[0] == "stale: last bar 9 days ago"
    detail = messages.audit_details(row, selection.policy).iloc[0]
    assert detail == "stale: last bar 9 days ago"
    assert row["stage"].iloc[0] == 0


def test_nan_volatility_vetoes_and_nan_entropy_does_not():
    features, scores, clusters = _universe([4])
    features.loc["S000", "volatility"] = np.nan
    features.loc["S001", "entropy"] = np.nan
    policy = selection_policy(top_n=4, min_winners=0)

    selection = select(features, scores, clusters, policy=policy)

    assert sorted(selection.winners.index) == ["S001", "S002", "S003"]
    veto = selection.audit[selection.audit["decision"] == "vetoed"]
    # Without a volatility the friction is unknown too: a safety veto, which takes the symbol
    # out of every stage before the feature vetoes are looked at.
    assert set(veto["symbol"]) == {"S000"}
    assert sorted(veto["rule"]) == ["friction"]
    assert veto["value"].isna().all() and (veto["code"] == Code.UNDEFINED).all()


def test_friction_veto_compares_impact_cost_with_absolute_momentum():
    features, scores, clusters = _universe([3])
    features.loc["S000", ["volatility", "dollar_volume", "momentum"]] = [0.8, 4e6, -0.3]
    features.loc["S001", ["volatility", "dollar_volume", "momentum"]] = [0.8, 4e6, 0.5]
    policy = selection_policy(top_n=3, min_winners=0)

    selection = select(features, scores, clusters, policy=policy)

    # friction = 0.8 * sqrt(1e6 / 4e6) = 0.4: above |-0.3|, below 0.5
    veto = selection.audit[selection.audit["rule"] == "friction"].set_index("symbol")
    assert list(veto.index) == ["S000"]
    assert veto.loc["S000", "value"] == pytest.approx(0.4 / 0.3)
    assert veto.loc["S000", "threshold"] == 1.0
    assert sorted(selection.winners.index) == ["S001", "S002"]


def test_ties_in_score_are_broken_by_symbol():
    features, scores, clusters = _universe([4])
    scores[:] = 0.5
    policy = selection_policy(min_winners=0)

    winners = select(features, scores, clusters, policy=policy).winners

    assert list(winners.index) == ["S000", "S001"]


def test_an_inconsistent_policy_is_rejected():
    with pytest.raises(ValueError, match="min_winners"):
        selection_policy(min_winners=30, max_winners=25)


# --- property tests against a loop-based reference -------------------------------------------


def _reference_vetoed(row: pd.Series, policy: SelectionPolicy) -> bool:
    if row["entropy"] > policy.max_entropy:
        return True
    if not row["efficiency"] >= policy.min_efficiency:
        return True
    if row["kurtosis"] > policy.max_kurtosis:
        return True
    if not row["volatility"] <= policy.max_volatility:
        return True
    return _reference_illiquid(row, policy)


def _reference_illiquid(row: pd.Series, policy: SelectionPolicy) -> bool:
    if not row["dollar_volume"] > 0:
        return True
    friction = row["volatility"] * math.sqrt(1e6 / row["dollar_volume"])
    return not friction / abs(row["momentum"]) <= policy.max_friction_ratio


def _reference_strict_stage(
    features: pd.DataFrame,
    scores: pd.Series,
    clusters: pd.Series,
    policy: SelectionPolicy,
    blocked: set[str],
) -> list[str]:
    """Walk the ranking one symbol at a time, as a person would."""
    order = sorted(scores.index, key=lambda s: (-scores[s], s))
    taken: list[str] = []
    per_cluster: dict[int, int] = {}
    identities: set[str] = set()
    for symbol in order:
        if len(taken) == policy.max_winners:
            break
        if symbol in blocked or _reference_vetoed(features.loc[symbol], policy):
            continue
        if per_cluster.get(clusters[symbol], 0) >= policy.top_n:
            continue
        if economic_identity(symbol) in identities:
            continue
        taken.append(symbol)
        per_cluster[clusters[symbol]] = per_cluster.get(clusters[symbol], 0) + 1
        identities.add(economic_identity(symbol))
    return taken


@st.composite
def _random_universe(draw):
    size = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bases = np.array(["BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "TRX"])
    quotes = np.array(["USDT", "USDC", "", "-PERP", "BUSD"])
    names = [
        f"{base}{i}{quote}" if rng.random() < 0.4 else f"{base}{quote}"
        for i, (base, quote) in enumerate(
            zip(rng.choice(bases, size), rng.choice(quotes, size), strict=True)
        )
    ]
    symbols = pd.Index(names).drop_duplicates()
    n = len(symbols)

    def column(low, high, nan_share=0.1):
        values = rng.uniform(low, high, n)
        values[rng.random(n) < nan_share] = np.nan
        return values

    features = pd.DataFrame(
        {
            "momentum": column(-1.0, 1.0),
            "volatility": column(0.1, 3.5),
            "entropy": column(0.85, 1.0),
            "efficiency": column(0.0, 0.15),
            "kurtosis": column(0.0, 40.0),
            "dollar_volume": column(1e4, 1e9),
        },
        index=pd.Index(symbols, name="symbol"),
    )
    scores = pd.Series(np.round(rng.uniform(0.01, 1.0, n), 2), index=symbols)
    clusters = pd.Series(rng.integers(1, draw(st.integers(1, 8)) + 1, n), index=symbols)
    marks = rng.random(n)
    stalled = list(symbols[marks < 0.15])
    quarantined = list(symbols[(marks >= 0.15) & (marks < 0.25)])
    excluded = {s: "short history" for s in symbols[(marks >= 0.25) & (marks < 0.3)]}
    top_n = draw(st.integers(1, 3))
    max_winners = draw(st.integers(1, 30))
    min_winners = draw(st.integers(0, max_winners))
    policy = selection_policy(top_n=top_n, max_winners=max_winners, min_winners=min_winners)
    return features, scores, clusters, stalled, quarantined, excluded, policy


@settings(max_examples=25, deadline=None)
@given(_random_universe())
def test_stalled_quarantined_and_excluded_symbols_never_win_at_any_stage(universe):
    features, scores, clusters, stalled, quarantined, excluded, policy = universe

    selection = select(
        features,
        scores,
        clusters,
        policy=policy,
        stalled=stalled,
        quarantined=quarantined,
        excluded=excluded,
    )

    winners = set(selection.winners.index)
    illiquid = {s for s in features.index if _reference_illiquid(features.loc[s], policy)}
    assert not winners & (set(stalled) | set(quarantined) | set(excluded) | illiquid)
    assert len(winners) <= policy.max_winners
    identities = [economic_identity(s) for s in selection.winners.index]
    assert len(set(identities)) == len(identities)
    admissible = [
        s
        for s in scores.index
        if s not in set(stalled) | set(quarantined) | set(excluded) | illiquid
    ]
    reachable = min(policy.min_winners, len({economic_identity(s) for s in admissible}))
    assert len(winners) >= reachable
    assert (len(winners) < policy.min_winners) == any(
        w.code in (WarningCode.SHORTFALL, WarningCode.EMPTY_UNIVERSE) for w in selection.warnings
    )
    _assert_every_winner_is_explained(selection)


@settings(max_examples=25, deadline=None)
@given(_random_universe())
def test_strict_stage_equals_a_greedy_walk_down_the_ranking(universe):
    features, scores, clusters, stalled, quarantined, _, policy = universe
    strict_only = selection_policy(
        top_n=policy.top_n, max_winners=policy.max_winners, min_winners=0
    )

    selection = select(
        features, scores, clusters, policy=strict_only, stalled=stalled, quarantined=quarantined
    )

    expected = _reference_strict_stage(
        features, scores, clusters, strict_only, set(stalled) | set(quarantined)
    )
    assert selection.stage_reached == 1
    assert list(selection.winners.index) == expected


# --- safety vetoes hold in every stage --------------------------------------------------------


@pytest.mark.parametrize("min_winners", [0, 1, 5, 15])
def test_a_coin_trading_four_dollars_a_day_is_never_selected_even_as_the_last_candidate(
    min_winners,
):
    # The best score of all, alone in its cluster, its features clean, and every other symbol
    # stalled: each stage would take it (strict, relaxed, rescue of its cluster, global fill)
    # but for its dollar volume.
    features, scores, clusters = _universe([1, 3])
    features.loc["S000", "dollar_volume"] = 4.0
    scores.loc["S000"] = 2.0
    policy = selection_policy(min_winners=min_winners)

    selection = select(features, scores, clusters, policy=policy, stalled=["S001", "S002", "S003"])

    assert selection.winners.empty
    vetoes = selection.audit[selection.audit["symbol"] == "S000"]
    assert set(vetoes["decision"]) == {"vetoed"} and set(vetoes["rule"]) == {"friction"}
    assert sorted(vetoes["stage"]) == list(range(1, selection.stage_reached + 1))
    # friction = 0.6 * sqrt(1e6 / 4) = 300, against |momentum| 0.5
    assert vetoes["value"].iloc[0] == pytest.approx(600.0)
    if min_winners:
        assert selection.stage_reached == 4
        [shortfall] = selection.warnings
        assert shortfall.code == WarningCode.SHORTFALL
        assert shortfall.numbers["friction"] == 1 and shortfall.numbers["stalled"] == 3
        assert shortfall.numbers["winners"] == 0 and shortfall.numbers["admissible"] == 0
        assert "1 illiquid" in _warnings(selection)[0]


def test_when_only_illiquid_symbols_are_left_the_selection_is_empty_with_a_shortfall():
    features, scores, clusters = _universe([2, 2])
    features["dollar_volume"] = [4.0, 0.0, np.nan, 100.0]

    selection = select(features, scores, clusters, policy=DEFAULT)

    assert selection.winners.empty
    assert selection.stage_reached == 4
    [shortfall] = selection.warnings
    assert shortfall.code == WarningCode.SHORTFALL
    assert shortfall.numbers["friction"] == 4 and shortfall.numbers["admissible"] == 0
    codes = selection.audit.drop_duplicates("symbol").set_index("symbol")["code"]
    assert codes["S001"] == Code.NO_DOLLAR_VOLUME and codes["S002"] == Code.NO_DOLLAR_VOLUME
    assert codes["S000"] == Code.ABOVE_MAX and codes["S003"] == Code.ABOVE_MAX


@pytest.mark.parametrize("rule", SAFETY_RULES)
def test_a_safety_veto_holds_in_cluster_rescue_and_global_fill(rule):
    # Cluster 2's only member would be rescued at stage 3, then filled at stage 4.
    features, scores, clusters = _universe([4, 1])
    features.loc[clusters.index[clusters == 1], "kurtosis"] = 40.0
    [target] = clusters.index[clusters == 2]
    marks = {"stalled": [], "quarantined": []}
    if rule == "friction":
        features.loc[target, "dollar_volume"] = 4.0
    else:
        marks[rule] = [target]

    selection = select(features, scores, clusters, policy=DEFAULT, **marks)

    assert selection.stage_reached == 4
    assert target not in selection.winners.index
    assert sorted(selection.winners.index) == sorted(clusters.index[clusters == 1])
    vetoes = selection.audit[(selection.audit["symbol"] == target)]
    assert list(vetoes["stage"]) == [1, 2, 3, 4] and set(vetoes["rule"]) == {rule}


# --- every threshold rule at its boundary: the boundary passes, a hair beyond is vetoed --------

BOUNDARIES = {
    # rule: (feature column, value exactly at the default threshold, a hair beyond it)
    "entropy": ("entropy", 0.90, np.nextafter(0.90, 1.0)),
    "efficiency": ("efficiency", 0.02, np.nextafter(0.02, 0.0)),
    "kurtosis": ("kurtosis", 20.0, np.nextafter(20.0, 21.0)),
    "volatility": ("volatility", 2.5, np.nextafter(2.5, 3.0)),
}


@pytest.mark.parametrize("rule", sorted(BOUNDARIES))
def test_a_feature_exactly_at_its_threshold_passes_and_a_hair_beyond_is_vetoed(rule):
    column, at, beyond = BOUNDARIES[rule]
    features, scores, clusters = _universe([3])
    features.loc["S000", column] = at
    features.loc["S001", column] = beyond
    strict = selection_policy(top_n=3, min_winners=0)
    assert getattr(strict, "max_" + rule if rule != "efficiency" else "min_efficiency") == at

    selection = select(features, scores, clusters, policy=strict)

    assert sorted(selection.winners.index) == ["S000", "S002"]
    [veto] = selection.audit[selection.audit["decision"] == "vetoed"].itertuples()
    assert (veto.symbol, veto.rule, veto.threshold) == ("S001", rule, at)
    assert veto.code == (Code.BELOW_MIN if rule == "efficiency" else Code.ABOVE_MAX)


def test_friction_exactly_at_the_ratio_passes_and_a_hair_beyond_is_vetoed():
    features, scores, clusters = _universe([3])
    # friction = 0.5 * sqrt(1e6 / 4e6) = 0.25 exactly, so friction / |momentum| = 1.0 exactly
    features.loc[["S000", "S001"], ["volatility", "dollar_volume"]] = [0.5, 4e6]
    features.loc["S000", "momentum"] = 0.25
    features.loc["S001", "momentum"] = np.nextafter(0.25, 0.0)
    policy = selection_policy(top_n=3, min_winners=3)
    assert policy.max_friction_ratio == 1.0

    selection = select(features, scores, clusters, policy=policy)

    # min_winners=3 runs every stage: the vetoed symbol stays out of the fill as well
    assert sorted(selection.winners.index) == ["S000", "S002"]
    vetoes = selection.audit[selection.audit["decision"] == "vetoed"]
    assert set(vetoes["symbol"]) == {"S001"} and set(vetoes["rule"]) == {"friction"}
    assert (vetoes["value"] > 1.0).all() and (vetoes["code"] == Code.ABOVE_MAX).all()


def test_a_stage_returns_a_new_state_and_leaves_the_one_it_was_given_untouched():
    from tvq_assets.quant import selection as engine

    features, scores, clusters = _universe([3] * 4)
    universe, rows = engine._eligibility(features, scores, clusters, {})
    ranked = engine._ranked(
        features, scores, clusters, universe, stalled=(), quarantined=(), policy=DEFAULT
    )
    start = engine._State.start(ranked, rows)

    after = engine._strict(ranked, start)

    assert start.winners.size == 0 and start.stage_reached == 0 and not start.settled.any()
    assert after.winners.size == 8 and after.stage_reached == 1
    for array in (after.winners, after.stages, after.holder, after.settled):
        assert not array.flags.writeable
    with pytest.raises(ValueError):
        after.winners[0] = 0
