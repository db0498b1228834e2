"""Every rule of the allocation contracts, each broken alone by a crafted frame (no Dagster)."""

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_checks import allocation_contracts

AS_OF = pd.Timestamp("2026-06-30")
WINNERS = ["AAA", "BBB", "CCC", "DDD", "EEE"]
CAP = 0.25


def portfolio(min_variance: list[float], symbols: list[str] = WINNERS) -> pd.DataFrame:
    """Symbols × profiles: the given min-variance column next to a valid equal-weight column."""
    equal = [1.0 / len(WINNERS) if s in WINNERS else 0.0 for s in symbols]
    return pd.DataFrame(
        {"min_variance": min_variance, "equal_weight": equal},
        index=pd.Index(symbols, name="symbol"),
    )


def weights_violations(
    table: pd.DataFrame, winners: list[str] = WINNERS, **options
) -> pd.DataFrame:
    options = {"cap": CAP, "infeasible_cap": "fail", **options}
    return allocation_contracts.weights_violations(table, winners=winners, as_of=AS_OF, **options)


def diagnostics(**changes: dict) -> pd.DataFrame:
    rows = {
        profile: {
            "solver": "CLARABEL",
            "status": "optimal",
            "seconds": 0.01,
            "objective": 1e-4,
            "fallback": None,
            "reason": None,
            "cap": CAP,
            "effective_cap": CAP,
            "cluster_cap": np.nan,
            "effective_cluster_cap": np.nan,
        }
        for profile in ("min_variance", "risk_parity", "max_sharpe", "hrp")
    }
    for profile, change in changes.items():
        rows[profile].update(change)
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("profile")


# rule -> (violations of a frame breaking only that rule, expected symbol, expected value)
CASES: dict[str, Callable[[], tuple[pd.DataFrame, str, float]]] = {
    "weight_finite": lambda: (
        weights_violations(portfolio([0.25, 0.25, 0.25, 0.25, np.nan])),
        "min_variance:EEE",
        np.nan,
    ),
    "weight_within_cap": lambda: (
        weights_violations(portfolio([0.3, 0.25, 0.25, 0.2, 0.0])),
        "min_variance:AAA",
        0.3,
    ),
    "weights_sum_to_one": lambda: (
        weights_violations(portfolio([0.2, 0.2, 0.2, 0.2, 0.19])),
        "min_variance:AAA",
        0.99,
    ),
    "weight_only_winners": lambda: (
        weights_violations(portfolio([0.25, 0.25, 0.2, 0.2, 0.0, 0.1], [*WINNERS, "OUT"])),
        "min_variance:OUT",
        0.1,
    ),
    "cluster_within_cap": lambda: (
        weights_violations(
            portfolio([0.25, 0.25, 0.2, 0.2, 0.1]),
            clusters=pd.Series([1, 1, 2, 2, 3], index=WINNERS),
            cluster_cap=0.45,
        ),
        "min_variance:AAA",
        0.5,
    ),
    "cap_not_raised": lambda: (
        allocation_contracts.solver_violations(
            diagnostics(
                hrp={
                    "cap": 0.01,
                    "effective_cap": 1 / 3,
                    "reason": "cap 0.01 is infeasible for 3 names: raised",
                }
            ),
            as_of=AS_OF,
        ),
        "hrp",
        1 / 3,
    ),
    "solver_clean": lambda: (
        allocation_contracts.solver_violations(
            diagnostics(
                max_sharpe={
                    "solver": None,
                    "status": "infeasible",
                    "fallback": "hrp",
                    "reason": "CLARABEL: infeasible; SCS: infeasible",
                }
            ),
            as_of=AS_OF,
        ),
        "max_sharpe",
        np.nan,
    ),
}


