"""The champion policy in MLflow's model registry: ``tvq-<sleeve>``, aliases ``champion`` and
``challenger``, one promotion decision per run partition.

When a run's ``portfolio`` is stored, :func:`promote` reads the run's tournament verdict (the
promotion rule of ``backtest.champion_verdict``: PSR against the incumbent, a drawdown bound and a
deflated-Sharpe bound) and mirrors it in the registry:

- the champion and the challenger are each a version of ``tvq-<sleeve>``, registered on first use
  as the models-from-code pyfunc of ``tvq_assets/tracking/policy_model.py`` (no pickled
  objects). A version is one policy: the ``scorer/profile``, every parameter of the composed
  policy (their digest) and the code version. The same policy on a later day reuses its
  version, so a new version means a new policy; a first run registers its champion as version 1;
- the aliases move to the verdict's champion and challenger, and only for the newest decision: a
  backfill of older dates records its decision but leaves the aliases where the newest run put
  them (the registered model's ``tvq.decided_as_of`` tag);
- the decision (policies compared, their Sharpe and drawdowns, PSR, DSR, the verdict) is recorded
  on the partition's MLflow run (``tvq.promotion.*`` tags and ``promotion/decision.json``) and as a
  ``decision.<date>`` tag on the versions it names.

A version cannot be swapped: at registration the SHA-256 digest of every file of its model
(the code MLflow executes, ``MLmodel`` with the configuration, the environment files) is recorded
as version tags in the registry's database. :func:`load_policy` downloads the version, compares
every file with those digests and refuses any difference naming the version, so a code artifact
replaced in the artifact store is never executed:
``load_policy("crypto").predict(policy.model_input(window))`` returns the weights of that run's
``portfolio``. (A bare ``mlflow.pyfunc.load_model("models:/...")`` checks nothing.)
"""

import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import dagster as dg
import pandas as pd

from tvq_assets.partitions import catalog, split_run_key
from tvq_assets.quant import policy
from tvq_assets.settings import policy_settings
from tvq_assets.tracking.identity import Identity, Tracked, code_version
from tvq_resources.lake import ParquetLake
from tvq_resources.tracking import MlflowTracker

# The pyfunc's code. MLflow copies the file into the model under its own name and loads that copy
# by path (``model_code_path``'s base name), so where this file lives does not matter to versions
# already registered; its name does (the ``tvq.code_sha256`` tag is of ``policy_model.py``).
MODEL_FILE = Path(__file__).with_name("policy_model.py")
REGISTERED_STAGE = "portfolio"  # the decision the registered model reproduces
CHAMPION, CHALLENGER = "champion", "challenger"
DECIDED_AS_OF = "tvq.decided_as_of"
# The numbers of the verdict a decision records (those the tournament computed).
COMPARED = (
    "challenger_sharpe",
    "challenger_max_drawdown",
    "incumbent_sharpe",
    "incumbent_max_drawdown",
    "psr",
    "confidence",
    "drawdown_tolerance",
    "deflated_sharpe",
    "min_deflated_sharpe",
    "trials",
    # The as-promoted record (quant.promoted): what the selection process itself earned.
    "as_promoted_sharpe",
    "as_promoted_max_drawdown",
    "as_promoted_psr",
    "as_promoted_deflated_sharpe",
    "as_promoted_days",
)
# Version tags of the model's file digests (recorded at registration, checked by `load_policy`):
# the code MLflow executes, the MLmodel file with the configuration, and every file by path.
CODE_DIGEST, CONFIG_DIGEST, FILE_DIGESTS = (
    "tvq.code_sha256",
    "tvq.config_sha256",
    "tvq.files_sha256",
)
CONFIG_FILE = "MLmodel"
# Written by MLflow into a folder downloaded from a `models:/` URI: not part of what was logged.
DOWNLOAD_ONLY = frozenset({"registered_model_meta"})
# What the pyfunc needs to run; recorded so a loaded model's environment can be rebuilt.
REQUIREMENTS = ("mlflow", "pandas", "numpy", "scipy", "cvxpy", "pyarrow")


