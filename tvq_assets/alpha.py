"""Alpha layer: features, conviction scores, clusters and the cluster-aware selection (HTR)."""

import dagster as dg
import pandas as pd

from tvq_assets import bar_store, messages, stage
from tvq_assets.partitions import Run, run_of, sleeve_run
from tvq_assets.quant import policy, quality
from tvq_assets.quant.returns import ReturnsWindow
from tvq_checks import alpha_contracts, checks
from tvq_checks.checks import Evaluation
from tvq_resources.lake import ParquetLake

FEATURES_CONTRACT = "features_contract"
INFERENCE_CONTRACT = "inference_contract"
CLUSTERS_CONTRACT = "clusters_contract"
SELECTION_CONTRACT = "selection_contract"
WINNER_COUNT = "winner_count"
CHALLENGER = "rank_ic"


def _spec(asset: str, name: str, description: str, blocking: bool = True):
    return checks.specs_for(asset, [(name, description, blocking)], sleeve_run)


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="alpha",
    kinds={"pandas", "parquet"},
    metadata={"dagster/column_schema": checks.column_schema(alpha_contracts.FEATURES_STRUCTURE)},
    check_specs=_spec(
        "features",
        FEATURES_CONTRACT,
        "Finite where defined, entropy/efficiency/liquidity/"
        "survival in [0, 1], volatility >= 0, one row per eligible symbol of `returns`.",
    ),
    # The volume-spike rule reads the bar store's last bars of the window's symbols (the store's
    # tail, not the whole store).
    ins={"bars": dg.AssetIn(dagster_type=dg.Nothing)},
)
def features(context: dg.AssetExecutionContext, returns: ReturnsWindow, lake: ParquetLake):
    """Per-symbol features of the returns window: momentum, risk, entropy, Hurst, liquidity."""
    run = run_of(context)
    table = policy.features(returns.returns, returns.dollar_volume, run.settings)
    spikes = _volume_spikes(lake, run, returns.returns.columns)
    table["volume_spike"] = table.index.isin(spikes["symbol"])
    failures = alpha_contracts.features_violations(
        table,
        universe=returns.returns.columns,
        as_of=run.as_of,
        min_history=run.settings.min_history,
    )
    yield from stage.emit(
        run,
        "features",
        table,
        metadata=_features_metadata(table, spikes),
        evaluations=[Evaluation(FEATURES_CONTRACT, failures)],
    )


def _volume_spikes(lake: ParquetLake, run: Run, symbols: pd.Index) -> pd.DataFrame:
    """The last-bar volume spikes of the window's ``symbols`` under the sleeve's spike rule.

    The rule reads each symbol's last ``window + 1`` bars up to the as-of date, so only those are
    read from the bar store (``bar_store.read_tail``), not the whole store."""
    rule = run.sleeve.policy
    tail = bar_store.read_tail(
        lake,
        run.sleeve.name,
        since=run.as_of,
        context=rule.volume_spike_window + 1,
        symbols=symbols,
    )
    bars = tail.bars[tail.bars["symbol"].isin(symbols)]
    return quality.volume_spikes(
        bars, sigma=rule.volume_spike_sigma, window=rule.volume_spike_window, as_of=run.as_of
    )


def _features_metadata(table: pd.DataFrame, spikes: pd.DataFrame) -> dict[str, object]:
    return {
        "symbols": len(table),
        "stalled": dg.MetadataValue.json(sorted(table.index[table["stalled"]])),
        "volume_spikes": dg.MetadataValue.json(sorted(spikes["symbol"])),
        "medians": stage.table(table.median(numeric_only=True).to_frame("median").T),
    }


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="alpha",
    kinds={"pandas", "parquet"},
    metadata={"dagster/column_schema": checks.column_schema(alpha_contracts.INFERENCE_STRUCTURE)},
    check_specs=_spec(
        "inference",
        INFERENCE_CONTRACT,
        "Scores in (0, 1], per-feature probabilities in [0.01, 1], nothing missing.",
    ),
)
def inference(context: dg.AssetExecutionContext, features: pd.DataFrame, returns: ReturnsWindow):
    """Conviction score per symbol (Log-MPS), its feature probabilities, the challenger's score."""
    run = run_of(context)
    window, volume = returns.returns[features.index], returns.dollar_volume[features.index]
    champion = policy.score("log_mps", features, window, volume, run.settings)
    challenger = policy.score(CHALLENGER, features, window, volume, run.settings)
    table = champion.drop(columns="model").assign(
        model="log_mps", challenger_score=challenger["score"], challenger_model=CHALLENGER
    )
    failures = alpha_contracts.inference_violations(table, as_of=run.as_of)
    yield from stage.emit(
        run,
        "inference",
        table,
        metadata=_inference_metadata(table, champion.attrs, challenger.attrs),
        evaluations=[Evaluation(INFERENCE_CONTRACT, failures)],
    )


