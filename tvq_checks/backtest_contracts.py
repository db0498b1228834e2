"""The walk-forward backtest's contract: every policy has returns on every window, finite metrics.

Nothing here knows about Dagster; the ``backtest`` asset turns the violations into its
``backtest_complete`` check.
"""

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tvq_assets.quant.window_cache import UNIVERSE_PART
from tvq_checks.contracts import VIOLATION_COLUMNS

# The baselines' rules (``policy.baseline_targets``): the universe, and the first scorer's winners.
UNIVERSE_BASELINE = "baseline_universe"
WINNERS_BASELINE = "baseline_winners"


def cash_reason(
    name: str, alpha: pd.DataFrame, *, scorers: Sequence[str], min_universe: int, cap: float
) -> str:
    """Why policy ``name`` held cash in a window whose alpha (``policy.alpha_frame``: the universe
    and each scorer's winners, empty when the universe was too small) is ``alpha``: the only ways
    a walk-forward target is empty (``policy.decide_target``, ``policy.baseline_targets``)."""
    parts = alpha["part"].to_numpy()
    if not (parts == UNIVERSE_PART).any():
        return f"universe smaller than min_universe {min_universe}"
    if name == UNIVERSE_BASELINE:
        return "empty universe"
    scorer = scorers[0] if name == WINNERS_BASELINE else name.split("/")[0]
    winners = int((parts == scorer).sum())
    if winners == 0:
        return f"no {scorer} winner selected"
    return f"cap {cap:.0%} infeasible for {winners} winners (infeasible_cap: fail)"


def cash_reasons(
    targets: Mapping[str, Mapping[int, pd.Series]],
    alphas: Mapping[int, pd.DataFrame],
    *,
    scorers: Sequence[str],
    min_universe: int,
    cap: float,
) -> dict[str, Counter]:
    """Per policy, how many windows held cash for each reason (:func:`cash_reason`).
    ``targets``: policy -> window index -> target weights (empty: cash); ``alphas``: window
    index -> that window's alpha frame, for every window some policy held cash in."""
    return {
        name: Counter(
            cash_reason(name, alphas[k], scorers=scorers, min_universe=min_universe, cap=cap)
            for k, weights in by_window.items()
            if not len(weights)
        )
        for name, by_window in targets.items()
    }


def _cash_note(reasons: Counter | None, windows: int) -> str:
    if not reasons:
        return ""
    told = ", ".join(f"{count} x {reason}" for reason, count in sorted(reasons.items()))
    return f"; held cash in {sum(reasons.values())} of {windows} windows: {told}"


def backtest_violations(
    returns: pd.DataFrame,
    metrics: pd.DataFrame,
    *,
    as_of: pd.Timestamp,
    cash: Mapping[str, Counter] | None = None,
    windows: int = 0,
) -> pd.DataFrame:
    """One row per policy with missing out-of-sample days or a non-finite Sharpe or drawdown
    (a single out-of-sample day has no Sharpe and is not a violation; none at all is).

    ``returns``: out-of-sample dates × policy; ``metrics``: ``metrics_table`` of it (index policy,
    columns ``sharpe`` and ``max_drawdown``). A policy absent from ``metrics`` is a violation too.
    ``cash``: per policy, the windows (of ``windows``) it held cash in by reason
    (:func:`cash_reasons`); a violation names them, since a policy that held cash throughout has
    no Sharpe ratio and the reason is the cause to fix.
    """
    missing = returns.isna().sum()
    table = metrics.reindex(returns.columns)
    sharpe = table["sharpe"] if "sharpe" in table else pd.Series(np.nan, index=returns.columns)
    drawdown = (
        table["max_drawdown"]
        if "max_drawdown" in table
        else pd.Series(np.nan, index=returns.columns)
    )
    # One out-of-sample day has no Sharpe ratio (a standard deviation needs two): a young
    # sleeve's first window ends there every `step` days, a record too short, not a broken one.
    sharpe_defined = np.isfinite(sharpe.to_numpy(dtype=float)) | (len(returns) < 2)
    finite = sharpe_defined & np.isfinite(drawdown.to_numpy(dtype=float))
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
            f"sharpe {sharpe[name]}, max drawdown {drawdown[name]}"
            f"{_cash_note((cash or {}).get(name), windows)} [backtest_complete]",
        )
        for name in names
    ]
    frame = pd.DataFrame(rows, columns=list(VIOLATION_COLUMNS))
    frame["date"] = pd.to_datetime(frame["date"])
    frame["value"] = frame["value"].astype(float)
    return frame


def no_champion(returns: pd.DataFrame, *, as_of: pd.Timestamp) -> pd.DataFrame:
    """The violation of a tournament that can crown nobody although no policy broke the contract:
    a first run whose record is one out-of-sample day long (no Sharpe ratio, no incumbent)."""
    message = (
        f"no champion: {len(returns)} out-of-sample day(s) give no Sharpe ratio and there is no "
        "incumbent to hold; the next run, with one more day, can crown one [backtest_complete]"
    )
    frame = pd.DataFrame(
        [("tournament", pd.Timestamp(as_of), float(len(returns)), "backtest_complete", message)],
        columns=list(VIOLATION_COLUMNS),
    )
    frame["date"] = pd.to_datetime(frame["date"])
    return frame
