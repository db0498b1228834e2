"""Contracts of the allocation layer: the weights handed to a trader must be a valid portfolio.

Rows are (profile, symbol) pairs; a violation's symbol reads ``PROFILE:SYMBOL`` so the message
names both. Nothing here knows about Dagster.
"""

import math
from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa

from tvq_assets.quant.optimise import smallest_feasible_cluster_cap
from tvq_checks.contracts import ERROR, WARN, Rule, never, rule_check, violations

SUM_TOLERANCE = 1e-6
CAP_TOLERANCE = 1e-9
EMPTY_PROFILE = "(no weights)"

RULES: Mapping[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("weight_finite", ERROR, "weight {value} is not finite"),
        Rule("weight_within_cap", ERROR, "weight {value:.6g} is outside [0, cap]"),
        Rule(
            "cluster_within_cap",
            ERROR,
            "cluster weight {value:.6g} is above the cluster cap",
            "cluster_total",
        ),
        Rule("weights_sum_to_one", ERROR, "weights sum to {value:.9f}, not 1"),
        Rule(
            "weight_only_winners", ERROR, "holds weight {value:.6g} but is not a winner", "weight"
        ),
        Rule("solver_clean", WARN, "needed a fallback or returned an inaccurate status"),
        Rule("cap_not_raised", WARN, "ran under a cap above the configured one"),
    )
}


