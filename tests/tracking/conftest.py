"""A real MLflow tracking server on 127.0.0.1 (random free port), stopped by process id."""

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

MLFLOW = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "mlflow"


def stop(process: subprocess.Popen) -> None:
    """Stop the server's process group (it ignores SIGINT when started in its own session)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        # No background job runner (prompt optimisation etc.): fewer processes, faster start.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL,
        stderr=open(root / "server.log", "ab"),  # noqa: SIM115 - lives as long as the server
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            if process.poll() is not None:
                log = (root / "server.log").read_text()
                raise RuntimeError(f"mlflow server exited: {log}") from None
            time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"mlflow server on port {port} did not answer within 5 minutes")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """(tracking URI, root folder, port) of a server that lives for one test module."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = start_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}", root, port
    finally:
        stop(process)
