"""Describers: what each stage's stored value records on the partition's MLflow run.

The describer of asset ``X`` is the function ``describe_X(stage, value, sleeve, as_of)``, found
beside the asset (in the module that defines it) or here; any other asset is described by
:func:`describe_default` (its tables' row counts, and the tables as CSV). A new asset is tracked
as soon as it is in the definitions; a describer only says more about it.
"""

import dataclasses
import json
import sys
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pandas as pd

from tvq_assets.catalog import Sleeve
from tvq_assets.partitions import catalog
from tvq_assets.quant import meta as meta_engine
from tvq_assets.quant import metrics as performance
from tvq_assets.tracking.tear_sheet import BASELINES, tear_sheet
from tvq_assets.tracking.values import StageRecord, csv_tables, tables_of
from tvq_resources.lake import ParquetLake

META_STAGE = "meta_portfolio"
Describer = Callable[[str, object, Sleeve, pd.Timestamp], StageRecord]


def describe_default(stage: str, value: object, sleeve: Sleeve, as_of: pd.Timestamp):
    tables = tables_of(value)
    return StageRecord(
        metrics={f"{stage}.{name}.rows": len(frame) for name, frame in tables.items()},
        tables=csv_tables(stage, tables),
    )


def describe_returns(stage, value, sleeve, as_of):
    tables = tables_of(value)
    frame, excluded = tables["returns"], tables.get("excluded", pd.DataFrame())
    start, end = f"{frame.index.min():%Y-%m-%d}", f"{frame.index.max():%Y-%m-%d}"
    return StageRecord(
        metrics={
            "returns.symbols": frame.shape[1],
            "returns.days": frame.shape[0],
            "returns.excluded": len(excluded),
        },
        params={
            "data.source": sleeve.source.get("kind", "synthetic"),
            "data.source_settings": {k: v for k, v in sleeve.source.items() if k != "faults"},
            "data.window_start": start,
            "data.window_end": end,
            "data.as_of": f"{as_of:%Y-%m-%d}",
        },
        tables=csv_tables(stage, {"excluded": excluded}),
        datasets={f"{sleeve.name} returns {start}..{end}": frame},
    )


def describe_inference(stage, value, sleeve, as_of):
    table = tables_of(value)["table"]
    scores = table["score"].astype(float)
    record = describe_default(stage, value, sleeve, as_of)
    record.metrics = {
        "inference.symbols": len(table),
        **{
            f"inference.score_{name}": float(getattr(scores, name)())
            for name in ("mean", "std", "min", "median", "max")
        },
    }
    return record


def describe_clusters(stage, value, sleeve, as_of):
    table = tables_of(value)["table"]
    record = describe_default(stage, value, sleeve, as_of)
    column = "cluster" if "cluster" in table.columns else table.columns[0]
    record.metrics = {"clusters.count": table[column].nunique(), "clusters.symbols": len(table)}
    return record


def describe_selection(stage, value, sleeve, as_of):
    tables = tables_of(value)
    winners, audit = tables["winners"], tables.get("audit", pd.DataFrame())
    stage_reached = int(winners["stage"].max()) if len(winners) else 0
    return StageRecord(
        metrics={
            "selection.winners": len(winners),
            "selection.stage": stage_reached,
            "selection.audited": len(audit),
        },
        tags={"tvq.winners": ",".join(map(str, winners.index))},
        tables=csv_tables(stage, tables),
        headline={"winners": len(winners)},
    )


def describe_weights(stage, value, sleeve, as_of):
    tables = tables_of(value)
    weights, diagnostics = tables["weights"], tables.get("diagnostics", pd.DataFrame())
    metrics, tags = {}, {}
    for profile, row in diagnostics.iterrows():
        metrics[f"weights.{profile}.solver_seconds"] = float(row["seconds"])
        metrics[f"weights.{profile}.optimal"] = float(str(row["status"]) == "optimal")
        tags[f"weights.{profile}.status"] = f"{row['status']} ({row['solver']})"
    for profile in weights.columns:
        metrics[f"weights.{profile}.holdings"] = int((weights[profile] > 0).sum())
        metrics[f"weights.{profile}.max_weight"] = float(weights[profile].max())
    return StageRecord(metrics=metrics, tags=tags, tables=csv_tables(stage, tables))


AS_PROMOTED_METRICS = (
    "as_promoted_sharpe",
    "as_promoted_max_drawdown",
    "as_promoted_cagr",
    "as_promoted_psr",
    "as_promoted_deflated_sharpe",
    "as_promoted_days",
    "as_promoted_switches",
)


# The figure an asset stores beside its value (``ParquetLake.figure``: the equity curve of
# ``backtest`` and ``meta_portfolio``), logged under this name.
STORED_FIGURE = "equity_curve.png"


def stored_figures(lake: ParquetLake, stage: str, partition: str | None) -> dict[str, bytes]:
    """The figure the asset rendered and stored beside its value, as the artifact
    ``<stage>/equity_curve.png`` (none when it stored none): a figure is rendered once, by its
    asset, and the tracking logs that file."""
    path = lake.figure([stage], partition)
    return {f"{stage}/{STORED_FIGURE}": path.read_bytes()} if path.exists() else {}


