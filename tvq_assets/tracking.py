"""Experiment tracking of the graph: one MLflow run per Dagster run × sleeve × run partition.

How a run is tracked, whatever launched it (``make demo``, the UI, the CLI, schedule, sensor,
backfill, a test):

- :class:`TrackedIOManager` stores each value in the lake, then records the value's stage on the
  partition's MLflow run (:func:`record_stage`) and puts the MLflow run id and URL in the asset's
  metadata. No asset body knows about MLflow.
- The MLflow run is found or created by identity tags (the root Dagster run id and the partition
  key), so every step process of the multiprocess executor, and a re-execution from failure,
  write to the same run.
- The terminal status is set when the run's steps are over (:func:`finalise`): by the IO manager's
  teardown (every executor tears its resources down after its steps) and by run-status sensors
  (cancellation, runs that die outside a step).
- :func:`replay` (``tvq track SLEEVE FROM TO``) records what is in the lake for partitions whose
  MLflow run is missing or incomplete, without recomputing anything.

Each stage is described by a function of its stored value (:data:`DESCRIBERS`); a new asset is
tracked by adding one (the default logs its tables as CSV).
"""

import dataclasses
import importlib.metadata
import io
import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from tvq_assets.catalog import Sleeve, policy_parameters
from tvq_assets.partitions import catalog, is_run_key, run_key, split_run_key
from tvq_assets.partitions import run as run_dates
from tvq_assets.quant import metrics as performance
from tvq_resources.lake import ParquetIOManager, ParquetLake
from tvq_resources.tracking import MlflowTracker

log = logging.getLogger(__name__)

STAGE_ORDER = (
    "returns",
    "features",
    "inference",
    "clusters",
    "selection",
    "weights",
    "backtest",
    "portfolio",
)
HEADLINE = ("sharpe", "max_drawdown", "sortino", "calmar", "cagr", "volatility", "cvar_95")
BASELINES = ("baseline_universe", "baseline_winners")
# Tables wider than this are data, not a report: the returns matrix goes in as a dataset.
MAX_CSV_COLUMNS = 50
ROOT_RUN_TAG = "tvq.dagster_root_run_id"
PARTITION_TAG = "tvq.partition"


# --------------------------------------------------------------------------------------------
# What a stage records
# --------------------------------------------------------------------------------------------
@dataclass
class StageRecord:
    """What one stage logs: metrics, params, tags, CSV tables, PNG figures, dataset inputs, and
    nested child runs (name -> metrics) such as the tournament's policies."""

    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    datasets: dict[str, pd.DataFrame] = field(default_factory=dict)
    children: dict[str, dict[str, float]] = field(default_factory=dict)
    headline: dict[str, float] = field(default_factory=dict)  # numeric Dagster metadata too


