"""Synthesis layer: optimised weights of the run's winners, and the walk-forward tournament."""

import base64
import io
import time

import dagster as dg
import numpy as np
import pandas as pd

from tvq_assets.partitions import sleeve_and_date, sleeve_run
from tvq_assets.quant import backtest as walk_forward
from tvq_assets.quant import optimise, pipeline
from tvq_assets.settings import alpha_settings
from tvq_checks import allocation_contracts, checks
from tvq_checks.checks import Evaluation
from tvq_resources.lake import ParquetLake, write_file

WEIGHTS_CONTRACT = "weights_contract"
SOLVER_STATUS = "solver_status"
BACKTEST_COMPLETE = "backtest_complete"
DIAGNOSTIC_COLUMNS = (
    *("solver", "status", "seconds", "objective", "fallback", "reason"),
    *("cap", "effective_cap", "cluster_cap", "effective_cluster_cap"),
)


def previous_value(lake: ParquetLake, asset: str, sleeve: str, as_of: pd.Timestamp, days: int = 7):
    """The newest stored value of ``asset`` for this sleeve in the ``days`` before ``as_of``."""
    for back in range(1, days + 1):
        key = f"{as_of - pd.Timedelta(days=back):%Y-%m-%d}|{sleeve}"
        if lake.exists([asset], key):
            return key, lake.read([asset], key)
    return None, None


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="synthesis",
    kinds={"cvxpy", "parquet"},
    check_specs=checks.specs_for(
        "weights",
        [
            (
                WEIGHTS_CONTRACT,
                "Per profile: weights finite, in [0, cap], summing to 1 within 1e-6, winners only.",
                True,
            ),
            (
                SOLVER_STATUS,
                "A profile that fell back (HRP, equal weight) or solved only "
                "`optimal_inaccurate` is recorded with the reason.",
                False,
            ),
        ],
        sleeve_run,
    ),
)
def weights(context: dg.AssetExecutionContext, selection: dict, returns: dict, lake: ParquetLake):
    """Optimised long-only weights of the run's winners per risk profile, with solver status."""
    started = time.perf_counter()
    sleeve, as_of = sleeve_and_date(context)
    policy = sleeve.policy
    winners = selection["winners"]
    window = returns["returns"][winners.index].tail(policy.train)
    previous_key, previous = previous_value(lake, "weights", sleeve.name, as_of)
    allocations = {}
    for profile in optimise.PROFILES:
        held = previous["weights"][profile] if previous is not None else None
        constraints = optimise.Constraints.of(policy, clusters=winners["cluster"], previous=held)
        try:
            allocations[profile] = optimise.allocate(profile, window, constraints=constraints)
        except optimise.InfeasibleCap as error:
            raise optimise.InfeasibleCap(
                f"weights[{context.partition_key}]: sleeve {sleeve.name!r}: {error}"
            ) from error
    table = pd.DataFrame({p: a.weights for p, a in allocations.items()}).reindex(winners.index)
    table = table.fillna(0.0).rename_axis("symbol")
    diagnostics = pd.DataFrame(
        [[getattr(a, c) for c in DIAGNOSTIC_COLUMNS] for a in allocations.values()],
        index=pd.Index(list(allocations), name="profile"),
        columns=list(DIAGNOSTIC_COLUMNS),
    ).astype({"objective": float, "seconds": float, "cluster_cap": float})
    yield from checks.emit(
        "weights",
        context.partition_key,
        {"weights": table, "diagnostics": diagnostics},
        metadata={
            "winners": len(table),
            "weights": dg.MetadataValue.md(checks.markdown(table.reset_index())),
            "diagnostics": dg.MetadataValue.md(checks.markdown(diagnostics.reset_index())),
            "previous_run": previous_key or "none",
            "covariance": f"Ledoit-Wolf over the last {len(window)} bars; cap {policy.cap:.0%}",
            "seconds": round(time.perf_counter() - started, 3),
        },
        evaluations=[
            Evaluation(
                WEIGHTS_CONTRACT,
                allocation_contracts.weights_violations(
                    table,
                    winners=winners.index,
                    cap=policy.cap,
                    infeasible_cap=policy.infeasible_cap,
                    clusters=winners["cluster"],
                    cluster_cap=policy.cluster_cap,
                    as_of=as_of,
                ),
            ),
            Evaluation(
                SOLVER_STATUS,
                allocation_contracts.solver_violations(diagnostics, as_of=as_of),
                severity=dg.AssetCheckSeverity.WARN,
            ),
        ],
    )


