"""The libraries' messages go to DAGSTER_HOME/logs/libraries.log, not the terminal; tvq's own
warnings and TVQ_VERBOSE keep the terminal as the libraries leave it. Each case runs in a fresh
interpreter: the routing is process-wide (loggers, warnings.showwarning)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# MLflow's "Failed to infer model signature"-style log line, a library's warning (raised from a
# file under site-packages) and a warning of tvq's own code.
SCRIPT = """
import logging, warnings
from tvq_resources import library_output
library_output.quiet_libraries()
import mlflow
import mlflow.utils.uv_utils
logging.getLogger("mlflow.pyfunc").warning("Failed to infer model signature")
from mlflow.data import dataset_source_registry
warnings.warn_explicit(
    "dataset source can be interpreted in multiple ways", UserWarning,
    dataset_source_registry.__file__, 148,
)
warnings.warn("tvq's own warning", UserWarning)
import os
print("written", library_output.written()[0])
print("suppress", os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"))
"""


def _run(home: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(home), **env}
    for name in ("TVQ_VERBOSE", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        environment.pop(name, None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=environment, timeout=120
    )


def test_mlflow_log_lines_and_library_warnings_go_to_the_log_file_not_the_terminal(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Failed to infer model signature" not in done.stderr
    assert "interpreted in multiple ways" not in done.stderr
    log = (tmp_path / "logs" / "libraries.log").read_text()
    assert "WARNING mlflow.pyfunc: Failed to infer model signature" in log
    assert "interpreted in multiple ways" in log
    assert "written 2" in done.stdout


def test_a_warning_of_tvqs_own_code_still_reaches_the_terminal(tmp_path):
    done = _run(tmp_path)
    assert "tvq's own warning" in done.stderr
    assert "tvq's own warning" not in (tmp_path / "logs" / "libraries.log").read_text()


def test_tvq_verbose_leaves_the_libraries_messages_on_the_terminal(tmp_path):
    done = _run(tmp_path, TVQ_VERBOSE="1")
    assert done.returncode == 0, done.stderr
    assert "Failed to infer model signature" in done.stderr
    assert "interpreted in multiple ways" in done.stderr
    assert not (tmp_path / "logs" / "libraries.log").exists()


def test_mlflows_view_run_line_is_switched_off_with_mlflows_own_setting(tmp_path):
    assert "suppress true" in _run(tmp_path).stdout
    assert "suppress None" in _run(tmp_path, TVQ_VERBOSE="1").stdout
