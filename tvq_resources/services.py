"""Production mode's services on loopback: Postgres, an MLflow tracking server and a Ray head.

``python -m tvq_resources.services start|stop|status|env`` (what ``make services``,
``services-stop``, ``services-status`` and ``services-env`` run). Everything lives in one state
folder (default ``dagster_home/services`` of the repository): the Postgres cluster (``pg/``,
Dagster's run, event and schedule storage in database ``dagster``, MLflow's store in ``mlflow``),
MLflow's artifacts, Ray's temp dir, logs, one pid file per service, and ``services.json``.

``services.json`` records what ``start`` started: each port, the addresses clients use and the
production ``DAGSTER_HOME``. ``env``, ``status`` and ``stop`` act on that record, whatever ports
they are given, so the exports always name the services that run; asking for other ports (or
another production home) than running services were started with is refused
(:class:`SettingsConflict`). ``stop`` removes the record once every service is down; a record
left behind by services that died is reused by the next ``start`` unless it is given ports.

Every service is on 127.0.0.1 and asks for credentials (the README's "Threat model" says who
can reach what): Postgres a password (``pg.password``), the MLflow server a login of its
basic-auth app (user ``tvq``, ``mlflow.password``), the Ray head its token (``ray.token``); each
secret is generated into the state folder with mode 0600 and reaches the servers through files
and environment variables, never a command line (which every local user can read in ``ps``).
The Ray head and its clients run with Ray's single-machine setting
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): otherwise ``ray start`` replaces ``--node-ip-address
127.0.0.1`` by the machine's network address, and its GCS, raylet, agents, metrics exporters and
workers listen there (or on every interface).

A service is stopped by the process ids it was started with (never by process name, which would
hit other clusters on the machine): Postgres through ``pg_ctl`` (its postmaster pid), MLflow and
Ray by the session they were started in, each in a session of its own, so that workers they fork
are found even after their parent exits.

Postgres refuses to run as root: as root its commands run as the ``postgres`` system user that
Debian's package creates (``runuser``).
"""

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tvq_resources import links

HOST = links.LOOPBACK
PG_SCHEME = "postgresql+psycopg2"
USER = "tvq"
# The MLflow server's admin login (its basic-auth app creates it on the first start).
MLFLOW_USER = "tvq"
DATABASES = ("dagster", "mlflow")
# The services' MLflow server takes the port of `make mlflow-ui` (the Makefile's MLFLOW_PORT).
DEFAULT_PORTS = {"postgres": 5433, "mlflow": links.MLFLOW_UI_PORT, "ray": 6379}
# The make variable that chooses each port.
PORT_VARIABLES = {"postgres": "PG_PORT", "mlflow": "MLFLOW_PORT", "ray": "RAY_PORT"}
REPOSITORY_HOME = Path(__file__).resolve().parents[1] / "dagster_home"
DEFAULT_STATE = REPOSITORY_HOME / "services"
DEFAULT_PRODUCTION_HOME = REPOSITORY_HOME / "production"
RECORD = "services.json"
# Exported by `env`: where the record is, so that production mode's check can compare the
# exports it is given with the services that run (tvq_resources.mode).
STATE_VARIABLE = "TVQ_SERVICES_DIR"
# Unix socket paths are limited to 107 bytes; Ray puts `session_<date>_<pid>/sockets/plasma_store`
# (about 60 characters) under its temp dir, so a longer temp dir moves to /tmp (linked from the
# state folder).
RAY_TEMP_MAX = 45
STOP_SECONDS = 30.0
# Ray's single-machine switch (ray_constants.ENABLE_RAY_CLUSTER, on by default on Linux): when
# off, Ray keeps 127.0.0.1 as the node's address instead of resolving it to the machine's
# network address (services.resolve_ip_for_localhost), so that every Ray listener binds loopback.
RAY_LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Services whose pid files predate the record: their ports are unknown, so nothing is guessed.
_UNRECORDED = (
    "services run under {state} without a record of their ports (started by an older "
    "version): restart them with `make services-stop`, then `make services`"
)


