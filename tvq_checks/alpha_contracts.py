"""Contracts of the alpha layer (features, inference, clusters, selection) as Pandera schemas.

Each ``*_violations`` function lays its asset's value out as one row per symbol (plus the derived
columns a rule needs, such as "is this symbol known upstream"), validates it, and returns the
violation table of ``contracts.violations``: symbol, date (the run's as-of date), value, rule,
message. Nothing here knows about Dagster.
"""

from collections.abc import Collection, Mapping

import numpy as np
import pandas as pd
import pandera.pandas as pa

from tvq_checks.contracts import ERROR, WARN, Rule, never, rule_check, violations

UNIT_INTERVAL_FEATURES = ("entropy", "efficiency", "liquidity", "survival")
REQUIRED_FEATURES = ("momentum", "volatility", "entropy", "efficiency")

RULES: Mapping[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("finite_feature", ERROR, "feature value {value} is infinite"),
        Rule("feature_in_unit_interval", ERROR, "feature value {value:g} is outside [0, 1]"),
        Rule("volatility_non_negative", ERROR, "volatility {value:g} is negative"),
        Rule("feature_defined", ERROR, "a core feature is missing for an eligible symbol"),
        Rule("history_at_least_minimum", ERROR, "history of {value:g} bars is below the minimum"),
        Rule("one_row_per_symbol", ERROR, "appears more than once", "row_number"),
        Rule("symbol_eligible_upstream", ERROR, "is not in the returns universe", "row_number"),
        Rule("score_in_unit_interval", ERROR, "score {value:g} is outside (0, 1]"),
        Rule("probability_in_range", ERROR, "probability {value:g} is outside [0.01, 1]"),
        Rule("every_symbol_clustered", ERROR, "has no cluster"),
        Rule("cluster_id_positive", ERROR, "cluster id {value:g} is not a positive integer"),
        Rule("cluster_count_within_bounds", ERROR, "{value:g} clusters exceed the maximum"),
        Rule("winner_not_quarantined", ERROR, "is a winner but was quarantined", "score"),
        Rule("winner_not_stalled", ERROR, "is a winner but its price is stalled", "score"),
        Rule("winner_not_excluded", ERROR, "is a winner but returns excluded it", "score"),
        Rule("winner_in_features", ERROR, "is a winner without features", "score"),
        Rule("winner_count_within_bounds", WARN, "{value:g} winners, outside [min, max]"),
    )
}


