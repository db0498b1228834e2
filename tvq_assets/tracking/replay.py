"""Replay from the lake (``tvq track SLEEVE FROM TO``): record what is in the lake for partitions
whose MLflow run is missing or incomplete, without recomputing anything; and the one-line MLflow
summary of a partition the commands print."""

from collections.abc import Sequence

import dagster as dg
import pandas as pd

from tvq_assets.partitions import catalog, run_key
from tvq_assets.tracking.describe import describe, stored_figures
from tvq_assets.tracking.identity import (
    PARTITION_TAG,
    Identity,
    identity_of,
    open_run,
    record_stage,
)
from tvq_assets.tracking.registry import REGISTERED_STAGE, register_decision
from tvq_assets.tracking.stages import homes_of
from tvq_assets.tracking.status import STATUS_OF_RUN, finalise
from tvq_resources.lake import ParquetLake
from tvq_resources.tracking import MlflowTracker


def replay(
    tracker: MlflowTracker,
    instance: dg.DagsterInstance,
    lake: ParquetLake,
    sleeve_name: str,
    start: str,
    end: str,
    *,
    assets: Sequence[dg.AssetsDefinition] | None = None,
) -> list[tuple[str, list[str]]]:
    """Record the stored stages of every partition in [start, end] whose MLflow run lacks them.

    ``assets``: the definitions' assets to look for (``definitions.ASSETS``), recorded in the
    graph's order with the describers beside them; by default every asset the lake holds a value
    of, by name (a stage's record depends on its own stored value alone, so the order changes
    nothing recorded). The MLflow run is the one
    of the newest Dagster run of the partition (a partition with no Dagster run on record gets a
    run keyed ``lake``). Returns (partition, stages recorded).
    """
    sleeve = catalog.sleeve(sleeve_name)
    homes = {s: None for s in stored_assets(lake)} if assets is None else homes_of(assets)
    recorded = []
    for day in pd.date_range(start, end, freq="D"):
        partition = run_key(day, sleeve_name)
        stored = [s for s in homes if lake.exists([s], partition)]
        if not stored:
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
            for s in stored
            if f"tvq.stage.{s}" not in logged
            or (s == REGISTERED_STAGE and "tvq.promotion.verdict" not in logged)
        ]
        for stage in missing:
            value = lake.read([stage], partition)
            record = describe(stage, value, sleeve, day, home=homes[stage])
            record.figures.update(stored_figures(lake, stage, partition))
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


def stored_assets(lake: ParquetLake) -> list[str]:
    """The asset names the lake holds values of (its top-level folders), by name."""
    root = lake.root_path
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


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
