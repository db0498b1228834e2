"""Runs of the workspace's code location, launched through the instance from the command line.

A run created here carries the code location's origin (``tvq`` in ``workspace.yaml``), as one
launched from the UI, the schedule or a sensor does: the job pages list it and run status sensors
(``run_daily_after_bars``, MLflow's) see it. It is submitted to the instance's run coordinator, so
the queue's limits in ``dagster.yaml`` apply.

- A daemon is running (``make dev``): it dequeues the runs and starts each in a run worker of its
  code server, submits backfills' runs, and its run monitoring fails a run whose process died.
- No daemon: the command does the daemon's passes itself while it waits, with the daemon's own
  code and the instance's limits: it fails the runs whose process is gone (so a killed run never
  holds a queue slot), submits the runs of its backfill, and dequeues. The code location is loaded
  in this process, so the instance's launcher (``MonitoredRunLauncher``) executes a dequeued run
  here, where the imports are already paid for, instead of paying them again in a code server
  and a run worker.

A run that waits in the queue behind another says so once, naming the run that holds its slot.
When the instance's storage stops answering (Postgres stopped or unreachable), the command ends
with one summary instead of Dagster's retries and tracebacks: see :class:`Launcher`.
"""

import collections
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import dagster as dg
from dagster._cli.job import _create_run
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.execution.backfill import (
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionStatus,
    PartitionBackfill,
)
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.remote_representation.external_data import PartitionNamesSnap
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_backfill_id
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.auto_run_reexecution.event_log_consumer import EventLogConsumerDaemon
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.controller import get_daemon_statuses
from dagster._daemon.daemon import BackfillDaemon, MonitoringDaemon
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from dagster._time import get_current_timestamp

from tvq_resources.run_launcher import run_worker, this_host, worker_gone

ROOT = Path(__file__).resolve().parents[1]
# The code location as workspace.yaml names it: runs are matched to it by these names.
LOCATION = "tvq"
MODULE = "tvq_assets.definitions"
REPOSITORY = "__repository__"

# The run's full event log is in the UI and the summary says what each run did: the terminal gets
# the runs' warnings and errors (a failure's traceback, once), not their INFO and DEBUG streams.
LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# A backfill's runs show their warnings and errors; each partition gets one progress line.
BACKFILL_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

# A daemon that has not sent a heartbeat for this long is not running (it heartbeats every 30 s).
DAEMON_SILENT_SECONDS = 60.0
QUEUE = QueuedRunCoordinatorDaemon.daemon_type()
MONITORING = MonitoringDaemon.daemon_type()
BACKFILLS = BackfillDaemon.daemon_type()
RETRIES = EventLogConsumerDaemon.daemon_type()
# Where the backfill daemon's pass logs (it is the daemon's own code, run here).
BACKFILL_LOGGER = "dagster.daemon.BackfillDaemon"
# A run in these states has a process working on it (or about to).
WORKING = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

# Exit status of a command whose instance storage stopped answering.
STORAGE_LOST = 3
# The storage on a server is probed this often while a command runs, and declared lost once no
# connection succeeded for LOST_AFTER_SECONDS (and LOST_AFTER_PROBES attempts, each allowed
# CONNECT_SECONDS, so a slow machine is not a lost server): shorter than Dagster's own retries of
# a storage call (about 6 s), so the summary comes before the run's own failures and tracebacks.
PROBE_SECONDS = 1.0
CONNECT_SECONDS = 3
LOST_AFTER_SECONDS = 5.0
LOST_AFTER_PROBES = 3


def daemons_running(instance: dg.DagsterInstance) -> set[str]:
    """The daemons (types: QUEUED_RUN_COORDINATOR, MONITORING, BACKFILL, ...) that report in."""
    statuses = get_daemon_statuses(
        instance,
        [QUEUE, MONITORING, BACKFILLS, RETRIES],
        ignore_errors=True,
        heartbeat_tolerance_seconds=DAEMON_SILENT_SECONDS,
    )
    return {daemon for daemon, status in statuses.items() if status.healthy}


def daemon_dequeues(instance: dg.DagsterInstance) -> bool:
    """True while a daemon's run-queue coordinator reports in: it will dequeue our runs."""
    return QUEUE in daemons_running(instance)


def describe(run: dg.DagsterRun) -> str:
    """``run 1a2b3c4d (daily [2026-06-30|crypto])``"""
    partition = run.tags.get("dagster/partition")
    return f"run {run.run_id[:8]} ({run.job_name}{f' [{partition}]' if partition else ''})"


