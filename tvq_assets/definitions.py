"""The composition root: every asset, check, job, schedule and resource of the code location."""

import gc
import os
import warnings

import dagster as dg

from tvq_assets import allocation, alpha, data, meta, terminal
from tvq_assets.instance_settings import instance_settings_problem
from tvq_assets.jobs import bars_job, daily_job, daily_schedule, run_daily_after_bars
from tvq_assets.partitions import catalog
from tvq_assets.tracking.io_manager import SENSORS as TRACKING_SENSORS
from tvq_assets.tracking.io_manager import TrackedIOManager
from tvq_assets.tracking.stages import stage_order
from tvq_resources.lake import ParquetIOManager, ParquetLake, root_setting
from tvq_resources.market_data import MarketData, SourceConfig
from tvq_resources.mode import orchestration_mode
from tvq_resources.ray_fanout import RayFanout
from tvq_resources.tracking import MlflowTracker

# Every process that runs the graph loads this module. A run allocates millions of short-lived
# objects (frame columns of strings, SQLAlchemy rows, Dagster events) beside a large long-lived
# heap (Dagster, MLflow, pandas): under CPython's default thresholds (700, 10, 10) the oldest
# generation is swept about once per 70,000 net allocations, some 1.2 s of a 12 s daily run at
# 1000 symbols. Young objects are collected every 50,000 allocations instead: 0.4 s
# (``make bench``).
GC_THRESHOLDS = (50_000, 20, 100)
gc.set_threshold(*GC_THRESHOLDS)


def market_data_from_catalog() -> MarketData:
    return MarketData(
        sources={name: SourceConfig(**sleeve.source) for name, sleeve in catalog.sleeves.items()}
    )


def build_resources(
    *,
    market_data: MarketData | None = None,
    lake_root: str | None = None,
    mlflow: MlflowTracker | None = None,
    ray: RayFanout | None = None,
) -> dict:
    """Resources for a definitions object or a test: the catalog's sources, the Parquet lake and
    MLflow tracking (every sleeve × run value the IO manager stores is tracked)."""
    lake = ParquetLake(root=root_setting(lake_root))
    mlflow = mlflow or MlflowTracker()
    return {
        "market_data": market_data or market_data_from_catalog(),
        "lake": lake,
        "mlflow": mlflow,
        "io_manager": TrackedIOManager(store=ParquetIOManager(lake=lake), mlflow=mlflow),
        "ray": ray or ray_resource(orchestration_mode().is_production),
    }


def ray_resource(production: bool) -> RayFanout:
    """``local``: the serial in-process fan-out (faster than Ray on a small machine; see the
    README section "Ray"); ``production``: the cluster at ``RAY_ADDRESS``."""
    if production:
        return RayFanout(address=dg.EnvVar("RAY_ADDRESS"))
    return RayFanout()


def executor() -> dg.ExecutorDefinition:
    """Both modes run every step of a run in the run's own process (the mode is still validated
    here: an unknown ``TV_ORCH_MODE`` stops the code location from loading). Each step's own
    process pays a process start and the imports for 0.1-3 s of work: one ``daily`` run took 1.55×
    as long with a forkserver multiprocess executor and 2.8× with dagster-ray's ``ray_executor``
    (``make bench-executors``). Production parallelism comes from runs: the sleeves' runs go side
    by side through the queue, and the tournament fans out through the ``ray`` resource."""
    orchestration_mode()
    return dg.in_process_executor


# The one list of the graph's assets: the graph of one sleeve (partitioned by sleeve, or sleeve ×
# run), then the fan-in over sleeves. Every other list of assets derives from it: the tracked stage
# order (STAGES), the describers and diffs (found by name beside each asset or in tracking), the
# tests' lists.
SLEEVE_ASSETS = [
    data.bars,
    data.returns,
    alpha.features,
    alpha.inference,
    alpha.clusters,
    alpha.selection,
    allocation.weights,
    allocation.backtest,
    allocation.portfolio,
]
# Each asset links to its source file and line in the UI.
with warnings.catch_warnings():
    # with_source_code_references and its code-reference classes are beta in Dagster 1.13: a
    # notice for us, not for whoever loads the definitions.
    warnings.simplefilter("ignore", dg.BetaWarning)
    ASSETS = list(dg.with_source_code_references([*SLEEVE_ASSETS, meta.meta_portfolio]))
# The sleeve × run assets in the graph's order: what MLflow records of a run partition.
STAGES = stage_order(ASSETS)


class InstanceSettingsWarning(UserWarning):
    """DAGSTER_HOME's instance lacks the project's run queue or run launcher."""


# The code location still loads (tests and benchmarks run on plain instances), but runs launched
# through such an instance miss the queue's limits and run monitoring: say so, and how to fix it.
_instance_problem = instance_settings_problem(os.environ.get("DAGSTER_HOME"))
if _instance_problem:
    warnings.warn(f"tvq code location: {_instance_problem}", InstanceSettingsWarning, stacklevel=1)

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[bars_job, daily_job, meta.meta_job],
    schedules=[daily_schedule],
    sensors=[run_daily_after_bars, *meta.SENSORS, *TRACKING_SENSORS],
    resources=build_resources(),
    executor=executor(),
    # Replaces Dagster's default "console" logger of every job (same config): one traceback
    # per failure on the terminal.
    loggers={"console": terminal.console},
)
