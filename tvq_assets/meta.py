"""The meta-portfolio: one allocation across the sleeves' champions per run date.

``meta_portfolio`` is partitioned by ``run`` alone and reads every sleeve's ``backtest`` and
``portfolio`` of the same date through a multi-to-single-dimension mapping, so the graph shows
the fan-in and a backfill of dates schedules the sleeves' runs first. The engine is
``tvq_assets.quant.meta``; the rules and defaults are the catalog's ``meta`` section.

It runs in its own job (``meta_portfolio_job``), not in ``daily``: a job's assets share one
partitioning, and the meta-portfolio of a date needs every sleeve's run of that date, which
``daily`` computes one sleeve at a time. The sensor ``run_meta_after_sleeves`` requests it when
the last sleeve of a date has its portfolio.
"""

import time
import warnings

import dagster as dg
import pandas as pd

from tvq_assets.catalog import Catalog
from tvq_assets.partitions import catalog, run, split_run_key
from tvq_assets.plots import equity_plot
from tvq_assets.quant import meta as engine
from tvq_assets.quant.policy import PortfolioRecord, TournamentRecord
from tvq_checks import checks, meta_contracts
from tvq_checks.checks import Evaluation
from tvq_resources.lake import FAN_IN, ParquetLake, write_file

META_CONTRACT = "meta_holdings_contract"
SLEEVES_PRESENT = "meta_sleeves_present"

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    # A run date of the meta-portfolio reads that date's partition of every sleeve.
    SLEEVES_OF_RUN = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="run")


def meta_settings(source: Catalog | None = None) -> engine.MetaSettings:
    """The engine's parameters, every one from the catalog (its ``meta`` section and each
    sleeve's costs and periods per year): the only place they are built."""
    source = source or catalog
    meta = source.meta
    sleeves = source.meta_sleeves
    return engine.MetaSettings(
        profile=meta.profile,
        lookback=meta.lookback,
        test=meta.test,
        step=meta.step,
        missing=meta.missing_sleeve,
        caps={s: meta.limit(s).cap for s in sleeves},
        floors={s: meta.limit(s).floor for s in sleeves},
        cost_rates={s: source.sleeve(s).policy.cost_rate for s in sleeves},
        periods_per_year={s: source.sleeve(s).periods_per_year for s in sleeves},
        ridge=meta.ridge,
    )


def _fan_in(ins: dict[str, object]) -> dict[str, object]:
    """{sleeve name: value} from the fan-in's {partition key: value}."""
    return {split_run_key(key)[1]: value for key, value in ins.items()}


def _fan_in_input(asset: str) -> dg.AssetIn:
    return dg.AssetIn(key=asset, partition_mapping=SLEEVES_OF_RUN, metadata={FAN_IN: True})


