"""Synthesis layer: optimised weights of the run's winners, and the walk-forward tournament."""

import time

import dagster as dg
import pandas as pd
from dagster_ray import RayResource

from tvq_assets import stage
from tvq_assets.partitions import Run, previous_run, run_of, sleeve_run
from tvq_assets.plots import equity_plot
from tvq_assets.quant import optimise, policy
from tvq_assets.quant.policy import (
    PortfolioRecord,
    SelectionRecord,
    TournamentRecord,
    WeightsRecord,
)
from tvq_assets.quant.returns import ReturnsWindow
from tvq_checks import allocation_contracts, backtest_contracts, checks
from tvq_checks.checks import Evaluation
from tvq_resources import ray_fanout
from tvq_resources.lake import ParquetLake, PreviousRun, write_file
from tvq_resources.window_cache import lake_window_cache

WEIGHTS_CONTRACT = "weights_contract"
SOLVER_STATUS = "solver_status"
BACKTEST_COMPLETE = "backtest_complete"
PORTFOLIO_CONTRACT = "portfolio_contract"
DIAGNOSTIC_COLUMNS = (
    *("solver", "status", "seconds", "objective", "fallback", "reason"),
    *("cap", "effective_cap", "cluster_cap", "effective_cluster_cap"),
)


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="synthesis",
    kinds={"cvxpy", "parquet"},
    ins={"previous": previous_run("weights")},
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
def weights(
    context: dg.AssetExecutionContext,
    selection: SelectionRecord,
    returns: ReturnsWindow,
    previous: PreviousRun | None,
):
    """Optimised long-only weights of the run's winners per risk profile, with solver status.

    The previous run's weights (the sleeve's newest run in the week before, a declared input)
    are the turnover reference; without them (a first run or a long gap) no turnover penalty
    applies.
    """
    run = run_of(context)
    winners = selection.winners
    held = previous.value.weights if previous is not None else None
    allocations = _allocations(run, winners, returns.returns, held)
    table = pd.DataFrame({p: a.weights for p, a in allocations.items()}).reindex(winners.index)
    table = table.fillna(0.0).rename_axis("symbol")
    diagnostics = _diagnostics(allocations)
    yield from stage.emit(
        run,
        "weights",
        WeightsRecord(weights=table, diagnostics=diagnostics),
        metadata=_weights_metadata(run, table, diagnostics, previous),
        evaluations=_weights_evaluations(run, table, diagnostics, winners),
    )


def _allocations(
    run: Run, winners: pd.DataFrame, returns: pd.DataFrame, held: pd.DataFrame | None
) -> dict[str, optimise.Allocation]:
    """Every profile's allocation of the winners, against its previous weights when held; an
    infeasible cap names the run and the sleeve."""
    try:
        return {
            profile: policy.allocate(
                profile,
                winners,
                returns,
                run.settings,
                previous=held[profile] if held is not None else None,
            )
            for profile in optimise.PROFILES
        }
    except optimise.InfeasibleCap as error:
        raise optimise.InfeasibleCap(
            f"weights[{run.key}]: sleeve {run.sleeve.name!r}: {error}"
        ) from error


def _diagnostics(allocations: dict[str, optimise.Allocation]) -> pd.DataFrame:
    """One row per profile: the solver, its status and timing, the fallback and the caps."""
    return pd.DataFrame(
        [[getattr(a, c) for c in DIAGNOSTIC_COLUMNS] for a in allocations.values()],
        index=pd.Index(list(allocations), name="profile"),
        columns=list(DIAGNOSTIC_COLUMNS),
    ).astype({"objective": float, "seconds": float, "cluster_cap": float})


def _weights_metadata(
    run: Run, table: pd.DataFrame, diagnostics: pd.DataFrame, previous: PreviousRun | None
):
    settings = run.settings
    return {
        "winners": len(table),
        "weights": stage.table(table.reset_index()),
        "diagnostics": stage.table(diagnostics.reset_index()),
        "previous_run": stage.previous_run_note(run, previous),
        "covariance": f"Ledoit-Wolf over the last {settings.train} bars; cap {settings.cap:.0%}",
    }


