"""Contracts of the allocation layer: the weights handed to a trader must be a valid portfolio.

Rows are (profile, symbol) pairs; a violation's symbol reads ``PROFILE:SYMBOL`` so the message
names both. Nothing here knows about Dagster.
"""

from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa

from tvq_checks.contracts import ERROR, WARN, Rule, never, rule_check, violations

SUM_TOLERANCE = 1e-6
CAP_TOLERANCE = 1e-9
EMPTY_PROFILE = "(no weights)"

RULES: Mapping[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("weight_finite", ERROR, "weight {value} is not finite"),
        Rule("weight_within_cap", ERROR, "weight {value:.6g} is outside [0, cap]"),
        Rule("weights_sum_to_one", ERROR, "weights sum to {value:.9f}, not 1"),
        Rule(
            "weight_only_winners", ERROR, "holds weight {value:.6g} but is not a winner", "weight"
        ),
        Rule("solver_clean", WARN, "needed a fallback or returned an inaccurate status"),
    )
}


def weights_violations(
    weights: pd.DataFrame, *, winners: Collection[str], cap: float, as_of: pd.Timestamp
) -> pd.DataFrame:
    """``weights``: symbols × profiles; finite, in [0, max(cap, 1/n)], summing to 1, winners only.

    A profile without any row (no winners) holds nothing: it sums to 0 and is reported as
    ``PROFILE:(no weights)``, since a portfolio handed on must be fully invested.
    """
    n = max(len(winners), 1)
    effective_cap = max(cap, 1.0 / n) + CAP_TOLERANCE
    long = weights.rename_axis(index="symbol", columns="profile").stack(future_stack=True)
    frame = long.rename("weight").reset_index()
    empty = [profile for profile in weights.columns if profile not in set(frame["profile"])]
    if empty:
        placeholders = pd.DataFrame({"symbol": EMPTY_PROFILE, "profile": empty, "weight": 0.0})
        frame = pd.concat([frame, placeholders], ignore_index=True)
    frame["total"] = frame.groupby("profile")["weight"].transform("sum")
    frame["outsider"] = ~frame["symbol"].isin(list(winners)) & (frame["weight"].abs() > 0)
    frame["symbol"] = frame["profile"].astype(str) + ":" + frame["symbol"].astype(str)
    frame["date"] = pd.Timestamp(as_of)
    # The sum rule is reported once per profile, on its first row.
    frame.loc[frame.duplicated("profile"), "total"] = 1.0
    schema = pa.DataFrameSchema(
        {
            "weight": pa.Column(
                float,
                nullable=True,
                checks=[
                    rule_check("weight_finite", np.isfinite, ignore_na=False),
                    rule_check(
                        "weight_within_cap", lambda s: (s >= -CAP_TOLERANCE) & (s <= effective_cap)
                    ),
                ],
            ),
            "total": pa.Column(
                float,
                checks=[rule_check("weights_sum_to_one", lambda s: (s - 1).abs() <= SUM_TOLERANCE)],
            ),
            "outsider": pa.Column(bool, checks=[never("weight_only_winners")]),
        },
        name="weights_contract",
    )
    return violations(schema, frame, rules=RULES)


def solver_violations(diagnostics: pd.DataFrame, *, as_of: pd.Timestamp) -> pd.DataFrame:
    """WARN for every profile that fell back or whose solver was not fully accurate."""
    troubled = diagnostics[
        diagnostics["fallback"].notna() | (diagnostics["status"] == "optimal_inaccurate")
    ]
    rows = [
        (
            f"{profile}",
            pd.Timestamp(as_of),
            np.nan,
            "solver_clean",
            f"{profile}: status {row.status}, fallback {row.fallback}: {row.reason}",
        )
        for profile, row in troubled.iterrows()
    ]
    return pd.DataFrame(rows, columns=["symbol", "date", "value", "rule", "message"])