class ServiceError(RuntimeError):
    """A service cannot be started or stopped; the message says which and why."""


class SettingsConflict(ServiceError):
    """Ports (or a production home) were asked for that differ from those the running services
    were started with."""


@dataclass(frozen=True)
class Services:
    state: Path
    pg_port: int = DEFAULT_PORTS["postgres"]
    mlflow_port: int = DEFAULT_PORTS["mlflow"]
    ray_port: int = DEFAULT_PORTS["ray"]
    production_home: Path = DEFAULT_PRODUCTION_HOME

    # -- which ---------------------------------------------------------------------------------
    @classmethod
    def resolve(
        cls,
        state: Path,
        *,
        ports: dict[str, int | None] | None = None,
        production_home: Path | None = None,
    ) -> "Services":
        """The services of ``state`` to act on. Settings given (not None) win over the record of
        the last start, which wins over the defaults; but while any recorded service runs, the
        record is what runs, and a given setting that differs from it is a
        :class:`SettingsConflict` (its message names each variable, both values and the fix)."""
        given = {name: port for name, port in (ports or {}).items() if port is not None}
        unknown = set(given) - set(DEFAULT_PORTS)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; expected {list(DEFAULT_PORTS)}")
        recorded = cls.recorded(state)
        if recorded is None:
            base = cls(state)
        else:
            running = [name for name, pids in recorded.running().items() if pids]
            if running:
                recorded.refuse_other(given, production_home, running)
                return recorded
            base = recorded
        chosen = {name: given.get(name, base.port(name)) for name in DEFAULT_PORTS}
        return cls(
            state,
            chosen["postgres"],
            chosen["mlflow"],
            chosen["ray"],
            production_home or base.production_home,
        )

    def refuse_other(
        self, ports: dict[str, int], production_home: Path | None, running: list[str]
    ) -> None:
        """Raise :class:`SettingsConflict` if ``ports`` or ``production_home`` differ from these
        (running) services' own."""
        differences = [
            f"{PORT_VARIABLES[name]}={port} (they run on {self.port(name)})"
            for name, port in ports.items()
            if port != self.port(name)
        ]
        if production_home is not None and production_home != self.production_home:
            differences.append(
                f"PRODUCTION_HOME={production_home} (theirs is {self.production_home})"
            )
        if differences:
            started_with = " ".join(
                f"{PORT_VARIABLES[name]}={self.port(name)}" for name in DEFAULT_PORTS
            )
            raise SettingsConflict(
                f"the services under {self.state} ({', '.join(running)} running) were started "
                f"with {started_with}, but {'; '.join(differences)} was asked for: leave those "
                "variables out (the record decides), or stop the services first "
                "(`make services-stop`) to start them on other ports"
            )

    # -- the record of what was started --------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.state / RECORD

    @classmethod
    def recorded(cls, state: Path) -> "Services | None":
        """The services as ``start`` recorded them in ``state``, or None (never started, or
        stopped since)."""
        path = state / RECORD
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            ports = {name: int(record["ports"][name]) for name in DEFAULT_PORTS}
            home = Path(record["production_home"])
        except (ValueError, KeyError, TypeError) as error:
            raise ServiceError(
                f"{path}: unreadable record of the services ({type(error).__name__}: {error}); "
                "stop what runs (`make services-stop`) and start again"
            ) from None
        return cls(state, ports["postgres"], ports["mlflow"], ports["ray"], home)

    def record(self) -> None:
        """Write what is being started: ports, the addresses clients use, the production home
        (atomically: a reader never sees half a record)."""
        document = {
            "ports": {name: self.port(name) for name in DEFAULT_PORTS},
            "addresses": {
                "postgres": f"{PG_SCHEME}://{USER}@{HOST}:{self.pg_port}/dagster",
                "mlflow": self.mlflow_uri,
                "ray": self.ray_address,
            },
            "production_home": str(self.production_home),
        }
        partial = self.record_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(self.record_path)

    # -- where ---------------------------------------------------------------------------------
    @property
    def pg_home(self) -> Path:
        """Postgres's folder: the state folder, or, when we are root and the ``postgres`` user
        cannot reach the state folder (a checkout under a private home), a folder of its own
        under /var/lib/postgresql, linked from the state folder as ``pg``."""
        if not _is_root() or _reachable_by_others(self.state):
            return self.state
        digest = hashlib.sha1(str(self.state.resolve()).encode()).hexdigest()[:10]
        return Path("/var/lib/postgresql") / f"tvq-{digest}"

    @property
    def pgdata(self) -> Path:
        return self.pg_home / "pg"

    @property
    def pg_log(self) -> Path:
        return self.logs / "postgres.log" if self.pg_home == self.state else self.pg_home / "log"

    @property
    def password_file(self) -> Path:
        return self.state / "pg.password"

    @property
    def ray_token(self) -> Path:
        return self.state / "ray.token"

    @property
    def mlflow_password_file(self) -> Path:
        return self.state / "mlflow.password"

    @property
    def mlflow_auth_config(self) -> Path:
        return self.state / "mlflow" / "basic_auth.ini"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    def pid_file(self, name: str) -> Path:
        return self.state / f"{name}.pid"

    @property
    def ray_temp(self) -> Path:
        return self.state / "ray"

    def postgres_url(self, database: str = "dagster") -> str:
        """A SQLAlchemy URL naming the psycopg2 driver (``postgresql+psycopg2://``): SQLAlchemy
        2.1's default Postgres driver is psycopg 3, which is not installed and whose server-side
        parameters dagster-postgres's ``NOTIFY`` cannot take."""
        password = self.password_file.read_text().strip()
        return f"{PG_SCHEME}://{USER}:{password}@{HOST}:{self.pg_port}/{database}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def ray_address(self) -> str:
        return f"{HOST}:{self.ray_port}"

    def environment(self) -> dict[str, str]:
        """The variables that put ``TV_ORCH_MODE=production`` on these services."""
        return {
            "TV_ORCH_MODE": "production",
            "DAGSTER_HOME": str(self.production_home),
            "TVQ_POSTGRES_URL": self.postgres_url(),
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            # MLflow's clients send these as the server's basic-auth login.
            "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
            "MLFLOW_TRACKING_PASSWORD": _read_secret(self.mlflow_password_file),
            "RAY_ADDRESS": self.ray_address,
            # The head runs with token authentication; clients read the token from this file.
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.ray_token),
            # Clients too: without it Ray turns RAY_ADDRESS's 127.0.0.1 into the machine's
            # network address, where the loopback-only head does not listen.
            RAY_LOOPBACK_VARIABLE: "0",
            STATE_VARIABLE: str(self.state),
        }

    def exports(self) -> dict[str, str]:
        """:meth:`environment` of services that run, as ``env`` prints it; a named error when
        none were started here or some are down."""
        if self.recorded(self.state) is None:
            if any(self.running().values()):
                raise ServiceError(_UNRECORDED.format(state=self.state))
            raise ServiceError(
                f"no services recorded under {self.state}: start them with `make services`"
            )
        down = [name for name, pids in self.running().items() if not pids]
        if down:
            raise ServiceError(
                f"{', '.join(down)} under {self.state} not running: `make services` starts "
                "them again on their recorded ports"
            )
        return self.environment()

    # -- status --------------------------------------------------------------------------------
    def running(self) -> dict[str, list[int]]:
        """The live processes of each service, by the pids recorded when it started."""
        found = {}
        for name in DEFAULT_PORTS:
            leader = _read_pid(self.pid_file(name))
            found[name] = [] if leader is None else _family(leader)
        return found

    def port(self, name: str) -> int:
        return {"postgres": self.pg_port, "mlflow": self.mlflow_port, "ray": self.ray_port}[name]

    def answers(self, name: str) -> bool:
        if name == "mlflow":
            try:
                with urllib.request.urlopen(f"{self.mlflow_uri}/health", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False
        try:
            socket.create_connection((HOST, self.port(name)), timeout=2).close()
        except OSError:
            return False
        return True

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        running = self.running()
        live = [name for name, pids in running.items() if pids]
        recorded = self.recorded(self.state)
        if live and recorded is None:
            raise ServiceError(_UNRECORDED.format(state=self.state))
        if live and recorded is not None:
            # Services of another start run here: only theirs may be recorded (resolve() gives
            # them; a Services built by hand with other settings is refused here).
            recorded.refuse_other(
                {name: self.port(name) for name in DEFAULT_PORTS}, self.production_home, live
            )
        # A busy port is refused before anything starts, naming the service and the variable.
        for name, processes in running.items():
            if not processes and not _port_free(self.port(name)):
                variable = PORT_VARIABLES[name]
                raise ServiceError(
                    f"{name}: port {HOST}:{self.port(name)} is already in use by another "
                    f"process; choose another with {variable}=<port> (e.g. make services "
                    f"{variable}={self.port(name) + 1000})"
                )
        if running["mlflow"] and not self.mlflow_password_file.exists():
            raise ServiceError(
                f"mlflow under {self.state} runs without a login (started by an older version, "
                "open to every local user): restart the services with `make services-stop`, "
                "then `make services`"
            )
        self.record()
        for name, starter in (
            ("postgres", self._start_postgres),
            ("mlflow", self._start_mlflow),
            ("ray", self._start_ray),
        ):
            if running[name]:
                print(f"{name}: already running (pid {running[name][0]}) on port {self.port(name)}")
                continue
            started = time.perf_counter()
            starter()
            self._wait(name)
            took = time.perf_counter() - started
            print(f"{name}: started on {HOST}:{self.port(name)} in {took:.1f}s")

    def _wait(self, name: str, seconds: float = 420.0) -> None:
        # MLflow creates its tables on a first start: over a minute on a loaded two-core machine.
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.answers(name):
                return
            if not self.running()[name]:
                break
            time.sleep(0.25)
        log = self.pg_log if name == "postgres" else self.logs / f"{name}.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise ServiceError(f"{name} did not come up on {HOST}:{self.port(name)}; {log}:\n{tail}")

    def _start_postgres(self) -> None:
        _ensure_postgres_installed()
        bin_dir = _postgres_bin()
        log = self.pg_log
        if not (self.pgdata / "PG_VERSION").exists():
            if self.pgdata.exists():
                shutil.rmtree(self.pgdata)  # a half-done initdb
            if self.pg_home != self.state:
                self.pg_home.mkdir(parents=True, exist_ok=True)
                _own_by_postgres(self.pg_home)
                link = self.state / "pg"
                if not link.is_symlink():
                    link.symlink_to(self.pgdata)
            self.pgdata.mkdir(mode=0o700)
            self.password_file.unlink(missing_ok=True)  # a new cluster, a new password
            password = _secret(self.password_file, secrets.token_urlsafe(24))
            pwfile = self.pg_home / ".initdb-password"
            pwfile.write_text(password + "\n")
            _own_by_postgres(self.pgdata, pwfile)
            try:
                _as_postgres(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(self.pgdata),
                        "-U",
                        USER,
                        f"--pwfile={pwfile}",
                        "--auth-host=scram-sha-256",
                        "--auth-local=scram-sha-256",
                        "-E",
                        "UTF8",
                        "--no-instructions",
                    ],
                    log,
                )
            finally:
                pwfile.unlink(missing_ok=True)
        log.touch()
        _own_by_postgres(log)
        # TCP on loopback only; no Unix socket (its default folder may not exist or be shared).
        options = f"-p {self.pg_port} -c listen_addresses={HOST} -c unix_socket_directories=''"
        _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "120",
                "-D",
                str(self.pgdata),
                "-l",
                str(log),
                "-o",
                options,
            ],
            log,
        )
        postmaster = (self.pgdata / "postmaster.pid").read_text().split()[0]
        self.pid_file("postgres").write_text(postmaster + "\n")
        self._create_databases()

    def _create_databases(self) -> None:
        import psycopg2

        connection = psycopg2.connect(libpq_url(self.postgres_url("postgres")), connect_timeout=10)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                for database in DATABASES:
                    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                    if cursor.fetchone() is None:
                        cursor.execute(f'CREATE DATABASE "{database}"')
        finally:
            connection.close()

    def _start_mlflow(self) -> None:
        _ensure_mlflow_auth_installed()
        artifacts = self.state / "mlflow" / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        password = _secret(self.mlflow_password_file, secrets.token_urlsafe(24))
        # Signs the UI's CSRF tokens; kept across restarts so that open pages stay valid.
        signing_key = _secret(self.state / "mlflow.secret_key", secrets.token_hex(32))
        # MLflow's basic-auth app: every request but /health and the static UI files needs a
        # login; users and permissions live in a SQLite file beside the artifacts (the admin,
        # created on the first start with MLFLOW_AUTH_ADMIN_PASSWORD, is the only user).
        users = self.state / "mlflow" / "basic_auth.db"
        config = (
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{users}\n"
            f"admin_username = {MLFLOW_USER}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        self.mlflow_auth_config.unlink(missing_ok=True)
        _secret(self.mlflow_auth_config, config)
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            HOST,
            "--port",
            str(self.mlflow_port),
            "--workers",
            "1",
        ]
        environment = {
            **os.environ,
            # No background job runner: nothing here uses MLflow jobs, one process less.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # The store's URL holds Postgres's password: the environment, not the command line.
            "MLFLOW_BACKEND_STORE_URI": self.postgres_url("mlflow"),
            "MLFLOW_AUTH_CONFIG_PATH": str(self.mlflow_auth_config),
            "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_USER,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": signing_key,
        }
        self._spawn("mlflow", command, environment)

    def _start_ray(self) -> None:
        temp = self._ray_temp_dir()
        _secret(self.ray_token, secrets.token_hex(32))
        # Ray's auxiliary ports default to fixed numbers (10001, 52365, ...) that another
        # cluster on the machine may hold; free ones are picked instead (only the GCS port,
        # RAY_ADDRESS, is for clients).
        extra = {
            "--ray-client-server-port": _free_port(),
            "--dashboard-agent-listen-port": _free_port(),
            "--dashboard-agent-grpc-port": _free_port(),
            "--metrics-export-port": _free_port(),
            "--runtime-env-agent-port": _free_port(),
            "--node-manager-port": _free_port(),
            "--object-manager-port": _free_port(),
        }
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--node-ip-address",
            HOST,
            "--port",
            str(self.ray_port),
            "--include-dashboard=false",
            "--dashboard-host",
            HOST,
            "--temp-dir",
            str(temp),
            "--disable-usage-stats",
            *[str(part) for option, port in extra.items() for part in (option, port)],
            "--block",
        ]
        environment = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.ray_token),
            # Ray's single-machine mode: the node's address stays 127.0.0.1, which its agents
            # (metrics export, dashboard agent, runtime-env agent, client server) then bind;
            # otherwise `ray start` swaps loopback for the machine's network address.
            RAY_LOOPBACK_VARIABLE: "0",
            # The raylet waits this long for its agents to report their ports (default 15 s);
            # on a loaded two-core machine their imports alone can take longer.
            "RAY_raylet_start_wait_time_s": "120",
        }
        environment.pop("RAY_ADDRESS", None)
        self._spawn("ray", command, environment)

    def _ray_temp_dir(self) -> Path:
        if len(str(self.ray_temp.resolve())) <= RAY_TEMP_MAX:
            self.ray_temp.mkdir(exist_ok=True)
            return self.ray_temp.resolve()
        digest = hashlib.sha1(str(self.state.resolve()).encode()).hexdigest()[:10]
        temp = Path("/tmp") / f"tvq-ray-{digest}"
        temp.mkdir(exist_ok=True)
        if not self.ray_temp.is_symlink():
            if self.ray_temp.exists():
                shutil.rmtree(self.ray_temp)
            self.ray_temp.symlink_to(temp)
        return temp

    def _spawn(self, name: str, command: list[str], environment: dict[str, str]) -> None:
        """Start a server in a session of its own, recording the session leader's pid."""
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=self.state,
                start_new_session=True,
            )
        self.pid_file(name).write_text(f"{process.pid}\n")

    # -- stop ----------------------------------------------------------------------------------
    def restart(self, name: str) -> None:
        """Stop one service and start it again on its recorded port (the others keep running)."""
        self.stop((name,))
        self.start()

    def stop(self, names: tuple[str, ...] = ("ray", "mlflow", "postgres")) -> None:
        for name in names:
            processes = self.running()[name]
            if not processes:
                print(f"{name}: not running")
                self.pid_file(name).unlink(missing_ok=True)
                continue
            if name == "postgres":
                self._stop_postgres()
            else:
                _stop_session(processes[0])
            left = [p for p in processes if _alive(p)] + self.running()[name]
            if left:
                raise ServiceError(f"{name}: processes {sorted(set(left))} are still alive")
            self.pid_file(name).unlink(missing_ok=True)
            print(f"{name}: stopped (pids {', '.join(map(str, processes))})")
        if not any(self.running().values()):
            # Nothing runs: the next start chooses its ports afresh.
            self.record_path.unlink(missing_ok=True)

    def _stop_postgres(self) -> None:
        leader = _read_pid(self.pid_file("postgres"))
        family = _family(leader) if leader else []
        with contextlib.suppress(ServiceError):  # then the pids decide
            _as_postgres(
                [
                    str(_postgres_bin() / "pg_ctl"),
                    "stop",
                    "-w",
                    "-m",
                    "fast",
                    "-D",
                    str(self.pgdata),
                ],
                self.pg_log,
            )
        _wait_gone(family, STOP_SECONDS)


