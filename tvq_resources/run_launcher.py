"""Dagster's default run launcher, plus a health check so run monitoring can see a dead run worker.

The stock ``DefaultRunLauncher`` cannot tell whether a run's process is alive. The code server
notices when a run worker it started dies, but nothing watches a run executed in another process
(``tvq demo``, ``tvq production``, ``dagster job execute``) or a run whose code server died with
it: killed, such a run stays STARTED forever and holds its sleeve's slot in the queue. This
launcher answers the monitoring daemon's health check from the pid recorded with the run's start
event: the run is healthy while that process exists and is not a zombie. Runs here execute on the
daemon's host (default launcher, local CLI), so the pid is meaningful there; a recycled pid only
delays the verdict until ``max_runtime_seconds``.

A run dequeued by a process that has the code location loaded in itself (``tvq demo`` and ``tvq
production`` when no daemon is dequeuing, see ``tvq_assets.launch``) is executed right there, as
Dagster's in-memory launcher does: the imports are already paid for, and the run still came
through the queue with the code location's origin. Every other process (the daemon, the UI)
loads the code location from a code server, so its runs start in run workers as before.
"""

import os
from pathlib import Path

from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher
from dagster._core.execution.api import execute_run
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.remote_representation.code_location import InProcessCodeLocation
from dagster._utils.hosted_user_process import recon_job_from_origin


def run_worker_pid(instance, run_id: str) -> int | None:
    """The pid of the process executing the run: the one that reported its start.

    That is the run worker for a launched run, and the calling process for a run executed in
    process (``tvq demo``, ``dagster job execute``), which no code server watches.
    """
    starts = instance.all_logs(run_id, of_type=DagsterEventType.RUN_START)
    event = starts[-1].dagster_event if starts else None
    return event.pid if event is not None and event.pid else None


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie, not yet reaped, has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state not in ("Z", "X")
    return True


class MonitoredRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` whose run workers the monitoring daemon can health-check."""

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.remote_job_origin
        location = (
            context.workspace.get_code_location(
                origin.repository_origin.code_location_origin.location_name
            )
            if context.workspace is not None and origin is not None
            else None
        )
        if isinstance(location, InProcessCodeLocation) and context.job_code_origin is not None:
            execute_run(recon_job_from_origin(context.job_code_origin), run, self._instance)
            return
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid = run_worker_pid(self._instance, run.run_id)
        if pid is None:
            # STARTED is reported after the pid is; without it there is nothing to judge yet.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker pid recorded yet")
        if process_alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} is alive")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run worker (pid {pid}) is gone: it was killed or crashed while the run was "
            "STARTED; re-execute the run (from the UI, or let the configured retry do it)",
        )