def _inference_metadata(table: pd.DataFrame, champion: dict, challenger: dict) -> dict:
    """``champion``/``challenger``: the two scorers' attributes (their weights, the fallback)."""
    scores = table["score"]
    return {
        "model": "log_mps",
        "weights": dg.MetadataValue.json(dict(champion.get("weights", {}))),
        "challenger": CHALLENGER,
        "challenger_weights": dg.MetadataValue.json(dict(challenger.get("weights", {}))),
        "challenger_fallback": str(challenger.get("fallback")),
        "score_quantiles": dg.MetadataValue.json(
            {f"q{int(q * 100)}": round(float(scores.quantile(q)), 4) for q in (0.1, 0.5, 0.9)}
        ),
        "rank_agreement": round(float(scores.corr(table["challenger_score"], "spearman")), 3),
    }


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="alpha",
    kinds={"pandas", "parquet"},
    metadata={"dagster/column_schema": checks.column_schema(alpha_contracts.CLUSTERS_STRUCTURE)},
    check_specs=_spec(
        "clusters",
        CLUSTERS_CONTRACT,
        "Every eligible symbol in exactly one cluster; at most `max_clusters` clusters.",
    ),
)
def clusters(context: dg.AssetExecutionContext, features: pd.DataFrame, returns: ReturnsWindow):
    """Hierarchical cluster of each symbol: multi-lookback correlation distance, Ward, cut 0.7."""
    run = run_of(context)
    labels = policy.cluster(returns.returns[features.index], run.settings)
    failures = alpha_contracts.clusters_violations(
        labels, universe=features.index, as_of=run.as_of, max_clusters=run.settings.max_clusters
    )
    sizes = labels.value_counts().sort_index()
    yield from stage.emit(
        run,
        "clusters",
        labels.to_frame(),
        metadata={
            "clusters": int(labels.nunique()),
            "sizes": dg.MetadataValue.json({str(k): int(v) for k, v in sizes.items()}),
        },
        evaluations=[Evaluation(CLUSTERS_CONTRACT, failures)],
    )


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="alpha",
    kinds={"pandas", "parquet"},
    check_specs=[
        *_spec(
            "selection",
            SELECTION_CONTRACT,
            "No quarantined, stalled or excluded symbol among the winners; every winner has "
            "features.",
        ),
        *_spec(
            "selection",
            WINNER_COUNT,
            "Winner count within [min_winners, max_winners] (WARN with the reason when the "
            "universe is too small).",
            blocking=False,
        ),
    ],
)
def selection(
    context: dg.AssetExecutionContext,
    features: pd.DataFrame,
    inference: pd.DataFrame,
    clusters: pd.DataFrame,
    returns: ReturnsWindow,
):
    """Winners per cluster with score, direction, cluster and HTR stage; the audit of every veto."""
    run = run_of(context)
    excluded = returns.excluded
    selected = policy.select_winners(
        features, inference["score"], clusters["cluster"], excluded, run.settings
    )
    outcome = messages.render_selection(selected)
    yield from stage.emit(
        run,
        "selection",
        policy.SelectionRecord(winners=outcome.winners, audit=outcome.audit),
        metadata=_selection_metadata(outcome, selected.stage_reached),
        evaluations=_selection_evaluations(run, outcome, features, excluded),
    )


def _selection_metadata(outcome: messages.RenderedSelection, stage_reached) -> dict:
    audit = outcome.audit
    return {
        "winners": len(outcome.winners),
        "stage_reached": stage_reached,
        "winners_table": stage.table(outcome.winners.reset_index()),
        "vetoes": dg.MetadataValue.json(
            audit.loc[audit["decision"] == "vetoed", "rule"].value_counts().to_dict()
        ),
        "warnings": dg.MetadataValue.json(list(outcome.warnings)),
    }


def _selection_evaluations(
    run: Run, outcome: messages.RenderedSelection, features: pd.DataFrame, excluded: pd.DataFrame
) -> list[Evaluation]:
    """The safety contract on the winners (blocking) and the winner count (a warning)."""
    winners, rules = outcome.winners, run.settings.selection
    quarantined = excluded.loc[excluded["reason"].isin(policy.QUARANTINE_REASONS), "symbol"]
    return [
        Evaluation(
            SELECTION_CONTRACT,
            alpha_contracts.selection_violations(
                winners,
                as_of=run.as_of,
                features=features.index,
                quarantined=quarantined,
                stalled=features.index[features["stalled"]],
                excluded=excluded["symbol"],
            ),
        ),
        Evaluation(
            WINNER_COUNT,
            alpha_contracts.winner_count_violations(
                len(winners),
                as_of=run.as_of,
                minimum=rules.min_winners,
                maximum=rules.max_winners,
                reasons=outcome.warnings,
            ),
            severity=dg.AssetCheckSeverity.WARN,
        ),
    ]
