"""Production mode: the mode's one home, its service checks, and the services of ``make services``
(Postgres, an MLflow server, a Ray head) carrying a real production flow end to end."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tvq_resources import mode as orchestration
from tvq_resources import services
from tvq_resources.mode import Mode, ModeError, ProductionUnavailable, check_production

ROOT = Path(__file__).resolve().parents[1]
LOCAL_YAML = ROOT / "dagster_home" / "dagster.yaml"
PRODUCTION_YAML = ROOT / "dagster_home" / "production" / "dagster.yaml"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the mode ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, Mode.LOCAL), ("", Mode.LOCAL), ("local", Mode.LOCAL), ("Production", Mode.PRODUCTION)],
)
def test_the_mode_is_read_from_tv_orch_mode(value, expected):
    environ = {} if value is None else {"TV_ORCH_MODE": value}
    assert orchestration.orchestration_mode(environ) is expected
    assert expected.is_production == (expected is Mode.PRODUCTION)


def test_an_unknown_mode_names_the_variable_and_the_choices():
    with pytest.raises(
        ModeError, match=r"TV_ORCH_MODE='cluster': expected 'local' or 'production'"
    ):
        orchestration.orchestration_mode({"TV_ORCH_MODE": "cluster"})


def test_production_without_services_names_every_variable_and_what_to_start():
    with pytest.raises(ProductionUnavailable) as raised:
        check_production({})
    message = str(raised.value)
    for variable in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        assert f"{variable} is not set" in message
    assert "make services" in message


def test_production_refuses_the_sqlite_instance():
    environ = {"DAGSTER_HOME": str(LOCAL_YAML.parent)}
    with pytest.raises(ProductionUnavailable, match="not Postgres; use the production instance"):
        check_production(environ)


def test_the_production_instance_needs_its_postgres_url():
    environ = {"DAGSTER_HOME": str(PRODUCTION_YAML.parent)}
    with pytest.raises(ProductionUnavailable, match="TVQ_POSTGRES_URL is not set"):
        check_production(environ)


def test_services_that_do_not_answer_are_named_with_their_address():
    closed = _free_port()  # nothing listens there
    environ = {
        "DAGSTER_HOME": str(PRODUCTION_YAML.parent),
        "TVQ_POSTGRES_URL": f"postgresql+psycopg2://tvq:x@127.0.0.1:{closed}/dagster",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}",
        "RAY_ADDRESS": f"127.0.0.1:{closed}",
    }
    with pytest.raises(ProductionUnavailable) as raised:
        check_production(environ)
    message = str(raised.value)
    assert "Postgres of DAGSTER_HOME=" in message and "does not answer" in message
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{closed}: the server does not answer" in message
    assert f"RAY_ADDRESS=127.0.0.1:{closed}: no Ray head answers there" in message


def test_a_postgres_url_without_the_installed_driver_is_refused():
    environ = {
        "DAGSTER_HOME": str(PRODUCTION_YAML.parent),
        "TVQ_POSTGRES_URL": "postgresql://tvq:x@127.0.0.1:5433/dagster",
    }
    with pytest.raises(ProductionUnavailable, match=r"must start with postgresql\+psycopg2://"):
        check_production(environ)


def test_the_production_instance_is_the_local_one_on_postgres():
    """One home for the queue, launcher, monitoring and retries: the production instance differs
    from the local one only by its storage, read from the environment."""
    local = yaml.safe_load(LOCAL_YAML.read_text())
    production = yaml.safe_load(PRODUCTION_YAML.read_text())
    storage = production.pop("storage")
    assert production == local
    assert "storage" not in local
    assert storage == {"postgres": {"postgres_url": {"env": "TVQ_POSTGRES_URL"}}}


def test_tvq_production_refuses_to_start_without_its_services(monkeypatch, capsys):
    from tvq_assets import cli

    for variable in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "TVQ_POSTGRES_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(LOCAL_YAML.parent))
    monkeypatch.delenv("TV_ORCH_MODE", raising=False)
    assert cli.main(["production"]) == 2
    assert "TV_ORCH_MODE" not in os.environ  # a refused start leaves this process's mode alone
    error = capsys.readouterr().err
    assert "TV_ORCH_MODE=production needs its services" in error
    assert "MLFLOW_TRACKING_URI is not set" in error and "make services" in error


def test_a_busy_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        manager = services.Services(tmp_path / "s", _free_port(), port, _free_port())
        with pytest.raises(services.ServiceError) as raised:
            manager.start()
    assert f"mlflow: port 127.0.0.1:{port} is already in use" in str(raised.value)
    assert "MLFLOW_PORT=<port>" in str(raised.value)
    assert not list((tmp_path / "s").glob("*.pid"))
    assert not (tmp_path / "s" / "pg").exists()


# -- end to end on the services ----------------------------------------------------------------
def _make(target: str, variables: dict[str, str], env: dict[str, str] | None = None):
    """Run a make target in a session of its own; on timeout the whole session is killed (make,
    the flow and its step processes), not make alone."""
    process = subprocess.Popen(
        ["make", "-s", "-C", str(ROOT), target, *[f"{k}={v}" for k, v in variables.items()]],
        env=env or os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # Generous: a process per step imports for 15-20 s each on two loaded cores.
        stdout, stderr = process.communicate(timeout=2400)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _pids(state: Path) -> dict[str, list[int]]:
    """Every process of each service: its recorded pid, descendants and session members."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    found = {}
    for pid_file in state.glob("*.pid"):
        leader = int(pid_file.read_text().split()[0])
        members = {p for p, (_, session) in table.items() if session == leader} | {leader}
        while True:
            more = {p for p, (parent, _) in table.items() if parent in members} - members
            if not more:
                break
            members |= more
        found[pid_file.stem] = sorted(p for p in members if p in table)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_production_flow_on_the_services_end_to_end(monkeypatch):
    # Postgres runs as the `postgres` user when we are root: the state must be reachable by it
    # (pytest's own temporary folders are private to us).
    base = Path(tempfile.mkdtemp(prefix="tvq-services-"))
    base.chmod(0o755)
    state, home = base / "state", base / "home"
    home.mkdir()
    shutil.copy(PRODUCTION_YAML, home / "dagster.yaml")
    sleeves = base / "sleeves.yaml"
    source = {"kind": "synthetic", "seed": 7, "symbols": 30, "clusters": 4, "start": "2025-06-01"}
    sleeves.write_text(
        yaml.safe_dump({"first_run": "2026-06-01", "sleeves": {"crypto": {"source": source}}})
    )
    variables = {
        "SERVICES_DIR": str(state),
        "PRODUCTION_HOME": str(home),
        "PG_PORT": str(_free_port()),
        "MLFLOW_PORT": str(_free_port()),
        "RAY_PORT": str(_free_port()),
    }
    try:
        started = time.perf_counter()
        up = _make("services", variables)
        startup = time.perf_counter() - started
        assert up.returncode == 0, up.stdout + up.stderr
        again = _make("services", variables)
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("already running") == 3, again.stdout
        status = _make("services-status", variables)
        assert status.returncode == 0 and status.stdout.count("answers") == 3, status.stdout

        exports = _make("services-env", variables)
        assert exports.returncode == 0, exports.stderr
        production = dict(
            line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines()
        )
        assert production["DAGSTER_HOME"] == str(home)
        assert production["TV_ORCH_MODE"] == "production"
        check_production(production)  # every service answers

        environment = {**os.environ, **production, "TVQ_SLEEVES": str(sleeves)}
        environment.pop("TVQ_LAKE", None)
        started = time.perf_counter()
        flow = _make("flow-production", {}, environment)
        flow_seconds = time.perf_counter() - started
        assert flow.returncode == 0, flow.stdout[-3000:] + flow.stderr[-5000:]
        print(f"make services: {startup:.1f}s; make flow-production: {flow_seconds:.1f}s")

        # The Postgres instance holds the runs and the materialisations.
        monkeypatch.setenv("TVQ_POSTGRES_URL", production["TVQ_POSTGRES_URL"])
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            runs = {r.job_name: r for r in instance.get_runs()}
            assert set(runs) == {"refresh_bars", "daily", "meta_portfolio_job"}
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs.values())
            partition = runs["daily"].tags["dagster/partition"]
            assert instance.get_latest_materialization_event(dg.AssetKey("bars")) is not None
            for asset in ("returns", "selection", "weights", "backtest", "portfolio"):
                event = instance.get_latest_materialization_event(dg.AssetKey(asset))
                assert event is not None, asset
                assert event.dagster_event.partition == partition, asset
                assert event.run_id == runs["daily"].run_id

        # The MLflow server holds one run for the partition, finished.
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=production["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("tvq-crypto")
        found = client.search_runs([experiment.experiment_id], max_results=1000)
        parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
        partitions = [r.data.tags.get("tvq.partition") for r in parents]
        assert partitions == [partition], partitions
        assert parents[0].info.status == "FINISHED"
        assert parents[0].data.tags["dagster.run_id"] == runs["daily"].run_id
    finally:
        before = _pids(state)
        down = _make("services-stop", variables)
        left = {name: [p for p in pids if _alive(p)] for name, pids in before.items()}
        shutil.rmtree(base, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert set(before) == {"postgres", "mlflow", "ray"}
    assert all(len(pids) >= 2 for pids in before.values()), before
    assert left == {"postgres": [], "mlflow": [], "ray": []}
