"""The wording of the terminal summary of ``tvq demo`` / ``tvq production`` (printed by
``tvq_assets.cli``): plain functions from stored records to lines, so each phrase is tested alone.

Every Sharpe ratio is shown with the out-of-sample span it was measured on and the number of
rebalances in it (a Sharpe of 1.6 over 40 days and over two years are different claims).
"""

import math

import pandas as pd

# A weight shown as 0.0% is no holding to the reader: listed apart as a count.
SHOWN_WEIGHT = 0.0005


def span(index: pd.Index, rebalances: float | None) -> str:
    """``2026-04-12 .. 2026-12-06, 239 days, 24 rebalances`` (``days``: out-of-sample dates)."""
    if len(index) == 0:
        return "no out-of-sample dates"
    count = (
        "" if rebalances is None or math.isnan(rebalances) else f", {int(rebalances)} rebalances"
    )
    return f"{index[0]:%Y-%m-%d} .. {index[-1]:%Y-%m-%d}, {len(index)} days{count}"


def metrics_line(label: str, sharpe: float, drawdown: float, cagr: float, measured: str) -> str:
    return (
        f"     {label:<28} sharpe {sharpe:6.2f}  max drawdown {drawdown:7.1%}  "
        f"CAGR {cagr:7.1%}  ({measured})"
    )


def policy_span(returns: pd.DataFrame, metrics: pd.DataFrame, policy: str) -> str:
    """The out-of-sample span of ``policy``'s column in a walk-forward's returns."""
    dates = returns[policy].dropna().index if policy in returns else pd.Index([])
    rebalances = metrics.loc[policy].get("rebalances") if policy in metrics.index else None
    return span(dates, None if rebalances is None else float(rebalances))


def holdings(weights: pd.Series) -> str:
    """``A 25.0%, B 22.0%`` largest first; weights that round to 0.0% are counted, not listed;
    ``cash`` when nothing is held."""
    ordered = weights[weights > 0].sort_values(ascending=False)
    shown = ordered[ordered >= SHOWN_WEIGHT]
    text = ", ".join(f"{symbol} {weight:.1%}" for symbol, weight in shown.items()) or "cash"
    tiny = len(ordered) - len(shown)
    if tiny:
        text += f" (and {tiny} name(s) below {SHOWN_WEIGHT:.2%})"
    return text


def turnover(value: float, from_cash: bool) -> str:
    """The turnover line: against the previous run's book, or built from cash when there is none."""
    if from_cash:
        return f"     turnover {value:.1%}: built from cash (first run: no previous portfolio)"
    return f"     turnover {value:.1%} against the previous run's portfolio"


def selection_label(champion: str | None) -> str:
    """What the ``selection`` asset's winners are: the Log-MPS scorer's pick, which is the
    champion's own only when the champion scores with Log-MPS."""
    scorer = champion.split("/")[0] if champion else None
    if scorer is None or scorer == "log_mps":
        return "winners"
    return f"selection (log_mps; the champion {champion} picks its own names, held below)"


def deflated_sharpe_note(verdict: pd.Series) -> str | None:
    """A plain line when the champion's deflated Sharpe is below the policy's bound: the best of
    the candidates may look good by luck alone."""
    deflated = float(verdict.get("deflated_sharpe", math.nan))
    bound = float(verdict.get("min_deflated_sharpe", math.nan))
    if not deflated < bound:  # NaN (an older record) says nothing
        return None
    return (
        f"   NOTE: the champion's deflated Sharpe {deflated:.2f} is below the bound {bound:g}: "
        f"its lead over the {int(verdict.get('trials', 0))} candidates may be luck"
    )


def trails_baseline_note(
    metrics: pd.DataFrame, policy: str, baseline: str, *, what: str, against: str
) -> str | None:
    """A plain line when ``policy``'s Sharpe (``what``, e.g. "the meta-portfolio") is below its
    equal-weight ``baseline``'s (``against``, e.g. "the equal weight of its sleeves")."""
    if policy not in metrics.index or baseline not in metrics.index:
        return None
    mine, theirs = float(metrics.loc[policy, "sharpe"]), float(metrics.loc[baseline, "sharpe"])
    if not mine < theirs:
        return None
    return (
        f"   NOTE: {what} trails {against} ({baseline}): sharpe {mine:.2f} against "
        f"{theirs:.2f} over the same dates"
    )
