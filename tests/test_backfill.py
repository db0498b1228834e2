"""``tvq backfill``: a real backfill of Dagster's machinery, executed by the daemon when one runs
and by the command itself when none does, shown as a line per partition and a table."""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.utils import make_new_run_id
from dagster._daemon.types import DaemonHeartbeat

from tests.conftest import start_daemon, stop
from tests.test_faults import SMALL_CATALOG
from tvq_assets import cli, launch
from tvq_resources.run_launcher import HOST_TAG, PID_TAG

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
PROGRESS = re.compile(r"^\[ *(\d+)/(\d+)\] (\S+)  ([A-Z_]+)  (\S+)  \(\d+s\)(  retry follows)?$")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A throwaway DAGSTER_HOME with the committed dagster.yaml (its queue and launcher)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _progress(out: str) -> list[tuple]:
    return [PROGRESS.match(line).groups() for line in out.splitlines() if line.startswith("[")]


def _table(out: str) -> dict[str, str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("partition"))
    rows = [line.split() for line in lines[start + 1 :] if "|" in line]
    return {key: result for key, result in rows}


def test_without_a_daemon_the_command_executes_its_backfill_and_reports_every_partition(
    home, capsys
):
    keys = ["2026-06-29|crypto", "2026-06-30|crypto"]
    # No bars in this lake: each partition's run fails at its first step, quickly.
    assert cli.main(["backfill", "crypto", "2026-06-29", "2026-06-30"]) == 1
    out = capsys.readouterr().out
    assert "no daemon is running: this command executes it" in out
    with dg.DagsterInstance.get() as instance:
        [backfill] = instance.get_backfills()
        assert backfill.partition_names == keys
        assert backfill.status == BulkActionStatus.COMPLETED_FAILED  # marked by its own pass
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
        assert sorted(r.tags["dagster/partition"] for r in runs) == keys
        for run in runs:
            # Executed: its first step ran and found no bars.
            [failed] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
            assert failed.step_key == "returns"
            assert "bars[crypto] has not been materialised" in str(failed.dagster_event)
            assert run.status == dg.DagsterRunStatus.FAILURE
            assert run.tags["dagster/code_location"] == "tvq"
            # Submitted by the backfill's pass to the queue, dequeued under its limits.
            assert instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)
    by_key = {r.tags["dagster/partition"]: r.run_id for r in runs}
    assert _progress(out) == [
        ("1", "2", keys[0], "FAILURE", f"{cli.UI}/runs/{by_key[keys[0]]}", None),
        ("2", "2", keys[1], "FAILURE", f"{cli.UI}/runs/{by_key[keys[1]]}", None),
    ]
    assert _table(out) == dict.fromkeys(keys, "FAILURE")
    assert f"0 succeeded, 2 failed (backfill {backfill.backfill_id}: COMPLETED_FAILED)" in out


def test_a_backfill_outside_the_run_partitions_or_of_an_unknown_sleeve_is_refused(home, capsys):
    assert cli.main(["backfill", "crypto", "2020-12-30", "2021-01-02"]) == 2
    error = capsys.readouterr().err
    assert "2 date(s) are not run partitions (2020-12-30, 2020-12-31)" in error
    assert "the run partitions of crypto are 2021-01-01 .. " in error
    assert cli.main(["backfill", "crypt", "2026-06-29", "2026-06-30"]) == 2
    assert "no sleeve 'crypt' in the catalog (sleeves: binance_perp, crypto, tradfi)" in (
        capsys.readouterr().err
    )
    assert cli.main(["backfill", "crypto", "2026-06-30", "2026-06-29"]) == 2
    assert "START is after END" in capsys.readouterr().err
    with dg.DagsterInstance.get() as instance:
        assert instance.get_backfills() == []


def _add(instance, key: str, status: dg.DagsterRunStatus, backfill_id: str, **tags):
    return instance.add_run(
        dg.DagsterRun(
            job_name="daily",
            run_id=make_new_run_id(),
            status=status,
            tags={"dagster/partition": key, "dagster/backfill": backfill_id, **tags},
        )
    )


