"""The tracking contract against real MLflow stores: the local SQLite default and a real server."""

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import AS_OF, resources_for, synthetic_source
from tests.tracking.conftest import free_port
from tvq_assets.catalog import policy_parameters
from tvq_assets.definitions import ASSETS, SLEEVE_ASSETS
from tvq_assets.partitions import catalog
from tvq_assets.quant import metrics as performance
from tvq_assets.quant import policy
from tvq_assets.tracking import identity, registry
from tvq_assets.tracking.io_manager import SENSORS
from tvq_resources.lake import ParquetLake
from tvq_resources.tracking import MlflowTracker

ROOT = Path(__file__).resolve().parents[2]
KEY = f"{AS_OF}|crypto"
BY_NAME = {a.key.to_user_string(): a for a in SLEEVE_ASSETS}
BACKTEST_METRICS = ("sharpe", "max_drawdown", "sortino", "calmar", "cagr", "volatility", "cvar_95")


def materialise(instance, resources, stages, *, partition=KEY) -> dg.ExecuteInProcessResult:
    bars = dg.materialize(
        [BY_NAME["bars"]], partition_key="crypto", resources=resources, instance=instance
    )
    assert bars.success
    return dg.materialize(
        ASSETS,
        partition_key=partition,
        selection=[BY_NAME[s].key for s in stages],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def parent_runs(tracker: MlflowTracker, partition: str = KEY) -> list:
    experiment = tracker.client.get_experiment_by_name(f"tvq-{partition.split('|')[1]}")
    if experiment is None:
        return []
    runs = tracker.search(experiment.experiment_id, {identity.PARTITION_TAG: partition})
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


@pytest.fixture
def local_home(tmp_path, monkeypatch):
    """DAGSTER_HOME in a temporary folder, no MLFLOW_TRACKING_URI, the working directory elsewhere
    (a relative ``mlflow.db`` would land there)."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(elsewhere)
    return home


def test_the_local_default_is_an_absolute_sqlite_store_under_dagster_home(
    instance, lake_root, local_home
):
    resources = resources_for(lake_root, crypto=synthetic_source())
    result = materialise(instance, resources, ["returns", "features"])
    assert result.success
    tracker = MlflowTracker()
    assert tracker.uri == f"sqlite:///{local_home.resolve()}/mlflow/mlflow.db"
    [run] = parent_runs(tracker)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "crypto 2026-06-30"
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(local_home / "mlflow")
    assert not list((local_home.parent / "elsewhere").iterdir()), "nothing in the working dir"
    tags = run.data.tags
    assert tags["dagster.run_id"] == result.run_id
    assert tags["dagster.partition"] == KEY
    assert (tags["dagster.partition.run"], tags["dagster.partition.sleeve"]) == (AS_OF, "crypto")
    assert tags["mlflow.source.git.commit"] == identity.code_version()[1] != "unknown"
    window = ParquetLake(root=lake_root).read(["returns"], KEY)
    assert run.data.metrics["returns.symbols"] == window.returns.shape[1]
    assert run.data.metrics["returns.excluded"] == len(window.excluded)
    expected = {k: str(v) for k, v in policy_parameters(catalog.sleeve("crypto")).items()}
    assert {k: run.data.params[k] for k in expected} == expected
    assert run.data.params["data.window_end"] == AS_OF
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.digest == run.data.tags["tvq.returns.digest"]
    # The bar-store state the run read, as its metadata records it: what a re-run reads again.
    [returns] = result.asset_materializations_for_node("returns")
    recorded = returns.metadata["bars_version"]
    assert tags["tvq.bars_version"] == str(getattr(recorded, "value", recorded))
    assert tags["tvq.restate"] == "False"


def test_two_runs_on_different_data_log_different_dataset_digests(instance, lake_root, local_home):
    digests = []
    for symbols in (30, 31):
        resources = resources_for(
            f"{lake_root}-{symbols}", crypto=synthetic_source(symbols=symbols)
        )
        assert materialise(instance, resources, ["returns"]).success
        digests.append(parent_runs(MlflowTracker())[-1].inputs.dataset_inputs[0].dataset.digest)
    assert digests[0] != digests[1]


def test_toxic_data_under_policy_fail_leaves_the_mlflow_run_failed_with_the_check_named(
    instance, lake_root, local_home
):
    resources = resources_for(lake_root, crypto=synthetic_source(faults=[{"kind": "toxic_spike"}]))
    result = materialise(instance, resources, ["returns", "features"])
    assert not result.success
    tracker = MlflowTracker()
    [run] = parent_runs(tracker)
    assert run.info.status == "FAILED"
    assert run.data.tags["tvq.failed_checks"] == "returns.returns_contract"
    assert run.data.tags["tvq.failed_asset"] == "returns"
    violations = tracker.read_text(run.info.run_id, "failures/returns.returns_contract.md")
    assert "toxic_return" in violations and "+700%" in violations


def test_a_cancelled_dagster_run_is_killed_in_mlflow_by_the_sensor(instance, lake_root, local_home):
    resources = resources_for(lake_root, crypto=synthetic_source())
    result = materialise(instance, resources, ["returns"])
    dagster_run = instance.get_run_by_id(result.run_id)
    instance.report_run_canceled(dagster_run)
    [event] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_CANCELED)
    [sensor] = [s for s in SENSORS if s.name == "mlflow_on_canceled"]
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        dagster_event=event.dagster_event,
        resources={"mlflow": MlflowTracker()},
    )
    sensor(context)
    [run] = parent_runs(MlflowTracker())
    assert run.info.status == "KILLED"


def test_concurrent_steps_racing_for_the_same_run_end_with_one(tmp_path):
    """Step processes of one Dagster run start together; each opens its own lock file handle,
    as threads do here, so the machine-wide lock is exercised the same way."""
    tracker = MlflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracker.experiment_id("tvq-race")
    key = {identity.ROOT_RUN_TAG: "race", identity.PARTITION_TAG: KEY}
    barrier = threading.Barrier(6)

    def find_or_create(_: int) -> str:
        barrier.wait()
        return tracker.find_or_create_run(experiment, identity=key, name="race").info.run_id

    with ThreadPoolExecutor(6) as pool:
        run_ids = list(pool.map(find_or_create, range(6)))
    assert len(set(run_ids)) == 1
    assert len(tracker.search(experiment, key)) == 1


# --------------------------------------------------------------------------------------------
# Against a real tracking server
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracked_graph(mlflow_server, tmp_path_factory):
    """The whole graph of one 30-symbol partition, tracked by the server."""
    uri, _, _ = mlflow_server
    lake_root = str(tmp_path_factory.mktemp("lake"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        with dg.DagsterInstance.ephemeral() as instance:
            resources = resources_for(lake_root, crypto=synthetic_source(symbols=30))
            result = materialise(instance, resources, [a for a in BY_NAME if a != "bars"])
            yield result, MlflowTracker(tracking_uri=uri), ParquetLake(root=lake_root)


@pytest.mark.slow
def test_a_partition_is_one_finished_mlflow_run_with_its_metrics(tracked_graph):
    result, tracker, lake = tracked_graph
    assert result.success
    [run] = parent_runs(tracker)
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    backtest = lake.read(["backtest"], KEY)
    table, champion = backtest.metrics, backtest.champion
    for name in (*BACKTEST_METRICS, "avg_turnover"):
        assert metrics[name] == pytest.approx(table.loc[champion, name])
        assert metrics[f"baseline_universe.{name}"] == pytest.approx(
            table.loc["baseline_universe", name]
        )
    candidates = backtest.returns.drop(columns=list(policy.BASELINES))
    trials = candidates.mean() / candidates.std(ddof=1)
    assert metrics["deflated_sharpe"] == pytest.approx(
        performance.deflated_sharpe_ratio(backtest.returns[champion], trial_sharpes=trials)
    )
    assert metrics["deflated_sharpe"] < performance.probabilistic_sharpe_ratio(
        backtest.returns[champion]
    )
    winners = lake.read(["selection"], KEY).winners
    assert metrics["selection.winners"] == len(winners)
    assert metrics["selection.stage"] == winners["stage"].max()
    for name in ("mean", "std", "min", "max", "median"):
        assert f"inference.score_{name}" in metrics
    for profile in lake.read(["weights"], KEY).diagnostics.index:
        assert f"weights.{profile}.solver_seconds" in metrics
        assert run.data.tags[f"weights.{profile}.status"]


@pytest.mark.slow
def test_every_tournament_policy_is_a_nested_run_with_the_same_metric_names(tracked_graph):
    _, tracker, lake = tracked_graph
    [parent] = parent_runs(tracker)
    children = tracker.search(parent.info.experiment_id, {"mlflow.parentRunId": parent.info.run_id})
    table = lake.read(["backtest"], KEY).metrics
    assert sorted(c.data.tags["tvq.policy"] for c in children) == sorted(table.index)
    for child in children:
        assert child.info.status == "FINISHED"
        row = table.loc[child.data.tags["tvq.policy"]]
        assert child.data.metrics["sharpe"] == pytest.approx(row["sharpe"])
        assert set(BACKTEST_METRICS) <= set(child.data.metrics)


@pytest.mark.slow
def test_the_artifacts_are_present_and_readable(tracked_graph):
    _, tracker, lake = tracked_graph
    [run] = parent_runs(tracker)
    run_id = run.info.run_id
    winners = pd.read_csv(io.StringIO(tracker.read_text(run_id, "selection/winners.csv")))
    assert list(winners.iloc[:, 0]) == list(lake.read(["selection"], KEY).winners.index)
    audit = pd.read_csv(io.StringIO(tracker.read_text(run_id, "selection/audit.csv")))
    assert len(audit) == len(lake.read(["selection"], KEY).audit)
    weights = pd.read_csv(io.StringIO(tracker.read_text(run_id, "weights/weights.csv")))
    assert len(weights) == len(lake.read(["weights"], KEY).weights)
    metrics = pd.read_csv(io.StringIO(tracker.read_text(run_id, "backtest/metrics.csv")))
    assert "sharpe" in metrics.columns
    decision = lake.read(["portfolio"], KEY)
    logged = pd.read_csv(io.StringIO(tracker.read_text(run_id, "portfolio/weights.csv")))
    assert np.allclose(logged.set_index("symbol")["weight"], decision.weights["weight"])
    assert run.data.metrics["portfolio.turnover"] == pytest.approx(decision.turnover)
    from mlflow.artifacts import download_artifacts

    for figure in ("equity_curve", "drawdown", "rolling_sharpe", "monthly_returns"):
        local = download_artifacts(
            run_id=run_id, artifact_path=f"backtest/{figure}.png", tracking_uri=tracker.uri
        )
        assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
        if figure == "equity_curve":  # the asset's own rendering, stored beside the value
            stored = lake.location(["backtest"], KEY).with_suffix(".png")
            assert Path(local).read_bytes() == stored.read_bytes()


@pytest.mark.slow
def test_links_go_both_ways(tracked_graph, mlflow_server):
    result, tracker, _ = tracked_graph
    uri, _, _ = mlflow_server
    [run] = parent_runs(tracker)
    for asset in ("returns", "selection", "backtest"):
        [event] = result.asset_materializations_for_node(asset)
        assert event.metadata["mlflow_run_id"].value == run.info.run_id
        url = event.metadata["mlflow_run"].value
        assert url.startswith(uri) and url.endswith(f"/runs/{run.info.run_id}")
    # The URL's run exists on the server it points to.
    with urllib.request.urlopen(
        f"{url.split('/#/')[0]}/api/2.0/mlflow/runs/get?run_id={url.rsplit('/', 1)[1]}"
    ) as response:
        assert json.loads(response.read())["run"]["info"]["run_id"] == run.info.run_id
    [event] = result.asset_materializations_for_node("backtest")
    assert event.metadata["champion_sharpe"].value == pytest.approx(run.data.metrics["sharpe"])
    assert run.data.tags["dagster.run_url"].endswith(f"/runs/{result.run_id}")


@pytest.mark.slow
def test_the_champion_registered_on_the_server_reproduces_the_portfolio(
    tracked_graph, mlflow_server
):
    result, tracker, lake = tracked_graph
    uri, _, _ = mlflow_server
    [run] = parent_runs(tracker)
    [event] = result.asset_materializations_for_node("portfolio")
    name = registry.model_name("crypto")
    champion = tracker.alias(name, registry.CHAMPION)
    assert event.metadata["registered_model_url"].value == tracker.model_version_url(
        name, str(champion.version)
    )
    assert champion.run_id == run.info.run_id and champion.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["tvq.promotion.verdict"].startswith("first champion")
    model = registry.load_policy("crypto", tracking_uri=uri)
    window, stored = lake.read(["returns"], KEY), lake.read(["portfolio"], KEY)
    predicted = model.predict(policy.model_input(window)).set_index("symbol")["weight"]
    expected = stored.weights["weight"]
    assert len(expected) and set(predicted.index) == set(expected.index)
    assert np.allclose(predicted.reindex(expected.index), expected, rtol=0, atol=1e-9)


def _environment(home: Path, uri: str, sleeves: Path) -> dict:
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MLFLOW_TRACKING_URI": uri,
        "TVQ_SLEEVES": str(sleeves),
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    }
    environment.pop("TVQ_LAKE", None)
    return environment


def _small_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "sleeves.yaml"
    source = {"kind": "synthetic", "seed": 7, "symbols": 30, "end": AS_OF}
    document = {"first_run": "2026-06-01", "sleeves": {"crypto": {"source": source}}}
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.slow
def test_the_multiprocess_executor_makes_one_mlflow_run_per_dagster_run(mlflow_server, tmp_path):
    """Each step in its own process (both modes run steps in the run's process; a deployment may
    choose the multiprocess executor): the step processes share one MLflow run."""
    uri, _, _ = mlflow_server
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    environment = _environment(home, uri, _small_catalog(tmp_path))
    location = tmp_path / "multiprocess_definitions.py"
    location.write_text(
        "import dagster as dg\n"
        "from tvq_assets import definitions\n"
        "defs = dg.Definitions(\n"
        "    assets=definitions.ASSETS,\n"
        "    jobs=[definitions.bars_job, definitions.daily_job],\n"
        "    resources=definitions.build_resources(),\n"
        "    executor=dg.multiprocess_executor.configured({'max_concurrent': 2}),\n"
        ")\n"
    )
    partition = "2026-06-29|crypto"
    for job, key in (("refresh_bars", "crypto"), ("daily", partition)):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster",
                "job",
                "execute",
                "-f",
                str(location),
                "-j",
                job,
                "--tags",
                json.dumps({"dagster/partition": key}),
            ],
            env=environment,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [daily] = instance.get_runs(dg.RunsFilter(job_name="daily"))
        assert daily.status == dg.DagsterRunStatus.SUCCESS
    tracker = MlflowTracker(tracking_uri=uri)
    [run] = parent_runs(tracker, partition)
    assert run.data.tags["dagster.run_id"] == daily.run_id
    assert run.info.status == "FINISHED"
    assert {f"tvq.stage.{s}" for s in BY_NAME if s != "bars"} <= set(run.data.tags)


@pytest.mark.slow
def test_a_tracking_server_down_fails_the_step_naming_it_and_the_replay_records_the_run(
    mlflow_server, tmp_path, monkeypatch
):
    uri, _, _ = mlflow_server
    home = tmp_path / "home"
    home.mkdir()
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    lake = ParquetLake(root=str(home / "lake"))
    with dg.DagsterInstance.get() as instance:
        resources = resources_for(str(home / "lake"), crypto=synthetic_source())
        result = materialise(instance, resources, ["returns", "features"])
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "returns"
    assert f"MLflow tracking at {down} unreachable" in failure.step_failure_data.error.to_string()
    assert lake.exists(["returns"], KEY), "the computed value is kept in the lake"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from tvq_assets import cli

    assert cli.main(["track", "crypto", AS_OF, AS_OF]) == 0
    tracker = MlflowTracker(tracking_uri=uri)

    def runs_of_this_dagster_run():
        return [r for r in parent_runs(tracker) if r.data.tags["dagster.run_id"] == result.run_id]

    [run] = runs_of_this_dagster_run()
    assert run.data.tags["tvq.stage.returns"] and run.data.metrics["returns.symbols"] > 0
    assert run.info.status == "FAILED" and run.data.tags["tvq.failed_steps"] == "returns"
    assert cli.main(["track", "crypto", AS_OF, AS_OF]) == 0
    assert len(runs_of_this_dagster_run()) == 1


def test_loading_the_code_location_does_not_import_mlflow():
    probe = "import sys, tvq_assets.definitions; print('mlflow' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True
    )
    assert loaded.stdout.strip() == "False"
