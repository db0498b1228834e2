"""Shared fixtures: a throwaway Dagster instance and lake, and small synthetic sleeves."""

import dataclasses
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest
from hypothesis import HealthCheck, settings

# Property tests run in one of two profiles; neither depends on timing (no deadline; in "ci" no
# too_slow health check either): the machines are shared.
# "ci": the same examples on every run and machine (derandomized: seeded from each test, so they
# change only with the test, Hypothesis or Python), no example database (a result never depends on
# what an earlier run saved), a failure printed with a blob that replays it. `make test`,
# `make test-slow` and so CI select it with --hypothesis-profile=ci; so does CI set to a value.
# "dev": a plain `pytest` explores new examples each run and replays its saved failures first.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# The lake and instance of a test never touch the developer's dagster_home.
os.environ.pop("TVQ_LAKE", None)
# Runs of a test are tracked in a throwaway MLflow store, never the developer's or a shared one.
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='tvq-mlflow-')}/mlflow.db"

AS_OF = "2026-06-30"

# The files whose tests take longest (minutes: the production soaks) are collected first: the test
# processes take whole files in collection order, so the others share out around them.
LONGEST_FIRST = ("test_soak.py",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: order otherwise


def _sleeve_assets() -> tuple[str, ...]:
    # After the environment above is set: the definitions read it when they are imported.
    from tvq_assets.definitions import SLEEVE_ASSETS

    return tuple(key.to_user_string() for asset in SLEEVE_ASSETS for key in asset.keys)


# The assets of one sleeve, in the definitions' order (the one list of assets).
ASSETS = _sleeve_assets()


REPOSITORY = Path(__file__).resolve().parents[1]


def start_daemon(environment: dict[str, str]) -> subprocess.Popen:
    """The workspace's ``dagster-daemon`` in its own session (stop it with :func:`stop`)."""
    return subprocess.Popen(
        [str(REPOSITORY / ".venv" / "bin" / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        env=environment,
        cwd=REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True``: SIGINT, then SIGKILL after 30 s."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def instance():
    # In-memory run and event storage: a SQLite instance spends most of a small run in fsync.
    with dg.DagsterInstance.ephemeral() as test_instance:
        yield test_instance


@pytest.fixture
def lake_root(tmp_path):
    return str(tmp_path / "lake")


def synthetic_source(*, symbols: int = 30, end: str = AS_OF, calendar: str = "crypto", **options):
    from tvq_resources.market_data import FaultConfig, SourceConfig

    faults = [FaultConfig(**f) if isinstance(f, dict) else f for f in options.pop("faults", [])]
    return SourceConfig(
        kind="synthetic", symbols=symbols, end=end, calendar=calendar, faults=faults, **options
    )


def resources_for(lake_root: str, **sources):
    """Definitions' resources with these sources (sleeve name -> SourceConfig)."""
    from tvq_assets.definitions import build_resources, market_data_from_catalog
    from tvq_resources.market_data import MarketData

    catalog_sources = dict(market_data_from_catalog().sources)
    catalog_sources.update(sources)
    return build_resources(market_data=MarketData(sources=catalog_sources), lake_root=lake_root)


@pytest.fixture
def sleeve_policy(monkeypatch):
    """Change a catalog sleeve for one test.

    ``sleeve_policy("crypto", toxic_policy="quarantine", policy={"min_winners": 5})``
    """
    from tvq_assets.partitions import catalog

    def change(name: str, *, policy: dict | None = None, **fields):
        sleeve = catalog.sleeves[name]
        if policy:
            fields["policy"] = dataclasses.replace(sleeve.policy, **policy)
        monkeypatch.setitem(catalog.sleeves, name, dataclasses.replace(sleeve, **fields))

    return change


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    """Check evaluations of a run, by check name."""
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialised(result: dg.ExecuteInProcessResult) -> set[str]:
    """Assets a run stored."""
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The metadata values of the one materialisation of ``asset`` in a run."""
    [event] = result.asset_materializations_for_node(asset)
    return {name: value.value for name, value in event.metadata.items()}
