"""The meta-portfolio: partitioned by run date alone, tracked in its own experiment."""

import dagster as dg
import pandas as pd

from tvq_assets.tracking.describe import meta_record
from tvq_assets.tracking.identity import PARTITION_TAG, ROOT_RUN_TAG, Tracked, code_version
from tvq_resources.tracking import MlflowTracker

META_EXPERIMENT = "tvq-meta"


def meta_run(tracker: MlflowTracker, run: dg.DagsterRun, partition: str):
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


def track_meta(
    tracker: MlflowTracker,
    run: dg.DagsterRun,
    partition: str,
    value,
    *,
    figures: dict[str, bytes] | None = None,
) -> Tracked:
    """Log a meta-portfolio value on its own MLflow run (experiment ``tvq-meta``, one run per
    Dagster root run × date), finished once logged: the value is already in the lake.
    ``figures``: those the asset stored beside the value, logged with the tear sheet's."""
    as_of = pd.Timestamp(partition)
    experiment_id, found = meta_run(tracker, run, partition)
    run_id = found.info.run_id
    tracker.reopen(found)
    record = meta_record(value, as_of)
    tracker.log(
        run_id,
        params=record.params,
        metrics=record.metrics,
        tags=record.tags,
        tables=record.tables,
        figures={**record.figures, **(figures or {})},
    )
    tracker.finish(run_id, "FINISHED")
    return Tracked(experiment_id, run_id, tracker.run_url(experiment_id, run_id))
