"""A materialisation launched as the UI launches it (GraphQL, daemon) is tracked and FINISHED."""

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import stop as stop_dagster
from tests.tracking.conftest import free_port
from tests.tracking.test_tracking import AS_OF, BY_NAME, _environment, _small_catalog, parent_runs
from tvq_resources.tracking import MlflowTracker

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


@pytest.mark.slow
def test_a_ui_materialisation_through_graphql_and_the_daemon_is_tracked_and_finished(
    mlflow_server, tmp_path
):
    uri, _, _ = mlflow_server
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    environment = _environment(home, uri, _small_catalog(tmp_path))
    partition = f"{AS_OF}|crypto"
    subprocess.run(
        [
            *(sys.executable, "-m", "dagster", "job", "execute", "-m", "tvq_assets.definitions"),
            *("-j", "refresh_bars", "--tags", json.dumps({"dagster/partition": "crypto"})),
        ],
        env=environment,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/dagster"), "dev", "-w", "workspace.yaml", "-p", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, launched = time.monotonic() + 240, None
        params = {
            "selector": {
                "repositoryLocationName": "tvq",
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": [name]} for name in BY_NAME if name != "bars"],
            },
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        }
        while time.monotonic() < deadline and launched is None:
            try:
                answer = _graphql(port, LAUNCH, {"params": params})["launchRun"]
                assert answer["__typename"] == "LaunchRunSuccess", answer
                launched = answer["run"]["runId"]
            except (OSError, KeyError, TypeError):
                time.sleep(3)
        assert launched, "the webserver did not accept the launch within 4 minutes"
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 480
            while time.monotonic() < deadline:
                run = instance.get_run_by_id(launched)
                if run.is_finished:
                    break
                time.sleep(3)
            assert run.status == dg.DagsterRunStatus.SUCCESS
    finally:
        stop_dagster(server)
    [tracked] = parent_runs(MlflowTracker(tracking_uri=uri), partition)
    assert tracked.data.tags["dagster.run_id"] == launched
    assert tracked.info.status == "FINISHED"
    assert "sharpe" in tracked.data.metrics