def test_every_allocation_rule_has_a_crafted_case():
    assert set(CASES) == set(allocation_contracts.RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_a_frame_breaking_one_allocation_rule_is_reported_with_rule_symbol_and_value(rule):
    table, symbol, value = CASES[rule]()
    assert list(table["rule"]) == [rule], table.to_string()
    [finding] = table.itertuples(index=False)
    assert finding.symbol == symbol
    np.testing.assert_allclose(finding.value, value)
    assert finding.date == AS_OF
    assert symbol in finding.message


def test_a_negative_weight_breaks_the_cap_rule_even_when_the_sum_is_one():
    six = [*WINNERS, "FFF"]
    table = weights_violations(
        pd.DataFrame({"min_variance": [-0.05, 0.25, 0.25, 0.25, 0.2, 0.1]}, index=six), six
    )
    assert list(table["rule"]) == ["weight_within_cap"]
    assert list(table["symbol"]) == ["min_variance:AAA"]


def test_the_sum_rule_is_reported_once_per_profile_with_the_total():
    table = weights_violations(portfolio([0.1] * 5).assign(equal_weight=0.3))
    sums = table[table["rule"] == "weights_sum_to_one"]
    assert sorted(sums["symbol"]) == ["equal_weight:AAA", "min_variance:AAA"]
    np.testing.assert_allclose(sorted(sums["value"]), [0.5, 1.5])
    assert "0.500000000" in " ".join(sums["message"])


def test_a_raised_cap_is_accepted_only_when_the_policy_allows_raising():
    # Two winners cannot be fully invested under a 25% cap: raising makes the cap 50%.
    table = pd.DataFrame({"hrp": [0.5, 0.5]}, index=["AAA", "BBB"])
    assert weights_violations(table, ["AAA", "BBB"], infeasible_cap="raise").empty
    over = weights_violations(table.assign(hrp=[0.6, 0.4]), ["AAA", "BBB"], infeasible_cap="raise")
    assert list(over["rule"]) == ["weight_within_cap"]
    kept = weights_violations(table, ["AAA", "BBB"], infeasible_cap="fail")
    assert list(kept["rule"]) == ["weight_within_cap"] * 2


def test_a_one_percent_cap_with_three_winners_breaks_the_contract_unless_raising_is_allowed():
    winners = ["AAA", "BBB", "CCC"]
    table = pd.DataFrame({"min_variance": [1 / 3] * 3}, index=winners)

    strict = weights_violations(table, winners, cap=0.01, infeasible_cap="fail")
    allowed = weights_violations(table, winners, cap=0.01, infeasible_cap="raise")

    assert list(strict["rule"]) == ["weight_within_cap"] * 3
    assert sorted(strict["symbol"]) == [f"min_variance:{s}" for s in winners]
    assert allowed.empty


def test_a_raised_cap_is_a_solver_warning_naming_the_configured_and_the_effective_cap():
    raised = diagnostics(min_variance={"cap": 0.01, "effective_cap": 1 / 3, "reason": "raised"})
    table = allocation_contracts.solver_violations(raised, as_of=AS_OF)
    assert list(table["rule"]) == ["cap_not_raised"]
    message = table["message"].iloc[0]
    assert "cap raised from the configured 0.01 to the minimum feasible 0.333333" in message
    assert allocation_contracts.RULES["cap_not_raised"].severity == "WARN"
    cluster = diagnostics(
        risk_parity={"cluster_cap": 0.1, "effective_cluster_cap": 0.25, "reason": "raised"}
    )
    [message] = allocation_contracts.solver_violations(cluster, as_of=AS_OF)["message"]
    assert "cluster_cap raised from the configured 0.1 to the minimum feasible 0.25" in message


def test_cluster_totals_are_checked_against_the_configured_cluster_cap():
    clusters = pd.Series([1, 1, 1, 2, 3], index=WINNERS)
    table = portfolio([0.2, 0.2, 0.2, 0.2, 0.2])

    strict = weights_violations(table, clusters=clusters, cluster_cap=0.5)
    within = weights_violations(table, clusters=clusters, cluster_cap=0.6)
    # three clusters need a cluster cap of at least 1/3 under a 25% asset cap: 0.3 is raised
    raised = weights_violations(
        table.assign(min_variance=[0.1, 0.1, 0.13, 0.25, 0.25], equal_weight=0.0),
        clusters=clusters,
        cluster_cap=0.3,
        infeasible_cap="raise",
    )

    assert list(strict["symbol"]) == ["equal_weight:AAA", "min_variance:AAA"]
    assert list(strict["rule"]) == ["cluster_within_cap"] * 2
    np.testing.assert_allclose(strict["value"], 0.6)
    assert within.empty
    assert set(raised["rule"]) == {"weights_sum_to_one"}


def test_a_sum_within_the_tolerance_passes_and_just_outside_fails():
    inside = portfolio([0.2, 0.2, 0.2, 0.2, 0.2 + 0.9e-6])
    outside = portfolio([0.2, 0.2, 0.2, 0.2, 0.2 + 1.1e-6])
    assert weights_violations(inside).empty
    assert list(weights_violations(outside)["rule"]) == ["weights_sum_to_one"]


def test_a_non_winner_with_zero_weight_is_not_a_violation():
    assert weights_violations(
        portfolio([0.25, 0.25, 0.25, 0.25, 0.0, 0.0], [*WINNERS, "OUT"])
    ).empty


def test_a_profile_without_any_weight_is_reported_as_not_fully_invested():
    empty = pd.DataFrame(columns=["min_variance", "equal_weight"], dtype=float)
    table = weights_violations(empty, [])
    assert list(table["rule"]) == ["weights_sum_to_one"] * 2
    assert sorted(table["symbol"]) == ["equal_weight:(no weights)", "min_variance:(no weights)"]
    assert (table["value"] == 0.0).all()
    assert "weights sum to 0.000000000" in table["message"].iloc[0]


def test_valid_weights_and_clean_diagnostics_pass():
    assert weights_violations(portfolio([0.25, 0.25, 0.2, 0.2, 0.1])).empty
    assert allocation_contracts.solver_violations(diagnostics(), as_of=AS_OF).empty


def test_an_inaccurate_solution_is_a_solver_warning_naming_the_status():
    table = allocation_contracts.solver_violations(
        diagnostics(risk_parity={"status": "optimal_inaccurate"}), as_of=AS_OF
    )
    assert list(table["symbol"]) == ["risk_parity"]
    assert "optimal_inaccurate" in table["message"].iloc[0]
    assert allocation_contracts.RULES["solver_clean"].severity == "WARN"


WEIGHT = st.one_of(
    st.floats(min_value=-0.3, max_value=1.2), st.sampled_from([0.0, 0.0, 0.2, 0.25, np.nan])
)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n_symbols=st.integers(min_value=1, max_value=6),
    n_winners=st.integers(min_value=0, max_value=6),
    infeasible_cap=st.sampled_from(["fail", "raise"]),
)
def test_weight_findings_match_a_loop_over_profiles_and_symbols(
    data, n_symbols, n_winners, infeasible_cap
):
    symbols = [f"S{i}" for i in range(n_symbols)]
    winners = [f"S{i}" for i in range(n_winners)]
    profiles = ["min_variance", "hrp"]
    values = {
        p: data.draw(st.lists(WEIGHT, min_size=n_symbols, max_size=n_symbols)) for p in profiles
    }
    table = pd.DataFrame(values, index=symbols, dtype=float)
    findings = weights_violations(table, winners, infeasible_cap=infeasible_cap)
    found = {(row.rule, row.symbol) for row in findings.itertuples(index=False)}
    cap = max(CAP, 1.0 / max(len(winners), 1)) if infeasible_cap == "raise" else CAP
    expected = set()
    for profile in profiles:
        total = 0.0
        for symbol in symbols:
            weight = values[profile][symbols.index(symbol)]
            name = f"{profile}:{symbol}"
            if math.isnan(weight):
                expected.add(("weight_finite", name))
                continue
            total += weight
            if weight < -1e-9 or weight > cap + 1e-9:
                expected.add(("weight_within_cap", name))
            if symbol not in winners and weight != 0.0:
                expected.add(("weight_only_winners", name))
        if abs(total - 1.0) > 1e-6:
            expected.add(("weights_sum_to_one", f"{profile}:{symbols[0]}"))
    assert found == expected