def tables_of(value: object) -> dict[str, pd.DataFrame]:
    """The named tables of a stored value: one frame, a dict of frames, or a dataclass of them."""
    if isinstance(value, pd.DataFrame):
        return {"table": value}
    if isinstance(value, pd.Series):
        return {"table": value.to_frame()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {
            str(k): (v.to_frame() if isinstance(v, pd.Series) else v)
            for k, v in value.items()
            if isinstance(v, pd.DataFrame | pd.Series)
        }
    return {}


def _csv_tables(stage: str, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {
        f"{stage}/{name}.csv": frame
        for name, frame in tables.items()
        if frame.shape[1] <= MAX_CSV_COLUMNS
    }


def describe_default(stage: str, value: object, sleeve: Sleeve, as_of: pd.Timestamp):
    tables = tables_of(value)
    return StageRecord(
        metrics={f"{stage}.{name}.rows": len(frame) for name, frame in tables.items()},
        tables=_csv_tables(stage, tables),
    )


def describe_returns(stage, value, sleeve, as_of):
    tables = tables_of(value)
    frame, excluded = tables["returns"], tables.get("excluded", pd.DataFrame())
    start, end = f"{frame.index.min():%Y-%m-%d}", f"{frame.index.max():%Y-%m-%d}"
    return StageRecord(
        metrics={
            "returns.symbols": frame.shape[1],
            "returns.days": frame.shape[0],
            "returns.excluded": len(excluded),
        },
        params={
            "data.source": sleeve.source.get("kind", "synthetic"),
            "data.source_settings": {k: v for k, v in sleeve.source.items() if k != "faults"},
            "data.window_start": start,
            "data.window_end": end,
            "data.as_of": f"{as_of:%Y-%m-%d}",
        },
        tables=_csv_tables(stage, {"excluded": excluded}),
        datasets={f"{sleeve.name} returns {start}..{end}": frame},
    )


def describe_inference(stage, value, sleeve, as_of):
    table = tables_of(value)["table"]
    scores = table["score"].astype(float)
    record = describe_default(stage, value, sleeve, as_of)
    record.metrics = {
        "inference.symbols": len(table),
        **{
            f"inference.score_{name}": float(getattr(scores, name)())
            for name in ("mean", "std", "min", "median", "max")
        },
    }
    return record


def describe_clusters(stage, value, sleeve, as_of):
    table = tables_of(value)["table"]
    record = describe_default(stage, value, sleeve, as_of)
    column = "cluster" if "cluster" in table.columns else table.columns[0]
    record.metrics = {"clusters.count": table[column].nunique(), "clusters.symbols": len(table)}
    return record


def describe_selection(stage, value, sleeve, as_of):
    tables = tables_of(value)
    winners, audit = tables["winners"], tables.get("audit", pd.DataFrame())
    stage_reached = int(winners["stage"].max()) if len(winners) else 0
    return StageRecord(
        metrics={
            "selection.winners": len(winners),
            "selection.stage": stage_reached,
            "selection.audited": len(audit),
        },
        tags={"tvq.winners": ",".join(map(str, winners.index))},
        tables=_csv_tables(stage, tables),
        headline={"winners": len(winners)},
    )


def describe_weights(stage, value, sleeve, as_of):
    tables = tables_of(value)
    weights, diagnostics = tables["weights"], tables.get("diagnostics", pd.DataFrame())
    metrics, tags = {}, {}
    for profile, row in diagnostics.iterrows():
        metrics[f"weights.{profile}.solver_seconds"] = float(row["seconds"])
        metrics[f"weights.{profile}.optimal"] = float(str(row["status"]) == "optimal")
        tags[f"weights.{profile}.status"] = f"{row['status']} ({row['solver']})"
    for profile in weights.columns:
        metrics[f"weights.{profile}.holdings"] = int((weights[profile] > 0).sum())
        metrics[f"weights.{profile}.max_weight"] = float(weights[profile].max())
    return StageRecord(metrics=metrics, tags=tags, tables=_csv_tables(stage, tables))


AS_PROMOTED_METRICS = (
    "as_promoted_sharpe",
    "as_promoted_max_drawdown",
    "as_promoted_cagr",
    "as_promoted_psr",
    "as_promoted_deflated_sharpe",
    "as_promoted_days",
    "as_promoted_switches",
)


def describe_backtest(stage, value, sleeve, as_of):
    tables = tables_of(value)
    metrics_table, verdict = tables["metrics"], tables["verdict"].iloc[0]
    champion = str(verdict["champion"])
    headline = metrics_table.loc[champion]
    record = StageRecord(
        metrics={
            **{str(k): float(v) for k, v in headline.items()},
            **{
                f"{baseline}.{k}": float(v)
                for baseline in BASELINES
                if baseline in metrics_table.index
                for k, v in metrics_table.loc[baseline].items()
            },
            "backtest.policies": len(metrics_table),
        },
        tags={
            "tvq.champion": champion,
            "tvq.challenger": str(verdict["challenger"]),
            "tvq.incumbent": str(verdict.get("incumbent", "")),
            "tvq.replaced_incumbent": str(verdict.get("replaced", "")),
        },
        tables=_csv_tables(stage, tables),
        children={
            str(policy): {str(k): float(v) for k, v in row.items()}
            for policy, row in metrics_table.iterrows()
        },
        headline={
            "champion_sharpe": float(headline["sharpe"]),
            "champion_max_drawdown": float(headline["max_drawdown"]),
            "champion_cagr": float(headline["cagr"]),
            "champion_turnover": float(headline.get("avg_turnover", np.nan)),
        },
    )
    for name, number in verdict.items():
        if isinstance(number, int | float | np.number) and not isinstance(number, bool):
            record.metrics[f"verdict.{name}"] = float(number)
    if "psr" in verdict.index and pd.notna(verdict["psr"]):
        record.headline["psr_vs_incumbent"] = float(verdict["psr"])
    # The selection process's record (quant.promoted) next to today's champion's.
    for name in AS_PROMOTED_METRICS:
        if name in verdict.index:
            record.metrics[name] = float(verdict[name])
            record.headline[name] = float(verdict[name])
    if "returns" in tables:
        # The best of many policies looks better than it is: the champion's Sharpe deflated by
        # the candidates the tournament tried, as the promotion rule deflates the challenger's.
        streams = tables["returns"]
        candidates = streams[[c for c in streams.columns if c not in BASELINES]]
        trials = (candidates.mean() / candidates.std(ddof=1)).to_numpy()
        deflated = performance.deflated_sharpe_ratio(streams[champion], trial_sharpes=trials)
        record.metrics["deflated_sharpe"] = deflated
        record.headline["champion_deflated_sharpe"] = deflated
        record.figures = tear_sheet(
            tables["returns"],
            tables.get("turnover"),
            champion=champion,
            title=f"{sleeve.name} walk-forward to {as_of:%Y-%m-%d}",
        )
    return record


def describe_portfolio(stage, value, sleeve, as_of):
    """The decision production acts on: ``portfolio/weights.csv`` and ``portfolio/trades.csv``,
    turnover against the previous run, holdings and the largest weight."""
    tables = tables_of(value)
    weights, trades = tables["weights"]["weight"], tables["trades"]
    turnover = float(trades["trade"].abs().sum() / 2)
    return StageRecord(
        metrics={
            "portfolio.turnover": turnover,
            "portfolio.names": int((weights > 0).sum()),
            "portfolio.largest_weight": float(weights.max()) if len(weights) else 0.0,
            "portfolio.cash": float(1.0 - weights.sum()),
        },
        tags={"tvq.portfolio": ",".join(f"{s}:{w:.4f}" for s, w in weights[weights > 0].items())},
        tables=_csv_tables(stage, tables),
        headline={"portfolio_turnover": turnover},
    )


Describer = Callable[[str, object, Sleeve, pd.Timestamp], StageRecord]
DESCRIBERS: dict[str, Describer] = {
    "returns": describe_returns,
    "inference": describe_inference,
    "clusters": describe_clusters,
    "selection": describe_selection,
    "weights": describe_weights,
    "backtest": describe_backtest,
    "portfolio": describe_portfolio,
}


def describe(stage: str, value: object, sleeve: Sleeve, as_of: pd.Timestamp) -> StageRecord:
    return DESCRIBERS.get(stage, describe_default)(stage, value, sleeve, as_of)


# --------------------------------------------------------------------------------------------
# The tear sheet
# --------------------------------------------------------------------------------------------
def _png(figure) -> bytes:
    from matplotlib import pyplot

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    pyplot.close(figure)
    return buffer.getvalue()


def tear_sheet(
    returns: pd.DataFrame, turnover: pd.DataFrame | None, *, champion: str, title: str
) -> dict[str, bytes]:
    """PNG figures of the out-of-sample returns: equity with the underwater panel, drawdown,
    rolling Sharpe (63 periods), monthly returns of the champion and its turnover per rebalance."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    shown = [champion, *[b for b in BASELINES if b in returns.columns]]
    equity = (1 + returns[shown].fillna(0.0)).cumprod()
    underwater = equity / equity.cummax() - 1
    figures = {}

    figure, (top, bottom) = pyplot.subplots(
        2, 1, figsize=(8, 5.5), dpi=90, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for name in shown:
        top.plot(equity.index, equity[name], linewidth=2.0 if name == champion else 1.2, label=name)
    top.set_title(title)
    top.set_ylabel("growth of 1 (net of costs)")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.fill_between(underwater.index, underwater[champion], 0, color="tab:red", alpha=0.4)
    bottom.set_ylabel("drawdown")
    bottom.grid(alpha=0.3)
    figure.autofmt_xdate()
    figures["backtest/equity_curve.png"] = _png(figure)

    figure, axes = pyplot.subplots(figsize=(8, 3), dpi=90)
    for name in shown:
        axes.plot(underwater.index, underwater[name], label=name)
    axes.set_title(f"drawdown — {title}")
    axes.legend(loc="lower left", fontsize=8)
    axes.grid(alpha=0.3)
    figures["backtest/drawdown.png"] = _png(figure)

    rolling = returns[shown].rolling(63)
    sharpe = rolling.mean() / rolling.std() * np.sqrt(365 if len(returns) else 252)
    figure, axes = pyplot.subplots(figsize=(8, 3), dpi=90)
    for name in shown:
        axes.plot(sharpe.index, sharpe[name], label=name)
    axes.axhline(0, color="0.3", linewidth=0.8)
    axes.set_title("rolling Sharpe (63 periods, annualised)")
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(alpha=0.3)
    figures["backtest/rolling_sharpe.png"] = _png(figure)

    monthly = (1 + returns[champion].fillna(0.0)).groupby(
        [returns.index.year, returns.index.month]
    ).prod() - 1
    grid = monthly.unstack()
    figure, axes = pyplot.subplots(figsize=(8, 0.5 + 0.45 * len(grid)), dpi=90)
    limit = float(np.nanmax(np.abs(grid.to_numpy()))) or 0.01
    axes.imshow(grid.to_numpy(), cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(len(grid.columns)), [str(m) for m in grid.columns])
    axes.set_yticks(range(len(grid.index)), [str(y) for y in grid.index])
    for (row, column), cell in np.ndenumerate(grid.to_numpy()):
        if np.isfinite(cell):
            axes.text(column, row, f"{cell:.1%}", ha="center", va="center", fontsize=7)
    axes.set_title(f"monthly returns of {champion}")
    figures["backtest/monthly_returns.png"] = _png(figure)

    if turnover is not None and champion in turnover.columns:
        figure, axes = pyplot.subplots(figsize=(8, 2.5), dpi=90)
        axes.bar(range(len(turnover)), turnover[champion].to_numpy(), color="tab:purple")
        axes.set_title(f"one-sided turnover per rebalance of {champion}")
        axes.set_xlabel("rebalance")
        figures["backtest/turnover.png"] = _png(figure)
    return figures


# --------------------------------------------------------------------------------------------
# Identity: which MLflow run a Dagster run × partition writes to
# --------------------------------------------------------------------------------------------
@cache
def code_version() -> tuple[str, str]:
    """The package version and the git commit of the working tree ("unknown" outside git)."""
    version = importlib.metadata.version("tvq")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return version, commit


@dataclass(frozen=True)
class Identity:
    """A Dagster run × partition as MLflow knows it."""

    partition: str
    dagster_run_id: str
    root_run_id: str
    job: str

    @property
    def sleeve(self) -> str:
        return split_run_key(self.partition)[1]

    @property
    def as_of(self) -> str:
        return f"{split_run_key(self.partition)[0]:%Y-%m-%d}"

    @property
    def experiment(self) -> str:
        return f"tvq-{self.sleeve}"

    @property
    def name(self) -> str:
        return f"{self.sleeve} {self.as_of}"

    @property
    def key(self) -> dict[str, str]:
        return {ROOT_RUN_TAG: self.root_run_id, PARTITION_TAG: self.partition}

    def tags(self, tracker: MlflowTracker) -> dict[str, str]:
        version, commit = code_version()
        return {
            "dagster.run_id": self.dagster_run_id,
            "dagster.run_url": tracker.dagster_run_url(self.dagster_run_id),
            "dagster.job": self.job,
            "dagster.partition": self.partition,
            "dagster.partition.run": self.as_of,
            "dagster.partition.sleeve": self.sleeve,
            "tvq.code_version": version,
            "mlflow.source.git.commit": commit,
            "mlflow.source.name": f"dagster job {self.job}",
            "mlflow.source.type": "JOB",
        }


def identity_of(run: dg.DagsterRun, partition: str) -> Identity:
    return Identity(
        partition=partition,
        dagster_run_id=run.run_id,
        root_run_id=run.root_run_id or run.run_id,
        job=run.job_name,
    )


@dataclass(frozen=True)
class Tracked:
    experiment_id: str
    run_id: str
    url: str


def open_run(tracker: MlflowTracker, identity: Identity) -> Tracked:
    """The partition's MLflow run, created with its identity and params on first use; a later
    Dagster run of the same root (re-execution) reopens it and is recorded as the newest."""
    experiment_id = tracker.experiment_id(identity.experiment)
    run = tracker.find_or_create_run(
        experiment_id, identity=identity.key, name=identity.name, tags=identity.tags(tracker)
    )
    run_id = run.info.run_id
    if run.data.tags.get("dagster.run_id") != identity.dagster_run_id:
        tracker.reopen(run)
        tracker.log(run_id, tags=identity.tags(tracker))
    if "toxic_policy" not in run.data.params:
        sleeve = catalog.sleeve(identity.sleeve)
        tracker.log(run_id, params=policy_parameters(sleeve))
    return Tracked(experiment_id, run_id, tracker.run_url(experiment_id, run_id))


def record_stage(
    tracker: MlflowTracker,
    identity: Identity,
    stage: str,
    record: StageRecord,
    *,
    source: str = "",
) -> Tracked:
    """Log one stage's record on the partition's MLflow run (nested runs for its children).

    ``source`` is where the stage's value is stored (the dataset inputs name it)."""
    tracked = open_run(tracker, identity)
    run_id = tracked.run_id
    tracker.log(
        run_id,
        params=record.params,
        metrics=record.metrics,
        tags={**record.tags, f"tvq.stage.{stage}": identity.dagster_run_id},
        tables=record.tables,
        figures=record.figures,
    )
    for name, frame in record.datasets.items():
        digest = tracker.log_dataset(
            run_id, frame, name=name, source=source or f"lake:{stage}", context="training"
        )
        tracker.log(run_id, tags={f"tvq.{stage}.digest": digest})
    if record.children:
        _record_children(tracker, tracked, identity, record.children)
    return tracked


def _record_children(tracker, tracked: Tracked, identity: Identity, children) -> None:
    existing = {
        r.data.tags.get("tvq.policy"): r
        for r in tracker.search(tracked.experiment_id, {"mlflow.parentRunId": tracked.run_id})
    }
    version, commit = code_version()
    for policy, metrics in children.items():
        run = existing.get(policy)
        if run is None:
            run = tracker.call(
                f"create nested run {policy}",
                lambda p=policy: tracker.client.create_run(
                    tracked.experiment_id,
                    run_name=p,
                    tags={
                        "mlflow.parentRunId": tracked.run_id,
                        "tvq.policy": p,
                        "dagster.run_id": identity.dagster_run_id,
                        "dagster.partition": identity.partition,
                        "mlflow.source.git.commit": commit,
                        "tvq.code_version": version,
                    },
                ),
            )
        tracker.log(run.info.run_id, metrics=metrics)
        tracker.finish(run.info.run_id, "FINISHED")


# --------------------------------------------------------------------------------------------
# Terminal status
# --------------------------------------------------------------------------------------------
STATUS_OF_RUN = {
    dg.DagsterRunStatus.SUCCESS: "FINISHED",
    dg.DagsterRunStatus.FAILURE: "FAILED",
    dg.DagsterRunStatus.CANCELED: "KILLED",
}


def _partitions_of(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    partition = run.tags.get("dagster/partition")
    if is_run_key(partition):
        return [partition]
    found = {
        e.dagster_event.partition
        for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        if e.dagster_event and e.dagster_event.partition
    }
    return sorted(p for p in found if is_run_key(p))


def run_outcome(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[str | None, dict, dict]:
    """(MLflow status or None while steps are still due, tags naming what failed, failure texts).

    A terminal Dagster run decides by its own status; otherwise its step events do: any failed
    step fails it (an interrupted step kills it), all planned steps succeeded finishes it.
    """
    events = instance.all_logs(
        run.run_id,
        of_type={
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.STEP_FAILURE,
            dg.DagsterEventType.ASSET_CHECK_EVALUATION,
        },
    )
    failures = [e for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_FAILURE]
    succeeded = {
        e.step_key for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
    }
    tags, texts = {}, {}
    if failures:
        tags["tvq.failed_steps"] = ",".join(sorted({e.step_key for e in failures}))
        for event in failures:
            error = event.dagster_event.step_failure_data.error
            texts[f"failures/{event.step_key}.txt"] = error.to_string() if error else ""
    failed_checks = []
    for event in events:
        if event.dagster_event.event_type != dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            continue
        evaluation = event.dagster_event.event_specific_data
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            name = f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}"
            failed_checks.append(name)
            table = evaluation.metadata.get("first_failures")
            texts[f"failures/{name}.md"] = (
                f"{evaluation.description}\n\n{table.value if table is not None else ''}"
            )
    if failed_checks:
        tags["tvq.failed_checks"] = ",".join(failed_checks)
        tags["tvq.failed_asset"] = failed_checks[0].split(".")[0]
    elif failures:
        tags["tvq.failed_asset"] = failures[0].step_key
    if run.status in STATUS_OF_RUN:
        return STATUS_OF_RUN[run.status], tags, texts
    if failures:
        interrupted = any(
            "Interrupted" in (e.dagster_event.step_failure_data.error.cls_name or "")
            for e in failures
            if e.dagster_event.step_failure_data.error
        )
        return ("KILLED" if interrupted else "FAILED"), tags, texts
    planned = _planned_steps(instance, run)
    if planned and planned <= succeeded:
        return "FINISHED", tags, texts
    return None, tags, texts


def _planned_steps(instance: dg.DagsterInstance, run: dg.DagsterRun) -> set[str]:
    if run.step_keys_to_execute:
        return set(run.step_keys_to_execute)
    if not run.execution_plan_snapshot_id:
        return set()
    snapshot = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    return set(snapshot.step_keys_to_execute)


def finalise(tracker: MlflowTracker, instance: dg.DagsterInstance, dagster_run_id: str) -> list:
    """Set the terminal status of every MLflow run of a Dagster run whose steps are over.

    Returns the (partition, status) pairs set; nothing while steps are still due.
    """
    run = instance.get_run_by_id(dagster_run_id)
    if run is None:
        return []
    partition = run.tags.get("dagster/partition")
    if partition and run_dates.has_partition_key(partition):
        return _finalise_failed_meta(tracker, instance, run)  # partitioned by run date alone
    partitions = _partitions_of(instance, run)
    if not partitions:
        return []
    status, tags, texts = run_outcome(instance, run)
    if status is None:
        return []
    done = []
    for partition in partitions:
        tracked = open_run(tracker, identity_of(run, partition))
        tracker.log(tracked.run_id, tags=tags, texts=texts)
        tracker.finish(tracked.run_id, status)
        done.append((partition, status))
    return done


def _finalise_failed_meta(
    tracker: MlflowTracker, instance: dg.DagsterInstance, run: dg.DagsterRun
) -> list:
    """A meta-portfolio run that failed has its MLflow run too, FAILED with what failed (a
    successful one was logged and finished by :func:`track_meta` when its value was stored)."""
    partition = run.tags.get("dagster/partition")
    status, tags, texts = run_outcome(instance, run)
    if not partition or status in (None, "FINISHED"):
        return []
    _, found = _meta_run(tracker, run, partition)
    tracker.log(found.info.run_id, tags=tags, texts=texts)
    tracker.finish(found.info.run_id, status)
    return [(partition, status)]


# --------------------------------------------------------------------------------------------
# The model registry
# --------------------------------------------------------------------------------------------
REGISTERED_STAGE = "portfolio"  # the decision the registered model reproduces


def register_decision(
    tracker: MlflowTracker, lake: ParquetLake, identity: "Identity", stage: str, tracked: Tracked
) -> dict:
    """Once the partition's ``portfolio`` is stored: its promotion decision in the model registry
    (``tvq_assets.registry.promote``); returns the Dagster metadata that links to it."""
    if stage != REGISTERED_STAGE:
        return {}
    from tvq_assets import registry  # the registry builds on this module

    decision = registry.promote(
        tracker,
        lake,
        identity.partition,
        run_id=tracked.run_id,
        provenance={
            "dagster.run_id": identity.dagster_run_id,
            "dagster.run_url": tracker.dagster_run_url(identity.dagster_run_id),
            "dagster.partition": identity.partition,
        },
    )
    name = registry.model_name(identity.sleeve)
    return {
        "promotion": decision.verdict,
        "registered_model": f"{name} v{decision.champion_version} (champion)",
        "registered_model_url": dg.MetadataValue.url(
            tracker.model_version_url(name, decision.champion_version)
        ),
    }


# --------------------------------------------------------------------------------------------
# The meta-portfolio: partitioned by run date alone, tracked in its own experiment
# --------------------------------------------------------------------------------------------
META_STAGE = "meta_portfolio"
META_EXPERIMENT = "tvq-meta"


def describe_meta(value, as_of: pd.Timestamp) -> StageRecord:
    """Params (the catalog's meta section), sleeve weights, metrics of the meta walk-forward
    and of the equal-weight-of-sleeves baseline, the tables as CSV and a tear sheet."""
    import json

    from tvq_assets.plots import equity_plot
    from tvq_assets.quant import meta as engine

    tables = tables_of(value)
    sleeves, metrics_table = tables["sleeves"], tables["metrics"]
    params = {
        k: json.dumps(v, default=vars) if isinstance(v, dict | tuple) else v
        for k, v in dataclasses.asdict(catalog.meta).items()
    }
    record = StageRecord(
        params={f"meta.{k}": v for k, v in params.items()},
        metrics={
            **{f"weight.{s}": float(w) for s, w in sleeves["weight"].items()},
            **{
                f"{'meta' if policy == engine.META else 'baseline'}.{k}": float(v)
                for policy, row in metrics_table.iterrows()
                for k, v in row.items()
                if pd.notna(v)
            },
            "meta.holdings": len(tables["holdings"]),
            "meta.common_dates": len(tables["joined"]),
            "meta.sleeves_missing": int((~sleeves["present"].astype(bool)).sum()),
        },
        tags={
            "tvq.meta.weights": ",".join(f"{s}:{w:.4f}" for s, w in sleeves["weight"].items()),
            "tvq.meta.missing": ",".join(sleeves.index[~sleeves["present"].astype(bool)]),
        },
        tables=_csv_tables(META_STAGE, {k: v for k, v in tables.items() if k != "joined"}),
    )
    returns = tables["returns"]
    if len(returns):
        title = f"meta-portfolio walk-forward to {as_of:%Y-%m-%d}"
        record.figures = {
            f"{META_STAGE}/{name.split('/')[-1]}": png
            for name, png in tear_sheet(
                returns, tables["turnover"], champion=engine.META, title=title
            ).items()
        }
        record.figures[f"{META_STAGE}/equity_vs_baseline.png"] = equity_plot(
            returns, champion=engine.META, baselines=[engine.BASELINE], title=title
        )
    return record


def _meta_run(tracker: MlflowTracker, run: dg.DagsterRun, partition: str):
    """(experiment id, MLflow run) of a meta-portfolio date of a Dagster root run: found, or
    created with its identity."""
    experiment_id = tracker.experiment_id(META_EXPERIMENT)
    version, commit = code_version()
    found = tracker.find_or_create_run(
        experiment_id,
        identity={ROOT_RUN_TAG: run.root_run_id or run.run_id, PARTITION_TAG: partition},
        name=f"meta {partition}",
        tags={
            "dagster.run_id": run.run_id,
            "dagster.run_url": tracker.dagster_run_url(run.run_id),
            "dagster.job": run.job_name,
            "dagster.partition": partition,
            "tvq.code_version": version,
            "mlflow.source.git.commit": commit,
        },
    )
    return experiment_id, found


def track_meta(tracker: MlflowTracker, run: dg.DagsterRun, partition: str, value) -> Tracked:
    """Log a meta-portfolio value on its own MLflow run (experiment ``tvq-meta``, one run per
    Dagster root run × date), finished once logged: the value is already in the lake."""
    as_of = pd.Timestamp(partition)
    experiment_id, found = _meta_run(tracker, run, partition)
    run_id = found.info.run_id
    tracker.reopen(found)
    record = describe_meta(value, as_of)
    tracker.log(
        run_id,
        params=record.params,
        metrics=record.metrics,
        tags=record.tags,
        tables=record.tables,
        figures=record.figures,
    )
    tracker.finish(run_id, "FINISHED")
    return Tracked(experiment_id, run_id, tracker.run_url(experiment_id, run_id))


# --------------------------------------------------------------------------------------------
# Dagster glue
# --------------------------------------------------------------------------------------------
class TrackedIOManager(dg.ConfigurableIOManager):
    """The lake's IO manager, plus experiment tracking of every sleeve × run value it stores.

    The value is in the lake before MLflow is called: if the tracking server is down, the step
    fails after its retries with the tracking URI named, and ``tvq track`` records it later.
    """

    store: ParquetIOManager
    mlflow: MlflowTracker

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        self.store.handle_output(context, obj)
        partition = context.asset_partition_key if context.has_asset_partitions else None
        if context.asset_key.to_user_string() == META_STAGE and partition:
            tracked = track_meta(self.mlflow, context.step_context.dagster_run, partition, obj)
            context.add_output_metadata({"mlflow_run": dg.MetadataValue.url(tracked.url)})
            return
        if not is_run_key(partition):
            return
        started = time.perf_counter()
        stage = context.asset_key.to_user_string()
        as_of, sleeve_name = split_run_key(partition)
        record = describe(stage, obj, catalog.sleeve(sleeve_name), as_of)
        identity = identity_of(context.step_context.dagster_run, partition)
        from tvq_assets.diff import changes_since_previous  # diff builds on this module

        changes = changes_since_previous(self.store.lake, stage, partition, obj)
        source = self.store.lake.location(context.asset_key.path, partition)
        tracked = record_stage(self.mlflow, identity, stage, record, source=str(source))
        read_as = bars_read(context.output_metadata) if stage == "returns" else {}
        if read_as:
            self.mlflow.log(tracked.run_id, tags=read_as)
        registered = register_decision(self.mlflow, self.store.lake, identity, stage, tracked)
        context.add_output_metadata(
            {
                "mlflow_run_id": tracked.run_id,
                "mlflow_run": dg.MetadataValue.url(tracked.url),
                **{k: float(v) for k, v in record.headline.items() if pd.notna(v)},
                **registered,
                "tracking_seconds": round(time.perf_counter() - started, 3),
                **changes,
            }
        )

    def load_input(self, context: dg.InputContext):
        return self.store.load_input(context)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Every executor tears resources down after its steps: in-process once per run, the
        # multiprocess executor once per step process (the last one to finish finalises).
        if context.instance is None or context.run_id is None:
            return
        try:
            started = time.perf_counter()
            done = finalise(self.mlflow, context.instance, context.run_id)
            if done and context.log is not None:
                context.log.info(
                    f"MLflow runs marked {done} in {time.perf_counter() - started:.2f}s"
                )
        except Exception as error:  # the run's own outcome must not be masked by tracking
            log.warning("MLflow tracking: could not finalise run %s: %s", context.run_id, error)


# The bar-store state a returns run read (the bound a re-run reads again) and whether it restated,
# as the asset records them in its metadata: tagged on the MLflow run too.
BARS_READ_TAGS = {
    "bars_version": "tvq.bars_version",
    "bars_read_as": "tvq.bars_read_as",
    "restate": "tvq.restate",
    "restated_bars": "tvq.restated_bars",
}


def bars_read(metadata) -> dict[str, str]:
    """The MLflow tags of a returns output's bar-store bound, from its output metadata."""
    tags = {}
    for key, tag in BARS_READ_TAGS.items():
        if key in metadata:
            value = metadata[key]
            tags[tag] = str(getattr(value, "value", value))
    return tags


def _sensor(status: dg.DagsterRunStatus):
    @dg.run_status_sensor(
        name=f"mlflow_on_{status.value.lower()}",
        run_status=status,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Mark the MLflow runs of a Dagster run that ended {status.value}.",
    )
    def sensor(context: dg.RunStatusSensorContext, mlflow: MlflowTracker):
        finalise(mlflow, context.instance, context.dagster_run.run_id)

    return sensor


# Cancellation and runs that die outside a step are only seen from the daemon.
SENSORS = [_sensor(s) for s in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)]


# --------------------------------------------------------------------------------------------
# Replay from the lake
# --------------------------------------------------------------------------------------------
def replay(
    tracker: MlflowTracker,
    instance: dg.DagsterInstance,
    lake: ParquetLake,
    sleeve_name: str,
    start: str,
    end: str,
) -> list[tuple[str, list[str]]]:
    """Record the stored stages of every partition in [start, end] whose MLflow run lacks them.

    The MLflow run is the one of the newest Dagster run of the partition (a partition with no
    Dagster run on record gets a run keyed ``lake``). Returns (partition, stages recorded).
    """
    sleeve = catalog.sleeve(sleeve_name)
    recorded = []
    for day in pd.date_range(start, end, freq="D"):
        partition = run_key(day, sleeve_name)
        stages = [s for s in STAGE_ORDER if lake.exists([s], partition)]
        if not stages:
            continue
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": partition}), limit=1)
        if runs:
            identity = identity_of(runs[0], partition)
        else:
            identity = Identity(partition, "lake", f"lake-{partition}", "replay")
        tracked = open_run(tracker, identity)
        logged = tracker.get_run(tracked.run_id).data.tags
        missing = [
            s
            for s in stages
            if f"tvq.stage.{s}" not in logged
            or (s == REGISTERED_STAGE and "tvq.promotion.verdict" not in logged)
        ]
        for stage in missing:
            value = lake.read([stage], partition)
            record = describe(stage, value, sleeve, day)
            source = str(lake.location([stage], partition))
            register_decision(
                tracker,
                lake,
                identity,
                stage,
                record_stage(tracker, identity, stage, record, source=source),
            )
        tracker.log(tracked.run_id, tags={"tvq.replayed": ",".join(missing) or "nothing"})
        if runs and runs[0].status in STATUS_OF_RUN:
            finalise(tracker, instance, runs[0].run_id)
        elif not runs:
            tracker.finish(tracked.run_id, "FINISHED")
        recorded.append((partition, missing))
    return recorded


def summary(tracker: MlflowTracker, partition: str) -> str:
    """One line for the terminal: the partition's newest MLflow run, its status and its URL."""
    try:
        experiment = tracker.client.get_experiment_by_name(f"tvq-{partition.split('|')[1]}")
        runs = (
            tracker.search(experiment.experiment_id, {PARTITION_TAG: partition})
            if experiment
            else []
        )
    except Exception as error:
        reason = type(error).__name__
        return f"   mlflow:  unavailable at {tracker.shown_uri} ({reason}); `tvq track` replays it"
    if not runs:
        return f"   mlflow:  no run for {partition} at {tracker.shown_uri}"
    run = runs[-1]
    url = tracker.run_url(experiment.experiment_id, run.info.run_id)
    line = f"   mlflow:  run {run.info.run_id} ({run.info.status}) {url}"
    tags = run.data.tags
    if "tvq.promotion.verdict" in tags:
        name = f"tvq-{partition.split('|')[1]}"
        version = tags["tvq.promotion.champion_version"]
        line += (
            f"\n   registry: {name} v{version} is the champion ({tags['tvq.promotion.verdict']}) "
            f"{tracker.model_version_url(name, version)}"
        )
    return line