# -- runs whose process is gone --------------------------------------------------------------------
@dataclass(frozen=True)
class DeadRun:
    """A run whose process was gone, and the message of the event that ended it."""

    run: dg.DagsterRun
    message: str


def fail_dead_runs(instance: dg.DagsterInstance, *, by: str = "tvq") -> list[DeadRun]:
    """End every run of the instance that is starting, started or canceling and whose process is
    certainly gone (``run_launcher.worker_gone``: this machine's processes only): a failure event
    naming the pid and what happened, e.g. "the run worker (pid 1234) is gone: no process has that
    pid on h any more (it was killed or it crashed); marked failed by tvq". A run that was being
    canceled is marked canceled instead (what was asked for; a retry never resurrects it). Its
    queue slot is free again. The configured retry applies as for run monitoring's verdicts."""
    dead = []
    for run in instance.get_runs(dg.RunsFilter(statuses=WORKING)):
        gone = worker_gone(instance, run)
        current = instance.get_run_by_id(run.run_id) if gone else None
        if gone is None or current is None or current.status != run.status:
            continue  # alive, unseen, or it moved on by itself meanwhile
        if run.status == dg.DagsterRunStatus.CANCELING:
            message = f"{gone}; marked canceled by {by} (it was being canceled)"
            instance.report_run_canceled(current, message)
        else:
            message = f"{gone}; marked failed by {by}"
            instance.report_run_failed(
                current,
                message,
                JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
            )
        dead.append(DeadRun(current, message))
    return dead


# -- why a run waits -------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueWait:
    """The queue's rule that keeps a run queued, and the runs that hold the slots it needs."""

    rule: str
    holders: list[dg.DagsterRun]


def queue_wait(instance: dg.DagsterInstance, run: dg.DagsterRun) -> QueueWait | None:
    """Why the queue's limits (``run_coordinator`` in dagster.yaml) keep ``run`` queued now: the
    first tag limit it is at, else the number of runs at a time. None when nothing holds it."""
    config = instance.get_concurrency_config().run_queue_config
    if config is None:
        return None
    active = [
        other
        for other in instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES))
        if other.run_id != run.run_id
    ]
    for limit in config.tag_concurrency_limits or []:
        key, value, most = limit["key"], limit.get("value"), limit["limit"]
        if key not in run.tags or (isinstance(value, str) and run.tags[key] != value):
            continue
        if isinstance(value, str) or (value and value.get("applyLimitPerUniqueValue")):
            label = f"{key}={run.tags[key]}"
            holders = [other for other in active if other.tags.get(key) == run.tags[key]]
        else:
            label = f"a tag {key}"
            holders = [other for other in active if key in other.tags]
        if len(holders) >= most:
            return QueueWait(f"the queue runs {most} run(s) with {label} at a time", holders)
    most = config.max_concurrent_runs
    if most != -1 and len(active) >= most:
        return QueueWait(f"the queue runs {most} run(s) at a time", active)
    return None