def _per_symbol(table: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    frame = table.rename_axis("symbol").reset_index()
    frame["symbol"] = frame["symbol"].astype(str)
    frame["date"] = pd.Timestamp(as_of)
    frame["row_number"] = np.arange(len(frame), dtype=float)
    frame["duplicate"] = frame.duplicated("symbol", keep=False)
    return frame


def _float(name: str, *checks: pa.Check) -> pa.Column:
    return pa.Column(float, checks=list(checks), nullable=True, required=True, name=name)


def features_violations(
    features: pd.DataFrame, *, universe: Collection[str], as_of: pd.Timestamp, min_history: int
) -> pd.DataFrame:
    """Features: finite where defined, bounded, one row per symbol of the returns universe."""
    frame = _per_symbol(features, as_of)
    frame["unknown"] = ~frame["symbol"].isin(list(universe))
    finite = rule_check("finite_feature", lambda s: ~np.isinf(s))
    numeric = [c for c in features.columns if pd.api.types.is_float_dtype(features[c])]
    columns: dict[str, pa.Column] = {c: _float(c, finite) for c in numeric}
    for name in UNIT_INTERVAL_FEATURES:
        columns[name] = _float(
            name, finite, rule_check("feature_in_unit_interval", lambda s: (s >= 0) & (s <= 1))
        )
    columns["volatility"] = _float(
        "volatility", finite, rule_check("volatility_non_negative", lambda s: s >= 0)
    )
    for name in REQUIRED_FEATURES:
        defined = rule_check("feature_defined", lambda s: s.notna(), ignore_na=False)
        columns[name] = _float(name, *columns[name].checks, defined)
    columns["history"] = _float(
        "history", rule_check("history_at_least_minimum", lambda s: s >= min_history)
    )
    columns["duplicate"] = pa.Column(bool, checks=[never("one_row_per_symbol")])
    columns["unknown"] = pa.Column(bool, checks=[never("symbol_eligible_upstream")])
    schema = pa.DataFrameSchema(columns, name="features_contract")
    return violations(schema, frame, rules=RULES)


def inference_violations(inference: pd.DataFrame, *, as_of: pd.Timestamp) -> pd.DataFrame:
    """Scores in (0, 1], per-feature probabilities in [0.01, 1], nothing missing."""
    frame = _per_symbol(inference, as_of)
    score = rule_check(
        "score_in_unit_interval", lambda s: s.notna() & (s > 0) & (s <= 1), ignore_na=False
    )
    probability = rule_check(
        "probability_in_range", lambda s: s.notna() & (s >= 0.01) & (s <= 1), ignore_na=False
    )
    columns = {
        c: _float(c, score) for c in inference.columns if c == "score" or c.endswith("_score")
    }
    columns.update({c: _float(c, probability) for c in inference.columns if c.startswith("p_")})
    columns["duplicate"] = pa.Column(bool, checks=[never("one_row_per_symbol")])
    return violations(pa.DataFrameSchema(columns, name="inference_contract"), frame, rules=RULES)


def clusters_violations(
    clusters: pd.Series, *, universe: Collection[str], as_of: pd.Timestamp, max_clusters: int
) -> pd.DataFrame:
    """Every eligible symbol in exactly one cluster; ids positive; at most ``max_clusters``."""
    table = clusters.rename("cluster").astype(float).to_frame()
    missing = pd.Index(list(universe)).difference(table.index)
    table = pd.concat([table, pd.DataFrame({"cluster": np.nan}, index=missing)])
    frame = _per_symbol(table, as_of)
    frame["unknown"] = ~frame["symbol"].isin(list(universe))
    frame["cluster_count"] = float(clusters.nunique())
    schema = pa.DataFrameSchema(
        {
            "cluster": _float(
                "cluster",
                rule_check("every_symbol_clustered", lambda s: s.notna(), ignore_na=False),
                rule_check("cluster_id_positive", lambda s: (s >= 1) & (s == np.round(s))),
            ),
            "cluster_count": _float(
                "cluster_count",
                rule_check("cluster_count_within_bounds", lambda s: s <= max_clusters),
            ),
            "duplicate": pa.Column(bool, checks=[never("one_row_per_symbol")]),
            "unknown": pa.Column(bool, checks=[never("symbol_eligible_upstream")]),
        },
        name="clusters_contract",
    )
    found = violations(schema, frame, rules=RULES)
    # One row per run is enough for a count rule.
    counted = found["rule"] == "cluster_count_within_bounds"
    return pd.concat([found[~counted], found[counted].head(1)], ignore_index=True)


def selection_violations(
    winners: pd.DataFrame,
    *,
    as_of: pd.Timestamp,
    features: Collection[str],
    quarantined: Collection[str],
    stalled: Collection[str],
    excluded: Collection[str],
) -> pd.DataFrame:
    """ERROR: no quarantined, stalled or excluded winner; every winner has features."""
    frame = _per_symbol(winners, as_of)
    frame["quarantined"] = frame["symbol"].isin(list(quarantined))
    frame["stalled"] = frame["symbol"].isin(list(stalled))
    frame["excluded"] = frame["symbol"].isin(list(excluded))
    frame["featureless"] = ~frame["symbol"].isin(list(features))
    schema = pa.DataFrameSchema(
        {
            "quarantined": pa.Column(bool, checks=[never("winner_not_quarantined")]),
            "stalled": pa.Column(bool, checks=[never("winner_not_stalled")]),
            "excluded": pa.Column(bool, checks=[never("winner_not_excluded")]),
            "featureless": pa.Column(bool, checks=[never("winner_in_features")]),
        },
        name="selection_contract",
    )
    return violations(schema, frame, rules=RULES)


def winner_count_violations(
    count: int, *, as_of: pd.Timestamp, minimum: int, maximum: int, reasons: Collection[str]
) -> pd.DataFrame:
    """WARN when the winner count is outside [minimum, maximum], with the selection's reasons."""
    if minimum <= count <= maximum:
        return pd.DataFrame(columns=["symbol", "date", "value", "rule", "message"])
    because = "; ".join(reasons) or "no reason recorded"
    message = f"{count} winners, outside [{minimum}, {maximum}]: {because}"
    return pd.DataFrame(
        [(None, pd.Timestamp(as_of), float(count), "winner_count_within_bounds", message)],
        columns=["symbol", "date", "value", "rule", "message"],
    )


def _described(name: str, description: str, columns: Mapping[str, tuple[object, str]]):
    return pa.DataFrameSchema(
        {column: pa.Column(dtype, description=text) for column, (dtype, text) in columns.items()},
        index=pa.Index(str, name="symbol"),
        name=name,
        description=description,
    )


# The shapes of the alpha tables, shown as each asset's columns in the UI.
FEATURES_STRUCTURE = _described(
    "features",
    "One row per eligible symbol; feature window = the last `feature_lookback` bars.",
    {
        "momentum": (float, "mean simple return × periods per year"),
        "volatility": (float, "std (ddof=1) × √periods per year"),
        "stability": (float, "1 / volatility"),
        "entropy": (float, "permutation entropy, order 5, normalised to [0, 1]"),
        "efficiency": (float, "Kaufman efficiency |Σr| / Σ|r|, [0, 1]"),
        "hurst": (float, "rescaled-range Hurst exponent (Anis-Lloyd corrected)"),
        "hurst_clean": (float, "1 − 2|H − 0.5|"),
        "skew": (float, "bias-corrected sample skew"),
        "kurtosis": (float, "bias-corrected excess kurtosis"),
        "cvar_95": (float, "historical CVaR 95% as a daily return (negative = loss)"),
        "dollar_volume": (float, "median daily close × volume"),
        "liquidity": (float, "min(1, dollar_volume / sleeve baseline)"),
        "history": (float, "returns observed in the whole window"),
        "survival": (float, "1 / (1 + (252 / history)²)"),
        "stalled": (
            bool,
            "stall rule: zero-return share over the feature window above max_zero_share, "
            "or stall_bars identical last closes",
        ),
        "volume_spike": (bool, "last volume z-score above the spike threshold"),
    },
)
INFERENCE_STRUCTURE = _described(
    "inference",
    "Conviction per symbol: Log-MPS score, its per-feature probabilities, the challenger.",
    {
        "score": (float, "Log-MPS exp(Σ w·log p), in (0, 1]"),
        "model": (str, "log_mps"),
        "challenger_score": (float, "rank-IC-weighted score fitted inside the window, (0, 1]"),
        "challenger_model": (str, "rank_ic"),
    },
)
CLUSTERS_STRUCTURE = _described(
    "clusters",
    "Ward cluster of each eligible symbol on multi-lookback correlation distance.",
    {"cluster": (int, "cluster id, 1 = largest")},
)
