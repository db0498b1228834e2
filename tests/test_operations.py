"""Runs started from the command line belong to the workspace's code location and go through the
run queue: job pages and run status sensors see them."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.selector import InstigatorSelector
from dagster._serdes import create_snapshot_id

from tests.conftest import start_daemon, stop
from tests.test_faults import SMALL_CATALOG

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A throwaway DAGSTER_HOME (the committed dagster.yaml and its queue), catalog and lake."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    catalog = tmp_path / "sleeves.yaml"
    catalog.write_text(SMALL_CATALOG)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("TVQ_SLEEVES", str(catalog))
    monkeypatch.setenv("TVQ_LAKE", str(tmp_path / "lake"))
    return home


def _origin(run: dg.DagsterRun) -> tuple[str, str]:
    repository = run.remote_job_origin.repository_origin
    return repository.code_location_origin.location_name, repository.repository_name


@pytest.mark.slow
def test_demo_runs_carry_the_code_locations_origin_and_pass_through_the_queue(home):
    run = [sys.executable, "-m", "tvq_assets.cli", "demo", "--as-of", "2026-06-30"]
    out = subprocess.run(run, cwd=ROOT, env=os.environ, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "== crypto  (run partition 2026-06-30|crypto)" in out.stdout
    assert "today's portfolio" in out.stdout and "checks:" in out.stdout
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        # The sleeve's bars and daily run, then the meta-portfolio over the sleeves.
        assert sorted(r.job_name for r in runs) == ["daily", "meta_portfolio_job", "refresh_bars"]
        for each in runs:
            assert each.is_success
            assert _origin(each) == ("tvq", "__repository__")
            assert each.tags["dagster/code_location"] == "tvq"
            # Submitted to the run coordinator, dequeued under its limits, not executed around it.
            assert instance.all_logs(each.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)
            assert instance.all_logs(each.run_id, of_type=dg.DagsterEventType.RUN_STARTING)
        # The job page's "latest run" of `daily` is this run.
        [latest] = instance.get_runs(dg.RunsFilter(job_name="daily"), limit=1)
        assert latest.tags["dagster/partition"] == "2026-06-30|crypto"
    # Warnings and errors only: the summary says what each run did.
    assert " - DEBUG - " not in out.stderr and " - INFO - " not in out.stderr


def _sensor_skips(instance: dg.DagsterInstance) -> list[str]:
    selector = InstigatorSelector(
        location_name="tvq", repository_name="__repository__", name="run_daily_after_bars"
    )
    ticks = instance.get_ticks("", create_snapshot_id(selector))
    return [reason for tick in ticks for reason in ([tick.skip_reason] if tick.skip_reason else [])]


def _sensor_ticked(instance: dg.DagsterInstance) -> bool:
    selector = InstigatorSelector(
        location_name="tvq", repository_name="__repository__", name="run_daily_after_bars"
    )
    return bool(instance.get_ticks("", create_snapshot_id(selector)))


@pytest.mark.slow
def test_the_bars_sensor_sees_a_cli_run_executed_by_the_daemon(home):
    environment = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    # The instance's storage is created here first: two processes creating the SQLite tables at
    # once fail ("table runs already exists").
    dg.DagsterInstance.get().dispose()
    daemon = start_daemon(environment)
    try:
        with dg.DagsterInstance.get() as instance:
            # A run status sensor only looks at runs that finish after its first tick.
            deadline = time.monotonic() + 300
            while not _sensor_ticked(instance):
                assert time.monotonic() < deadline, "the sensor did not tick within 5 minutes"
                time.sleep(3)
            demo = [sys.executable, "-m", "tvq_assets.cli", "demo", "--as-of", "2026-06-30"]
            out = subprocess.run(
                demo, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900
            )
            assert out.returncode == 0, out.stdout + out.stderr
            assert "the daemon of `make dev` runs these runs" in out.stdout
            [bars] = instance.get_runs(dg.RunsFilter(job_name="refresh_bars"))
            assert _origin(bars) == ("tvq", "__repository__")
            deadline = time.monotonic() + 180
            while not any(bars.run_id in reason for reason in _sensor_skips(instance)):
                assert time.monotonic() < deadline, f"the sensor never saw run {bars.run_id}"
                time.sleep(3)
            # The command started the daily run itself; the sensor added none.
            assert len(instance.get_runs(dg.RunsFilter(job_name="daily"))) == 1
    finally:
        stop(daemon)