def _secret(path: Path, value: str) -> str:
    """The secret kept in ``path``, created with ``value`` when missing: mode 0600 from the
    first byte (never readable by others, not even for a moment)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return _read_secret(path)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
    return value


def _read_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ServiceError(
            f"{path} is missing: `make services-stop`, then `make services` creates it"
        ) from None


def libpq_url(url: str) -> str:
    """The same URL as libpq (psycopg2.connect) reads it: without SQLAlchemy's driver name."""
    scheme, _, rest = url.partition("://")
    return f"{scheme.split('+')[0]}://{rest}"


# -- processes ---------------------------------------------------------------------------------
def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[3])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _family(leader: int) -> list[int]:
    """The live processes of a service: the leader, its descendants, and its session's members
    (a server's workers stay in its session even when their parent has exited)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                table[int(entry.name)] = stat
    if leader not in table and not any(s[2] == leader for s in table.values()):
        return []
    members = {leader} & set(table)
    members |= {pid for pid, (_, _, session) in table.items() if session == leader}
    grew = True
    while grew:
        children = {pid for pid, (_, parent, _) in table.items() if parent in members}
        grew = not children <= members
        members |= children
    return sorted(members, key=lambda pid: pid != leader)


def _wait_gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return not any(_alive(p) for p in pids)


def _stop_session(leader: int) -> None:
    """SIGTERM to every process of the service, then SIGKILL to whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        family = _family(leader)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        # Late children (a worker forked while we signalled) get the next round.
        if _wait_gone(family, STOP_SECONDS if sig == signal.SIGTERM else 5.0) and not _family(
            leader
        ):
            return


