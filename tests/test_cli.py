"""The ``tvq`` command: its exit status (`tvq backfill`'s progress is in test_backfill.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tvq_assets import cli

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["2026-06-28|tradfi", "2026-06-29|tradfi", "2026-06-30|tradfi"]


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


# -- DAGSTER_HOME -------------------------------------------------------------------------------
def test_without_dagster_home_tvq_uses_the_checkouts_instance_and_says_so():
    environ: dict[str, str] = {}
    note = cli.use_repository_home(environ)
    home = Path(cli.__file__).resolve().parents[1] / "dagster_home"
    assert environ == {"DAGSTER_HOME": str(home)} and home.is_absolute()
    assert note == f"tvq: DAGSTER_HOME is not set; using this repository's instance {home}"
    empty = {"DAGSTER_HOME": ""}
    assert cli.use_repository_home(empty) == note and empty["DAGSTER_HOME"] == str(home)


def test_an_exported_dagster_home_wins(tmp_path):
    environ = {"DAGSTER_HOME": str(tmp_path)}
    assert cli.use_repository_home(environ) is None
    assert environ == {"DAGSTER_HOME": str(tmp_path)}


def test_the_projects_instance_settings_are_found_complete():
    assert cli.instance_settings_problem(str(ROOT / "dagster_home")) is None
    assert cli.instance_settings_problem(str(ROOT / "dagster_home" / "production")) is None
    assert cli.instance_settings_problem(None) is None  # Dagster's ephemeral instance


def test_a_dagster_home_without_dagster_yaml_is_named_with_the_file_to_copy(tmp_path):
    problem = cli.instance_settings_problem(str(tmp_path))
    assert problem == (
        f"DAGSTER_HOME={tmp_path} has no dagster.yaml, so its instance has neither the project's "
        f"run queue nor its run launcher: copy the project's settings (cp "
        f"{ROOT / 'dagster_home' / 'dagster.yaml'} {tmp_path / 'dagster.yaml'}), or unset "
        f"DAGSTER_HOME to use this repository's instance {ROOT / 'dagster_home'}"
    )


def test_a_dagster_yaml_without_the_projects_launcher_or_queue_names_what_it_lacks(tmp_path):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    problem = cli.instance_settings_problem(str(tmp_path))
    assert problem.startswith(
        f"{tmp_path / 'dagster.yaml'} lacks the project's run_coordinator (QueuedRunCoordinator) "
        "and run_launcher (MonitoredRunLauncher): copy the project's settings"
    )
    text = (ROOT / "dagster_home" / "dagster.yaml").read_text()
    (tmp_path / "dagster.yaml").write_text(text.replace("MonitoredRunLauncher", "Other"))
    assert "lacks the project's run_launcher (MonitoredRunLauncher):" in (
        cli.instance_settings_problem(str(tmp_path))
    )
    (tmp_path / "dagster.yaml").write_text("run_launcher: [\n")
    assert "dagster.yaml cannot be read" in cli.instance_settings_problem(str(tmp_path))


def test_tvq_refuses_a_dagster_home_without_the_projects_settings_before_any_run(tmp_path):
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "tvq_assets.cli", "demo", "--sleeve", "crypto"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"tvq: {cli.instance_settings_problem(str(tmp_path))}"
    assert "CheckError" not in done.stderr and not (tmp_path / "history").exists()


def test_the_code_location_names_a_dagster_home_without_the_projects_settings(tmp_path):
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    loaded = subprocess.run(
        [sys.executable, "-c", "import tvq_assets.definitions"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    problem = cli.instance_settings_problem(str(tmp_path))
    assert f"InstanceSettingsWarning: tvq code location: {problem}" in loaded.stderr


def test_the_console_script_runs_in_a_fresh_shell_on_its_checkouts_instance(tmp_path):
    """`.venv/bin/tvq …` as the README shows it, in a shell that never exported DAGSTER_HOME,
    from another folder: a copy of the checkout's code runs on the copy's dagster_home (its
    Dagster instance and MLflow store), not Dagster's DagsterHomeNotSetError."""
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for package in ("tvq_assets", "tvq_resources", "tvq_checks"):
        shutil.copytree(ROOT / package, checkout / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "workspace.yaml", checkout)
    (checkout / "dagster_home").mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", checkout / "dagster_home")
    unset = ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "TVQ_LAKE")
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "tvq"), "track", "crypto", "2026-06-01", "2026-06-02"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env={**environment, "PYTHONPATH": str(checkout)},
        timeout=300,
    )
    home = checkout / "dagster_home"
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.splitlines()[0] == (
        f"tvq: DAGSTER_HOME is not set; using this repository's instance {home}"
    )
    assert f"MLflow at sqlite:///{home}/mlflow/mlflow.db" in done.stdout
    assert (home / "history").is_dir()  # the Dagster instance the command opened
    assert not list(elsewhere.iterdir())
