"""Where people open what a run produced: every link to the Dagster UI and the MLflow UI is built
here, for the terminal (``tvq``), MLflow's tags and Dagster's metadata alike.

- The Dagster UI: ``TVQ_UI_URL`` (the Makefile exports ``http://$(HOST):$(PORT)``, where
  ``make dev`` serves it), else http://127.0.0.1:3000.
- The MLflow UI: a tracking server (``MLFLOW_TRACKING_URI=http…``) serves its own UI, so links
  point at the server; a local store is shown by ``make mlflow-ui`` on ``TVQ_MLFLOW_UI_URL`` (the
  Makefile exports ``http://$(HOST):$(MLFLOW_PORT)``), else http://127.0.0.1:5000.

Secrets never reach a link or a message: :func:`redact` is the one way a URI (a tracking URI, a
Postgres URL, a Ray address, a UI address) is shown, printed or stored, and :func:`mlflow_ui`
gives links without the server's credentials.

Standard library only: the services' manager and the command line import it before Dagster.
"""

import os
import re
from collections.abc import Mapping

DAGSTER_UI_VARIABLE = "TVQ_UI_URL"
MLFLOW_UI_VARIABLE = "TVQ_MLFLOW_UI_URL"
LOOPBACK = "127.0.0.1"
# `make dev`'s and `make mlflow-ui`'s ports when the Makefile is not in between.
DAGSTER_UI_PORT = 3000
MLFLOW_UI_PORT = 5000


def dagster_ui(environ: Mapping[str, str] | None = None, configured: str | None = None) -> str:
    """The Dagster UI's base URL: ``configured`` (a resource's field), ``TVQ_UI_URL``, else
    ``make dev``'s default address."""
    env = os.environ if environ is None else environ
    chosen = configured or env.get(DAGSTER_UI_VARIABLE) or f"http://{LOOPBACK}:{DAGSTER_UI_PORT}"
    return without_credentials(chosen).rstrip("/")


def mlflow_ui(
    tracking_uri: str, environ: Mapping[str, str] | None = None, configured: str | None = None
) -> str:
    """The MLflow UI's base URL for runs tracked at ``tracking_uri``: ``configured`` (a resource's
    field), the tracking server itself, else ``TVQ_MLFLOW_UI_URL`` (``make mlflow-ui`` over the
    local store), else its default address."""
    env = os.environ if environ is None else environ
    if configured:
        return configured.rstrip("/")
    if is_server(tracking_uri):
        # A link is opened in a browser, which asks for the login itself.
        return without_credentials(tracking_uri).rstrip("/")
    chosen = env.get(MLFLOW_UI_VARIABLE) or f"http://{LOOPBACK}:{MLFLOW_UI_PORT}"
    return without_credentials(chosen).rstrip("/")


def is_server(tracking_uri: str) -> bool:
    """A tracking URI that names a server (which serves the UI too), not a database."""
    return tracking_uri.startswith(("http://", "https://"))


def dagster_run(base: str, run_id: str) -> str:
    return f"{base}/runs/{run_id}"


def mlflow_run(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_model_version(base: str, name: str, version: str) -> str:
    return f"{base}/#/models/{name}/versions/{version}"


# -- secrets kept out of what is shown ----------------------------------------------------------
# `scheme://user:password@` or `scheme://token@` (the user-info of a URL, RFC 3986; up to the
# authority's last `@`, so that an unquoted `@` in a password is hidden too).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/?#\s]*)@")
# Secret-bearing parameters: a URL's query (`?token=…`, `&password=…`) or a libpq key=value
# string (`password=…`).
_SECRET_PARAMETER = re.compile(
    r"(?i)(?P<key>\b(?:password|passwd|pwd|token|access_token|auth_token|secret|api_key|apikey)=)"
    r"(?P<value>[^&#;\s]+)"
)
HIDDEN = "***"


def redact(text: str) -> str:
    """``text`` (a URI, or a message that holds URIs) with every secret replaced by ``***``:
    a password in user-info keeps its user (``postgresql://tvq:***@host``), user-info without a
    password (a token) goes whole (``https://***@host``), and secret parameters keep their name
    (``?token=***``)."""

    def userinfo(match: re.Match) -> str:
        user, colon, _ = match["info"].partition(":")
        shown = f"{user}:{HIDDEN}" if colon else HIDDEN
        return f"{match['scheme']}{shown}@"

    text = _USERINFO.sub(userinfo, text)
    return _SECRET_PARAMETER.sub(lambda m: f"{m['key']}{HIDDEN}", text)


def credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``uri`` without its user-info, and the user and password it carried (None when absent),
    unquoted as a client would send them."""
    from urllib.parse import unquote

    match = _USERINFO.match(uri)
    if not match:
        return uri, None, None
    user, colon, password = match["info"].partition(":")
    bare = match["scheme"] + uri[match.end() :]
    return bare, unquote(user), unquote(password) if colon else None


def without_credentials(uri: str) -> str:
    """``uri`` without user-info and with secret parameters hidden: what a link may carry."""
    return _SECRET_PARAMETER.sub(lambda m: f"{m['key']}{HIDDEN}", credentials(uri)[0])