def portfolio_violations(weights: dict[str, float], **options) -> pd.DataFrame:
    options = {"cap": CAP, "infeasible_cap": "fail", **options}
    return allocation_contracts.portfolio_violations(
        pd.Series(weights, dtype=float),
        policy="rank_ic/min_variance",
        eligible=WINNERS,
        as_of=AS_OF,
        **options,
    )


def test_the_portfolio_contract_accepts_a_valid_book_and_cash():
    assert portfolio_violations({s: 0.2 for s in WINNERS}).empty
    assert portfolio_violations({}).empty  # the policy found nothing to hold: cash


@pytest.mark.parametrize(
    ("weights", "rule", "symbol"),
    [
        ({"AAA": 0.25, "BBB": 0.25, "CCC": 0.25, "ZZZ": 0.25}, "weight_only_winners", "ZZZ"),
        ({"AAA": 0.4, "BBB": 0.2, "CCC": 0.2, "DDD": 0.2}, "weight_within_cap", "AAA"),
        (
            {"AAA": -0.05, "BBB": 0.25, "CCC": 0.25, "DDD": 0.25, "EEE": 0.3},
            "weight_within_cap",
            "AAA",
        ),
        ({"AAA": 0.2, "BBB": 0.2, "CCC": 0.2}, "weights_sum_to_one", "AAA"),
        ({"AAA": math.nan, "BBB": 0.25, "CCC": 0.25, "DDD": 0.25}, "weight_finite", "AAA"),
    ],
)
def test_the_portfolio_contract_names_the_policy_symbol_and_rule(weights, rule, symbol):
    found = portfolio_violations(weights)
    assert rule in set(found["rule"])
    assert f"rank_ic/min_variance:{symbol}" in set(found.loc[found["rule"] == rule, "symbol"])


def test_a_raised_cap_is_allowed_only_under_policy_raise():
    two = {"AAA": 0.5, "BBB": 0.5}
    assert set(portfolio_violations(two)["rule"]) == {"weight_within_cap"}
    assert portfolio_violations(two, infeasible_cap="raise").empty
