"""Dagster's default run launcher, plus a health check so run monitoring can see a dead run worker.

The stock ``DefaultRunLauncher`` cannot tell whether a run's process is alive. The code server
notices when a run worker it started dies, but nothing watches a run executed in another process
(``tvq demo``, ``tvq production``, ``dagster job execute``) or a run whose code server died with
it: killed, such a run stays STARTED forever and holds its sleeve's slot in the queue.

This launcher records, when it launches a run, the machine its process runs on (tag
``tvq/run_worker_host``) and, when it executes the run itself, that process's pid and identity
(``tvq/run_worker_pid``, ``tvq/run_worker_process``: boot id and start time, which tell a pid
reused by another process, or a restart, apart); a launched run worker reports its own pid with
the run's start event. :func:`worker_gone` judges from them whether the run's process is
certainly gone: the monitoring daemon asks it through
:meth:`MonitoredRunLauncher.check_run_worker_health`, and the ``tvq`` commands ask it themselves
when no daemon monitors runs (``tvq_assets.launch``). It never condemns a run of another machine
(a pid means something only where it was recorded), nor a process it cannot see die: a live pid
without a recorded identity counts as the run's, which at worst delays the verdict to the run's
``max_runtime_seconds``.

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

# The machine the run's process runs on; when the launching process executes the run itself, its
# pid and its identity (boot id and start time in clock ticks: a pid reused by another process, or
# a pid after a restart, has another identity).
HOST_TAG = "tvq/run_worker_host"
PID_TAG = "tvq/run_worker_pid"
PROCESS_TAG = "tvq/run_worker_process"
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def this_host() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class RunWorker:
    """The process executing a run, as recorded: its pid, its machine (None: not known) and its
    identity (None: not recorded, e.g. a run worker started by a code server)."""

    pid: int
    host: str | None
    identity: str | None = None


def process_identity(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks since boot>`` of a live process (Linux), else None:
    two processes that ever had the same pid have different identities."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return f"{boot}:{fields[19]}"  # field 22 of proc(5): starttime
    except (OSError, IndexError):
        return None


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
    tagged = run.tags.get(PID_TAG, "")
    tagged_pid = int(tagged) if tagged.isdigit() else None
    pid = run_worker_pid(instance, run.run_id) or tagged_pid
    if pid is None:
        return None
    return RunWorker(pid, host, (run.tags.get(PROCESS_TAG) or None) if pid == tagged_pid else None)


def worker_gone(instance, run: DagsterRun) -> str | None:
    """Why the process executing ``run`` is certainly gone, e.g. "the run worker (pid 1234) is
    gone: no process has that pid on host h any more (it was killed or it crashed)". None while
    it lives, when no pid is recorded yet, or when it ran on another machine (or an unknown one):
    nothing here can see that process."""
    worker = run_worker(instance, run)
    if worker is None or worker.host is None or worker.host != this_host():
        return None
    fate = process_fate(worker.pid, worker.identity, worker.host)
    return None if fate is None else f"the run worker (pid {worker.pid}) is gone: {fate}"


def process_fate(pid: int, identity: str | None, host: str) -> str | None:
    """What became of the process ``pid`` of this machine (``host``), recorded with ``identity``
    (:func:`process_identity`; None: not recorded): None while it may run, else a sentence."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"no process has that pid on {host} any more (it was killed or it crashed)"
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None  # no /proc (not Linux), or it exited in between: judged at the next look
    if state in ("Z", "X"):
        return f"the process has exited on {host} (its parent has not reaped it yet)"
    now = process_identity(pid)
    if identity is None or now is None or now == identity:
        return None
    if now.split(":")[0] != identity.split(":")[0]:
        return f"{host} has restarted since the run started"
    return f"pid {pid} on {host} now belongs to another process (the run's was killed or crashed)"


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
            identity = process_identity(os.getpid())
            if identity:
                tags[PROCESS_TAG] = identity
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
