"""A command-line backfill goes through Dagster's own queue and is executed by the daemon."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import start_daemon, stop

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"


@pytest.mark.slow
def test_a_cli_backfill_of_two_dates_runs_to_success_under_the_daemon(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    environment = {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    environment.pop("TVQ_LAKE", None)
    run = [sys.executable, "-m", "tvq_assets.cli"]
    subprocess.run(
        [*run, "demo", "--sleeve", "tradfi", "--as-of", "2026-06-30"],
        env=environment,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*run, "backfill", "tradfi", "2026-06-28", "2026-06-29"],
        env=environment,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    daemon = start_daemon(environment)
    try:
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                runs = [r for r in instance.get_runs() if r.tags.get("dagster/backfill")]
                if len(runs) == 2 and all(r.is_finished for r in runs):
                    break
                time.sleep(3)
            statuses = {r.tags["dagster/partition"]: r.status for r in runs}
    finally:
        stop(daemon)
    assert statuses == {
        "2026-06-28|tradfi": dg.DagsterRunStatus.SUCCESS,
        "2026-06-29|tradfi": dg.DagsterRunStatus.SUCCESS,
    }
    assert (home / "lake" / "backtest" / "tradfi" / "2026-06-29" / "manifest.json").exists()
