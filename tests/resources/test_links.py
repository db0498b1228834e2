"""Every link to the UIs follows one set of variables: ``TVQ_UI_URL`` for Dagster, the tracking
server or ``TVQ_MLFLOW_UI_URL`` for MLflow — in the terminal, MLflow's tags and Dagster's metadata,
and the Makefile exports them from its HOST, PORT and MLFLOW_PORT."""

import os
import subprocess
from pathlib import Path

from tests.conftest import resources_for, synthetic_source
from tests.tracking.test_tracking import materialise, parent_runs
from tvq_resources import links
from tvq_resources.tracking import MlflowTracker

ROOT = Path(__file__).resolve().parents[2]


def test_the_dagster_ui_is_tvq_ui_url_else_make_devs_default():
    assert links.dagster_ui({}) == "http://127.0.0.1:3000"
    assert links.dagster_ui({"TVQ_UI_URL": "http://10.0.0.5:3123/"}) == "http://10.0.0.5:3123"
    assert links.dagster_ui({"TVQ_UI_URL": "http://a:1"}, configured="http://b:2") == "http://b:2"


def test_a_tracking_server_is_its_own_ui_whatever_the_local_ui_variable_says():
    environ = {"TVQ_MLFLOW_UI_URL": "http://127.0.0.1:5123"}
    assert links.mlflow_ui("http://mlflow.internal:8080/", environ) == "http://mlflow.internal:8080"


def test_a_local_store_is_shown_where_tvq_mlflow_ui_url_says_else_on_make_mlflow_uis_port():
    store = "sqlite:////tmp/home/mlflow/mlflow.db"
    environ = {"TVQ_MLFLOW_UI_URL": "http://127.0.0.1:5123/"}
    assert links.mlflow_ui(store, environ) == "http://127.0.0.1:5123"
    assert links.mlflow_ui(store, {}) == "http://127.0.0.1:5000"


def test_the_tracker_builds_its_links_from_the_same_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("TVQ_UI_URL", "http://127.0.0.1:3123")
    monkeypatch.setenv("TVQ_MLFLOW_UI_URL", "http://127.0.0.1:5123")
    local = MlflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert local.run_url("7", "abc") == "http://127.0.0.1:5123/#/experiments/7/runs/abc"
    assert local.model_version_url("tvq-crypto", "3") == (
        "http://127.0.0.1:5123/#/models/tvq-crypto/versions/3"
    )
    assert local.dagster_run_url("r1") == "http://127.0.0.1:3123/runs/r1"
    server = MlflowTracker(tracking_uri="http://127.0.0.1:15000")
    assert server.run_url("7", "abc").startswith("http://127.0.0.1:15000/#/")


def test_a_tracked_run_stores_links_to_the_uis_the_variables_name(
    instance, lake_root, tmp_path, monkeypatch
):
    """The links a run stores (Dagster metadata ``mlflow_run``, MLflow tag ``dagster.run_url``)
    point at the ports chosen, not at 3000 and 5000."""
    monkeypatch.setenv("TVQ_UI_URL", "http://127.0.0.1:3123")
    monkeypatch.setenv("TVQ_MLFLOW_UI_URL", "http://127.0.0.1:5123")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    resources = resources_for(lake_root, crypto=synthetic_source())
    result = materialise(instance, resources, ["returns"])
    assert result.success
    [run] = parent_runs(MlflowTracker())
    [event] = result.asset_materializations_for_node("returns")
    assert event.metadata["mlflow_run"].value == (
        f"http://127.0.0.1:5123/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    )
    assert run.data.tags["dagster.run_url"] == f"http://127.0.0.1:3123/runs/{result.run_id}"


def _make_exports(*variables: str) -> list[str]:
    """``TVQ_UI_URL TVQ_MLFLOW_UI_URL`` as the Makefile exports them to its targets' commands."""
    show = 'tvq-links: ; @echo "$$TVQ_UI_URL $$TVQ_MLFLOW_UI_URL"'
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), f"--eval={show}", "tvq-links", *variables],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TVQ_")},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_makefile_exports_the_links_of_its_host_and_ports():
    assert _make_exports() == ["http://127.0.0.1:3000", "http://127.0.0.1:5000"]
    chosen = _make_exports("HOST=127.0.0.2", "PORT=3123", "MLFLOW_PORT=5123")
    assert chosen == ["http://127.0.0.2:3123", "http://127.0.0.2:5123"]
