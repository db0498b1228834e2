"""The composition root: every asset, check, job, schedule and resource of the code location."""

import dagster as dg

from tvq_assets import allocation, alpha, data, tracking
from tvq_assets.jobs import bars_job, daily_job, daily_schedule, run_daily_after_bars
from tvq_assets.partitions import catalog
from tvq_resources.lake import ParquetIOManager, ParquetLake
from tvq_resources.market_data import MarketData, SourceConfig
from tvq_resources.mode import orchestration_mode
from tvq_resources.tracking import MlflowTracker


def market_data_from_catalog() -> MarketData:
    return MarketData(
        sources={name: SourceConfig(**sleeve.source) for name, sleeve in catalog.sleeves.items()}
    )


def build_resources(
    *,
    market_data: MarketData | None = None,
    lake_root: str | None = None,
    mlflow: MlflowTracker | None = None,
) -> dict:
    """Resources for a definitions object or a test: the catalog's sources, the Parquet lake and
    MLflow tracking (every sleeve × run value the IO manager stores is tracked)."""
    lake = ParquetLake(root=lake_root)
    mlflow = mlflow or MlflowTracker()
    return {
        "market_data": market_data or market_data_from_catalog(),
        "lake": lake,
        "mlflow": mlflow,
        "io_manager": tracking.TrackedIOManager(store=ParquetIOManager(lake=lake), mlflow=mlflow),
    }


def executor() -> dg.ExecutorDefinition:
    """``TV_ORCH_MODE=local`` (default): one process; ``production``: a process per step."""
    if orchestration_mode().is_production:
        return dg.multiprocess_executor.configured({"max_concurrent": 2})
    return dg.in_process_executor


ASSETS = [
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

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[bars_job, daily_job],
    schedules=[daily_schedule],
    sensors=[run_daily_after_bars, *tracking.SENSORS],
    resources=build_resources(),
    executor=executor(),
)
