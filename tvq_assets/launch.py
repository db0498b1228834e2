"""Runs of the workspace's code location, launched through the instance from the command line.

A run created here carries the code location's origin (``tvq`` in ``workspace.yaml``), as one
launched from the UI, the schedule or a sensor does: the job pages list it and run status sensors
(``run_daily_after_bars``, MLflow's) see it. It is submitted to the instance's run coordinator, so
the queue's limits in ``dagster.yaml`` apply.

- A daemon is dequeuing (``make dev`` runs): it starts the run in a run worker of its code server.
- No daemon: the command does the daemon's dequeue pass itself while it waits (the coordinator's
  own code and limits). The code location is loaded in this process, so the instance's launcher
  (``MonitoredRunLauncher``) executes the dequeued run here, where the imports are already paid
  for, instead of paying them again in a code server and a run worker.
"""

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import dagster as dg
from dagster._cli.job import _create_run
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.controller import get_daemon_statuses
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

ROOT = Path(__file__).resolve().parents[1]
# The code location as workspace.yaml names it: runs are matched to it by these names.
LOCATION = "tvq"
MODULE = "tvq_assets.definitions"
REPOSITORY = "__repository__"

# The run's full event log is in the UI; the terminal gets the run's INFO events (steps'
# materialisations and failures), not the DEBUG stream of every engine event.
LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

# A daemon that has not sent a heartbeat for this long is not dequeuing (it heartbeats every 30 s).
DAEMON_SILENT_SECONDS = 60.0


def daemon_dequeues(instance: dg.DagsterInstance) -> bool:
    """True while a daemon's run-queue coordinator reports in: it will dequeue our runs."""
    daemon = QueuedRunCoordinatorDaemon.daemon_type()
    status = get_daemon_statuses(
        instance, [daemon], ignore_errors=True, heartbeat_tolerance_seconds=DAEMON_SILENT_SECONDS
    )[daemon]
    return bool(status.healthy)


class Launcher:
    """Submit runs of the code location's jobs and wait for them, dequeuing when no daemon does.

    ``with Launcher(instance) as launcher: run_id = launcher.submit("daily", key)``
    """

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self._context: WorkspaceProcessContext | None = None
        self._dequeuer: QueuedRunCoordinatorDaemon | None = None

    def __enter__(self) -> "Launcher":
        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(
                executable_path=sys.executable, module_name=MODULE, working_directory=str(ROOT)
            ),
            location_name=LOCATION,
        )
        self._context = WorkspaceProcessContext(self.instance, InProcessWorkspaceLoadTarget(origin))
        self._context.__enter__()
        self._dequeuer = QueuedRunCoordinatorDaemon(interval_seconds=1)
        self._dequeuer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._dequeuer is not None:
            self._dequeuer.__exit__(*exc)
        if self._context is not None:
            self._context.__exit__(*exc)

    def submit(self, job: str, partition: str, tags: dict[str, str] | None = None) -> str:
        """Create a run of ``job`` for ``partition`` with the code location's origin and submit
        it to the run coordinator (queued). Returns the run id."""
        assert self._context is not None, "use Launcher as a context manager"
        request = self._context.create_request_context()
        errors = request.get_code_location_error(LOCATION)
        if errors:
            raise RuntimeError(f"code location {LOCATION!r} did not load: {errors.message}")
        location = request.get_code_location(LOCATION)
        repository = location.get_repository(REPOSITORY)
        run = _create_run(
            instance=self.instance,
            code_location=location,
            remote_repo=repository,
            remote_job=repository.get_full_job(job),
            run_config=LOGS,
            tags={"dagster/partition": partition, **(tags or {})},
            op_selection=None,
            run_id=None,
        )
        self.instance.submit_run(run.run_id, request)
        return run.run_id

    def step(self) -> None:
        """One dequeue pass when no daemon is dequeuing: the queued runs the limits allow are
        executed here, one after the other."""
        assert self._context is not None and self._dequeuer is not None
        if not daemon_dequeues(self.instance):
            for _ in self._dequeuer.run_iteration(self._context):
                pass

    def wait(
        self,
        run_ids: Iterable[str],
        on_finished: Callable[[dg.DagsterRun], None] = lambda run: None,
        poll_seconds: float = 1.0,
    ) -> None:
        """Until every run in ``run_ids`` has finished (``on_finished`` may submit more: add
        their ids to ``run_ids`` if it is a mutable set), call ``on_finished`` once per run."""
        pending = run_ids
        seen: set[str] = set()
        while True:
            self.step()
            for run_id in list(pending):
                if run_id in seen:
                    continue
                run = self.instance.get_run_by_id(run_id)
                if run is not None and run.is_finished:
                    seen.add(run_id)
                    on_finished(run)
            if seen >= set(pending):
                return
            time.sleep(poll_seconds)


def events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list:
    """The run's Dagster events of one kind, oldest first."""
    return [record.dagster_event for record in instance.all_logs(run_id, of_type=kind)]
