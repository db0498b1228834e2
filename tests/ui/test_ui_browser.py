"""The Dagster UI in headless Chromium, after a partition launched as the UI launches it.

`dagster dev` (webserver and daemon) runs on a free port of 127.0.0.1 with its own DAGSTER_HOME;
the bars of a small synthetic sleeve and then one sleeve × run partition of the rest of the graph
are launched through GraphQL and executed by the daemon; the browser then opens the asset graph,
the checks of `returns`, the `backtest` materialisation of that partition and its equity plot,
and the lake resource's page. Screenshots go to ``artifacts/ui/`` (kept by CI).
"""

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ASSETS, stop
from tests.tracking.conftest import free_port
from tests.ui.browser import Chromium, PageNotShown

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "ui"
DAGSTER = str(ROOT / ".venv" / "bin" / "dagster")
AS_OF = "2026-06-30"
PARTITION = f"{AS_OF}|crypto"
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""
STATUS = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""
BACKTEST_PLOT = """query { assetOrError(assetKey: {path: ["backtest"]}) { ... on Asset {
  assetMaterializations(limit: 1) { partition metadataEntries {
    label ... on PathMetadataEntry { path } } } } } }"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors: {answer['errors']}")
    return answer["data"]


def launch(port: int, job: str, partition: str, assets: list[str] | None = None) -> str:
    selector = {"repositoryLocationName": "tvq", "repositoryName": "__repository__"}
    selector["jobName"] = job
    if assets:
        selector["assetSelection"] = [{"path": [name]} for name in assets]
    params = {
        "selector": selector,
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }
    answer = graphql(port, LAUNCH, {"params": params})["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return answer["run"]["runId"]


def wait_for_success(port: int, run_id: str, *, timeout: float) -> None:
    deadline, status = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status = graphql(port, STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(3)
    assert status == "SUCCESS", f"run {run_id} ended {status} (timeout {timeout:g} s)"


@pytest.fixture
def dagster_ui(tmp_path):
    """A `dagster dev` with a throwaway home, a small synthetic sleeve and the lake at
    ``TVQ_LAKE`` (shown on the resource page); yields its port once GraphQL answers."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    sleeves = tmp_path / "sleeves.yaml"
    source = {"kind": "synthetic", "seed": 7, "symbols": 30, "end": AS_OF}
    sleeves.write_text(
        yaml.safe_dump({"first_run": "2026-06-01", "sleeves": {"crypto": {"source": source}}})
    )
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TVQ_SLEEVES": str(sleeves),
        "TVQ_LAKE": str(tmp_path / "lake"),
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    }
    port = free_port()
    log = tmp_path / "dagster-dev.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [DAGSTER, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                graphql(port, "{ version }")
                break
            except (OSError, RuntimeError):
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-3000:]
                    raise RuntimeError(f"dagster dev did not answer: {tail}") from None
                time.sleep(2)
        yield port, tmp_path / "lake"
    finally:
        stop(server)


@pytest.fixture
def browser(tmp_path):
    chromium = Chromium(tmp_path / "chromium-profile")
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.mark.slow
def test_the_ui_shows_the_graph_the_checks_and_the_backtest_of_a_launched_partition(
    dagster_ui, browser
):
    port, lake = dagster_ui
    # The bars as an asset run: a `refresh_bars` run would also start the sensor's daily run of
    # the same partition, racing the one launched here.
    wait_for_success(port, launch(port, "__ASSET_JOB", "crypto", ["bars"]), timeout=600)
    rest = [name for name in ASSETS if name != "bars"]
    wait_for_success(port, launch(port, "__ASSET_JOB", PARTITION, rest), timeout=900)

    base = f"http://127.0.0.1:{port}"
    key = urllib.parse.quote(PARTITION, safe="")
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    failures: list[str] = []  # every page is tried, so CI keeps a screenshot of each

    def page(name: str, url: str | None, expected: list[str], *, then=None) -> str:
        try:
            if url is None:
                text = browser.wait_for(expected, SCREENSHOTS / f"{name}.png", what=name)
            else:
                text = browser.show(url, expected, SCREENSHOTS / f"{name}.png")
            return text
        except PageNotShown as error:
            failures.append(str(error))
            return ""

    # The asset graph, every group expanded: every asset of the code location as a node.
    groups = ",".join(f"global@global:{g}" for g in ("data", "alpha", "synthesis"))
    try:
        browser.show(
            f"{base}/asset-groups?expanded={groups}",
            list(ASSETS),
            SCREENSHOTS / "1-asset-graph.png",
            timeout=45,
        )
    except PageNotShown:
        browser.shortcut("e", "KeyE", alt=True)  # the graph's own "expand all groups"
        page("1-asset-graph", None, list(ASSETS))

    # The checks of `returns`, and the contract's execution on the launched partition.
    page(
        "2-returns-checks",
        f"{base}/assets/returns?view=checks&checkDetail=returns_contract",
        ["returns_contract", "Succeeded"],
    )
    try:
        browser.click("Execution history")
    except PageNotShown as error:
        failures.append(str(error))
    page("3-returns-check-history", None, ["returns_contract", PARTITION])

    # The backtest materialisation of that partition: its metadata, its check, the plot's file.
    shown = page(
        "4-backtest-partition",
        f"{base}/assets/backtest?view=partitions&partition={key}",
        [PARTITION, "champion", "sharpe", "equity_curve_file"],
    )
    [materialisation] = graphql(port, BACKTEST_PLOT)["assetOrError"]["assetMaterializations"]
    assert materialisation["partition"] == PARTITION
    [plot] = [
        e["path"] for e in materialisation["metadataEntries"] if e["label"] == "equity_curve_file"
    ]
    assert Path(plot).is_relative_to(lake) and Path(plot).stat().st_size > 0
    if shown and plot not in shown:
        failures.append(f"the backtest page does not name its plot {plot}")

    # The equity plot itself, opened in the browser: a decoded image of a real size.
    page("5-equity-plot", Path(plot).as_uri(), [])
    size = browser.call(
        "Runtime.evaluate",
        expression="[document.images[0].naturalWidth, document.images[0].naturalHeight]",
        returnByValue=True,
    )["result"]["value"]
    assert size[0] > 300 and size[1] > 200, size

    # The lake resource's page: its root is the TVQ_LAKE environment variable.
    page("6-lake-resource", f"{base}/locations/tvq/resources/lake", ["TVQ_LAKE", "lock_timeout"])
    assert not failures, "\n".join(failures)