@dg.asset(
    partitions_def=run,
    output_required=False,
    group_name="meta",
    kinds={"cvxpy", "parquet"},
    ins={"backtests": _fan_in_input("backtest"), "portfolios": _fan_in_input("portfolio")},
    check_specs=checks.specs_for(
        "meta_portfolio",
        [
            (
                META_CONTRACT,
                "Firm-wide holdings: finite, non-negative, each sleeve within its cap and floor, "
                "summing to 1, every sleeve held or its absence explained.",
                True,
            ),
            (
                SLEEVES_PRESENT,
                "Every sleeve of the meta-portfolio had a run for the date (a WARN under "
                "missing_sleeve: allocate_present names the missing one).",
                False,
            ),
        ],
        run,
    ),
)
def meta_portfolio(
    context: dg.AssetExecutionContext,
    backtests: dict[str, TournamentRecord],
    portfolios: dict[str, PortfolioRecord],
    lake: ParquetLake,
):
    """Capital across the sleeves' champions for the date and the firm-wide holdings it implies,
    with a meta walk-forward against the equal weight of the sleeves."""
    started = time.perf_counter()
    key = str(context.partition_key)
    as_of = pd.Timestamp(key)
    settings = meta_settings()
    sleeves = list(catalog.meta_sleeves)
    backtests, portfolios = _fan_in(backtests), _fan_in(portfolios)
    present = [s for s in sleeves if s in backtests and s in portfolios]
    where = f"meta_portfolio[{key}]"
    try:
        record = engine.decide(
            {s: backtests[s].returns[backtests[s].champion] for s in present},
            {s: portfolios[s].weights["weight"] for s in present},
            {s: backtests[s].champion for s in present},
            settings,
            sleeves=sleeves,
            as_of=as_of,
            where=where,
        )
    except (engine.MissingSleeve, engine.MetaInfeasible) as error:
        raise dg.Failure(description=str(error)) from error
    missing = record.missing
    for sleeve, reason in missing.items():
        context.log.warning(
            f"{where}: sleeve {sleeve!r} is missing ({reason}); allocating across {present}"
        )
    png = equity_plot(
        record.returns,
        champion=engine.META,
        baselines=[engine.BASELINE],
        title=f"meta-portfolio walk-forward to {as_of:%Y-%m-%d}",
    )
    plot_path = lake.location(["meta_portfolio"], key).with_suffix(".png")
    write_file(png, plot_path)
    shown = record.metrics.loc[[engine.META, engine.BASELINE]] if len(record.returns) else None
    absent = pd.DataFrame(
        {
            "symbol": list(missing),
            "date": as_of,
            "value": 0.0,
            "rule": "sleeve_present",
            "message": [f"{s} on {as_of:%Y-%m-%d}: missing ({r})" for s, r in missing.items()],
        }
    )
    yield from checks.emit(
        "meta_portfolio",
        key,
        record,
        metadata={
            "as_of": key,
            "profile": settings.profile,
            "missing_sleeve_rule": settings.missing,
            "sleeves_present": ", ".join(present),
            "sleeves_missing": ", ".join(missing) or "none",
            "sleeve_weights": dg.MetadataValue.md(checks.markdown(record.sleeves.reset_index())),
            "top_holdings": dg.MetadataValue.md(checks.markdown(record.holdings.head(20))),
            "holdings": len(record.holdings),
            "common_dates": len(record.joined),
            "periods_per_year": settings.joined_periods_per_year(present),
            "meta_vs_baseline": dg.MetadataValue.md(
                checks.markdown(shown.reset_index()) if shown is not None else "_no window_"
            ),
            **(
                {
                    "sharpe": float(shown.loc[engine.META, "sharpe"]),
                    "max_drawdown": float(shown.loc[engine.META, "max_drawdown"]),
                    "baseline_sharpe": float(shown.loc[engine.BASELINE, "sharpe"]),
                    "baseline_max_drawdown": float(shown.loc[engine.BASELINE, "max_drawdown"]),
                }
                if shown is not None
                else {}
            ),
            "equity_curve_file": dg.MetadataValue.path(str(plot_path)),
            "seconds": round(time.perf_counter() - started, 3),
        },
        evaluations=[
            Evaluation(
                META_CONTRACT,
                meta_contracts.holdings_violations(
                    record.holdings,
                    sleeves=sleeves,
                    missing=missing,
                    caps=settings.caps,
                    floors=settings.floors,
                    as_of=as_of,
                ),
            ),
            Evaluation(
                SLEEVES_PRESENT,
                absent,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"missing": dg.MetadataValue.json(missing)},
            ),
        ],
    )


meta_job = dg.define_asset_job(
    "meta_portfolio_job",
    selection=dg.AssetSelection.assets("meta_portfolio"),
    partitions_def=run,
    description="The meta-portfolio of one run date, across every sleeve's run of that date.",
)


def _daily_job():
    from tvq_assets.jobs import daily_job  # jobs imports the graph's assets, not this module

    return daily_job


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[_daily_job()],
    request_job=meta_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_meta_after_sleeves(context: dg.RunStatusSensorContext):
    """When a sleeve's run of a date succeeds and every sleeve of the meta-portfolio has its
    portfolio for that date, compute the meta-portfolio of the date (once per date and run)."""
    from tvq_assets.partitions import is_run_key, run_key

    partition = context.dagster_run.tags.get("dagster/partition")
    if not is_run_key(partition):
        return dg.SkipReason("the daily run had no sleeve × run partition")
    as_of, _ = split_run_key(partition)
    stored = context.instance.get_materialized_partitions(dg.AssetKey("portfolio"))
    waiting = [s for s in catalog.meta_sleeves if run_key(as_of, s) not in stored]
    if waiting:
        return dg.SkipReason(f"meta_portfolio[{as_of:%Y-%m-%d}] waits for {waiting}")
    return dg.RunRequest(
        run_key=f"meta|{as_of:%Y-%m-%d}|{context.dagster_run.run_id}",
        partition_key=f"{as_of:%Y-%m-%d}",
    )