def _weights_evaluations(
    run: Run, table: pd.DataFrame, diagnostics: pd.DataFrame, winners: pd.DataFrame
) -> list[Evaluation]:
    """The weights contract per profile (blocking) and the solver status (a warning)."""
    settings = run.settings
    return [
        Evaluation(
            WEIGHTS_CONTRACT,
            allocation_contracts.weights_violations(
                table,
                winners=winners.index,
                cap=settings.cap,
                infeasible_cap=settings.infeasible_cap,
                clusters=winners["cluster"],
                cluster_cap=settings.cluster_cap,
                as_of=run.as_of,
            ),
        ),
        Evaluation(
            SOLVER_STATUS,
            allocation_contracts.solver_violations(diagnostics, as_of=run.as_of),
            severity=dg.AssetCheckSeverity.WARN,
        ),
    ]


def _cash_reasons(window: ReturnsWindow, settings, result) -> dict:
    """Per policy, the windows it held cash in by reason (``backtest_contracts.cash_reasons``),
    from the alphas of those windows recomputed exactly as the walk-forward computed them
    (``policy.window_alpha``). Only called when ``backtest_complete`` fails."""
    history = window.history
    volume = window.history_dollar_volume.reindex(index=history.index, columns=history.columns)
    spans = {w.index: (w.train.start, w.train.stop) for w in result.windows}
    held_cash = sorted(
        {k for by_window in result.targets.values() for k, w in by_window.items() if not len(w)}
    )
    alphas = {
        k: policy.window_alpha(
            spans[k],
            history=history,
            dollar_volume=volume,
            defects=window.defects,
            settings=settings,
            scorers=policy.SCORERS,
        )
        for k in held_cash
    }
    return backtest_contracts.cash_reasons(
        result.targets,
        alphas,
        scorers=policy.SCORERS,
        min_universe=settings.min_universe,
        cap=settings.cap,
    )


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="synthesis",
    kinds={"pandas", "matplotlib", "parquet"},
    ins={"previous": previous_run("backtest")},
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
def backtest(
    context: dg.AssetExecutionContext,
    returns: ReturnsWindow,
    previous: PreviousRun | None,
    lake: ParquetLake,
    ray: RayResource,
):
    """Walk-forward out-of-sample returns and metrics per policy, and the champion verdict.

    Policies: every scorer × profile replaying the production policy on point-in-time windows,
    plus the two equal-weight baselines. The incumbent is the previous run's champion (the
    sleeve's newest run in the week before, a declared input); without it the best candidate
    becomes champion.
    Window outcomes are reused from, and added to, the lake's window cache (``cache/windows``);
    the windows still to compute fan out through the ``ray`` resource (serial in process, or Ray).
    """
    run = run_of(context)
    incumbent = previous.value.champion if previous is not None else None
    fanout = ray_fanout.task_map(ray)
    started = time.perf_counter()
    outcome = policy.tournament(
        returns, run.settings, incumbent=incumbent, cache=lake_window_cache(lake), map_tasks=fanout
    )
    how = ray_fanout.tournament_metadata(fanout, time.perf_counter() - started)
    complete = Evaluation(BACKTEST_COMPLETE, _backtest_violations(run, outcome, returns))
    if outcome.verdict is None:
        # No candidate ever traded: nothing is stored and the contract stops the run.
        yield from checks.emit("backtest", run.key, None, metadata=how, evaluations=[complete])
        return
    stored = policy.record(outcome, incumbent=incumbent, dates=returns.history.index)
    plot = _equity_curve(run, stored, lake)
    metadata = _backtest_metadata(run, outcome, stored, previous, plot)
    yield from stage.emit(
        run, "backtest", stored, metadata={**metadata, **how}, evaluations=[complete]
    )


def _backtest_violations(
    run: Run, outcome: policy.TournamentOutcome, returns: ReturnsWindow
) -> pd.DataFrame:
    """The ``backtest_complete`` violations, naming why the failing policies held cash, or that
    nobody can be crowned yet."""
    result = outcome.result
    violations = backtest_contracts.backtest_violations(
        result.returns, outcome.metrics, as_of=run.as_of
    )
    if not violations.empty:
        # Name the cause: why the failing policies held cash, window by window.
        violations = backtest_contracts.backtest_violations(
            result.returns,
            outcome.metrics,
            as_of=run.as_of,
            cash=_cash_reasons(returns, run.settings, result),
            windows=len(result.windows),
        )
    if outcome.verdict is None and violations.empty:
        violations = backtest_contracts.no_champion(result.returns, as_of=run.as_of)
    return violations


def _equity_curve(run: Run, stored: TournamentRecord, lake: ParquetLake):
    """The champion's and the baselines' equity curves as a PNG beside the stored value."""
    png = equity_plot(
        stored.returns,
        champion=stored.champion,
        baselines=list(policy.BASELINES),
        title=f"{run.sleeve.name} walk-forward to {run.as_of:%Y-%m-%d}",
    )
    plot_path = lake.figure(["backtest"], run.key)
    write_file(png, plot_path)
    return plot_path