def test_a_partitions_outcome_is_its_newest_run_and_a_coming_retry_is_announced(home, capsys):
    keys = ["2026-06-28|tradfi", "2026-06-29|tradfi", "2026-06-30|tradfi"]
    with dg.DagsterInstance.get() as instance:
        # A daemon reports in (every pass is its), so the runs below are all there is.
        for daemon in (launch.QUEUE, launch.MONITORING, launch.BACKFILLS, launch.RETRIES):
            instance.add_daemon_heartbeat(
                DaemonHeartbeat(time.time(), daemon, daemon_id="elsewhere", errors=[])
            )
        with launch.Launcher(instance) as launcher:
            backfill_id = launcher.backfill("daily", keys)
            _add(instance, keys[0], dg.DagsterRunStatus.SUCCESS, backfill_id)
            # A run whose process died, which the daemon retries, then its retry.
            _add(
                instance,
                keys[1],
                dg.DagsterRunStatus.FAILURE,
                backfill_id,
                **{"dagster/will_retry": "true"},
            )
            _add(instance, keys[1], dg.DagsterRunStatus.SUCCESS, backfill_id)
            late = _add(instance, keys[2], dg.DagsterRunStatus.STARTED, backfill_id)
            _add(instance, keys[2], dg.DagsterRunStatus.SUCCESS, "another backfill")

            def fail_late():
                time.sleep(3)
                instance.report_run_failed(
                    late,
                    "an asset failed",
                    JobFailureData(None, RunFailureReason.STEP_FAILURE, None),
                )

            finisher = threading.Thread(target=fail_late)
            finisher.start()
            assert cli.watch_backfill(launcher, backfill_id, keys, poll_seconds=0.5) == 1
            finisher.join()
    out = capsys.readouterr().out
    # In the order the runs finished; the failed run of keys[1] does not count, its retry does.
    assert [(done, key, status, retry) for done, _, key, status, _, retry in _progress(out)] == [
        ("1", keys[0], "SUCCESS", None),
        ("1", keys[1], "FAILURE", "  retry follows"),
        ("2", keys[1], "SUCCESS", None),
        ("3", keys[2], "FAILURE", None),
    ]
    assert _table(out) == {keys[0]: "SUCCESS", keys[1]: "SUCCESS", keys[2]: "FAILURE"}
    assert f"2 succeeded, 1 failed (backfill {backfill_id}: REQUESTED)" in out


@pytest.mark.slow
def test_with_the_daemon_running_a_cli_backfill_is_executed_by_it_and_shown_finishing(
    home, tmp_path
):
    catalog = tmp_path / "sleeves.yaml"
    catalog.write_text(SMALL_CATALOG)
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TVQ_SLEEVES": str(catalog),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    environment.pop("TVQ_LAKE", None)
    bars = [str(BIN / "dagster"), "job", "execute", "-m", "tvq_assets.definitions"]
    tags = ["--tags", '{"dagster/partition": "crypto"}']
    subprocess.run(
        [*bars, "-j", "refresh_bars", *tags],
        env=environment,
        cwd=ROOT,
        check=True,
        timeout=600,
        capture_output=True,
    )
    # The instance's storage is created before two processes would create it at once.
    dg.DagsterInstance.get().dispose()
    daemon = start_daemon(environment)
    try:
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 180
            while launch.daemons_running(instance) != {
                launch.QUEUE,
                launch.MONITORING,
                launch.BACKFILLS,
                launch.RETRIES,
            }:
                assert time.monotonic() < deadline, "the daemon did not report in within 3 min"
                time.sleep(2)
        command = [sys.executable, "-m", "tvq_assets.cli", "backfill", "crypto"]
        out = subprocess.run(
            [*command, "2026-06-29", "2026-06-30"],
            env=environment,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        stop(daemon)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the daemon of `make dev` executes it" in out.stdout
    keys = ["2026-06-29|crypto", "2026-06-30|crypto"]
    progress = _progress(out.stdout)
    assert sorted(key for _, _, key, _, _, _ in progress) == keys
    assert [(done, status) for done, _, _, status, _, _ in progress] == [
        ("1", "SUCCESS"),
        ("2", "SUCCESS"),
    ]
    assert _table(out.stdout) == dict.fromkeys(keys, "SUCCESS")
    with dg.DagsterInstance.get() as instance:
        [backfill] = instance.get_backfills()
        assert f"2 succeeded, 0 failed (backfill {backfill.backfill_id}:" in out.stdout
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
        assert sorted(r.tags["dagster/partition"] for r in runs) == keys
        assert all(r.is_success for r in runs)
        # Launched by the daemon into run workers of its code server: the command executed none.
        assert all(HOST_TAG in r.tags and PID_TAG not in r.tags for r in runs)
    assert (home / "lake" / "backtest" / "crypto" / "2026-06-30" / "manifest.json").exists()
