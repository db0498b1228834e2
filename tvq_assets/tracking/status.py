"""Terminal status: an MLflow run is finished, failed or killed when its Dagster run's steps
are over (:func:`finalise`, called by the IO manager's teardown and by run-status sensors)."""

import dagster as dg

from tvq_assets.partitions import is_run_key
from tvq_assets.partitions import run as run_dates
from tvq_assets.tracking.identity import identity_of, open_run
from tvq_assets.tracking.meta_run import meta_run
from tvq_resources.tracking import MlflowTracker

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
    _, found = meta_run(tracker, run, partition)
    tracker.log(found.info.run_id, tags=tags, texts=texts)
    tracker.finish(found.info.run_id, status)
    return [(partition, status)]
