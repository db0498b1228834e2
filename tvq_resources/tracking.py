"""The MLflow tracker: one experiment per sleeve, find-or-create runs by identity tags, retries.

The resource knows MLflow, not the graph: it creates and finds runs by a set of identity tags, logs
params, metrics, tables (CSV), figures (PNG) and datasets, and sets terminal statuses. What a run
means (a Dagster run × partition, its stages) lives in ``tvq_assets.tracking``.

Where runs go, first match wins: the ``tracking_uri`` field, ``MLFLOW_TRACKING_URI``, else an
absolute SQLite store ``$DAGSTER_HOME/mlflow/mlflow.db`` with artifacts in
``$DAGSTER_HOME/mlflow/artifacts`` (never MLflow's own default, a ``mlflow.db`` relative to each
process's working directory). ``mlflow`` is imported inside methods: importing it costs seconds,
and the code location must load fast.
"""

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pandas as pd

from tvq_resources import library_output, links

T = TypeVar("T")
TERMINAL = ("FINISHED", "FAILED", "KILLED")
# MLflow's limits for one log_batch call and one param value.
BATCH, PARAM_LENGTH = 100, 6000
# MLflow 3's UI opens an experiment by this tag: without it, on the GenAI view (traces), where
# tvq's runs are one click away; "custom_model_development" opens the runs ("Machine learning").
EXPERIMENT_KIND, MACHINE_LEARNING = "mlflow.experimentKind", "custom_model_development"


def frame_digest(frame: pd.DataFrame) -> str:
    """A content hash of a frame: its values, index and column names (16 hex digits)."""
    rows = pd.util.hash_pandas_object(frame, index=True).to_numpy()
    names = "\x1f".join(map(str, [frame.index.name, *frame.columns]))
    return hashlib.sha256(rows.tobytes() + names.encode()).hexdigest()[:16]


def colspec(frame: pd.DataFrame) -> list[dict]:
    """The frame's schema as MLflow's column specs (the index first), from its dtypes."""

    def kind(dtype) -> str:
        if pd.api.types.is_bool_dtype(dtype):
            return "boolean"
        if pd.api.types.is_integer_dtype(dtype):
            return "long"
        if pd.api.types.is_float_dtype(dtype):
            return "double"
        if pd.api.types.is_datetime64_any_dtype(dtype):
            return "datetime"
        return "string"

    index = {"type": kind(frame.index.dtype), "name": str(frame.index.name or "index")}
    return [index] + [{"type": kind(t), "name": str(c)} for c, t in frame.dtypes.items()]


# Experiment ids by (tracking URI, name), found once per process; the names of the params on
# each run by (tracking URI, run id), read once per process and kept as logged (params are
# write-once: another process logging the same run logs the same values).
_EXPERIMENTS: dict[tuple[str, str], str] = {}
_PARAMS: dict[tuple[str, str], set[str]] = {}


class TrackingUnavailable(RuntimeError):
    """The tracking server could not be reached after every retry."""


@cache
def _client(uri: str):
    """A client of ``uri``. Credentials in the URI (``http://user:password@host``) are handed to
    MLflow as ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` and the client gets the bare URI, so that
    nothing MLflow prints, raises or stores carries them. MLflow's own messages go to the
    libraries' log file (:mod:`tvq_resources.library_output`): in every process that tracks (a
    ``tvq`` command, a run worker, the daemon's sensors), before MLflow is imported."""
    library_output.quiet_libraries()
    from mlflow import MlflowClient

    bare, user, password = links.credentials(uri)
    if user is not None and links.is_server(uri):
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password or ""
        uri = bare
    return MlflowClient(tracking_uri=uri)