def weights_violations(
    weights: pd.DataFrame,
    *,
    winners: Collection[str],
    cap: float,
    infeasible_cap: str,
    as_of: pd.Timestamp,
    clusters: pd.Series | None = None,
    cluster_cap: float | None = None,
) -> pd.DataFrame:
    """``weights``: symbols × profiles; finite, in [0, cap], summing to 1, winners only, and each
    cluster's total within ``cluster_cap`` (when given with ``clusters``).

    ``cap`` and ``cluster_cap`` are the configured limits, and the weights are checked against
    them: a limit the optimiser raised is a violation. Only when the policy allows raising
    (``infeasible_cap == "raise"``) the limits are the minimum feasible ones for the winners
    (``max(cap, 1/n)``, and the smallest cluster cap admitting a fully invested portfolio); the
    raise itself is then reported by :func:`solver_violations` (WARN ``cap_not_raised``).
    A profile without any row (no winners) holds nothing: it sums to 0 and is reported as
    ``PROFILE:(no weights)``, since a portfolio handed on must be fully invested.
    """
    n = max(len(winners), 1)
    raising = infeasible_cap == "raise"
    asset_cap = max(cap, 1.0 / n) if raising else cap
    long = weights.rename_axis(index="symbol", columns="profile").stack(future_stack=True)
    frame = long.rename("weight").reset_index()
    empty = [profile for profile in weights.columns if profile not in set(frame["profile"])]
    if empty:
        placeholders = pd.DataFrame({"symbol": EMPTY_PROFILE, "profile": empty, "weight": 0.0})
        frame = pd.concat([frame, placeholders], ignore_index=True)
    frame["total"] = frame.groupby("profile")["weight"].transform("sum")
    frame["outsider"] = ~frame["symbol"].isin(list(winners)) & (frame["weight"].abs() > 0)
    frame["cluster_total"] = 0.0
    limit = math.inf
    if clusters is not None and cluster_cap is not None:
        frame["cluster"] = _cluster_keys(frame["symbol"], clusters)
        frame["cluster_total"] = frame.groupby(["profile", "cluster"])["weight"].transform("sum")
        # The cluster rule is reported once per profile and cluster, on its first row.
        frame.loc[frame.duplicated(["profile", "cluster"]), "cluster_total"] = 0.0
        limit = cluster_cap
        if raising and len(winners):
            sizes = pd.Series(_cluster_keys(pd.Series(list(winners)), clusters)).value_counts()
            limit = max(cluster_cap, smallest_feasible_cluster_cap(sizes.to_numpy(), asset_cap))
    frame["symbol"] = frame["profile"].astype(str) + ":" + frame["symbol"].astype(str)
    frame["date"] = pd.Timestamp(as_of)
    # The sum rule is reported once per profile, on its first row.
    frame.loc[frame.duplicated("profile"), "total"] = 1.0
    asset_limit = asset_cap + CAP_TOLERANCE
    cluster_limit = limit + CAP_TOLERANCE
    schema = pa.DataFrameSchema(
        {
            "weight": pa.Column(
                float,
                nullable=True,
                checks=[
                    rule_check("weight_finite", np.isfinite, ignore_na=False),
                    rule_check(
                        "weight_within_cap", lambda s: (s >= -CAP_TOLERANCE) & (s <= asset_limit)
                    ),
                ],
            ),
            "cluster_total": pa.Column(
                float,
                nullable=True,
                checks=[rule_check("cluster_within_cap", lambda s: ~(s > cluster_limit))],
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


def _cluster_keys(symbols: pd.Series, clusters: pd.Series) -> np.ndarray:
    """Cluster of each symbol; a symbol without a label is a cluster of its own (as optimised)."""
    labels = clusters.reindex(symbols.to_numpy())
    return np.where(
        labels.notna().to_numpy(),
        ("cluster:" + labels.astype(str)).to_numpy(),
        ("symbol:" + symbols.astype(str)).to_numpy(),
    )


def solver_violations(diagnostics: pd.DataFrame, *, as_of: pd.Timestamp) -> pd.DataFrame:
    """WARN for every profile that fell back or whose solver was not fully accurate
    (``solver_clean``), and for every profile built under a cap above the configured one
    (``cap_not_raised``, naming both caps; only ``infeasible_cap: raise`` allows that).

    ``diagnostics``: one row per profile with ``status``, ``fallback``, ``reason``, ``cap``,
    ``effective_cap``, ``cluster_cap`` and ``effective_cluster_cap`` (as in ``Allocation``).
    """
    date = pd.Timestamp(as_of)
    troubled = diagnostics[
        diagnostics["fallback"].notna() | (diagnostics["status"] == "optimal_inaccurate")
    ]
    rows = [
        (
            f"{profile}",
            date,
            np.nan,
            "solver_clean",
            f"{profile}: status {row.status}, fallback {row.fallback}: {row.reason}",
        )
        for profile, row in troubled.iterrows()
    ]
    for profile, row in diagnostics.iterrows():
        for name in ("cap", "cluster_cap"):
            configured, effective = row[name], row[f"effective_{name}"]
            if pd.notna(configured) and pd.notna(effective) and effective > configured:
                rows.append(
                    (
                        f"{profile}",
                        date,
                        float(effective),
                        "cap_not_raised",
                        f"{profile}: {name} raised from the configured {configured:g} to the "
                        f"minimum feasible {effective:.6g} (infeasible_cap: raise): {row.reason}",
                    )
                )
    return pd.DataFrame(rows, columns=["symbol", "date", "value", "rule", "message"])


def portfolio_violations(
    weights: pd.Series,
    *,
    policy: str,
    eligible: Collection[str],
    cap: float,
    infeasible_cap: str,
    as_of: pd.Timestamp,
) -> pd.DataFrame:
    """The production portfolio (``weight`` by symbol of policy ``policy``): finite, long-only,
    within ``cap``, summing to 1, only symbols of the run's eligible universe — or empty, which is
    cash (the policy found nothing to hold) and valid.

    Under ``infeasible_cap: raise`` the limit is the minimum feasible cap for the holdings,
    ``max(cap, 1/n)``, as in :func:`weights_violations`. Violations name ``POLICY:SYMBOL``.
    """
    if weights.empty:
        return weights_violations(
            pd.DataFrame(index=pd.Index([], name="symbol")),
            winners=[],
            cap=cap,
            infeasible_cap=infeasible_cap,
            as_of=as_of,
        )
    limit = max(cap, 1.0 / len(weights)) if infeasible_cap == "raise" else cap
    return weights_violations(
        weights.astype(float).to_frame(policy),
        winners=eligible,
        cap=limit,
        infeasible_cap=infeasible_cap,
        as_of=as_of,
    )
