"""Run identity: which MLflow run a Dagster run × partition writes to, and logging a stage on it.

The MLflow run is found or created by identity tags (the root Dagster run id and the partition
key), so every step process, and a re-execution from failure, write to the same run.
"""

import importlib.metadata
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import dagster as dg

from tvq_assets.catalog import policy_parameters
from tvq_assets.partitions import catalog, split_run_key
from tvq_assets.tracking.values import StageRecord
from tvq_resources.tracking import MlflowTracker

ROOT_RUN_TAG = "tvq.dagster_root_run_id"
PARTITION_TAG = "tvq.partition"


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


# The MLflow runs this process has opened, by tracking URI and Dagster run × partition: every
# stage of a run logs to its partition's run, which is found (and reopened, and given its params)
# once per process.
_OPENED: dict[tuple[str, Identity], Tracked] = {}


def open_run(tracker: MlflowTracker, identity: Identity) -> Tracked:
    """The partition's MLflow run, created with its identity and params on first use; a later
    Dagster run of the same root (re-execution) reopens it and is recorded as the newest."""
    key = (tracker.uri, identity)
    if key not in _OPENED:
        _OPENED[key] = _open_run(tracker, identity)
    return _OPENED[key]


def _open_run(tracker: MlflowTracker, identity: Identity) -> Tracked:
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
    digests = {
        f"tvq.{stage}.digest": tracker.log_dataset(
            run_id, frame, name=name, source=source or f"lake:{stage}", context="training"
        )
        for name, frame in record.datasets.items()
    }
    tracker.log(
        run_id,
        params=record.params,
        metrics=record.metrics,
        tags={**record.tags, f"tvq.stage.{stage}": identity.dagster_run_id, **digests},
        tables=record.tables,
        figures=record.figures,
    )
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