def equity_plot(curves: pd.DataFrame, *, champion: str, baselines: list[str], title: str) -> bytes:
    """PNG of compounded equity: policies in grey, the champion and the baselines highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.2), dpi=90)
    equity = (1 + curves.fillna(0.0)).cumprod()
    for name in equity.columns:
        if name not in baselines and name != champion:
            axes.plot(equity.index, equity[name], color="0.8", linewidth=0.8)
    for name, color in zip(baselines, ("tab:blue", "tab:orange"), strict=False):
        axes.plot(equity.index, equity[name], color=color, linewidth=1.4, label=name)
    axes.plot(
        equity.index,
        equity[champion],
        color="tab:green",
        linewidth=2.2,
        label=f"champion: {champion}",
    )
    axes.set_title(title)
    axes.set_ylabel("growth of 1 (net of costs)")
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(alpha=0.3)
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    pyplot.close(figure)
    return buffer.getvalue()


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="synthesis",
    kinds={"pandas", "matplotlib", "parquet"},
    deps=["weights"],
    check_specs=checks.specs_for(
        "backtest",
        [
            (
                BACKTEST_COMPLETE,
                "Every policy has out-of-sample returns on every window and finite metrics.",
                True,
            )
        ],
        sleeve_run,
    ),
)
def backtest(context: dg.AssetExecutionContext, returns: dict, lake: ParquetLake):
    """Walk-forward out-of-sample returns and metrics per policy, and the champion verdict.

    Policies: every scorer × profile, plus the two equal-weight baselines.
    """
    started = time.perf_counter()
    sleeve, as_of = sleeve_and_date(context)
    policy = sleeve.policy
    window = returns["returns"]
    _, previous = previous_value(lake, "backtest", sleeve.name, as_of)
    incumbent = str(previous["verdict"]["champion"].iloc[0]) if previous is not None else None
    outcome = pipeline.tournament(
        window,
        returns["dollar_volume"],
        alpha_settings(sleeve),
        optimise.Constraints.of(policy),
        train=policy.train,
        test=policy.test,
        step=policy.step,
        cost_rate=policy.cost_rate,
        incumbent=incumbent,
    )
    result, table, verdict = outcome.result, outcome.metrics, outcome.verdict
    verdict_table = pd.DataFrame(
        [
            {
                "champion": verdict.champion,
                "challenger": verdict.challenger,
                "incumbent": incumbent or "",
                "replaced": verdict.replaced,
                "rule": verdict.rule,
                **{k: float(v) for k, v in verdict.numbers.items()},
            }
        ]
    )
    png = equity_plot(
        result.returns,
        champion=verdict.champion,
        baselines=list(pipeline.BASELINES),
        title=f"{sleeve.name} walk-forward to {as_of:%Y-%m-%d}",
    )
    plot_path = lake.location(["backtest"], context.partition_key).with_suffix(".png")
    write_file(png, plot_path)
    incomplete = _incomplete(result, table, as_of)
    shown = table.loc[[verdict.champion, *pipeline.BASELINES]]
    yield from checks.emit(
        "backtest",
        context.partition_key,
        {
            "returns": result.returns,
            "turnover": result.turnover,
            "metrics": table,
            "verdict": verdict_table,
            "champion_weights": outcome.champion_weights.rename("weight")
            .rename_axis("symbol")
            .to_frame(),
        },
        metadata={
            "champion": verdict.champion,
            "challenger": verdict.challenger,
            "replaced_incumbent": verdict.replaced,
            "rule": verdict.rule,
            "champion_vs_baselines": dg.MetadataValue.md(checks.markdown(shown.reset_index())),
            "metrics": dg.MetadataValue.md(checks.markdown(table.reset_index())),
            "equity_curve": dg.MetadataValue.md(
                f"![equity](data:image/png;base64,{base64.b64encode(png).decode()})"
            ),
            "equity_curve_file": dg.MetadataValue.path(str(plot_path)),
            "windows": len(result.windows),
            "out_of_sample_days": len(result.returns),
            "seconds": round(time.perf_counter() - started, 3),
        },
        evaluations=[Evaluation(BACKTEST_COMPLETE, incomplete)],
    )


def _incomplete(
    result: walk_forward.BacktestResult, table: pd.DataFrame, as_of: pd.Timestamp
) -> pd.DataFrame:
    """A row per policy with missing out-of-sample days or a non-finite Sharpe/drawdown."""
    rows = []
    for name in result.returns.columns:
        missing = int(result.returns[name].isna().sum())
        sharpe, drawdown = table.loc[name, "sharpe"], table.loc[name, "max_drawdown"]
        if missing or not (np.isfinite(sharpe) and np.isfinite(drawdown)):
            rows.append(
                (
                    name,
                    as_of,
                    float(missing),
                    "backtest_complete",
                    f"{name}: {missing} missing days, sharpe {sharpe}, drawdown {drawdown}",
                )
            )
    return pd.DataFrame(rows, columns=["symbol", "date", "value", "rule", "message"])