def model_name(sleeve: str) -> str:
    return f"tvq-{sleeve}"


def settings_digest(config: dict) -> str:
    """The identity of a policy's parameters (every one of them, canonical JSON)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Decision:
    """One run partition's promotion decision, as recorded on its run and on the versions."""

    partition: str
    as_of: str
    champion: str
    challenger: str
    incumbent: str
    replaced: bool
    verdict: str
    numbers: dict[str, float]
    champion_version: str
    challenger_version: str
    aliases_moved: bool

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    def tags(self) -> dict[str, str]:
        """Tags of the partition's MLflow run (numbers become metrics)."""
        return {
            "tvq.promotion.verdict": self.verdict,
            "tvq.promotion.champion_version": self.champion_version,
            "tvq.promotion.challenger_version": self.challenger_version,
            "tvq.promotion.aliases_moved": str(self.aliases_moved),
        }


def verdict_text(row: pd.Series) -> str:
    """The decision in words, from the stored verdict row of the ``backtest`` asset."""
    champion, challenger = str(row["champion"]), str(row["challenger"])
    incumbent = str(row.get("incumbent", "") or "")
    if not incumbent:
        below = float(row.get("deflated_sharpe_ok", 1.0)) == 0.0
        # Said plainly, not nested in the summary's parentheses: a first champion is promoted
        # whatever its deflated Sharpe, since there is no incumbent to keep.
        return "first champion" + (
            "; its deflated Sharpe is below the bound, promoted as there is no incumbent"
            if below
            else ""
        )
    if bool(row["replaced"]):
        if pd.isna(row.get("incumbent_sharpe", math.nan)):
            return f"promoted: {champion} (the incumbent {incumbent} was not in this tournament)"
        return f"promoted: {champion} replaces {incumbent}"
    if challenger == champion:
        return "kept: the incumbent is the best candidate"
    reasons = []
    if not float(row.get("psr", math.nan)) >= float(row["confidence"]):
        reasons.append(f"PSR {float(row.get('psr', math.nan)):.3f} < {float(row['confidence']):g}")
    if not float(row["challenger_max_drawdown"]) >= float(row["drawdown_tolerance"]) * float(
        row["incumbent_max_drawdown"]
    ):
        reasons.append("drawdown deeper than the tolerance allows")
    if float(row.get("deflated_sharpe_ok", 1.0)) == 0.0:
        reasons.append(
            f"deflated Sharpe {float(row['deflated_sharpe']):.3f} < "
            f"{float(row['min_deflated_sharpe']):g}"
        )
    return "kept: " + ("; ".join(reasons) or "the rule kept the incumbent")


class UnverifiedModelError(RuntimeError):
    """A registered version whose files differ from the digests recorded when it was registered,
    or that was registered before digests were recorded."""


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by its relative POSIX path (MLflow's own download
    marker left out)."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() not in DOWNLOAD_ONLY
    }


def digest_tags(folder: Path) -> dict[str, str]:
    """The version tags that pin a saved model's files (see :func:`verify`)."""
    digests = file_digests(folder)
    return {
        CODE_DIGEST: digests[MODEL_FILE.name],
        CONFIG_DIGEST: digests[CONFIG_FILE],
        FILE_DIGESTS: json.dumps(digests, sort_keys=True),
    }


