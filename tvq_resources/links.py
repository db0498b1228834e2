"""Where people open what a run produced: every link to the Dagster UI and the MLflow UI is built
here, for the terminal (``tvq``), MLflow's tags and Dagster's metadata alike.

- The Dagster UI: ``TVQ_UI_URL`` (the Makefile exports ``http://$(HOST):$(PORT)``, where
  ``make dev`` serves it), else http://127.0.0.1:3000.
- The MLflow UI: a tracking server (``MLFLOW_TRACKING_URI=http…``) serves its own UI, so links
  point at the server; a local store is shown by ``make mlflow-ui`` on ``TVQ_MLFLOW_UI_URL`` (the
  Makefile exports ``http://$(HOST):$(MLFLOW_PORT)``), else http://127.0.0.1:5000.

Standard library only: the services' manager and the command line import it before Dagster.
"""

import os
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
    return chosen.rstrip("/")


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
        return tracking_uri.rstrip("/")
    chosen = env.get(MLFLOW_UI_VARIABLE) or f"http://{LOOPBACK}:{MLFLOW_UI_PORT}"
    return chosen.rstrip("/")


def is_server(tracking_uri: str) -> bool:
    """A tracking URI that names a server (which serves the UI too), not a database."""
    return tracking_uri.startswith(("http://", "https://"))


def dagster_run(base: str, run_id: str) -> str:
    return f"{base}/runs/{run_id}"


def mlflow_run(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_model_version(base: str, name: str, version: str) -> str:
    return f"{base}/#/models/{name}/versions/{version}"
