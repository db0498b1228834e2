"""What the ``tvq`` commands do in the daemon's stead: fail a run whose process is gone (and only
such a run), say why a run waits in the queue, and end with one summary when the instance's
storage is lost. The end-to-end tests (a killed ``tvq demo``, a Postgres stopped mid-run) are slow.
"""

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy.exc
from dagster._core.events.log import EventLogEntry
from dagster._core.launcher import WorkerStatus
from dagster._core.utils import make_new_run_id

from tests.test_faults import SMALL_CATALOG
from tvq_assets import launch
from tvq_resources import services
from tvq_resources.lake import ParquetLake
from tvq_resources.run_launcher import HOST_TAG, PID_TAG, PROCESS_TAG, process_identity, this_host

ROOT = Path(__file__).resolve().parents[1]
KEY = "2026-06-30|crypto"
STARTED = dg.DagsterRunStatus.STARTED


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def instance(tmp_path, monkeypatch):
    """An instance on the committed dagster.yaml (queue limits, MonitoredRunLauncher), SQLite."""
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as real:
        yield real


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that existed a moment ago and was killed."""
    process = subprocess.Popen(["sleep", "60"])
    process.kill()
    process.wait()
    return process.pid


@pytest.fixture
def live_pid():
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def _event(instance, run: dg.DagsterRun, kind: dg.DagsterEventType, **fields) -> None:
    at = fields.pop("at", time.time())
    instance.handle_new_event(
        EventLogEntry(
            error_info=None,
            level=logging.DEBUG,
            user_message="",
            run_id=run.run_id,
            timestamp=at,
            step_key=None,
            job_name=run.job_name,
            dagster_event=dg.DagsterEvent(kind.value, job_name=run.job_name, **fields),
        )
    )


def _run(instance, *, pid: int | None, host: str | None = None, at: float | None = None, **tags):
    """A run of ``daily`` dequeued (STARTING) and, with ``pid``, started by that process."""
    tags = {"dagster/partition": KEY, **({HOST_TAG: host} if host else {}), **tags}
    run = instance.add_run(
        dg.DagsterRun(
            job_name="daily",
            run_id=make_new_run_id(),
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags=tags,
        )
    )
    _event(instance, run, dg.DagsterEventType.RUN_STARTING)
    if pid is not None:
        _event(instance, run, dg.DagsterEventType.RUN_START, pid=pid, at=at or time.time())
    return instance.get_run_by_id(run.run_id)


def _failure(instance, run_id: str) -> str:
    [record] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return record.dagster_event.message


def test_a_started_run_whose_process_was_killed_is_marked_failed_naming_the_pid(instance, dead_pid):
    run = _run(instance, pid=dead_pid, host=this_host())
    assert run.status == dg.DagsterRunStatus.STARTED
    [dead] = launch.fail_dead_runs(instance)
    assert dead.run.run_id == run.run_id
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    message = _failure(instance, run.run_id)
    assert message == dead.message
    assert message.startswith(f"the run worker (pid {dead_pid}) is gone: no process has that pid")
    assert f"on {this_host()}" in message and message.endswith("; marked failed by tvq")
    assert launch.fail_dead_runs(instance) == []  # once


def test_a_live_run_another_machines_run_and_a_run_without_a_pid_are_left_alone(
    instance, dead_pid, live_pid
):
    alive = _run(instance, pid=live_pid, host=this_host())
    elsewhere = _run(instance, pid=dead_pid, host=f"not-{this_host()}")
    starting = _run(instance, pid=None, host=this_host())  # launched, no process recorded yet
    assert launch.fail_dead_runs(instance) == []
    statuses = [instance.get_run_by_id(r.run_id).status for r in (alive, elsewhere, starting)]
    assert statuses == [
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.STARTING,
    ]


def test_a_run_executed_without_the_launcher_on_this_machines_storage_is_judged_here(
    instance, dead_pid
):
    # `dagster job execute` records no machine; SQLite under DAGSTER_HOME is opened only here.
    run = _run(instance, pid=dead_pid)
    assert HOST_TAG not in run.tags
    assert [d.run.run_id for d in launch.fail_dead_runs(instance)] == [run.run_id]


def test_a_pid_now_held_by_another_process_or_from_before_a_restart_is_not_the_runs(
    instance, live_pid
):
    boot, started = process_identity(live_pid).split(":")
    recorded = {
        "another process": f"{boot}:{int(started) - 100}",  # the same pid, started earlier
        "restarted": f"{'0' * len(boot)}:{started}",  # the same pid and start, another boot
    }
    runs = {
        fate: _run(
            instance,
            pid=live_pid,
            host=this_host(),
            **{PID_TAG: str(live_pid), PROCESS_TAG: identity},
        )
        for fate, identity in recorded.items()
    }
    # The live process with its own identity is the run's.
    mine = _run(
        instance,
        pid=live_pid,
        host=this_host(),
        **{PID_TAG: str(live_pid), PROCESS_TAG: process_identity(live_pid)},
    )
    dead = {d.run.run_id for d in launch.fail_dead_runs(instance)}
    assert dead == {run.run_id for run in runs.values()}
    assert instance.get_run_by_id(mine.run_id).status == STARTED
    assert f"pid {live_pid} on {this_host()} now belongs to another process" in _failure(
        instance, runs["another process"].run_id
    )
    assert f"{this_host()} has restarted since the run started" in _failure(
        instance, runs["restarted"].run_id
    )


def test_a_starting_run_whose_dequeuing_process_died_is_judged_by_its_tagged_pid(
    instance, dead_pid
):
    # Dequeued by a `tvq` command to execute itself, killed before the run reported its start.
    run = _run(instance, pid=None, host=this_host(), **{PID_TAG: str(dead_pid)})
    assert run.status == dg.DagsterRunStatus.STARTING
    [dead] = launch.fail_dead_runs(instance)
    assert dead.run.status == dg.DagsterRunStatus.STARTING
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert f"(pid {dead_pid}) is gone" in _failure(instance, run.run_id)


def test_a_canceling_run_whose_process_is_gone_is_marked_canceled(instance, dead_pid):
    run = _run(instance, pid=dead_pid, host=this_host())
    instance.report_run_canceling(run)
    [dead] = launch.fail_dead_runs(instance)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
    assert dead.message.endswith("marked canceled by tvq (it was being canceled)")


def test_run_monitoring_gets_the_same_verdict_from_the_instances_launcher(
    instance, dead_pid, live_pid
):
    dead = _run(instance, pid=dead_pid, host=this_host())
    alive = _run(instance, pid=live_pid, host=this_host())
    health = instance.run_launcher.check_run_worker_health
    assert health(dead).status == WorkerStatus.FAILED
    assert f"the run worker (pid {dead_pid}) is gone" in health(dead).msg
    assert health(alive).status == WorkerStatus.RUNNING


def test_a_queued_run_says_once_which_run_holds_its_partitions_slot(instance, live_pid):
    holder = _run(instance, pid=live_pid, host=this_host())
    lines: list[str] = []
    with launch.Launcher(instance, say=lines.append) as launcher:
        queued = instance.get_run_by_id(launcher.submit("daily", KEY))
        elsewhere = instance.get_run_by_id(launcher.submit("daily", "2026-06-30|tradfi"))
        assert queued.status == dg.DagsterRunStatus.QUEUED
        waiting = launch.queue_wait(instance, queued)
        assert waiting.rule == f"the queue runs 1 run(s) with dagster/partition={KEY} at a time"
        assert [run.run_id for run in waiting.holders] == [holder.run_id]
        assert launch.queue_wait(instance, elsewhere) is None  # another partition: a free slot
        launcher.explain_waits([queued.run_id, elsewhere.run_id])
        launcher.explain_waits([queued.run_id, elsewhere.run_id])
    assert lines == [
        f"run {queued.run_id[:8]} (daily [{KEY}]) waits in the queue: the queue runs 1 run(s) "
        f"with dagster/partition={KEY} at a time; held by run {holder.run_id[:8]} (daily "
        f"[{KEY}]), STARTED, pid {live_pid} alive on {this_host()}"
    ]


def test_a_lost_connection_is_told_from_other_errors():
    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("Connection refused"))
    try:
        try:
            raise refused
        except sqlalchemy.exc.OperationalError as error:
            raise RuntimeError("too many retries for DB connection") from error
    except RuntimeError as wrapped:
        assert launch.storage_error(wrapped)
    conflict = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert not launch.storage_error(conflict)
    assert not launch.storage_error(ValueError("bad date"))
    assert not launch.storage_error(None)


# -- end to end: a killed command, a lost Postgres ------------------------------------------------
def _environment(home: Path, catalog: Path, lake: Path, **more: str) -> dict[str, str]:
    catalog.write_text(SMALL_CATALOG)
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TVQ_SLEEVES": str(catalog),
        "TVQ_LAKE": str(lake),
        **more,
    }


def _demo(environment: dict[str, str], out: Path) -> subprocess.Popen:
    with out.open("w") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "tvq_assets.cli", "demo", "--as-of", "2026-06-30"],
            env=environment,
            cwd=ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _until(condition, what: str, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {seconds} s")


def _running_step(instance, job: str) -> dg.DagsterRun | None:
    """A run of ``job`` that is STARTED and inside a step."""
    for run in instance.get_runs(dg.RunsFilter(job_name=job, statuses=[STARTED])):
        if instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START):
            return run
    return None


@pytest.mark.slow
def test_a_killed_demo_never_blocks_the_next_which_says_why_it_waits_then_fails_the_dead_run(
    tmp_path, monkeypatch
):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    lake = tmp_path / "lake"
    environment = _environment(home, tmp_path / "sleeves.yaml", lake)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    dg.DagsterInstance.get().dispose()  # the SQLite tables, created once before two processes
    # The test holds the sleeve's bar lock: a refresh that starts waits inside its bars step.
    held = ParquetLake(root=str(lake)).writer(["bars"], "crypto")
    held.__enter__()
    out = tmp_path / "second.out"
    started: list[subprocess.Popen] = []
    try:
        first = _demo(environment, tmp_path / "first.out")
        started.append(first)
        with dg.DagsterInstance.get() as instance:
            dead = _until(lambda: _running_step(instance, "refresh_bars"), "the first refresh")
            second = _demo(environment, out)
            started.append(second)
            _until(lambda: "waits in the queue" in out.read_text(), "the second's wait line")
            first.kill()  # SIGKILL, mid-step
            first.wait()
            _until(lambda: "marked failed by tvq" in out.read_text(), "the dead run's failure")
            held.__exit__(None, None, None)
            assert second.wait(timeout=900) == 0, out.read_text()
    finally:
        held.__exit__(None, None, None)
        for process in started:
            process.kill()
            process.wait()
    lines = out.read_text().splitlines()
    [waits] = [line for line in lines if "waits in the queue" in line]  # said once
    holder = f"run {dead.run_id[:8]} (refresh_bars [crypto]), STARTED, pid {first.pid} alive"
    assert waits.endswith(
        f"(refresh_bars [crypto]) waits in the queue: the queue runs 1 run(s) "
        f"with dagster/partition=crypto at a time; held by {holder} on {this_host()}"
    )
    [failed] = [line for line in lines if "marked failed by tvq" in line]
    assert failed == (
        f"run {dead.run_id[:8]} (refresh_bars [crypto]) was STARTED: the run worker (pid "
        f"{first.pid}) is gone: no process has that pid on {this_host()} any more (it was killed "
        "or it crashed); marked failed by tvq"
    )
    assert "== crypto  (run partition 2026-06-30|crypto)" in lines
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert not [r for r in runs if not r.is_finished]  # nothing left STARTED or QUEUED
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert f"(pid {first.pid}) is gone" in _failure(instance, dead.run_id)
        ours = [r for r in runs if r.run_id != dead.run_id]
        assert sorted(r.job_name for r in ours) == ["daily", "meta_portfolio_job", "refresh_bars"]
        assert all(r.is_success for r in ours)


@pytest.mark.slow
def test_a_postgres_lost_mid_run_ends_the_command_with_one_summary_and_the_next_one_recovers(
    monkeypatch,
):
    # Postgres runs as the `postgres` user when we are root: its folder must be reachable by it.
    base = Path(tempfile.mkdtemp(prefix="tvq-lost-"))
    base.chmod(0o755)
    postgres = services.Services(base / "state", pg_port=_free_port())
    postgres.state.mkdir()
    postgres.logs.mkdir()
    home = base / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "production" / "dagster.yaml", home)
    lake = base / "lake"
    try:
        postgres._start_postgres()
        postgres._wait("postgres")
        url = postgres.postgres_url()
        password = postgres.password_file.read_text().strip()
        environment = _environment(home, base / "sleeves.yaml", lake, TVQ_POSTGRES_URL=url)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("TVQ_POSTGRES_URL", url)
        held = ParquetLake(root=str(lake)).writer(["bars"], "crypto")
        held.__enter__()
        command = _demo(environment, base / "lost.out")
        try:
            with dg.DagsterInstance.get() as instance:
                running = _until(lambda: _running_step(instance, "refresh_bars"), "the refresh")
            postgres._stop_postgres()
            held.__exit__(None, None, None)  # the run goes on, and finds its storage gone
            started = time.monotonic()
            assert command.wait(timeout=120) == launch.STORAGE_LOST
            print(f"the command ended {time.monotonic() - started:.1f} s after Postgres stopped")
        finally:
            held.__exit__(None, None, None)
            command.kill()
            command.wait()
        said = (base / "lost.out").read_text()
        shown = f"postgresql+psycopg2://tvq:***@127.0.0.1:{postgres.pg_port}/dagster"
        assert f"tvq: Postgres at {shown} (the Dagster instance's storage) does not answer" in said
        assert password not in said
        assert said.count("Traceback") == 0 and said.count("Retrying failed database") == 0
        assert (
            f"{running.run_id[:8]}  refresh_bars [crypto]"
            in said.split("runs submitted by this command: 1")[1]
        )
        assert "STARTED here, stopped with this command: left STARTED" in said
        assert "what to do: bring Postgres back (`make services`" in said
        log = Path(said.split("details (tracebacks, the storage's retries): ")[1].split()[0])
        assert log.parent == home / "logs" and "Traceback" in log.read_text()

        # Postgres back: the next command fails the run the lost one left STARTED, and runs.
        postgres._start_postgres()
        postgres._wait("postgres")
        again = _demo(environment, base / "again.out")
        try:
            assert again.wait(timeout=900) == 0, (base / "again.out").read_text()
        finally:
            again.kill()
            again.wait()
        after = (base / "again.out").read_text()
        left = f"run {running.run_id[:8]} (refresh_bars [crypto]) was STARTED: the run worker"
        assert f"{left} (pid {command.pid}) is gone" in after
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert not [r for r in instance.get_runs() if not r.is_finished]
            assert instance.get_run_by_id(running.run_id).status == dg.DagsterRunStatus.FAILURE
    finally:
        with contextlib.suppress(services.ServiceError):
            postgres._stop_postgres()
        shutil.rmtree(base, ignore_errors=True)
