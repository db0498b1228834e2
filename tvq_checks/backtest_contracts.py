"""The walk-forward backtest's contract: every policy has returns on every window, finite metrics.

Nothing here knows about Dagster; the ``backtest`` asset turns the violations into its
``backtest_complete`` check.
"""

import numpy as np
import pandas as pd

from tvq_checks.contracts import VIOLATION_COLUMNS


def backtest_violations(
    returns: pd.DataFrame, metrics: pd.DataFrame, *, as_of: pd.Timestamp
) -> pd.DataFrame:
    """One row per policy with missing out-of-sample days or a non-finite Sharpe or drawdown.

    ``returns``: out-of-sample dates × policy; ``metrics``: ``metrics_table`` of it (index policy,
    columns ``sharpe`` and ``max_drawdown``). A policy absent from ``metrics`` is a violation too.
    """
    missing = returns.isna().sum()
    table = metrics.reindex(returns.columns)
    sharpe = table["sharpe"] if "sharpe" in table else pd.Series(np.nan, index=returns.columns)
    drawdown = (
        table["max_drawdown"]
        if "max_drawdown" in table
        else pd.Series(np.nan, index=returns.columns)
    )
    finite = np.isfinite(sharpe.to_numpy(dtype=float)) & np.isfinite(drawdown.to_numpy(dtype=float))
    bad = (missing.to_numpy() > 0) | ~finite
    if len(returns) == 0:
        bad[:] = True
    names = returns.columns[bad]
    rows = [
        (
            name,
            pd.Timestamp(as_of),
            float(missing[name]),
            "backtest_complete",
            f"{name}: {int(missing[name])} missing out-of-sample days of {len(returns)}, "
            f"sharpe {sharpe[name]}, max drawdown {drawdown[name]} [backtest_complete]",
        )
        for name in names
    ]
    frame = pd.DataFrame(rows, columns=list(VIOLATION_COLUMNS))
    frame["date"] = pd.to_datetime(frame["date"])
    frame["value"] = frame["value"].astype(float)
    return frame
