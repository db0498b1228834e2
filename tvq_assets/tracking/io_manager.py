"""The tracked IO manager: the lake's IO manager plus experiment tracking of every sleeve × run
value it stores, and the run-status sensors that finish the MLflow runs of failed runs.

- :class:`TrackedIOManager` stores each value in the lake, then records the value's stage on the
  partition's MLflow run (``identity.record_stage``) and puts the MLflow run id and URL in the
  asset's metadata. No asset body knows about MLflow.
- The terminal status is set when the run's steps are over (``status.finalise``): by the IO
  manager's teardown (every executor tears its resources down after its steps) and by the
  run-status sensors here (cancellation, runs that die outside a step).
"""

import logging
import time

import dagster as dg
import pandas as pd

from tvq_assets.partitions import catalog, is_run_key, split_run_key
from tvq_assets.tracking.describe import META_STAGE, describe, stored_figures
from tvq_assets.tracking.diff import changes_since_previous
from tvq_assets.tracking.identity import identity_of, record_stage
from tvq_assets.tracking.meta_run import track_meta
from tvq_assets.tracking.registry import register_decision
from tvq_assets.tracking.stages import home_of
from tvq_assets.tracking.status import finalise
from tvq_resources.lake import ParquetIOManager
from tvq_resources.tracking import MlflowTracker

log = logging.getLogger(__name__)


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
        stage = context.asset_key.to_user_string()
        figures = stored_figures(self.store.lake, stage, partition)
        if stage == META_STAGE and partition:
            tracked = track_meta(
                self.mlflow, context.step_context.dagster_run, partition, obj, figures=figures
            )
            context.add_output_metadata({"mlflow_run": dg.MetadataValue.url(tracked.url)})
            return
        if not is_run_key(partition):
            return
        started = time.perf_counter()
        home = home_of(op_of(context))
        as_of, sleeve_name = split_run_key(partition)
        record = describe(stage, obj, catalog.sleeve(sleeve_name), as_of, home=home)
        record.figures.update(figures)
        identity = identity_of(context.step_context.dagster_run, partition)
        changes = changes_since_previous(self.store.lake, stage, partition, obj, home=home)
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


def op_of(context: dg.OutputContext) -> dg.OpDefinition | None:
    """The op that produced the output; None for a context built without one (a test's)."""
    try:
        return context.op_def
    except dg.DagsterInvariantViolationError:
        return None


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
