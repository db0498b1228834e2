"""The as-promoted record: what the selection process would have earned, window by window.

Each policy's out-of-sample stream answers "what if this policy had been run all along"; the
champion's stream, read over every past date, is a choice made at the end (hindsight). The
as-promoted record replays the promotion rule itself through the walk-forward: at each window's
decision date the rule (``backtest.champion_verdict``) compares the policies on their
out-of-sample returns known then (dated on or before the decision) against the incumbent the
previous window crowned, exactly as a production run ending that day would have. The crowned
policy's target is then held through the window's test slice (``backtest.hold``), so a switch of
champion pays the trade from the old book to the new target, and the first crowned window builds
its book from cash, as a first run does.

A window whose decision date knows no finite candidate Sharpe yet (the first window always: no
out-of-sample day precedes it) crowns nobody; its incumbent, if any, is kept. Before the first
crowning the record is empty (there was no champion to follow), so the as-promoted stream starts
at the first window whose decision could crown.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tvq_assets.quant import backtest, metrics

# One row per walk-forward window: who the rule crowned with what was known at its decision.
PROMOTION_COLUMNS = (
    "window",
    "decision",
    "rebalance",
    "known_days",
    "incumbent",
    "challenger",
    "champion",
    "replaced",
    "psr",
    "deflated_sharpe",
)
# One row per out-of-sample date of the stream: the net return and the policy held that day.
STREAM_COLUMNS = ("return", "policy", "window")


@dataclass(frozen=True)
class AsPromoted:
    """The replayed promotion rule: ``promotions`` (:data:`PROMOTION_COLUMNS`, one row per
    window), ``stream`` (:data:`STREAM_COLUMNS` by date) and ``turnover`` (one-sided, by
    rebalance date) of the crowned policies held in turn, and the stream's ``summary`` numbers
    (``as_promoted_*``: Sharpe, max drawdown, CAGR, PSR, DSR, days, switches)."""

    promotions: pd.DataFrame
    stream: pd.DataFrame
    turnover: pd.Series
    summary: dict[str, float]


def empty_promotions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "window": pd.Series(dtype=np.int64),
            "decision": pd.Series(dtype="datetime64[ns]"),
            "rebalance": pd.Series(dtype="datetime64[ns]"),
            "known_days": pd.Series(dtype=np.int64),
            "incumbent": pd.Series(dtype=object),
            "challenger": pd.Series(dtype=object),
            "champion": pd.Series(dtype=object),
            "replaced": pd.Series(dtype=bool),
            "psr": pd.Series(dtype=float),
            "deflated_sharpe": pd.Series(dtype=float),
        }
    )


def empty_stream() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "return": pd.Series(dtype=float),
            "policy": pd.Series(dtype=object),
            "window": pd.Series(dtype=np.int64),
        },
        index=pd.DatetimeIndex([], name="date"),
    )


def crowned_at(
    known: pd.DataFrame,
    *,
    incumbent: str | None,
    candidates: Sequence[str],
    periods_per_year: int,
    promotion: backtest.Promotion,
) -> backtest.Verdict | None:
    """The verdict a run whose out-of-sample returns are ``known`` (dates × policy) would reach
    against ``incumbent``: the tournament's own rule and guard (None when no candidate has a
    finite Sharpe yet, as a run with nothing to crown)."""
    if len(known) == 0:
        return None
    table = metrics.metrics_table(known, periods_per_year=periods_per_year)
    if not np.isfinite(table.loc[list(candidates), "sharpe"].to_numpy(dtype=float)).any():
        return None
    return backtest.champion_verdict(
        table,
        known,
        incumbent=incumbent,
        periods_per_year=periods_per_year,
        promotion=promotion,
        candidates=candidates,
    )


def replay(
    result: backtest.BacktestResult,
    history: pd.DataFrame,
    *,
    candidates: Sequence[str],
    periods_per_year: int,
    promotion: backtest.Promotion,
    cost_rate: float,
) -> AsPromoted:
    """Replay the promotion rule at every window of ``result`` (the walk-forward over
    ``history``, dates × symbols) and hold the crowned policies' targets in turn.

    At window k the verdict reads every policy's out-of-sample returns dated on or before its
    decision date (the close of its last training row) and takes window k−1's champion as the
    incumbent (none before the first crowning: the first verdict crowns the best candidate, as a
    first run does)."""
    dates = history.index
    ordered = sorted(result.windows, key=lambda window: window.test.start)
    incumbent: str | None = None
    rows, crowned, held_windows = [], {}, []
    for window in ordered:
        decision = dates[window.train.stop - 1]
        known = result.returns.loc[result.returns.index <= decision]
        verdict = crowned_at(
            known,
            incumbent=incumbent,
            candidates=candidates,
            periods_per_year=periods_per_year,
            promotion=promotion,
        )
        champion = verdict.champion if verdict is not None else incumbent
        numbers = verdict.numbers if verdict is not None else {}
        rows.append(
            {
                "window": window.index,
                "decision": decision,
                "rebalance": dates[window.test.start],
                "known_days": len(known),
                "incumbent": incumbent or "",
                "challenger": verdict.challenger if verdict is not None else "",
                "champion": champion or "",
                "replaced": bool(verdict.replaced) if verdict is not None else False,
                "psr": float(numbers.get("psr", math.nan)),
                "deflated_sharpe": float(numbers.get("deflated_sharpe", math.nan)),
            }
        )
        if champion is not None:
            crowned[window.index] = result.targets[champion][window.index]
            held_windows.append((window, champion))
        incumbent = champion
    promotions = pd.DataFrame(rows, columns=list(PROMOTION_COLUMNS)) if rows else None
    if promotions is None:
        promotions = empty_promotions()
    if not held_windows:
        return AsPromoted(promotions, empty_stream(), pd.Series(dtype=float), _summary(None, None))
    net, turnover = backtest.hold(
        crowned, history, [window for window, _ in held_windows], cost_rate=cost_rate
    )
    # Each date belongs to the last window rebalanced on or before it (``hold`` truncates
    # overlapping slices the same way).
    starts = pd.DatetimeIndex([dates[window.test.start] for window, _ in held_windows])
    owner = starts.searchsorted(net.index, side="right") - 1
    stream = pd.DataFrame(
        {
            "return": net.to_numpy(dtype=float),
            "policy": [held_windows[i][1] for i in owner],
            "window": np.array([held_windows[i][0].index for i in owner], dtype=np.int64),
        },
        index=pd.DatetimeIndex(net.index, name="date"),
    )
    trials = result.returns.loc[stream.index, list(candidates)]
    return AsPromoted(
        promotions,
        stream,
        turnover,
        _summary(stream, turnover, trials=trials, periods_per_year=periods_per_year),
    )


def _summary(
    stream: pd.DataFrame | None,
    turnover: pd.Series | None,
    *,
    trials: pd.DataFrame | None = None,
    periods_per_year: int = 1,
) -> dict[str, float]:
    """The stream's record: the metrics every policy has, plus PSR (against a zero Sharpe) and
    DSR (against the best Sharpe the candidates tried would show by luck on the same dates)."""
    names = ("sharpe", "max_drawdown", "cagr", "psr", "deflated_sharpe", "days", "switches")
    if stream is None or turnover is None or trials is None:
        return {f"as_promoted_{name}": math.nan for name in names} | {"as_promoted_days": 0.0}
    returns = stream["return"]
    table = metrics.metrics_table(
        returns.to_frame("as_promoted"),
        periods_per_year=periods_per_year,
        turnover=turnover.to_frame("as_promoted"),
    ).loc["as_promoted"]
    per_period = [backtest._per_period_sharpe(trials[c].dropna().to_numpy()) for c in trials]
    switches = int((stream["policy"] != stream["policy"].shift()).sum()) - 1
    return {
        "as_promoted_sharpe": float(table["sharpe"]),
        "as_promoted_max_drawdown": float(table["max_drawdown"]),
        "as_promoted_cagr": float(table["cagr"]),
        "as_promoted_psr": metrics.probabilistic_sharpe_ratio(returns),
        "as_promoted_deflated_sharpe": metrics.deflated_sharpe_ratio(
            returns, trial_sharpes=[t if math.isfinite(t) else math.nan for t in per_period]
        ),
        "as_promoted_days": float(len(stream)),
        "as_promoted_switches": float(max(switches, 0)),
    }
