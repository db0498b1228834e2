"""Production mode: the mode's one home, its service checks, and the services of ``make services``
(Postgres, an MLflow server, a Ray head) carrying a real production flow end to end."""

import base64
import contextlib
import functools
import ipaddress
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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


@pytest.mark.parametrize("reuse", [False, True], ids=["plain", "SO_REUSEADDR"])
def test_a_busy_port_is_refused_before_anything_starts(tmp_path, reuse):
    with socket.socket() as busy:
        # A listener that set SO_REUSEADDR (as servers do) still holds its port against ours.
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
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
    assert not (tmp_path / "s" / "services.json").exists()


def _time_wait_ports() -> set[int]:
    """Local ports of IPv4 TCP sockets in TIME_WAIT (state 06 of /proc/net/tcp)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "06":
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


def test_a_port_whose_connections_linger_in_time_wait_is_free_to_start_on():
    """A service stopped a moment ago leaves its side of closed connections in TIME_WAIT; the
    servers bind with SO_REUSEADDR, so the check must not call the port busy."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: it is the one left in TIME_WAIT
        client.recv(1)  # the FIN has arrived
        client.close()
    assert port in _time_wait_ports()
    assert services._port_free(port)
    with socket.socket() as server:  # and a server can indeed take it
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))


# -- the record of what was started -------------------------------------------------------------
@pytest.fixture
def started(tmp_path):
    """A state folder as ``start`` leaves it on free ports: the record, the password and token,
    and a live process (a stand-in in a session of its own) behind each pid file."""
    state = tmp_path / "state"
    state.mkdir()
    ports = {name: _free_port() for name in services.DEFAULT_PORTS}
    running = services.Services(
        state, ports["postgres"], ports["mlflow"], ports["ray"], tmp_path / "production"
    )
    running.record()
    running.password_file.write_text("secret\n")
    running.ray_token.write_text("token\n")
    running.mlflow_password_file.write_text("mlflow-secret\n")
    stand_ins = {}
    for name in services.DEFAULT_PORTS:
        stand_ins[name] = subprocess.Popen(["sleep", "600"], start_new_session=True)
        running.pid_file(name).write_text(f"{stand_ins[name].pid}\n")
    yield running, stand_ins
    for process in stand_ins.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _env(argv: list[str], capsys) -> tuple[int, dict[str, str], str]:
    status = services.main(argv)
    out, err = capsys.readouterr()
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    return status, exports, err


