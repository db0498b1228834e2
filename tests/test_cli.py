"""The ``tvq`` command: its exit status, and `tvq backfill`'s progress (a line per partition as
its run finishes, then a table)."""

import subprocess
import sys
import threading
import time

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.utils import make_new_run_id

from tvq_assets import cli

KEYS = ["2026-06-28|tradfi", "2026-06-29|tradfi", "2026-06-30|tradfi"]


def _add(instance, key: str, status: dg.DagsterRunStatus, marker: str) -> DagsterRun:
    run = DagsterRun(
        job_name="daily",
        run_id=make_new_run_id(),
        status=status,
        tags={"dagster/partition": key, cli.BACKFILL_TAG: marker},
    )
    return instance.add_run(run)


def test_the_backfill_watch_shows_each_partition_as_it_finishes_then_the_table(instance, capsys):
    _add(instance, KEYS[0], dg.DagsterRunStatus.SUCCESS, "m1")
    # A run whose process died, then its retry: the partition's outcome is the newest run.
    _add(instance, KEYS[1], dg.DagsterRunStatus.FAILURE, "m1")
    _add(instance, KEYS[1], dg.DagsterRunStatus.SUCCESS, "m1")
    late = _add(instance, KEYS[2], dg.DagsterRunStatus.STARTED, "m1")
    _add(instance, KEYS[2], dg.DagsterRunStatus.SUCCESS, "another backfill")

    def finish_late():
        time.sleep(3)
        instance.handle_run_event(
            late.run_id,
            dg.DagsterEvent(
                event_type_value=dg.DagsterEventType.RUN_FAILURE.value, job_name="daily"
            ),
        )

    finisher = threading.Thread(target=finish_late)
    finisher.start()
    assert cli.watch_backfill(instance, "m1", KEYS) == 1
    finisher.join()
    out = capsys.readouterr().out.splitlines()
    progress = [line for line in out if line.startswith("[")]
    # "[  1/3] key  STATUS  url  (Ns)", in the order the partitions finished: the late one last.
    assert [line.split("] ")[1].split()[0] for line in progress] == KEYS
    assert progress[-1].startswith("[  3/3]") and progress[-1].split()[3] == "FAILURE"
    table = out[out.index(next(line for line in out if line.startswith("partition"))) :]
    assert f"{KEYS[0]}  SUCCESS" in table
    assert f"{KEYS[1]}  SUCCESS" in table
    assert f"{KEYS[2]}  FAILURE" in table
    assert "2 succeeded, 1 failed" in out


def _tvq(*arguments: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "tvq_assets.cli"]
    return subprocess.run(
        [*command, *arguments], capture_output=True, text=True, check=False, timeout=300
    )


def test_the_command_ends_with_its_status_after_the_exit_handlers_ran():
    # finish() skips native teardown, not Python's: handlers run, buffered output is flushed.
    code = (
        "import atexit, sys; from tvq_assets.cli import finish; "
        "atexit.register(lambda: print('handler ran')); sys.stdout.write('buffered'); finish(3)"
    )
    done = _tvq(code=code)
    assert done.returncode == 3
    assert done.stdout == "bufferedhandler ran\n"


def test_usage_errors_and_help_keep_their_exit_status():
    assert _tvq("no-such-command").returncode == 2
    assert "usage: tvq" in _tvq("no-such-command").stderr
    helped = _tvq("--help")
    assert helped.returncode == 0 and "demo" in helped.stdout
