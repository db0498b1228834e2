"""The orchestration mode, decided in one place: ``TV_ORCH_MODE`` = ``local`` | ``production``.

``local`` (the default) needs nothing but Python: SQLite Dagster storage under ``DAGSTER_HOME``,
an MLflow SQLite store, no Ray cluster. ``production`` runs on three real services: a Dagster
instance whose storage is Postgres (``DAGSTER_HOME/dagster.yaml``), an MLflow tracking server
(``MLFLOW_TRACKING_URI``) and a Ray cluster (``RAY_ADDRESS``). ``make services`` starts all three
on loopback and ``make services-env`` prints the exports that point here at them; those exports
carry ``TVQ_SERVICES_DIR``, and the check compares them with what that folder records as running
(a shell that kept the exports of services since restarted on other ports is told so, not sent to
whatever listens on the old ones).

:func:`orchestration_mode` only reads the variable (cheap: the executor is chosen from it every
time the code location loads, in every step process). :func:`check_production` is what an entry
point calls before starting production work: it checks that each service is configured and
answers, and names the variable and what to start when one does not.
"""

import enum
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tvq_resources import links, services

VARIABLE = "TV_ORCH_MODE"
START_HINT = 'start them with `make services`, then `eval "$(make -s services-env)"`'
# How long one reachability probe may take: a service on loopback answers in milliseconds.
PROBE_SECONDS = 3.0


class Mode(enum.Enum):
    LOCAL = "local"
    PRODUCTION = "production"

    @property
    def is_production(self) -> bool:
        return self is Mode.PRODUCTION


class ModeError(ValueError):
    """``TV_ORCH_MODE`` holds a value that is not a mode."""


class ProductionUnavailable(RuntimeError):
    """Production mode was asked for, but a service is not configured or does not answer."""


def orchestration_mode(environ: dict[str, str] | None = None) -> Mode:
    """The mode named by ``TV_ORCH_MODE`` (``local`` when unset or empty)."""
    value = (os.environ if environ is None else environ).get(VARIABLE, "").strip() or "local"
    try:
        return Mode(value.lower())
    except ValueError:
        choices = " or ".join(repr(m.value) for m in Mode)
        raise ModeError(f"{VARIABLE}={value!r}: expected {choices}") from None


@dataclass(frozen=True)
class ProductionServices:
    """Where production mode's services are, once checked."""

    dagster_home: Path
    postgres_url: str
    mlflow_tracking_uri: str
    ray_address: str


def check_production(environ: dict[str, str] | None = None) -> ProductionServices:
    """Check every service production mode needs and return where they are.

    Raises :class:`ProductionUnavailable` listing every problem at once (the variable, what it
    holds, what is wrong, what to start), so one attempt shows the whole fix.
    """
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    home = env.get("DAGSTER_HOME", "")
    postgres_url = ""
    if not home:
        problems.append(
            "DAGSTER_HOME is not set: point it at the production instance "
            "(dagster_home/production, whose storage is Postgres)"
        )
    else:
        try:
            postgres_url = _postgres_url(Path(home), env)
        except ProductionUnavailable as error:
            problems.append(str(error))
        else:
            problem = _postgres_driver(postgres_url) or _postgres_answers(postgres_url)
            if problem:
                problems.append(f"Postgres of DAGSTER_HOME={home} does not answer: {problem}")
    tracking = env.get("MLFLOW_TRACKING_URI", "")
    if not tracking:
        problems.append("MLFLOW_TRACKING_URI is not set: production tracks runs on a server")
    elif tracking.startswith(("http://", "https://")):
        problem = _mlflow_answers(tracking)
        if problem:
            problems.append(
                f"MLFLOW_TRACKING_URI={links.redact(tracking)}: the server does not answer: "
                f"{problem}"
            )
        else:
            problem = _mlflow_accepts(tracking, env)
            if problem:
                problems.append(f"MLFLOW_TRACKING_URI={links.redact(tracking)}: {problem}")
    ray_address = env.get("RAY_ADDRESS", "")
    if not ray_address:
        problems.append("RAY_ADDRESS is not set: production fans out on a Ray cluster")
    else:
        problem = _ray_answers(ray_address)
        if problem:
            problems.append(f"RAY_ADDRESS={links.redact(ray_address)}: {problem}")
    problems += _stale_exports(env)
    if problems:
        raise ProductionUnavailable(
            f"{VARIABLE}=production needs its services; "
            + "; ".join(problems)
            + f". To run them here, {START_HINT}."
        )
    return ProductionServices(Path(home), postgres_url, tracking, ray_address)


def _stale_exports(env: dict[str, str]) -> list[str]:
    """Exports of ``make services-env`` (they name their state folder) that no longer match the
    services recorded there: stopped since, or restarted on other ports."""
    folder = env.get(services.STATE_VARIABLE, "")
    if not folder:
        return []  # services of one's own: nothing recorded to compare with
    try:
        recorded = services.Services.recorded(Path(folder))
        expected = None if recorded is None else recorded.environment()
    except (services.ServiceError, OSError) as error:
        return [f"{services.STATE_VARIABLE}={folder}: {error}"]
    if expected is None:
        return [
            f"{services.STATE_VARIABLE}={folder}: no services are recorded there (stopped "
            "since these exports were made)"
        ]
    stale = [
        f"{name}={_shown(env.get(name, ''), name)} (recorded: {_shown(value, name)})"
        for name, value in expected.items()
        if name not in (VARIABLE, services.STATE_VARIABLE) and env.get(name, "") != value
    ]
    if not stale:
        return []
    return [
        f"these exports do not match the services recorded in {folder}: {', '.join(stale)}; "
        'load theirs again with eval "$(make -s services-env)" (or unset '
        f"{services.STATE_VARIABLE} to use services of your own)"
    ]