def _backtest_metadata(
    run: Run,
    outcome: policy.TournamentOutcome,
    stored: TournamentRecord,
    previous: PreviousRun | None,
    plot_path,
) -> dict[str, object]:
    verdict, reuse, metrics = outcome.verdict, outcome.reuse, stored.metrics
    champion = verdict.champion
    shown = metrics.loc[[champion, *policy.BASELINES]]
    return {
        "champion": champion,
        "challenger": verdict.challenger,
        "incumbent": (previous.value.champion if previous is not None else None) or "none",
        "previous_run": stage.previous_run_note(run, previous),
        "replaced_incumbent": verdict.replaced,
        "rule": verdict.rule,
        "sharpe": float(metrics.loc[champion, "sharpe"]),
        "max_drawdown": float(metrics.loc[champion, "max_drawdown"]),
        "champion_vs_baselines": stage.table(shown.reset_index()),
        "metrics": stage.table(metrics.reset_index()),
        "equity_curve_file": dg.MetadataValue.path(str(plot_path)),
        "windows": reuse.windows,
        "windows_computed": reuse.windows_computed,
        "windows_reused": reuse.windows_reused,
        "alphas_computed": reuse.alphas_computed,
        "alphas_reused": reuse.alphas_reused,
        "out_of_sample_days": len(stored.returns),
        "target_rows": len(stored.targets),
    }


@dg.asset(
    partitions_def=sleeve_run,
    output_required=False,
    group_name="synthesis",
    kinds={"pandas", "parquet"},
    ins={"previous": previous_run("portfolio")},
    check_specs=checks.specs_for(
        "portfolio",
        [
            (
                PORTFOLIO_CONTRACT,
                "The champion's target weights: finite, long-only, within the cap, summing to 1 "
                "(or empty: cash), only symbols of the run's eligible universe.",
                True,
            )
        ],
        sleeve_run,
    ),
)
def portfolio(
    context: dg.AssetExecutionContext,
    returns: ReturnsWindow,
    backtest: TournamentRecord,
    previous: PreviousRun | None,
    lake: ParquetLake,
):
    """What production acts on: the champion policy's target weights for the as-of date, and the
    trades and one-sided turnover from the previous run's portfolio (the sleeve's newest run in
    the week before, a declared input: Friday's on a weekday sleeve's Monday; without it the book
    is built from cash).

    The decision is ``policy.decide_portfolio`` on the run's point-in-time history, with the
    champion's own last walk-forward target as the turnover-penalty reference, so it is the
    policy the tournament measured (and equals ``backtest``'s champion weights).
    """
    run = run_of(context)
    champion = backtest.champion
    windows = policy.walk_forward_count(returns.history.index, run.settings)
    held = policy.last_target(backtest.targets, champion, windows)
    # The newest window's alpha comes from the window cache the tournament filled.
    target = policy.decide_portfolio(
        returns, run.settings, champion, held, cache=lake_window_cache(lake)
    )
    book = previous.value.weights["weight"] if previous is not None else None
    stored = policy.portfolio_record(target, book)
    yield from stage.emit(
        run,
        "portfolio",
        stored,
        metadata=_portfolio_metadata(run, champion, target, stored, previous),
        evaluations=[_portfolio_evaluation(run, champion, target, returns.returns.columns)],
    )


def _portfolio_metadata(
    run: Run,
    champion: str,
    target: pd.Series,
    stored: PortfolioRecord,
    previous: PreviousRun | None,
) -> dict[str, object]:
    shown = stored.trades[stored.trades["trade"].abs() > 0].reset_index()
    return {
        "policy": champion,
        "names": int((target > 0).sum()),
        "turnover": round(stored.turnover, 9),
        "largest_weight": float(target.max()) if len(target) else 0.0,
        "cash": len(target) == 0,
        "portfolio": stage.table(stored.weights.reset_index()),
        "trades": stage.table(shown),
        "previous_run": stage.previous_run_note(run, previous),
    }


def _portfolio_evaluation(run: Run, champion: str, target: pd.Series, eligible) -> Evaluation:
    return Evaluation(
        PORTFOLIO_CONTRACT,
        allocation_contracts.portfolio_violations(
            target,
            policy=champion,
            eligible=eligible,
            cap=run.settings.cap,
            infeasible_cap=run.settings.infeasible_cap,
            as_of=run.as_of,
        ),
    )
