"""Figures of the synthesis layer, rendered to PNG bytes (no Dagster, no I/O)."""

import io

import pandas as pd


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