def test_services_env_exports_the_ports_the_services_were_started_on(started, capsys):
    running, _ = started
    status, exports, _ = _env(["env", "--state", str(running.state)], capsys)
    assert status == 0
    assert exports["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{running.mlflow_port}"
    assert exports["RAY_ADDRESS"] == f"127.0.0.1:{running.ray_port}"
    assert exports["TVQ_POSTGRES_URL"] == (
        f"postgresql+psycopg2://tvq:secret@127.0.0.1:{running.pg_port}/dagster"
    )
    assert exports["DAGSTER_HOME"] == str(running.production_home)
    assert exports["TVQ_SERVICES_DIR"] == str(running.state)


def test_asking_for_other_ports_than_the_running_services_is_a_named_error(started, capsys):
    running, _ = started
    other = _free_port()
    argv = ["--state", str(running.state), "--mlflow-port", str(other)]
    for action in ("env", "start", "status", "stop"):
        status, exports, err = _env([action, *argv], capsys)
        assert (status, exports) == (1, {}), action
        assert f"MLFLOW_PORT={other} (they run on {running.mlflow_port})" in err, action
        assert f"started with PG_PORT={running.pg_port} " in err and "make services-stop" in err
    # The same ports as the record's are no conflict.
    same = ["env", "--state", str(running.state), "--ray-port", str(running.ray_port)]
    assert _env(same, capsys)[0] == 0
    with pytest.raises(services.SettingsConflict, match="PRODUCTION_HOME="):
        services.Services.resolve(running.state, production_home=running.state / "elsewhere")


def test_a_record_left_by_services_that_died_gives_the_next_start_its_ports(started):
    running, stand_ins = started
    for process in stand_ins.values():
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert services.Services.resolve(running.state) == running
    other = _free_port()
    moved = services.Services.resolve(running.state, ports={"mlflow": other})
    assert (moved.mlflow_port, moved.pg_port) == (other, running.pg_port)


def test_services_env_refuses_services_that_are_down_or_never_started(started, tmp_path, capsys):
    running, stand_ins = started
    os.killpg(stand_ins["mlflow"].pid, signal.SIGKILL)
    stand_ins["mlflow"].wait()
    status, _, err = _env(["env", "--state", str(running.state)], capsys)
    assert status == 1 and f"mlflow under {running.state} not running: `make services`" in err
    status, _, err = _env(["env", "--state", str(tmp_path / "never")], capsys)
    assert status == 1 and "no services recorded under" in err and "make services" in err


def test_running_services_without_a_record_are_not_guessed_at(started, capsys):
    """Services started before ports were recorded: their ports are unknown, so neither a start
    (which would record the defaults) nor the exports guess them."""
    running, _ = started
    running.record_path.unlink()
    for action in ("start", "env"):
        status, exports, err = _env([action, "--state", str(running.state)], capsys)
        assert (status, exports) == (1, {}), action
        assert "without a record of their ports" in err and "make services-stop" in err
    assert not running.record_path.exists()


def test_stopping_the_services_removes_the_record_so_the_next_start_chooses_afresh(started):
    running, stand_ins = started
    # pg_ctl cannot stop a stand-in: here Postgres is the one service not running.
    os.killpg(stand_ins["postgres"].pid, signal.SIGKILL)
    stand_ins["postgres"].wait()
    running.stop()
    assert not running.record_path.exists()
    assert all(process.poll() is not None for process in stand_ins.values())
    assert services.Services.resolve(running.state).mlflow_port == services.DEFAULT_PORTS["mlflow"]


def test_production_refuses_exports_of_services_restarted_on_other_ports(started, capsys):
    """A shell keeps the exports of an earlier start; the services now run elsewhere. The check
    says so (and which variables), whatever might answer on the old ports."""
    running, _ = started
    _, exports, _ = _env(["env", "--state", str(running.state)], capsys)
    old = _free_port()
    exports["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{old}"
    exports["TVQ_POSTGRES_URL"] = exports["TVQ_POSTGRES_URL"].replace("secret", "older")
    with pytest.raises(ProductionUnavailable) as raised:
        check_production(exports)
    message = str(raised.value)
    assert f"do not match the services recorded in {running.state}" in message
    assert (
        f"MLFLOW_TRACKING_URI=http://127.0.0.1:{old} "
        f"(recorded: http://127.0.0.1:{running.mlflow_port})" in message
    )
    assert "TVQ_POSTGRES_URL=postgresql+psycopg2://tvq:***@" in message
    assert "secret" not in message and "older" not in message
    assert 'eval "$(make -s services-env)"' in message


def test_production_accepts_exports_that_match_the_record(started, capsys):
    running, _ = started
    _, exports, _ = _env(["env", "--state", str(running.state)], capsys)
    with pytest.raises(ProductionUnavailable) as raised:  # the stand-ins answer nothing
        check_production(exports)
    assert "do not match" not in str(raised.value)
    assert f"MLFLOW_TRACKING_URI={exports['MLFLOW_TRACKING_URI']}: the server" in str(raised.value)


def test_production_names_services_stopped_since_their_exports_were_made(started, capsys):
    running, _ = started
    _, exports, _ = _env(["env", "--state", str(running.state)], capsys)
    running.record_path.unlink()  # what `make services-stop` does last
    with pytest.raises(ProductionUnavailable, match="no services are recorded there"):
        check_production(exports)


@functools.cache
def _stamp() -> str:
    """The Makefile's environment stamp: the tests run inside that environment already."""
    show = "--eval=tvq-stamp: ; @echo $(STAMP)"
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), show, "tvq-stamp"], capture_output=True, text=True
    ).stdout.strip()