def _shown(value: str, name: str) -> str:
    """A value for an error message: its secrets left out (a password variable's wholly)."""
    return links.HIDDEN if "PASSWORD" in name else links.redact(value)


def instance_storage(home: Path) -> dict[str, Any]:
    """The ``storage`` section of ``home/dagster.yaml`` (empty: Dagster's default, SQLite)."""
    import yaml

    path = home / "dagster.yaml"
    if not path.is_file():
        raise ProductionUnavailable(f"DAGSTER_HOME={home}: no dagster.yaml there")
    document = yaml.safe_load(path.read_text()) or {}
    return document.get("storage") or {}


def _postgres_url(home: Path, env: dict[str, str]) -> str:
    """The connection URL of the instance's Postgres storage, its ``env:`` values resolved."""
    storage = instance_storage(home)
    if "postgres" not in storage:
        raise ProductionUnavailable(
            f"DAGSTER_HOME={home}: its dagster.yaml keeps runs in "
            f"{', '.join(storage) or 'SQLite (the default)'}, not Postgres; use the production "
            "instance dagster_home/production"
        )
    config = _resolve(storage["postgres"], env, home)
    if config.get("postgres_url"):
        return config["postgres_url"]
    # The fields of dagster-postgres's `postgres_db` (its own builder imports all of Dagster).
    db = config.get("postgres_db") or {}
    credentials = quote(str(db.get("username", "")), safe="")
    if db.get("password"):
        credentials += ":" + quote(str(db["password"]), safe="")
    host = f"{db.get('hostname', '')}:{db.get('port', 5432)}"
    return f"{db.get('scheme', 'postgresql')}://{credentials}@{host}/{db.get('db_name', '')}"


def _resolve(value: Any, env: dict[str, str], home: Path) -> Any:
    """Replace ``{env: NAME}`` as Dagster does when it loads the instance."""
    if isinstance(value, dict) and set(value) == {"env"}:
        name = value["env"]
        if not env.get(name):
            raise ProductionUnavailable(
                f"{name} is not set (DAGSTER_HOME={home}/dagster.yaml reads its Postgres "
                "connection from it)"
            )
        return env[name]
    if isinstance(value, dict):
        return {k: _resolve(v, env, home) for k, v in value.items()}
    return value


def _postgres_driver(url: str) -> str | None:
    """dagster-postgres connects through SQLAlchemy, whose default Postgres driver (psycopg 3) is
    not installed (and cannot take its ``NOTIFY``): the URL must name psycopg2."""
    scheme = url.partition("://")[0]
    if scheme in ("postgresql+psycopg2", "postgres+psycopg2"):
        return None
    return f"the URL must start with postgresql+psycopg2:// (the driver installed), not {scheme}://"


def _postgres_answers(url: str) -> str | None:
    import psycopg2

    scheme, _, rest = url.partition("://")
    try:
        psycopg2.connect(
            f"{scheme.split('+')[0]}://{rest}", connect_timeout=int(PROBE_SECONDS)
        ).close()
    except psycopg2.Error as error:
        return str(error).strip().splitlines()[0]
    return None


def _mlflow_answers(uri: str) -> str | None:
    bare = links.credentials(uri)[0]  # urllib takes no user-info; /health needs no login
    try:
        with urllib.request.urlopen(f"{bare.rstrip('/')}/health", timeout=PROBE_SECONDS) as reply:
            return None if reply.status == 200 else f"HTTP {reply.status} from /health"
    except (urllib.error.URLError, OSError) as error:
        return str(getattr(error, "reason", error))


def _mlflow_accepts(uri: str, env: dict[str, str]) -> str | None:
    """A server with authentication (``make services``' runs MLflow's basic-auth app) refuses
    requests without credentials: the check asks it for one experiment as the runs will, with
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` (or the URI's user-info)."""
    import base64

    bare, user, password = links.credentials(uri)
    user = env.get("MLFLOW_TRACKING_USERNAME") or user
    password = env.get("MLFLOW_TRACKING_PASSWORD") or password
    request = urllib.request.Request(
        f"{bare.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    )
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_SECONDS):
            return None
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            given = "were refused" if user else "are not set"
            return (
                f"the server requires a login (HTTP {error.code}) and MLFLOW_TRACKING_USERNAME/"
                f"MLFLOW_TRACKING_PASSWORD {given}: export those of `make -s services-env` "
                "(the services' admin login is in their state folder, mlflow.password)"
            )
        return None  # answers; anything else is the runs' own to report
    except (urllib.error.URLError, OSError) as error:
        return f"the server does not answer: {getattr(error, 'reason', error)}"


def _ray_answers(address: str) -> str | None:
    """A TCP probe of the cluster's GCS port (``host:port`` or ``ray://host:port``)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return "expected host:port of the cluster's head (e.g. 127.0.0.1:6379)"
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
    except OSError as error:
        return f"no Ray head answers there ({error.strerror or error})"
    return None


def main() -> int:
    """``python -m tvq_resources.mode``: print the mode, and for production check the services."""
    import sys

    try:
        mode = orchestration_mode()
        if mode.is_production:
            services = check_production()
            print(
                f"production: instance {services.dagster_home}, MLflow "
                f"{links.redact(services.mlflow_tracking_uri)}, Ray "
                f"{links.redact(services.ray_address)}"
            )
        else:
            print("local: in-process, SQLite storage and MLflow store under DAGSTER_HOME")
    except (ModeError, ProductionUnavailable) as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
