"""Alpha layer: features, conviction scores, clusters and the cluster-aware selection (HTR)."""

import dagster as dg
import pandas as pd

from tvq_assets import messages
from tvq_assets.partitions import run_of, sleeve_run
from tvq_assets.quant import policy, quality
from tvq_assets.quant.bars import BarHistory
from tvq_assets.quant.returns import ReturnsWindow
from tvq_checks import alpha_contracts, checks
from tvq_checks.checks import Evaluation

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
)
def features(context: dg.AssetExecutionContext, returns: ReturnsWindow, bars: BarHistory):
    """Per-symbol features of the returns window: momentum, risk, entropy, Hurst, liquidity."""
    run = run_of(context)
    settings, sleeve = run.settings, run.sleeve
    table = policy.features(returns.returns, returns.dollar_volume, settings)
    spikes = quality.volume_spikes(
        bars.bars,
        sigma=sleeve.policy.volume_spike_sigma,
        window=sleeve.policy.volume_spike_window,
        as_of=run.as_of,
    )
    table["volume_spike"] = table.index.isin(spikes["symbol"])
    failures = alpha_contracts.features_violations(
        table, universe=returns.returns.columns, as_of=run.as_of, min_history=settings.min_history
    )
    yield from checks.emit(
        "features",
        run.key,
        table,
        metadata=run.metadata(
            symbols=len(table),
            stalled=dg.MetadataValue.json(sorted(table.index[table["stalled"]])),
            volume_spikes=dg.MetadataValue.json(sorted(spikes["symbol"])),
            medians=dg.MetadataValue.md(
                checks.markdown(table.median(numeric_only=True).to_frame("median").T)
            ),
        ),
        evaluations=[Evaluation(FEATURES_CONTRACT, failures)],
    )


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
    settings = run.settings
    window, volume = returns.returns[features.index], returns.dollar_volume[features.index]
    champion = policy.score("log_mps", features, window, volume, settings)
    challenger = policy.score(CHALLENGER, features, window, volume, settings)
    table = champion.drop(columns="model").assign(
        model="log_mps", challenger_score=challenger["score"], challenger_model=CHALLENGER
    )
    failures = alpha_contracts.inference_violations(table, as_of=run.as_of)
    scores = table["score"]
    yield from checks.emit(
        "inference",
        run.key,
        table,
        metadata=run.metadata(
            model="log_mps",
            weights=dg.MetadataValue.json(dict(champion.attrs.get("weights", {}))),
            challenger=CHALLENGER,
            challenger_weights=dg.MetadataValue.json(dict(challenger.attrs.get("weights", {}))),
            challenger_fallback=str(challenger.attrs.get("fallback")),
            score_quantiles=dg.MetadataValue.json(
                {f"q{int(q * 100)}": round(float(scores.quantile(q)), 4) for q in (0.1, 0.5, 0.9)}
            ),
            rank_agreement=round(float(scores.corr(table["challenger_score"], "spearman")), 3),
        ),
        evaluations=[Evaluation(INFERENCE_CONTRACT, failures)],
    )


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
    settings = run.settings
    labels = policy.cluster(returns.returns[features.index], settings)
    failures = alpha_contracts.clusters_violations(
        labels, universe=features.index, as_of=run.as_of, max_clusters=settings.max_clusters
    )
    sizes = labels.value_counts().sort_index()
    yield from checks.emit(
        "clusters",
        run.key,
        labels.to_frame(),
        metadata=run.metadata(
            clusters=int(labels.nunique()),
            sizes=dg.MetadataValue.json({str(k): int(v) for k, v in sizes.items()}),
        ),
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
    settings = run.settings
    excluded = returns.excluded
    selected = policy.select_winners(
        features, inference["score"], clusters["cluster"], excluded, settings
    )
    outcome = messages.render_selection(selected)
    winners = outcome.winners
    rules = settings.selection
    yield from checks.emit(
        "selection",
        run.key,
        policy.SelectionRecord(winners=winners, audit=outcome.audit),
        metadata=run.metadata(
            winners=len(winners),
            stage_reached=selected.stage_reached,
            winners_table=dg.MetadataValue.md(checks.markdown(winners.reset_index())),
            vetoes=dg.MetadataValue.json(
                outcome.audit.loc[outcome.audit["decision"] == "vetoed", "rule"]
                .value_counts()
                .to_dict()
            ),
            warnings=dg.MetadataValue.json(list(outcome.warnings)),
        ),
        evaluations=[
            Evaluation(
                SELECTION_CONTRACT,
                alpha_contracts.selection_violations(
                    winners,
                    as_of=run.as_of,
                    features=features.index,
                    quarantined=excluded.loc[
                        excluded["reason"].isin(policy.QUARANTINE_REASONS), "symbol"
                    ],
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
        ],
    )