def _port_free(port: int) -> bool:
    """Nothing else listens on (or holds) ``HOST:port``: the servers could bind it.

    SO_REUSEADDR, as Postgres, MLflow's uvicorn and Ray set it on their own sockets: a port whose
    last connections linger in TIME_WAIT (a service stopped a moment ago) is free to them, and
    must be free here; a listener still refuses the bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# -- postgres as its own user -------------------------------------------------------------------
def _postgres_bin() -> Path:
    """The newest installed server's bin folder (Debian keeps them in /usr/lib/postgresql/N)."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    raise ServiceError(
        "postgres: no server installed (pg_ctl not found); `make services` installs Debian's "
        "`postgresql` package, or run `apt-get install postgresql`"
    )


def _ensure_postgres_installed() -> None:
    _postgres_bin()


def _ensure_mlflow_auth_installed() -> None:
    """MLflow's basic-auth app imports Flask-WTF (the ``mlflow[auth]`` extra), which the server
    would otherwise report only in its log."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise ServiceError(
            "mlflow: its basic-auth app needs Flask-WTF (the mlflow[auth] extra), which is not "
            "installed in this environment: `make setup` installs it from pyproject.toml"
        )


def _is_root() -> bool:
    return os.geteuid() == 0


def _reachable_by_others(path: Path) -> bool:
    """Every folder from / to ``path`` can be traversed by another user."""
    path = path.resolve()
    for folder in [path, *path.parents]:
        if folder.exists() and not folder.stat().st_mode & 0o001:
            return False
    return True


def _own_by_postgres(*paths: Path) -> None:
    if _is_root():
        for path in paths:
            shutil.chown(path, "postgres", "postgres")


def _as_postgres(command: list[str], log: Path) -> None:
    """Run a Postgres command, as the ``postgres`` user when we are root (Postgres refuses root)."""
    if _is_root():
        command = ["runuser", "-u", "postgres", "--", *command]
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd="/",  # the postgres user may not be allowed into our working directory
    )
    if result.returncode:
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        raise ServiceError(
            f"postgres: `{' '.join(command)}` failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-1500:]}\n{tail}"
        )


# -- command line ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tvq_resources.services", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["start", "stop", "status", "env"])
    # Not under $DAGSTER_HOME: once production mode's exports are loaded it names the production
    # instance, and the services would be looked for inside it.
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE)
    defaults = ", ".join(f"{name} {port}" for name, port in DEFAULT_PORTS.items())
    unset = f"(unset: the running services' own, else the last start's, else {defaults})"
    parser.add_argument(
        "--production-home",
        type=Path,
        help=f"the production DAGSTER_HOME (unset: as recorded, else {DEFAULT_PRODUCTION_HOME})",
    )
    parser.add_argument("--pg-port", type=int, help=unset)
    parser.add_argument("--mlflow-port", type=int, help=unset)
    parser.add_argument("--ray-port", type=int, help=unset)
    arguments = parser.parse_args(argv)
    try:
        services = Services.resolve(
            arguments.state.resolve(),
            ports={
                "postgres": arguments.pg_port,
                "mlflow": arguments.mlflow_port,
                "ray": arguments.ray_port,
            },
            production_home=(
                arguments.production_home.resolve() if arguments.production_home else None
            ),
        )
        if arguments.action == "start":
            started = time.perf_counter()
            services.start()
            print(f"services up in {time.perf_counter() - started:.1f}s; production mode:")
            print('  eval "$(make -s services-env)"   # then make flow-production, make dev, ...')
        elif arguments.action == "stop":
            services.stop()
        elif arguments.action == "status":
            running = services.running()
            recorded = Services.recorded(services.state) is not None
            if not recorded and not any(running.values()):
                print(f"no services recorded under {services.state}: `make services` starts them")
                return 3
            for name, processes in running.items():
                if processes:
                    answers = "answers" if services.answers(name) else "DOES NOT ANSWER"
                    print(
                        f"{name}: running on {HOST}:{services.port(name)}, {answers} "
                        f"(pids {', '.join(map(str, processes))})"
                    )
                else:
                    print(f"{name}: stopped" + (f" (port {services.port(name)})" * recorded))
            return 0 if all(running.values()) else 3
        else:
            for name, value in services.exports().items():
                print(f"export {name}={value}")
    except ServiceError as error:
        print(f"make services: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
