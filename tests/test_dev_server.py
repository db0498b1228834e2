"""`make dev`'s server (`dg dev`) serves the asset graph with its partition-scoped checks."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ASSETS, stop

ROOT = Path(__file__).resolve().parents[1]
QUERY = """{ assetNodes { assetKey { path } isPartitioned
  assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


@pytest.mark.slow
def test_the_dev_server_serves_every_asset_with_its_checks(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    port = _free_port()
    server = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/dg"),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        nodes = None
        while time.monotonic() < deadline and nodes is None:
            try:
                nodes = _graphql(port, QUERY)["assetNodes"]
            except (OSError, KeyError, TypeError):
                time.sleep(2)
        assert nodes is not None, "the server did not answer within 3 minutes"
        checks = {
            "/".join(n["assetKey"]["path"]): {
                c["name"]: c["blocking"] for c in n["assetChecksOrError"]["checks"]
            }
            for n in nodes
        }
        assert set(checks) == {*ASSETS, "meta_portfolio"}
        assert all(n["isPartitioned"] for n in nodes)
        assert checks["returns"] == {"returns_contract": True}
        assert checks["selection"] == {"selection_contract": True, "winner_count": False}
    finally:
        stop(server)