def _worker_state(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    worker = run_worker(instance, run)
    if worker is None:
        return "no process recorded yet"
    if worker.host != this_host():
        return f"pid {worker.pid} on {worker.host or 'an unrecorded machine'}, not seen from here"
    return f"pid {worker.pid} alive on {worker.host}"


# -- the instance's storage ------------------------------------------------------------------------
# DB-API errors that say the database cannot be reached or used (not a bad query or a conflict).
CONNECTION_ERRORS = ("OperationalError", "InterfaceError")


class StorageLost(RuntimeError):
    """The instance's storage stopped answering; the message is the summary for the operator."""


def storage_url(instance: dg.DagsterInstance) -> str | None:
    """The connection URL of the instance's storage when it lives on a server (Postgres, MySQL)."""
    storage = instance.run_storage
    return getattr(storage, "postgres_url", None) or getattr(storage, "mysql_url", None)


def storage_name(instance: dg.DagsterInstance) -> str:
    """The instance's storage as an operator knows it, password hidden: ``Postgres at
    postgresql+psycopg2://tvq:***@127.0.0.1:5433/dagster``."""
    url = storage_url(instance)
    if url is None:
        return f"the SQLite storage under DAGSTER_HOME={instance.root_directory}"
    from sqlalchemy.engine import make_url

    shown = make_url(url).render_as_string(hide_password=True)
    return f"{'Postgres' if url.startswith('postgres') else 'MySQL'} at {shown}"


def storage_error(error: BaseException | None) -> bool:
    """True when ``error`` (or what caused it) says the storage cannot be reached or used."""
    import sqlalchemy.exc

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        kind = type(error)
        if isinstance(error, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if kind.__name__ in ("DagsterPostgresException", "DagsterMySQLException"):
            return True  # the dagster-postgres/-mysql storages' "too many retries"
        if kind.__module__ in ("sqlite3", "psycopg2") and kind.__name__ in CONNECTION_ERRORS:
            return True
        error = error.__cause__ or error.__context__
    return False


def _cause(error: BaseException) -> str:
    """The first line of the innermost error: "connection to server at ... failed: Connection
    refused"."""
    innermost, seen = error, set()
    while id(innermost) not in seen and (innermost.__cause__ or innermost.__context__):
        seen.add(id(innermost))
        innermost = innermost.__cause__ or innermost.__context__
    lines = str(innermost).strip().splitlines()
    return lines[0] if lines else type(innermost).__name__


class _Divert(logging.Filter):
    """Keeps a record that only says the storage is failing off the terminal (Dagster retries each
    storage call with a warning of several lines); the last ones go to the command's log file."""

    def __init__(self, kept: collections.deque):
        super().__init__()
        self.kept = kept

    def filter(self, record: logging.LogRecord) -> bool:
        failing = str(record.msg).startswith("Retrying failed database connection") or (
            record.exc_info is not None and storage_error(record.exc_info[1])
        )
        if failing:
            self.kept.append(logging.Formatter().format(record))
        return not failing


# -- the launcher ----------------------------------------------------------------------------------
class Launcher:
    """Submit runs and backfills of the code location's jobs and wait for them, doing the
    daemon's passes when no daemon does.

    ``with Launcher(instance) as launcher: run_id = launcher.submit("daily", key)``

    With ``exit_when_storage_lost`` (the ``tvq`` commands), a storage on a server is probed while
    the command runs, and when it stops answering, or when anything in the ``with`` block fails
    because the storage cannot be reached, the command prints one summary (the service and its
    URL without the password, what it submitted and how far each got, what to do), writes the
    tracebacks to a log file and exits with :data:`STORAGE_LOST`; a run it was executing is left
    STARTED, and the next command marks it failed (its process is gone). Without it, such a
    failure raises :class:`StorageLost` with that summary.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        *,
        exit_when_storage_lost: bool = False,
        say: Callable[[str], None] = lambda line: print(line, flush=True),
        on_dead: Callable[[dg.DagsterRun], None] = lambda run: None,
    ):
        self.instance = instance
        self.say = say
        # What else must learn that a dead run ended (its MLflow runs), as the daemon's run
        # status sensors would when a daemon runs.
        self.on_dead = on_dead
        self.submitted: dict[str, str] = {}  # run id -> "job [partition]"
        self.status: dict[str, str] = {}  # run id -> status last seen
        self.backfills: dict[str, int] = {}  # backfill id -> partitions
        self.daemons: set[str] = set()  # the daemons that reported in at the last pass
        self._exit = exit_when_storage_lost
        self._context: WorkspaceProcessContext | None = None
        self._dequeuer: QueuedRunCoordinatorDaemon | None = None
        self._explained: set[str] = set()
        self._diverted: collections.deque[str] = collections.deque(maxlen=200)
        self._divert = _Divert(self._diverted)
        self._quiet = [logging.getLogger(), logging.getLogger(BACKFILL_LOGGER)]
        self._lost = threading.Lock()
        self._done = threading.Event()
        self._watch: threading.Thread | None = None

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
        if self._exit:
            self._quiet.append(self._dequeuer._logger)
            for logger in self._quiet:
                logger.addFilter(self._divert)
            url = storage_url(self.instance)
            if url is not None:
                self._watch = threading.Thread(target=self._probe, args=(url,), daemon=True)
                self._watch.start()
        try:
            # Before anything is queued: a dead run must not hold the slot our runs need.
            self._fail_dead_runs(daemons_running(self.instance))
        except Exception as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(self, kind, error, trace) -> None:
        self._done.set()
        try:
            if storage_error(error):
                self._storage_lost(error)
        finally:
            for logger in self._quiet:
                logger.removeFilter(self._divert)
            if self._dequeuer is not None:
                self._dequeuer.__exit__(kind, error, trace)
            if self._context is not None:
                self._context.__exit__(kind, error, trace)

    def _location(self):
        assert self._context is not None, "use Launcher as a context manager"
        request = self._context.create_request_context()
        errors = request.get_code_location_error(LOCATION)
        if errors:
            raise RuntimeError(f"code location {LOCATION!r} did not load: {errors.message}")
        location = request.get_code_location(LOCATION)
        return request, location, location.get_repository(REPOSITORY)

    def submit(self, job: str, partition: str, tags: dict[str, str] | None = None) -> str:
        """Create a run of ``job`` for ``partition`` with the code location's origin and submit
        it to the run coordinator (queued). Returns the run id."""
        request, location, repository = self._location()
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
        self.submitted[run.run_id] = f"{job} [{partition}]"
        self.status[run.run_id] = "NOT_STARTED"
        self.instance.submit_run(run.run_id, request)
        self.status[run.run_id] = "QUEUED"
        return run.run_id

    def partition_keys(self, job: str) -> list[str]:
        """Every partition key of ``job``, as the code location lists them."""
        request, _, repository = self._location()
        names = request.get_partition_names(
            repository_selector=repository.selector,
            job_name=job,
            instance=self.instance,
            selected_asset_keys=None,
        )
        if not isinstance(names, PartitionNamesSnap):
            raise RuntimeError(f"{job}: its partitions could not be listed: {names.error}")
        return list(names.partition_names)

    def backfill(self, job: str, partitions: list[str], tags: dict[str, str] | None = None) -> str:
        """Request a backfill of ``job`` over ``partitions`` from Dagster's backfill machinery,
        as the UI does: the backfill daemon (or :meth:`step` with ``backfills=True`` when none
        runs) submits a queued run per partition and marks it completed once they finished.
        Returns the backfill id (its runs carry the tag ``dagster/backfill``)."""
        _, _, repository = self._location()
        [partition_set] = [s for s in repository.get_partition_sets() if s.job_name == job]
        backfill = PartitionBackfill(
            backfill_id=make_new_backfill_id(),
            partition_set_origin=partition_set.get_remote_origin(),
            status=BulkActionStatus.REQUESTED,
            partition_names=partitions,
            from_failure=False,
            reexecution_steps=None,
            tags=tags or {},
            backfill_timestamp=get_current_timestamp(),
            run_config=BACKFILL_LOGS,
        )
        self.instance.add_backfill(backfill)
        self.backfills[backfill.backfill_id] = len(partitions)
        return backfill.backfill_id

    def step(self, *, backfills: bool = False) -> None:
        """One pass of each daemon that is not running: fail the runs whose process is gone,
        submit the runs of requested backfills (with ``backfills``), then dequeue: the queued
        runs the limits allow are executed here, one after the other."""
        assert self._context is not None and self._dequeuer is not None
        self.daemons = running = daemons_running(self.instance)
        self._fail_dead_runs(running)
        if backfills and BACKFILLS not in running:
            logger = logging.getLogger(BACKFILL_LOGGER)
            for error in execute_backfill_iteration(self._context, logger):
                if error is not None:
                    self.say(f"backfill: {error.message.strip().splitlines()[0]}")
        if QUEUE not in running:
            for _ in self._dequeuer.run_iteration(self._context):
                pass

    def _fail_dead_runs(self, running: set[str]) -> None:
        if MONITORING in running:
            return  # the daemon's run monitoring does it (and its retries follow)
        for dead in fail_dead_runs(self.instance):
            self.say(f"{describe(dead.run)} was {dead.run.status.value}: {dead.message}")
            self.on_dead(dead.run)

    def explain_waits(self, run_ids: Iterable[str]) -> None:
        """Once per run: why a queued run of ``run_ids`` waits (the limit and who holds it)."""
        for run_id in run_ids:
            if run_id in self._explained:
                continue
            run = self.instance.get_run_by_id(run_id)
            if run is None or run.status != dg.DagsterRunStatus.QUEUED:
                continue
            waiting = queue_wait(self.instance, run)
            if waiting is None:
                continue
            self._explained.add(run_id)
            holders = "; ".join(
                f"{describe(h)}, {h.status.value}, {_worker_state(self.instance, h)}"
                for h in waiting.holders
            )
            self.say(f"{describe(run)} waits in the queue: {waiting.rule}; held by {holders}")

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
            finished_now = False
            for run_id in list(pending):
                if run_id in seen:
                    continue
                run = self.instance.get_run_by_id(run_id)
                if run is not None:
                    self.status[run_id] = run.status.value
                if run is not None and run.is_finished:
                    seen.add(run_id)
                    finished_now = True
                    on_finished(run)
            if seen >= set(pending):
                return
            self.explain_waits(set(pending) - seen)
            # A run that just finished may have submitted the next (a sleeve's daily run after
            # its bars): dequeue it at once; wait only when nothing moved.
            if not finished_now:
                time.sleep(poll_seconds)

    def backfill_runs(self, backfill_id: str) -> list[dg.DagsterRun]:
        """The backfill's runs, newest first (a retry comes before the run it retries)."""
        runs = self.instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        for run in runs:
            self.submitted.setdefault(
                run.run_id, f"{run.job_name} [{run.tags.get('dagster/partition', '?')}]"
            )
            self.status[run.run_id] = run.status.value
        return runs

    def backfill_over(self, backfill_id: str) -> bool:
        """True once the backfill will submit no more runs (completed, failed or canceled)."""
        backfill = self.instance.get_backfill(backfill_id)
        return backfill is None or backfill.status in BULK_ACTION_TERMINAL_STATUSES

    # -- a storage that stopped answering ----------------------------------------------------------
    def _probe(self, url: str) -> None:
        """The watch of a storage on a server (a thread of its own): ends the command once no
        connection succeeded for LOST_AFTER_SECONDS, over LOST_AFTER_PROBES attempts at least."""
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        engine = sqlalchemy.create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_SECONDS}
        )
        failing_since, failures = None, 0
        while not self._done.wait(PROBE_SECONDS):
            attempt = time.monotonic()
            try:
                with engine.connect():
                    pass
            except Exception as error:
                failing_since, failures = failing_since or attempt, failures + 1
                lost = time.monotonic() - failing_since >= LOST_AFTER_SECONDS
                if lost and failures >= LOST_AFTER_PROBES and not self._done.is_set():
                    detail = f"no connection for {time.monotonic() - failing_since:.0f} s"
                    self._storage_lost(error, detail)
            else:
                failing_since, failures = None, 0

    def _storage_lost(self, error: BaseException, detail: str | None = None) -> NoReturn:
        if self._exit and not self._lost.acquire(blocking=False):
            threading.Event().wait()  # the other thread reports it and ends the process
        log = self._write_log(error)
        summary = self.storage_summary(error, detail, log)
        if not self._exit:
            raise StorageLost(summary) from None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        print(summary, file=sys.stderr, flush=True)
        # Not through Python's exit handlers: they would close the instance, and each of its
        # storage calls would retry against the lost server first.
        os._exit(STORAGE_LOST)

    def storage_summary(self, error: BaseException, detail: str | None, log: Path | None) -> str:
        """The operator's summary of a lost storage: what, what was submitted, what to do."""
        name = storage_name(self.instance)
        lines = [f"tvq: {name} (the Dagster instance's storage) does not answer: {_cause(error)}"]
        if detail:
            lines[0] += f" ({detail})"
        if self.backfills:
            lines.append(
                "  backfills requested by this command: "
                + ", ".join(f"{b} ({n} partitions)" for b, n in self.backfills.items())
            )
        here = getattr(self.instance.run_launcher, "executing", None)
        lines.append(f"  runs submitted by this command: {len(self.submitted)}")
        for run_id, what in self.submitted.items():
            state = self.status.get(run_id, "?")
            if run_id == here:
                state = "STARTED here, stopped with this command: left STARTED"
            elif state not in ("SUCCESS", "FAILURE", "CANCELED"):
                state = f"{state} when last seen"
            lines.append(f"    {run_id[:8]}  {what:<36} {state}")
        service = "Postgres" if name.startswith("Postgres") else "the storage"
        hint = (
            " (`make services` starts the loopback one; `make services-status` shows it)"
            if service == "Postgres"
            else ""
        )
        lines.append(
            f"  what to do: bring {service} back{hint}, then run the command again. A run left "
            "STARTED by this command is marked failed by the next tvq command (its process is "
            "gone); a QUEUED one runs when the queue is next served (the next tvq command or "
            "the daemon); finished runs and what they stored are kept."
        )
        if log is not None:
            lines.append(f"  details (tracebacks, the storage's retries): {log}")
        return "\n".join(lines)

    def _write_log(self, error: BaseException) -> Path | None:
        """The traceback of ``error`` and the diverted storage warnings, in a file next to the
        instance (or in the temporary folder); None when neither can be written."""
        text = "".join(traceback.format_exception(error)) + "\n" + "\n".join(self._diverted)
        home = self.instance.root_directory
        for folder in [*([Path(home) / "logs"] if home else []), Path(tempfile.gettempdir())]:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"tvq-storage-lost-{os.getpid()}.log"
                path.write_text(text)
                return path
            except OSError:
                continue
        return None


def events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list:
    """The run's Dagster events of one kind, oldest first."""
    return [record.dagster_event for record in instance.all_logs(run_id, of_type=kind)]
