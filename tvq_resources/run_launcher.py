"""Dagster's default run launcher, plus a health check so run monitoring can see a dead run worker.

The stock ``DefaultRunLauncher`` cannot tell whether a run's process is alive. The code server
notices when a run worker it started dies, but nothing watches a run executed in another process
(``tvq demo``, ``tvq production``, ``dagster job execute``) or a run whose code server died with
it: killed, such a run stays STARTED forever and holds its sleeve's slot in the queue.

This launcher records, when it launches a run, the machine its process runs on (tag
``tvq/run_worker_host``) and, when it executes the run itself, that process's pid
(``tvq/run_worker_pid``; a launched run worker reports its own pid with the run's start event).
:func:`worker_gone` judges from them whether the run's process is certainly gone: the monitoring
daemon asks it through :meth:`MonitoredRunLauncher.check_run_worker_health`, and the ``tvq``
commands ask it themselves when no daemon monitors runs (``tvq_assets.launch``). It never
condemns a run of another machine, nor one whose process it cannot see die: a pid is only
meaningful on the machine that recorded it, and a pid that now belongs to a process started
after the run's is a recycled pid, not the run's process.

A run dequeued by a process that has the code location loaded in itself (``tvq demo`` and ``tvq
production`` when no daemon is dequeuing, see ``tvq_assets.launch``) is executed right there, as
Dagster's in-memory launcher does: the imports are already paid for, and the run still came
through the queue with the code location's origin. Every other process (the daemon, the UI)
loads the code location from a code server, so its runs start in run workers as before.
"""

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher
from dagster._core.execution.api import execute_run
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from dagster._core.remote_representation.code_location import InProcessCodeLocation
from dagster._core.storage.runs import InMemoryRunStorage, SqliteRunStorage
from dagster._utils.hosted_user_process import recon_job_from_origin

# The machine the run's process runs on, and its pid when the launching process executes the run.
HOST_TAG = "tvq/run_worker_host"
PID_TAG = "tvq/run_worker_pid"
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
# A pid held by a process started this long after the run's process was known to exist is a
# recycled pid. The margin covers the one-second resolution of the boot time in /proc/stat.
RECYCLED_AFTER_SECONDS = 30.0


def this_host() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class RunWorker:
    """The process executing a run, as recorded: its pid, its machine (None: not known), and a
    time (epoch seconds) at which it certainly existed."""

    pid: int
    host: str | None
    existed_at: float


def run_worker_pid(instance, run_id: str) -> int | None:
    """The pid of the process executing the run: the one that reported its start.

    That is the run worker for a launched run, and the calling process for a run executed in
    process (``tvq demo``, ``dagster job execute``), which no code server watches.
    """
    starts = instance.all_logs(run_id, of_type=DagsterEventType.RUN_START)
    event = starts[-1].dagster_event if starts else None
    return event.pid if event is not None and event.pid else None


def run_worker(instance, run: DagsterRun) -> RunWorker | None:
    """The process executing ``run``: the one that reported its start, else (a run still
    STARTING) the process that dequeued it to execute it itself. None when no pid is recorded."""
    host = run.tags.get(HOST_TAG)
    if host is None and isinstance(instance.run_storage, SqliteRunStorage | InMemoryRunStorage):
        # A run executed without this launcher (`dagster job execute`, `execute_in_process`)
        # records no machine; on storage that only this machine opens, it ran here.
        host = this_host()
    starts = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_START)
    if starts and starts[-1].dagster_event is not None and starts[-1].dagster_event.pid:
        return RunWorker(starts[-1].dagster_event.pid, host, starts[-1].timestamp)
    pid = run.tags.get(PID_TAG)
    starting = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_STARTING)
    if pid and pid.isdigit() and starting:
        return RunWorker(int(pid), host, starting[-1].timestamp)
    return None


def worker_gone(instance, run: DagsterRun) -> str | None:
    """Why the process executing ``run`` is certainly gone, e.g. "the run worker (pid 1234) is
    gone: no process has that pid on host h any more (it was killed or it crashed)". None while
    it lives, when no pid is recorded yet, or when it ran on another machine (or an unknown one):
    nothing here can see that process."""
    worker = run_worker(instance, run)
    if worker is None or worker.host is None or worker.host != this_host():
        return None
    fate = process_fate(worker.pid, worker.existed_at, worker.host)
    return None if fate is None else f"the run worker (pid {worker.pid}) is gone: {fate}"


def process_fate(pid: int, existed_at: float, host: str) -> str | None:
    """What became of the process ``pid`` of this machine (``host``) that existed at
    ``existed_at`` (epoch seconds): None while it runs, else a sentence saying what happened."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"no process has that pid on {host} any more (it was killed or it crashed)"
    except PermissionError:
        pass  # exists, owned by someone else
    stat = _process_stat(pid)
    if stat is None:
        # No /proc (not Linux), or it exited in between: only kill(pid, 0) above can be trusted.
        return None
    state, started_at = stat
    if state in ("Z", "X"):
        return f"the process has exited on {host} (its parent has not reaped it yet)"
    if started_at is not None and started_at > existed_at + RECYCLED_AFTER_SECONDS:
        return (
            f"pid {pid} on {host} now belongs to a process started after the run's "
            "(the run's process was killed or crashed, or the machine restarted)"
        )
    return None


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie, not yet reaped, has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    stat = _process_stat(pid)
    return stat is None or stat[0] not in ("Z", "X")


def _process_stat(pid: int) -> tuple[str, float | None] | None:
    """(state, start time in epoch seconds) of a process from /proc, or None when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    state, ticks = fields[0], fields[19]  # fields 3 and 22 of proc(5)
    try:
        booted = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return state, booted + int(ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return state, None


def _remote_code_server(origin) -> bool:
    return isinstance(origin, GrpcServerCodeLocationOrigin) and origin.host not in LOOPBACK


class MonitoredRunLauncher(DefaultRunLauncher):
    """``DefaultRunLauncher`` whose run workers the monitoring daemon can health-check."""

    # The run this process is executing itself right now, if any.
    executing: str | None = None

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
        here = isinstance(location, InProcessCodeLocation) and context.job_code_origin is not None
        tags = {HOST_TAG: this_host()}
        if here:
            tags[PID_TAG] = str(os.getpid())
        elif location is not None and _remote_code_server(location.origin):
            # A code server of its own (a `grpc_server` workspace entry) starts the run worker
            # on its machine.
            tags[HOST_TAG] = location.origin.host
        self._instance.add_run_tags(run.run_id, tags)
        if not here:
            super().launch_run(context)
            return
        run = self._instance.get_run_by_id(run.run_id) or run
        self.executing = run.run_id
        try:
            execute_run(recon_job_from_origin(context.job_code_origin), run, self._instance)
        finally:
            self.executing = None

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        gone = worker_gone(self._instance, run)
        if gone is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker is alive or unseen")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"{gone} while the run was {run.status.value}; re-execute the run (from the UI, or "
            "let the configured retry do it)",
        )