class MlflowTracker(dg.ConfigurableResource):
    """MLflow tracking: where runs go, how they are found again, how hard to retry.

    ``tracking_uri`` / ``MLFLOW_TRACKING_URI``: a server (``http://host:5000``) or a database URI.
    ``ui_url``: where people open runs, ``dagster_ui_url``: the Dagster UI that MLflow runs link
    back to; unset, both follow :mod:`tvq_resources.links` (the tracking server itself, or
    ``TVQ_MLFLOW_UI_URL`` for the local store; ``TVQ_UI_URL``), as the terminal's links do.
    """

    tracking_uri: str | None = None
    ui_url: str | None = None
    dagster_ui_url: str | None = None
    attempts: int = 4
    backoff_seconds: float = 0.5

    # -- where ---------------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        configured = self.tracking_uri or dg.EnvVar("MLFLOW_TRACKING_URI").get_value()
        if configured:
            return configured
        return f"sqlite:///{self.local_root / 'mlflow.db'}"

    @property
    def shown_uri(self) -> str:
        """:attr:`uri` as printed and stored: without its secrets."""
        return links.redact(self.uri)

    @property
    def local_root(self) -> Path:
        home = dg.EnvVar("DAGSTER_HOME").get_value()
        if not home:
            raise RuntimeError(
                "MLflow tracking: set MLFLOW_TRACKING_URI or DAGSTER_HOME (the local store is "
                "$DAGSTER_HOME/mlflow; the Makefile exports DAGSTER_HOME)"
            )
        root = Path(home).resolve() / "mlflow"
        root.mkdir(parents=True, exist_ok=True)
        return root

    @property
    def artifact_root(self) -> Path:
        """Artifacts of a local store sit beside its database (a server decides for itself)."""
        if self.uri.startswith("sqlite:///"):
            return Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts"
        return self.local_root / "artifacts"

    @property
    def is_server(self) -> bool:
        return links.is_server(self.uri)

    @property
    def browser_url(self) -> str:
        return links.mlflow_ui(self.uri, configured=self.ui_url)

    @property
    def dagster_url(self) -> str:
        return links.dagster_ui(configured=self.dagster_ui_url)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return links.mlflow_run(self.browser_url, experiment_id, run_id)

    def dagster_run_url(self, dagster_run_id: str) -> str:
        return links.dagster_run(self.dagster_url, dagster_run_id)

    # -- how hard to try -----------------------------------------------------------------------
    def call(self, what: str, action: Callable[[], T]) -> T:
        """Run one MLflow call, retrying transient failures with doubling backoff.

        MLflow's own HTTP retries (seven, minutes of backoff) are capped so that these attempts
        decide how long a step waits for a server that is down.
        """
        from mlflow.exceptions import MlflowException

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        delay, last = self.backoff_seconds, None
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except MlflowException as error:
                # A rejected request (bad param, missing run) will not succeed on retry.
                if getattr(error, "error_code", "") in (
                    "INVALID_PARAMETER_VALUE",
                    "RESOURCE_DOES_NOT_EXIST",
                    "RESOURCE_ALREADY_EXISTS",
                ):
                    raise
                last = error
            except (OSError, ConnectionError) as error:
                last = error
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2
        raise TrackingUnavailable(
            f"MLflow tracking at {self.shown_uri} unreachable while trying to {what} "
            f"({self.attempts} attempts): {type(last).__name__}: {links.redact(str(last))[:300]}"
        ) from last

    @property
    def client(self):
        return _client(self.uri)

    @property
    def client_uri(self) -> str:
        """The URI MLflow's own functions are given: a server's without its credentials (the
        client has handed them to MLflow's environment)."""
        _client(self.uri)
        return links.credentials(self.uri)[0] if self.is_server else self.uri

    # -- experiments and runs ------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created when missing; looked up once per process (an
        experiment is never renamed or deleted by tvq)."""
        key = (self.uri, name)
        if key not in _EXPERIMENTS:
            _EXPERIMENTS[key] = self._find_or_create_experiment(name)
        return _EXPERIMENTS[key]

    def _find_or_create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.call(
            f"find experiment {name!r}", lambda: self.client.get_experiment_by_name(name)
        )
        if found is not None:
            if EXPERIMENT_KIND not in found.tags:  # created before tvq set it, or by hand
                self.call(
                    f"tag experiment {name!r}",
                    lambda: self.client.set_experiment_tag(
                        found.experiment_id, EXPERIMENT_KIND, MACHINE_LEARNING
                    ),
                )
            return found.experiment_id
        location = None if self.is_server else (self.artifact_root / name).as_uri()
        try:
            return self.call(
                f"create experiment {name!r}",
                lambda: self.client.create_experiment(
                    name, artifact_location=location, tags={EXPERIMENT_KIND: MACHINE_LEARNING}
                ),
            )
        except MlflowException:  # created meanwhile by another process
            return self.client.get_experiment_by_name(name).experiment_id

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise find-or-create among the processes of this machine (the multiprocess
        executor); across machines :meth:`find_or_create_run` still converges by deduplication."""
        digest = hashlib.sha1(self.uri.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"tvq-mlflow-{digest}.lock"
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def search(self, experiment_id: str, identity: Mapping[str, str]) -> list:
        """Runs (any status, not deleted) carrying every identity tag, oldest first."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in identity.items())
        runs = self.call(
            "search runs",
            lambda: self.client.search_runs([experiment_id], filter_string=query, max_results=1000),
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def find_or_create_run(
        self,
        experiment_id: str,
        *,
        identity: Mapping[str, str],
        name: str,
        tags: Mapping[str, str] | None = None,
    ):
        """The one run with these identity tags: found, or created; never two.

        Under a machine-wide lock: search, create if missing, then search again and keep the
        oldest should another machine have created one at the same moment (the others are
        deleted before anything is logged to them).
        """
        with self._lock():
            runs = self.search(experiment_id, identity)
            if not runs:
                created = self.call(
                    f"create run {name!r}",
                    lambda: self.client.create_run(
                        experiment_id, tags={**identity, **(tags or {})}, run_name=name
                    ),
                )
                runs = self.search(experiment_id, identity) or [created]
            keep, *duplicates = runs
            for duplicate in duplicates:
                self.call(
                    "delete a duplicate run",
                    lambda d=duplicate: self.client.delete_run(d.info.run_id),
                )
        return keep

    def reopen(self, run) -> None:
        """A terminated run that receives more work (a re-execution) is RUNNING again."""
        if run.info.status != "RUNNING":
            self.call(
                "reopen run",
                lambda: self.client.update_run(run.info.run_id, status="RUNNING"),
            )

    def finish(self, run_id: str, status: str) -> None:
        if status not in TERMINAL:
            raise ValueError(f"terminal status must be one of {TERMINAL}, got {status!r}")
        self.call(f"mark run {status}", lambda: self.client.set_terminated(run_id, status=status))

    def get_run(self, run_id: str):
        return self.call("read run", lambda: self.client.get_run(run_id))

    # -- logging -------------------------------------------------------------------------------
    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        tables: Mapping[str, pd.DataFrame] | None = None,
        figures: Mapping[str, bytes] | None = None,
        texts: Mapping[str, str] | None = None,
    ) -> None:
        """Log to one run. Params already on the run are skipped (MLflow params are write-once:
        a re-execution logs the same values again); non-finite metrics are left out."""
        from mlflow.entities import Metric, Param, RunTag

        existing = self._params_on(run_id) if params else set()
        now = int(time.time() * 1000)
        param_rows = [
            Param(str(k), str(v)[:PARAM_LENGTH])
            for k, v in (params or {}).items()
            if str(k) not in existing
        ]
        metric_rows = [
            Metric(str(k), float(v), now, 0)
            for k, v in (metrics or {}).items()
            if v is not None and pd.notna(v) and abs(float(v)) != float("inf")
        ]
        tag_rows = [RunTag(str(k), str(v)[:PARAM_LENGTH]) for k, v in (tags or {}).items()]
        for start in range(0, max(len(param_rows), len(metric_rows), len(tag_rows)), BATCH):
            batch = {
                "params": param_rows[start : start + BATCH],
                "metrics": metric_rows[start : start + BATCH],
                "tags": tag_rows[start : start + BATCH],
            }
            self.call("log params and metrics", lambda b=batch: self.client.log_batch(run_id, **b))
        existing.update(p.key for p in param_rows)
        files = {
            **{path: frame.to_csv().encode() for path, frame in (tables or {}).items()},
            **{path: text.encode() for path, text in (texts or {}).items()},
            **dict(figures or {}),
        }
        if files:
            self._log_files(run_id, files)

    def _params_on(self, run_id: str) -> set[str]:
        """The names of the params on a run: read once per process, then kept as logged."""
        key = (self.uri, run_id)
        if key not in _PARAMS:
            _PARAMS[key] = set(self.get_run(run_id).data.params)
        return _PARAMS[key]

    def _log_files(self, run_id: str, files: Mapping[str, bytes]) -> None:
        """Artifacts at their paths in the run, uploaded in one call (one request to a server)."""
        with tempfile.TemporaryDirectory() as scratch:
            for path, data in files.items():
                local = Path(scratch, path)
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(data)
            shown = ", ".join(sorted(files))
            self.call(f"log {shown}", lambda: self.client.log_artifacts(run_id, scratch))

    def log_dataset(
        self, run_id: str, frame: pd.DataFrame, *, name: str, source: str, context: str
    ) -> str:
        """Log a frame as a dataset input of the run; returns its digest (content hash).

        The entity is built here, not by ``mlflow.data.from_pandas``: that infers a schema and a
        digest column by column (about 2 s for a 500 × 1000 returns window); this hashes the
        whole frame at once and writes the schema from the dtypes."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        digest = frame_digest(frame)
        entity = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source}),
            schema=json.dumps({"mlflow_colspec": colspec(frame)}),
            profile=json.dumps({"num_rows": len(frame), "num_elements": int(frame.size)}),
        )
        entry = DatasetInput(
            dataset=entity, tags=[InputTag(key="mlflow.data.context", value=context)]
        )
        self.call("log dataset", lambda: self.client.log_inputs(run_id, datasets=[entry]))
        return digest

    def read_text(self, run_id: str, path: str) -> str:
        """An artifact's text (to verify what was logged)."""
        from mlflow.artifacts import download_artifacts

        with tempfile.TemporaryDirectory() as scratch:
            local = self.call(
                f"download {path}",
                lambda: download_artifacts(
                    run_id=run_id,
                    artifact_path=path,
                    dst_path=scratch,
                    tracking_uri=self.client_uri,
                ),
            )
            return Path(local).read_text()

    # -- model registry ------------------------------------------------------------------------
    def log_directory(self, run_id: str, local: Path, artifact_path: str) -> str:
        """Log a folder under ``artifact_path`` of a run; returns its ``runs:/`` URI."""
        self.call(
            f"log {artifact_path}",
            lambda: self.client.log_artifacts(run_id, str(local), artifact_path),
        )
        return f"runs:/{run_id}/{artifact_path}"

    def ensure_registered_model(self, name: str, description: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.call(
                f"create registered model {name!r}",
                lambda: self.client.create_registered_model(name, description=description),
            )
        except MlflowException as error:
            if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise

    def model_versions(self, name: str) -> list:
        """Every version of a registered model, oldest first."""
        found = self.call(
            f"list versions of {name!r}",
            lambda: self.client.search_model_versions(f"name = '{name}'"),
        )
        return sorted(found, key=lambda v: int(v.version))

    def create_model_version(self, name: str, source: str, run_id: str, tags: Mapping[str, str]):
        return self.call(
            f"register a version of {name!r}",
            lambda: self.client.create_model_version(name, source, run_id=run_id, tags=dict(tags)),
        )

    def alias(self, name: str, alias: str):
        """The version an alias points at, or None (no such alias, or no such model)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.call(
                f"read alias {name}@{alias}",
                lambda: self.client.get_model_version_by_alias(name, alias),
            )
        except MlflowException as error:
            if getattr(error, "error_code", "") in (
                "RESOURCE_DOES_NOT_EXIST",
                "INVALID_PARAMETER_VALUE",
            ):
                return None
            raise

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call(
            f"move {name}@{alias} to version {version}",
            lambda: self.client.set_registered_model_alias(name, alias, version),
        )

    def tag_version(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.call(
                f"tag {name} v{version}",
                lambda k=key, v=value: self.client.set_model_version_tag(
                    name, version, k, str(v)[:PARAM_LENGTH]
                ),
            )

    def registered_model_tags(self, name: str) -> dict[str, str]:
        model = self.call(f"read {name!r}", lambda: self.client.get_registered_model(name))
        return dict(model.tags)

    def tag_registered_model(self, name: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.call(
                f"tag {name}",
                lambda k=key, v=value: self.client.set_registered_model_tag(name, k, str(v)),
            )

    def model_version_url(self, name: str, version: str) -> str:
        return links.mlflow_model_version(self.browser_url, name, version)

    @contextmanager
    def registry_lock(self) -> Iterator[None]:
        """Find-or-register and alias moves of one machine's processes, one at a time."""
        with self._lock():
            yield
