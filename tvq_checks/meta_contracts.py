"""Contract of the firm-wide holdings the meta-portfolio hands on.

Rows are (sleeve, symbol) pairs; a violation's symbol reads ``SLEEVE:SYMBOL`` so the message
names both. Nothing here knows about Dagster.
"""

from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa

from tvq_checks.contracts import ERROR, Rule, never, rule_check, violations

SUM_TOLERANCE = 1e-6
BOUND_TOLERANCE = 1e-9
NO_HOLDINGS = "(no holdings)"

RULES: Mapping[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("holding_finite", ERROR, "weight {value} is not finite"),
        Rule("holding_non_negative", ERROR, "weight {value:.6g} is negative"),
        Rule(
            "sleeve_within_limits",
            ERROR,
            "sleeve weight {value:.6g} is outside the sleeve's [floor, cap]",
            "sleeve_total",
        ),
        Rule("holdings_sum_to_one", ERROR, "holdings sum to {value:.9f}, not 1", "total"),
        Rule(
            "sleeve_accounted",
            ERROR,
            "a sleeve of the meta-portfolio is neither held nor explained as missing",
            "weight",
        ),
    )
}


def holdings_violations(
    holdings: pd.DataFrame,
    *,
    sleeves: Collection[str],
    missing: Mapping[str, str],
    caps: Mapping[str, float],
    floors: Mapping[str, float],
    as_of: pd.Timestamp,
) -> pd.DataFrame:
    """``holdings``: rows (sleeve, symbol, weight). Finite, non-negative weights, each sleeve's
    total within its [floor, cap] (floors of missing sleeves do not apply), summing to 1, and
    every sleeve of the meta-portfolio held or in ``missing`` (sleeve -> why)."""
    frame = holdings[["sleeve", "symbol", "weight"]].copy()
    frame["weight"] = frame["weight"].astype(float)
    unaccounted = [s for s in sleeves if s not in set(frame["sleeve"]) and s not in missing]
    placeholders = pd.DataFrame({"sleeve": unaccounted, "symbol": NO_HOLDINGS, "weight": 0.0})
    frame = pd.concat([frame, placeholders], ignore_index=True) if unaccounted else frame
    frame["unaccounted"] = frame["sleeve"].isin(unaccounted)
    if frame.empty:
        frame = pd.DataFrame(
            {"sleeve": ["(none)"], "symbol": NO_HOLDINGS, "weight": 0.0, "unaccounted": False}
        )
    frame["sleeve_total"] = frame.groupby("sleeve")["weight"].transform("sum")
    frame["cap"] = frame["sleeve"].map(lambda s: caps.get(s, 1.0)).astype(float)
    frame["floor"] = frame["sleeve"].map(lambda s: floors.get(s, 0.0)).astype(float)
    frame["out_of_limits"] = (
        ~(
            (frame["sleeve_total"] <= frame["cap"] + BOUND_TOLERANCE)
            & (frame["sleeve_total"] >= frame["floor"] - BOUND_TOLERANCE)
        )
        & ~frame["unaccounted"]
    )
    # Sleeve and sum rules are reported once, on the first row of the sleeve / of the table.
    frame.loc[frame.duplicated("sleeve"), "out_of_limits"] = False
    frame["total"] = float(frame["weight"].sum())
    frame.loc[frame.index[1:], "total"] = 1.0
    frame["symbol"] = frame["sleeve"].astype(str) + ":" + frame["symbol"].astype(str)
    frame["date"] = pd.Timestamp(as_of)
    schema = pa.DataFrameSchema(
        {
            "weight": pa.Column(
                float,
                nullable=True,
                checks=[
                    rule_check("holding_finite", np.isfinite, ignore_na=False),
                    rule_check("holding_non_negative", lambda s: ~(s < 0)),
                ],
            ),
            "out_of_limits": pa.Column(bool, checks=[never("sleeve_within_limits")]),
            "total": pa.Column(
                float,
                checks=[
                    rule_check("holdings_sum_to_one", lambda s: (s - 1).abs() <= SUM_TOLERANCE)
                ],
            ),
            "unaccounted": pa.Column(bool, checks=[never("sleeve_accounted")]),
        },
        name="meta_holdings_contract",
    )
    return violations(schema, frame, rules=RULES)