def _make(target: str, variables: dict[str, str], env: dict[str, str] | None = None):
    """Run a make target in a session of its own, its environment bootstrap taken as done (-o);
    on timeout the whole session is killed (make, the flow and its step processes), not make
    alone. A port variable of the caller's environment is left out: only ``variables`` choose."""
    environment = {
        k: v
        for k, v in (os.environ if env is None else env).items()
        if k not in services.PORT_VARIABLES.values()
    }
    process = subprocess.Popen(
        [
            "make",
            "-s",
            "-C",
            str(ROOT),
            "-o",
            _stamp(),
            target,
            *[f"{k}={v}" for k, v in variables.items()],
        ],
        env=environment,
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


def test_make_services_env_follows_the_record_and_refuses_other_ports(started):
    """The defect's own commands: `make services MLFLOW_PORT=…`, then a plain `make -s
    services-env` must name the port the services run on, and a different one is refused."""
    running, _ = started
    plain = _make("services-env", {"SERVICES_DIR": str(running.state)})
    assert plain.returncode == 0, plain.stderr
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{running.mlflow_port}\n" in plain.stdout
    other = _free_port()
    asked = _make("services-env", {"SERVICES_DIR": str(running.state), "MLFLOW_PORT": str(other)})
    assert asked.returncode != 0 and f"MLFLOW_PORT={other} (they run on" in asked.stderr
    assert "export" not in asked.stdout


# -- end to end on the services ----------------------------------------------------------------
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


def _state_folder() -> tuple[Path, Path, Path]:
    """A state folder and a production home under a temporary base. Postgres runs as the
    `postgres` user when we are root: the state must be reachable by it (pytest's own temporary
    folders are private to us)."""
    base = Path(tempfile.mkdtemp(prefix="tvq-services-"))
    base.chmod(0o755)
    state, home = base / "state", base / "home"
    home.mkdir()
    shutil.copy(PRODUCTION_YAML, home / "dagster.yaml")
    return base, state, home


@pytest.mark.slow
def test_services_on_chosen_ports_are_found_by_env_and_restart_on_them_right_after_a_stop():
    base, state, home = _state_folder()
    chosen = {
        "PG_PORT": str(_free_port()),
        "MLFLOW_PORT": str(_free_port()),
        "RAY_PORT": str(_free_port()),
    }
    where = {"SERVICES_DIR": str(state)}
    try:
        up = _make("services", {**where, "PRODUCTION_HOME": str(home), **chosen})
        assert up.returncode == 0, up.stdout + up.stderr
        exports = _make("services-env", where)
        assert exports.returncode == 0, exports.stderr
        production = dict(
            line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines()
        )
        assert production["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{chosen['MLFLOW_PORT']}"
        assert production["RAY_ADDRESS"] == f"127.0.0.1:{chosen['RAY_PORT']}"
        assert f"@127.0.0.1:{chosen['PG_PORT']}/dagster" in production["TVQ_POSTGRES_URL"]
        assert production["DAGSTER_HOME"] == str(home)
        check_production(production)  # every service answers, and the exports match the record
        status = _make("services-status", where)
        assert status.returncode == 0 and status.stdout.count("answers") == 3, status.stdout
        other = {"RAY_PORT": str(_free_port())}
        refused = _make("services-env", {**where, **other})
        assert refused.returncode != 0 and "export" not in refused.stdout
        assert f"RAY_PORT={other['RAY_PORT']} (they run on {chosen['RAY_PORT']})" in refused.stderr

        down = _make("services-stop", where)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not (state / "services.json").exists()
        lingering = sorted(_time_wait_ports() & {int(port) for port in chosen.values()})
        # At once, on the same ports (some may hold connections in TIME_WAIT: shown below).
        again = _make("services", {**where, "PRODUCTION_HOME": str(home), **chosen})
        assert again.returncode == 0, again.stdout + again.stderr
        print(f"ports in TIME_WAIT when started again: {lingering}")
        assert _make("services-env", where).stdout == exports.stdout
    finally:
        before = _pids(state)
        stopped = _make("services-stop", where)
        left = {name: [p for p in pids if _alive(p)] for name, pids in before.items()}
        shutil.rmtree(base, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert all(not pids for pids in left.values()), left


def _address(hexadecimal: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in the host's (little-endian) order."""
    raw = bytes.fromhex(hexadecimal)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def _listeners(pids: list[int]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, command) of every TCP socket these processes listen on."""
    owner = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owner[target[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owner:  # LISTEN
                host, port = fields[1].split(":")
                pid = owner[fields[9]]
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                found.append((str(_address(host)), int(port, 16), pid, command))
    return found


def _loopback(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)
    return parsed.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.slow
def test_running_services_refuse_strangers_show_no_secret_in_ps_and_listen_on_loopback_only():
    """The attacks on `make services`: an unauthenticated artifact PUT (it replaced a champion's
    code), the Postgres password on MLflow's command line, Ray's metrics on every interface."""
    base, state, home = _state_folder()
    chosen = {name: str(_free_port()) for name in ("PG_PORT", "MLFLOW_PORT", "RAY_PORT")}
    where = {"SERVICES_DIR": str(state)}
    try:
        up = _make("services", {**where, "PRODUCTION_HOME": str(home), **chosen})
        assert up.returncode == 0, up.stdout + up.stderr
        exports = _make("services-env", where)
        production = dict(
            line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines()
        )
        check_production(production)  # the exports' login is accepted
        # A task, so that the cluster has workers listening too.
        task = subprocess.run(
            [
                sys.executable,
                "-c",
                "import ray; ray.init(); print(ray.get(ray.remote(lambda: 7).remote()))",
            ],
            env={**os.environ, **production},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert task.stdout.strip().endswith("7"), task.stderr[-3000:]

        # MLflow: nothing without the login, the REST API and the artifact store alike.
        server = production["MLFLOW_TRACKING_URI"]
        search = f"{server}/api/2.0/mlflow/experiments/search?max_results=1"
        put = urllib.request.Request(
            f"{server}/api/2.0/mlflow-artifacts/artifacts/1/x/artifacts/model/policy_model.py",
            data=b"import os",
            method="PUT",
        )
        for request in (search, put):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401
        login = base64.b64encode(
            f"{production['MLFLOW_TRACKING_USERNAME']}:"
            f"{production['MLFLOW_TRACKING_PASSWORD']}".encode()
        ).decode()
        authorised = urllib.request.Request(search, headers={"Authorization": f"Basic {login}"})
        with urllib.request.urlopen(authorised, timeout=10) as reply:
            assert reply.status == 200
        assert stat.S_IMODE((state / "mlflow.password").stat().st_mode) == 0o600

        # No process of the machine shows a secret on its command line.
        secrets_ = {
            "postgres": (state / "pg.password").read_text().strip(),
            "mlflow": production["MLFLOW_TRACKING_PASSWORD"],
            "ray": (state / "ray.token").read_text().strip(),
        }
        shown = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    line = (entry / "cmdline").read_bytes().decode(errors="replace")
                    shown += [(entry.name, n) for n, secret in secrets_.items() if secret in line]
        assert shown == []

        # Every socket the services listen on is bound to loopback.
        families = _pids(state)
        listening = {name: _listeners(pids) for name, pids in families.items()}
        for name in ("postgres", "mlflow", "ray"):
            assert listening[name], name
        exposed = [
            (name, *listener)
            for name, found in listening.items()
            for listener in found
            if not _loopback(listener[0])
        ]
        assert exposed == []
        ray_commands = {os.path.basename(command) for _, _, _, command in listening["ray"]}
        print(f"ray listeners on loopback: {len(listening['ray'])} ({sorted(ray_commands)})")
    finally:
        stopped = _make("services-stop", where)
        shutil.rmtree(base, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.mark.slow
def test_production_flow_on_the_services_end_to_end(monkeypatch):
    base, state, home = _state_folder()
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

        # As typed after `make services PG_PORT=…`: the record names the ports and the home.
        exports = _make("services-env", {"SERVICES_DIR": str(state)})
        assert exports.returncode == 0, exports.stderr
        production = dict(
            line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines()
        )
        assert production["DAGSTER_HOME"] == str(home)
        assert production["TV_ORCH_MODE"] == "production"
        check_production(production)  # every service answers

        # The attack's setting: the MLflow login inside the tracking URI (services of one's own,
        # so no record to compare the URI with), Postgres's password in TVQ_POSTGRES_URL.
        secrets_ = {
            "mlflow": production["MLFLOW_TRACKING_PASSWORD"],
            "postgres": (state / "pg.password").read_text().strip(),
        }
        user = production["MLFLOW_TRACKING_USERNAME"]
        server = production["MLFLOW_TRACKING_URI"]
        environment = {**os.environ, **production, "TVQ_SLEEVES": str(sleeves)}
        environment["MLFLOW_TRACKING_URI"] = server.replace(
            "http://", f"http://{user}:{secrets_['mlflow']}@"
        )
        for variable in (
            "TVQ_LAKE",
            "TVQ_SERVICES_DIR",
            *[k for k in production if "TRACKING_" in k and k != "MLFLOW_TRACKING_URI"],
        ):
            environment.pop(variable, None)
        started = time.perf_counter()
        flow = _make("flow-production", {}, environment)
        flow_seconds = time.perf_counter() - started
        assert flow.returncode == 0, flow.stdout[-3000:] + flow.stderr[-5000:]
        print(f"make services: {startup:.1f}s; make flow-production: {flow_seconds:.1f}s")
        assert f"{server}/#/experiments/" in flow.stdout  # links are printed, without the login
        leaks = [name for name, secret in secrets_.items() if secret in flow.stdout + flow.stderr]
        assert leaks == [], "the terminal shows a password"
        # Nor does any file of the production instance (compute logs, storage, lake).
        for path in home.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                assert not [n for n, v in secrets_.items() if v.encode() in content], path

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
            # Every event of every run (messages, metadata such as `mlflow_run` links), and the
            # runs' tags and config: no password.
            stored = [dg.serialize_value(run) for run in runs.values()]
            for run in runs.values():
                stored += [dg.serialize_value(entry) for entry in instance.all_logs(run.run_id)]
            linked = [text for text in stored if "mlflow_run" in text]
            assert linked, "the runs' events link their MLflow runs"
            for name, secret in secrets_.items():
                assert not [text for text in stored if secret in text], name

        # The MLflow server holds one run for the partition, finished.
        from mlflow import MlflowClient

        for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            monkeypatch.setenv(variable, production[variable])
        client = MlflowClient(tracking_uri=production["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("tvq-crypto")
        found = client.search_runs([experiment.experiment_id], max_results=1000)
        parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
        partitions = [r.data.tags.get("tvq.partition") for r in parents]
        assert partitions == [partition], partitions
        assert parents[0].info.status == "FINISHED"
        assert parents[0].data.tags["dagster.run_id"] == runs["daily"].run_id
        # Nothing tagged or logged as a parameter in MLflow holds a password.
        recorded = [
            value for run in found for value in [*run.data.tags.values(), *run.data.params.values()]
        ]
        for model in client.search_registered_models():
            recorded += list(model.tags.values())
            for version in client.search_model_versions(f"name = '{model.name}'"):
                recorded += [*version.tags.values(), version.source or ""]
        for name, secret in secrets_.items():
            assert not [value for value in recorded if secret in value], name
    finally:
        before = _pids(state)
        down = _make("services-stop", variables)
        left = {name: [p for p in pids if _alive(p)] for name, pids in before.items()}
        shutil.rmtree(base, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert set(before) == {"postgres", "mlflow", "ray"}
    assert all(len(pids) >= 2 for pids in before.values()), before
    assert left == {"postgres": [], "mlflow": [], "ray": []}
