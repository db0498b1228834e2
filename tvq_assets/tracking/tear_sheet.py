"""The tear sheet: PNG figures of a walk-forward's out-of-sample returns."""

import io

import numpy as np
import pandas as pd

# The baselines a tear sheet draws beside the champion (when the returns hold them).
BASELINES = ("baseline_universe", "baseline_winners")


def _png(figure) -> bytes:
    from matplotlib import pyplot

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    pyplot.close(figure)
    return buffer.getvalue()


def tear_sheet(
    returns: pd.DataFrame, turnover: pd.DataFrame | None, *, champion: str, title: str
) -> dict[str, bytes]:
    """PNG figures of the out-of-sample returns: drawdown, rolling Sharpe (63 periods), monthly
    returns of the champion and its turnover per rebalance. The equity curve is not among them:
    the asset renders it once, beside its value, and the IO manager logs that file
    (``tracking.describe.stored_figures``)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    shown = [champion, *[b for b in BASELINES if b in returns.columns]]
    equity = (1 + returns[shown].fillna(0.0)).cumprod()
    underwater = equity / equity.cummax() - 1
    figures = {}

    figure, axes = pyplot.subplots(figsize=(8, 3), dpi=90)
    for name in shown:
        axes.plot(underwater.index, underwater[name], label=name)
    axes.set_title(f"drawdown — {title}")
    axes.legend(loc="lower left", fontsize=8)
    axes.grid(alpha=0.3)
    figures["backtest/drawdown.png"] = _png(figure)

    rolling = returns[shown].rolling(63)
    sharpe = rolling.mean() / rolling.std() * np.sqrt(365 if len(returns) else 252)
    figure, axes = pyplot.subplots(figsize=(8, 3), dpi=90)
    for name in shown:
        axes.plot(sharpe.index, sharpe[name], label=name)
    axes.axhline(0, color="0.3", linewidth=0.8)
    axes.set_title("rolling Sharpe (63 periods, annualised)")
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(alpha=0.3)
    figures["backtest/rolling_sharpe.png"] = _png(figure)

    monthly = (1 + returns[champion].fillna(0.0)).groupby(
        [returns.index.year, returns.index.month]
    ).prod() - 1
    grid = monthly.unstack()
    figure, axes = pyplot.subplots(figsize=(8, 0.5 + 0.45 * len(grid)), dpi=90)
    limit = float(np.nanmax(np.abs(grid.to_numpy()))) or 0.01
    axes.imshow(grid.to_numpy(), cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(len(grid.columns)), [str(m) for m in grid.columns])
    axes.set_yticks(range(len(grid.index)), [str(y) for y in grid.index])
    for (row, column), cell in np.ndenumerate(grid.to_numpy()):
        if np.isfinite(cell):
            axes.text(column, row, f"{cell:.1%}", ha="center", va="center", fontsize=7)
    axes.set_title(f"monthly returns of {champion}")
    figures["backtest/monthly_returns.png"] = _png(figure)

    if turnover is not None and champion in turnover.columns:
        figure, axes = pyplot.subplots(figsize=(8, 2.5), dpi=90)
        axes.bar(range(len(turnover)), turnover[champion].to_numpy(), color="tab:purple")
        axes.set_title(f"one-sided turnover per rebalance of {champion}")
        axes.set_xlabel("rebalance")
        figures["backtest/turnover.png"] = _png(figure)
    return figures