def verify(folder: Path, name: str, version: str, tags: dict[str, str]) -> None:
    """Refuse the model in ``folder`` (version ``version`` of ``name``) unless its files are
    exactly those whose digests the registry recorded at registration."""
    label = f"model {name} version {version}"
    recorded = tags.get(FILE_DIGESTS)
    if not recorded:
        raise UnverifiedModelError(
            f"{label} was registered without file digests, so its code cannot be verified and "
            "is not loaded: re-run its run partition to register the policy again as a new, "
            "verifiable version"
        )
    expected = json.loads(recorded)
    pinned = {MODEL_FILE.name: tags.get(CODE_DIGEST), CONFIG_FILE: tags.get(CONFIG_DIGEST)}
    found = file_digests(folder)
    problems = [
        f"{path}: {'missing' if path not in found else 'changed'} (sha256 {found.get(path, '-')}"
        f", registered {digest})"
        for path, digest in sorted(expected.items())
        if found.get(path) != digest
    ]
    problems += [
        f"{path}: recorded digest {expected.get(path)} differs from the version tag {digest}"
        for path, digest in pinned.items()
        if expected.get(path) != digest
    ]
    problems += [
        f"{path}: not part of the registered model" for path in found if path not in expected
    ]
    if problems:
        raise UnverifiedModelError(
            f"{label}: its artifact files differ from those registered (the artifact store was "
            f"changed after registration); not loaded: {'; '.join(problems)}"
        )


def load_policy(
    sleeve: str,
    *,
    alias: str | None = CHAMPION,
    version: str | None = None,
    tracking_uri: str | None = None,
):
    """The registered policy of ``sleeve`` (by ``alias``, or by ``version`` when given) as an
    MLflow pyfunc, after its files have been verified against the digests its registration
    recorded (:class:`UnverifiedModelError` otherwise). ``tracking_uri``: default as
    ``MlflowTracker`` (``MLFLOW_TRACKING_URI``, else ``$DAGSTER_HOME/mlflow``)."""
    import mlflow.artifacts
    import mlflow.pyfunc

    tracker = MlflowTracker(tracking_uri=tracking_uri)
    name = model_name(sleeve)
    if version is not None:
        found = tracker.call(
            f"read version {version} of {name}",
            lambda: tracker.client.get_model_version(name, str(version)),
        )
    else:
        found = tracker.alias(name, str(alias))
        if found is None:
            raise LookupError(f"{name} has no version with alias {alias!r} in {tracker.uri}")
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{found.version}",
                dst_path=scratch,
                tracking_uri=tracker.uri,
            )
        )
        # The very files checked are the ones loaded: no second download to swap in between.
        verify(local, name, str(found.version), dict(found.tags))
        return mlflow.pyfunc.load_model(str(local))


def _find(versions: list, policy_name: str, digest: str, code: str):
    for version in versions:
        tags = version.tags
        if (
            FILE_DIGESTS in tags  # a version without digests is never reused: it cannot load
            and tags.get("tvq.policy") == policy_name
            and tags.get("tvq.settings_digest") == digest
            and tags.get("tvq.code_version") == code
        ):
            return version
    return None


def _register(
    tracker: MlflowTracker,
    name: str,
    run_id: str,
    policy_name: str,
    config: dict,
    tags: dict[str, str],
):
    """Save the policy as a models-from-code pyfunc, log it on the run, register a version."""
    import mlflow.pyfunc

    version_tag, commit = code_version()
    requirements = [f"{p}=={_installed(p)}" for p in REQUIREMENTS if _installed(p)]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        mlflow.pyfunc.save_model(
            str(folder),
            python_model=str(MODEL_FILE),
            model_config={
                "champion": policy_name,
                "settings": config,
                "code_version": version_tag,
                "git_commit": commit,
            },
            pip_requirements=requirements,
        )
        pinned = digest_tags(folder)
        source = tracker.log_directory(run_id, folder, f"registry/{policy_name.replace('/', '__')}")
    return tracker.create_model_version(name, source, run_id, {**tags, **pinned})