def describe_backtest(stage, value, sleeve, as_of):
    tables = tables_of(value)
    metrics_table, verdict = tables["metrics"], tables["verdict"].iloc[0]
    champion = str(verdict["champion"])
    headline = metrics_table.loc[champion]
    record = StageRecord(
        metrics={
            **{str(k): float(v) for k, v in headline.items()},
            **{
                f"{baseline}.{k}": float(v)
                for baseline in BASELINES
                if baseline in metrics_table.index
                for k, v in metrics_table.loc[baseline].items()
            },
            "backtest.policies": len(metrics_table),
        },
        tags={
            "tvq.champion": champion,
            "tvq.challenger": str(verdict["challenger"]),
            "tvq.incumbent": str(verdict.get("incumbent", "")),
            "tvq.replaced_incumbent": str(verdict.get("replaced", "")),
        },
        tables=csv_tables(stage, tables),
        children={
            str(policy): {str(k): float(v) for k, v in row.items()}
            for policy, row in metrics_table.iterrows()
        },
        headline={
            "champion_sharpe": float(headline["sharpe"]),
            "champion_max_drawdown": float(headline["max_drawdown"]),
            "champion_cagr": float(headline["cagr"]),
            "champion_turnover": float(headline.get("avg_turnover", np.nan)),
        },
    )
    for name, number in verdict.items():
        if isinstance(number, int | float | np.number) and not isinstance(number, bool):
            record.metrics[f"verdict.{name}"] = float(number)
    if "psr" in verdict.index and pd.notna(verdict["psr"]):
        record.headline["psr_vs_incumbent"] = float(verdict["psr"])
    # The selection process's record (quant.promoted) next to today's champion's.
    for name in AS_PROMOTED_METRICS:
        if name in verdict.index:
            record.metrics[name] = float(verdict[name])
            record.headline[name] = float(verdict[name])
    if "returns" in tables:
        # The best of many policies looks better than it is: the champion's Sharpe deflated by
        # the candidates the tournament tried, as the promotion rule deflates the challenger's.
        streams = tables["returns"]
        candidates = streams[[c for c in streams.columns if c not in BASELINES]]
        trials = (candidates.mean() / candidates.std(ddof=1)).to_numpy()
        deflated = performance.deflated_sharpe_ratio(streams[champion], trial_sharpes=trials)
        record.metrics["deflated_sharpe"] = deflated
        record.headline["champion_deflated_sharpe"] = deflated
        record.figures = tear_sheet(
            tables["returns"],
            tables.get("turnover"),
            champion=champion,
            title=f"{sleeve.name} walk-forward to {as_of:%Y-%m-%d}",
        )
    return record


def describe_portfolio(stage, value, sleeve, as_of):
    """The decision production acts on: ``portfolio/weights.csv`` and ``portfolio/trades.csv``,
    turnover against the previous run, holdings and the largest weight."""
    tables = tables_of(value)
    weights, trades = tables["weights"]["weight"], tables["trades"]
    turnover = float(trades["trade"].abs().sum() / 2)
    return StageRecord(
        metrics={
            "portfolio.turnover": turnover,
            "portfolio.names": int((weights > 0).sum()),
            "portfolio.largest_weight": float(weights.max()) if len(weights) else 0.0,
            "portfolio.cash": float(1.0 - weights.sum()),
        },
        tags={"tvq.portfolio": ",".join(f"{s}:{w:.4f}" for s, w in weights[weights > 0].items())},
        tables=csv_tables(stage, tables),
        headline={"portfolio_turnover": turnover},
    )


def describer_of(stage: str, home: ModuleType | None = None) -> Describer:
    """``describe_<stage>`` of the asset's own module ``home`` if it defines one, else of this
    module, else :func:`describe_default`."""
    for module in (home, sys.modules[__name__]):
        found = getattr(module, f"describe_{stage}", None) if module is not None else None
        if callable(found):
            return found
    return describe_default


def describe(
    stage: str,
    value: object,
    sleeve: Sleeve,
    as_of: pd.Timestamp,
    *,
    home: ModuleType | None = None,
) -> StageRecord:
    """The record of a stage's stored value (``home``: the module that defines the asset)."""
    return describer_of(stage, home)(stage, value, sleeve, as_of)


def meta_record(value, as_of: pd.Timestamp) -> StageRecord:
    """Params (the catalog's meta section), sleeve weights, metrics of the meta walk-forward
    and of the equal-weight-of-sleeves baseline, the tables as CSV and a tear sheet."""
    tables = tables_of(value)
    sleeves, metrics_table = tables["sleeves"], tables["metrics"]
    params = {
        k: json.dumps(v, default=vars) if isinstance(v, dict | tuple) else v
        for k, v in dataclasses.asdict(catalog.meta).items()
    }
    record = StageRecord(
        params={f"meta.{k}": v for k, v in params.items()},
        metrics={
            **{f"weight.{s}": float(w) for s, w in sleeves["weight"].items()},
            **{
                f"{'meta' if policy == meta_engine.META else 'baseline'}.{k}": float(v)
                for policy, row in metrics_table.iterrows()
                for k, v in row.items()
                if pd.notna(v)
            },
            "meta.holdings": len(tables["holdings"]),
            "meta.common_dates": len(tables["joined"]),
            "meta.sleeves_missing": int((~sleeves["present"].astype(bool)).sum()),
        },
        tags={
            "tvq.meta.weights": ",".join(f"{s}:{w:.4f}" for s, w in sleeves["weight"].items()),
            "tvq.meta.missing": ",".join(sleeves.index[~sleeves["present"].astype(bool)]),
        },
        tables=csv_tables(META_STAGE, {k: v for k, v in tables.items() if k != "joined"}),
    )
    returns = tables["returns"]
    if len(returns):
        title = f"meta-portfolio walk-forward to {as_of:%Y-%m-%d}"
        record.figures = {
            f"{META_STAGE}/{name.split('/')[-1]}": png
            for name, png in tear_sheet(
                returns, tables["turnover"], champion=meta_engine.META, title=title
            ).items()
        }
    return record