def _installed(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def promote(
    tracker: MlflowTracker,
    lake: ParquetLake,
    partition: str,
    *,
    run_id: str,
    provenance: dict[str, str],
) -> Decision:
    """Mirror the verdict of run partition ``partition`` (``date|sleeve``) in the registry and
    record the decision on MLflow run ``run_id`` (the partition's run). ``provenance``: tags
    naming the Dagster run and partition, put on every version registered here."""
    as_of, sleeve_name = split_run_key(partition)
    day = f"{as_of:%Y-%m-%d}"
    row = lake.read(["backtest"], partition).verdict.iloc[0]
    config = policy.settings_config(policy_settings(catalog.sleeve(sleeve_name)))
    # A version is one policy of one code: a commit that may change its decisions is a new one.
    release, commit = code_version()
    digest, code = settings_digest(config), f"{release}+{commit[:12]}"
    name = model_name(sleeve_name)
    champion, challenger = str(row["champion"]), str(row["challenger"])
    tracker.ensure_registered_model(
        name, f"The {sleeve_name} sleeve's policy: the tournament's champion and challenger."
    )
    with tracker.registry_lock():
        versions = tracker.model_versions(name)
        found: dict[str, object] = {}
        for policy_name in dict.fromkeys((champion, challenger)):
            version = _find(versions, policy_name, digest, code)
            if version is None:
                version = _register(
                    tracker,
                    name,
                    run_id,
                    policy_name,
                    config,
                    {
                        **provenance,
                        "tvq.policy": policy_name,
                        "tvq.settings_digest": digest,
                        "tvq.code_version": code,
                        "tvq.registered_as_of": day,
                        "mlflow_run_id": run_id,
                    },
                )
                versions.append(version)
            found[policy_name] = version
        decided = tracker.registered_model_tags(name).get(DECIDED_AS_OF, "")
        newest = day >= decided
        if newest:
            tracker.set_alias(name, CHAMPION, str(found[champion].version))
            tracker.set_alias(name, CHALLENGER, str(found[challenger].version))
            tracker.tag_registered_model(name, {DECIDED_AS_OF: day})
    numbers = {key: float(row[key]) for key in COMPARED if key in row.index and pd.notna(row[key])}
    decision = Decision(
        partition=partition,
        as_of=day,
        champion=champion,
        challenger=challenger,
        incumbent=str(row.get("incumbent", "") or ""),
        replaced=bool(row["replaced"]),
        verdict=verdict_text(row),
        numbers=numbers,
        champion_version=str(found[champion].version),
        challenger_version=str(found[challenger].version),
        aliases_moved=newest,
    )
    # The versions it names: the champion, the challenger and a dethroned incumbent.
    dethroned = _find(versions, decision.incumbent, digest, code) if decision.replaced else None
    named = {decision.champion_version, decision.challenger_version}
    if dethroned is not None:
        named.add(str(dethroned.version))
    for version in sorted(named):
        tracker.tag_version(name, version, {f"decision.{day}": decision.as_json()})
    tracker.log(
        run_id,
        metrics={f"promotion.{k}": v for k, v in numbers.items()},
        tags=decision.tags(),
        texts={"promotion/decision.json": decision.as_json()},
    )
    return decision


def register_decision(
    tracker: MlflowTracker, lake: ParquetLake, identity: Identity, stage: str, tracked: Tracked
) -> dict:
    """Once the partition's ``portfolio`` is stored: its promotion decision in the model registry
    (:func:`promote`); returns the Dagster metadata that links to it."""
    if stage != REGISTERED_STAGE:
        return {}
    decision = promote(
        tracker,
        lake,
        identity.partition,
        run_id=tracked.run_id,
        provenance={
            "dagster.run_id": identity.dagster_run_id,
            "dagster.run_url": tracker.dagster_run_url(identity.dagster_run_id),
            "dagster.partition": identity.partition,
        },
    )
    name = model_name(identity.sleeve)
    return {
        "promotion": decision.verdict,
        "registered_model": f"{name} v{decision.champion_version} (champion)",
        "registered_model_url": dg.MetadataValue.url(
            tracker.model_version_url(name, decision.champion_version)
        ),
    }
