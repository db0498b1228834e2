"""Walk-forward backtest: windows on a calendar grid, a sequential holding pass, the verdict.

1. :func:`grid_windows` cuts the returns frame into rolling windows whose decision dates sit on a
   calendar grid independent of the as-of date, so consecutive runs share their windows. Each
   window's targets are decided from its training rows only (``tvq_assets.quant.policy.
   walk_forward``, which fans the decisions out and validates them with
   :func:`validated_weights`).
2. :func:`hold` walks the windows in order, rebalancing to each target and letting the weights
   drift with prices; it is cheap and sequential because each rebalance depends on the drift of the
   previous holding. :func:`stitch` holds every policy's targets and assembles the result.
3. :func:`champion_verdict` ranks the policies and applies the promotion rule.

Returns are simple per-period returns on the sleeve's calendar (dates x symbols, see
``tvq_assets.quant.metrics`` for the metric conventions). Weights are fractions of portfolio
value, long-only, summing to 1; an empty weight Series means the policy sits in cash (return 0).
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tvq_assets.quant.metrics import deflated_sharpe_ratio, probabilistic_sharpe_ratio

TaskMap = Callable[[Callable[[Any], Any], Sequence[Any]], Sequence[Any]]
"""``map_tasks(function, items)``: ``[function(item) for item in items]`` in order, possibly in
parallel (threads, processes, Ray); ``function`` is picklable (module-level or a partial)."""

# The fixed origin of the walk-forward grid (a Monday, so weekday counts start on a weekday).
GRID_EPOCH = np.datetime64("1970-01-05", "D")

_WEIGHT_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Window:
    """One walk-forward step: positional row slices of the returns frame (train before test)."""

    index: int
    train: slice
    test: slice


def grid_ordinals(dates: pd.DatetimeIndex, calendar: str) -> np.ndarray:
    """Each date's position on the sleeve's calendar counted from :data:`GRID_EPOCH`: calendar
    days for ``crypto``, weekdays (Monday–Friday, holidays included) for ``weekday``."""
    days = np.asarray(dates.values.astype("datetime64[D]"))
    if calendar == "crypto":
        return (days - GRID_EPOCH).astype(np.int64)
    if calendar == "weekday":
        return np.busday_count(GRID_EPOCH, days).astype(np.int64)
    raise ValueError(f"unknown calendar {calendar!r}; expected 'crypto' or 'weekday'")


def grid_windows(
    dates: pd.DatetimeIndex, *, train: int, test: int, step: int, calendar: str
) -> list[Window]:
    """Walk-forward windows whose decision dates sit on a fixed calendar grid.

    The grid's anchors are every ``step``-th day of the sleeve's calendar counted from
    :data:`GRID_EPOCH` (calendar days for ``crypto``, weekdays for ``weekday`` sleeves), whatever
    the as-of date. A window decides at the close of the last row dated on or before an anchor
    (a holiday anchor falls back to the session before it; several anchors in one gap make one
    window), trains on the ``train`` rows ending there and tests on the next ``test`` rows, cut at
    the last row. A row is a decision row only once the next row exists (whether an anchor lies
    before the next row is not known earlier), so the newest row never decides and rows appended
    later never move an earlier decision: runs on consecutive dates share every window but the
    newest, and the oldest leaves when the history's start passes its training rows.
    """
    for name, value in (("train", train), ("test", test), ("step", step)):
        if value < 1:
            raise ValueError(f"walk-forward {name} must be at least 1 row, got {value}")
    n_rows = len(dates)
    if n_rows < 2:
        return []
    ordinal = grid_ordinals(pd.DatetimeIndex(dates), calendar)
    # Row p decides when an anchor (a multiple of step) lies in [ordinal[p], ordinal[p + 1]).
    anchor = np.floor_divide(ordinal[1:] - 1, step) > np.floor_divide(ordinal[:-1] - 1, step)
    decisions = [int(p) for p in np.flatnonzero(anchor) if p >= train - 1]
    return [
        Window(
            index=k,
            train=slice(p - train + 1, p + 1),
            test=slice(p + 1, min(p + 1 + test, n_rows)),
        )
        for k, p in enumerate(decisions)
    ]


def validated_weights(weights: pd.Series, symbols: pd.Index, where: str) -> pd.Series:
    """Float weights indexed by symbol, checked long-only and fully invested (or empty = cash)."""
    if not isinstance(weights, pd.Series):
        raise TypeError(f"{where}: a policy must return a pandas Series, got {type(weights)}")
    values = weights.to_numpy(dtype=np.float64)
    weights = pd.Series(values, index=weights.index.rename("symbol"), name=weights.name)
    if not len(values):
        return weights
    unknown = symbols.get_indexer(weights.index) < 0
    if unknown.any():
        raise ValueError(
            f"{where}: weights for symbols absent from returns: {list(weights.index[unknown][:5])}"
        )
    if weights.index.has_duplicates:
        raise ValueError(f"{where}: duplicate symbols in the weights")
    if not np.isfinite(values).all() or (values < 0.0).any():
        raise ValueError(f"{where}: weights must be finite and >= 0 (long-only)")
    total = float(values.sum())
    if abs(total - 1.0) > _WEIGHT_SUM_TOLERANCE:
        raise ValueError(
            f"{where}: weights sum to {total:.8f}, expected 1 (or an empty Series for cash)"
        )
    return weights


def hold(
    targets: Mapping[int, pd.Series],
    returns: pd.DataFrame,
    windows: Sequence[Window],
    *,
    cost_rate: float,
) -> tuple[pd.Series, pd.Series]:
    """Hold each window's target through its test slice; daily net returns and turnover.

    For each window in order: rebalance at the close of the last training day from the drifted
    previous weights to the target. Every traded dollar pays ``cost_rate`` (the per-side rate, a
    fraction of the notional traded, e.g. 0.0014 for 14 bps): the cost ``cost_rate ·
    Σ|w_target − w_drifted|`` (a fraction of capital; selling A to buy B trades both legs) is
    subtracted from the gross return of the first test day. The reported turnover is one-sided,
    ``½·Σ|w_target − w_drifted|`` (1.0 = the whole book replaced once), so the cost is
    ``2 · cost_rate · turnover``. Between rebalances the weights drift,
    ``w ← w·(1 + r) / Σ w·(1 + r)``.

    Conventions:

    - The book starts in cash, so the first build-up trades ``Σ|w| = 1`` (costs ``cost_rate``,
      turnover 0.5); moving to cash (an empty target) likewise trades ``Σ|w_drifted|``.
    - Overlapping test slices (``step < test``): the next window rebalances at its own first test
      row and truncates the previous holding, so each out-of-sample date appears exactly once.
    - Gaps between test slices (``step > test``) are not traded and absent from the output.
    - A NaN return inside a test slice (a symbol not yet listed, or delisted) counts as 0 for that
      day: the position is carried at its last price until the next rebalance.

    Returns ``(net_returns, turnover)``: net simple returns indexed by out-of-sample date, and
    turnover indexed by each window's first test date.
    """
    if cost_rate < 0.0 or not math.isfinite(cost_rate):
        raise ValueError(f"cost_rate must be a finite number >= 0, got {cost_rate}")
    ordered = sorted(windows, key=lambda window: window.test.start)
    symbols = returns.columns
    values = returns.to_numpy(dtype=np.float64)
    weights = np.zeros(len(symbols))
    net_chunks: list[np.ndarray] = []
    date_chunks: list[np.ndarray] = []
    rebalance_positions: list[int] = []
    turnovers: list[float] = []
    for k, window in enumerate(ordered):
        start = window.test.start
        stop = window.test.stop
        if k + 1 < len(ordered):
            stop = min(stop, ordered[k + 1].test.start)
        if stop <= start:
            continue
        chosen = targets[window.index]
        held = symbols.get_indexer(chosen.index)
        if (held < 0).any():
            raise ValueError(
                f"window {window.index}: target weights name symbols absent from returns"
            )
        held_weights = chosen.to_numpy(dtype=np.float64)
        target = np.zeros(len(symbols))
        target[held] = held_weights
        notional = float(np.abs(target - weights).sum())  # notional bought plus sold
        turnover = 0.5 * notional
        # Only the held columns matter, which keeps a 1000-symbol universe cheap.
        growth = np.cumprod(1.0 + np.nan_to_num(values[start:stop, held], nan=0.0), axis=0)
        value = growth @ held_weights  # capital per unit at the rebalance, day by day
        previous = np.concatenate(([held_weights.sum()], value[:-1]))
        with np.errstate(divide="ignore", invalid="ignore"):
            gross = np.where(previous > 0.0, value / previous - 1.0, 0.0)
        gross[0] -= cost_rate * notional
        weights = np.zeros(len(symbols))
        if value[-1] > 0.0:
            weights[held] = held_weights * growth[-1] / value[-1]
        net_chunks.append(gross)
        date_chunks.append(np.arange(start, stop))
        rebalance_positions.append(start)
        turnovers.append(turnover)
    positions = np.concatenate(date_chunks) if date_chunks else np.array([], dtype=np.int64)
    net = pd.Series(
        np.concatenate(net_chunks) if net_chunks else np.array([], dtype=np.float64),
        index=returns.index[positions],
        dtype=np.float64,
    )
    traded = pd.Series(turnovers, index=returns.index[rebalance_positions], dtype=np.float64)
    return net, traded


@dataclass(frozen=True)
class BacktestResult:
    """Stitched out-of-sample results of every policy over the same windows."""

    returns: pd.DataFrame
    """Out-of-sample dates x policy, net simple returns."""
    turnover: pd.DataFrame
    """Rebalance dates x policy, one-sided turnover."""
    targets: dict[str, dict[int, pd.Series]] = field(repr=False)
    """Policy -> window index -> target weights."""
    windows: tuple[Window, ...]


def target_table(result: BacktestResult, dates: pd.Index) -> pd.DataFrame:
    """Every policy's target weights per rebalance, long: policy, rebalance (the first test date
    of the window, ``dates`` being the returns' index), window, symbol, weight. Cash is no row."""
    starts = {window.index: dates[window.test.start] for window in result.windows}
    rows = [
        pd.DataFrame(
            {
                "policy": name,
                "rebalance": starts[index],
                "window": index,
                "symbol": weights.index.astype(str),
                "weight": weights.to_numpy(dtype=float),
            }
        )
        for name, by_window in result.targets.items()
        for index, weights in by_window.items()
        if len(weights)
    ]
    columns = ["policy", "rebalance", "window", "symbol", "weight"]
    if not rows:
        return pd.DataFrame(columns=columns).astype({"weight": float, "window": int})
    return pd.concat(rows, ignore_index=True)[columns]


def stitch(
    returns: pd.DataFrame,
    targets: Mapping[str, Mapping[int, pd.Series]],
    windows: Sequence[Window],
    *,
    cost_rate: float,
) -> BacktestResult:
    """The :class:`BacktestResult` of every policy's targets (policy -> window index -> weights,
    already validated) held through ``windows`` (:func:`hold`)."""
    net: dict[str, pd.Series] = {}
    traded: dict[str, pd.Series] = {}
    for name in targets:
        net[name], traded[name] = hold(targets[name], returns, windows, cost_rate=cost_rate)
    stitched = pd.DataFrame(net)
    stitched.index.name = returns.index.name or "date"
    stitched.columns.name = "policy"
    turnover = pd.DataFrame(traded)
    turnover.index.name = returns.index.name or "date"
    turnover.columns.name = "policy"
    return BacktestResult(
        returns=stitched,
        turnover=turnover,
        targets={name: dict(by_window) for name, by_window in targets.items()},
        windows=tuple(windows),
    )


# Ranking metrics within this relative distance of each other are ties: float noise (HRP's
# arithmetic on a 50/50 book gives it 7e-16 more Sharpe than equal weight's) never decides.
RANKING_TIE_TOLERANCE = 1e-12


def ties(a: float, b: float) -> bool:
    """True when ranking values ``a`` and ``b`` are equal up to :data:`RANKING_TIE_TOLERANCE`
    relative to the larger magnitude (equal infinities tie; NaN ties nothing)."""
    return a == b or abs(a - b) <= RANKING_TIE_TOLERANCE * max(abs(a), abs(b))


def ranked(values: Mapping[str, float]) -> list[str]:
    """Names best first by ``values`` (higher is better; NaN never ranks). Values that
    :func:`ties` with the best of their group are one group, ordered by name, so the outcome
    depends neither on column order nor on float noise."""
    ordered = sorted(
        (name for name, value in values.items() if not math.isnan(value)),
        key=lambda name: (-values[name], str(name)),
    )
    groups: list[list[str]] = []
    for name in ordered:
        if groups and ties(values[groups[-1][0]], values[name]):
            groups[-1].append(name)
        else:
            groups.append([name])
    return [name for group in groups for name in sorted(group, key=str)]


def _per_period_sharpe(values: np.ndarray) -> float:
    """mean / std(ddof=1) per period; a riskless series gives 0, +inf or -inf by its mean."""
    if len(values) < 2:
        return math.nan
    mean = float(np.mean(values))
    if values.max() == values.min():
        return math.copysign(math.inf, mean) if mean != 0.0 else 0.0
    return mean / float(np.std(values, ddof=1))


@dataclass(frozen=True)
class Promotion:
    """The promotion rule's thresholds (from the sleeve's catalog policy; no defaults here).

    ``confidence``: the PSR of the challenger against the incumbent's Sharpe it must reach;
    ``drawdown_tolerance``: how many times the incumbent's max drawdown it may reach;
    ``min_deflated_sharpe``: the deflated Sharpe ratio (its Sharpe against the best Sharpe the
    tournament's number of policies would show by luck) it must reach.
    """

    confidence: float
    drawdown_tolerance: float
    min_deflated_sharpe: float


@dataclass(frozen=True)
class Verdict:
    """Outcome of a champion / challenger comparison."""

    champion: str
    challenger: str
    replaced: bool
    rule: str
    numbers: dict[str, float]


def champion_verdict(
    metrics: pd.DataFrame,
    returns: pd.DataFrame,
    *,
    incumbent: str | None,
    periods_per_year: int,
    promotion: Promotion,
    candidates: Sequence[str] | None = None,
) -> Verdict:
    """Decide whether the best out-of-sample policy takes the title from the incumbent.

    ``metrics``: :func:`tvq_assets.quant.metrics.metrics_table` of ``returns`` (the out-of-sample
    returns of every policy on the same windows). The challenger is the candidate with the highest
    Sharpe (:func:`ranked`: Sharpes within relative 1e-12 are ties, broken by name, so the outcome
    depends neither on column order nor on float noise; NaN Sharpe never wins). It replaces the
    incumbent only if all three hold:

    - ``PSR >= promotion.confidence``, the probabilistic Sharpe ratio of the challenger's returns
      against the incumbent's per-period Sharpe as benchmark, on the dates where both have returns;
    - its max drawdown is not worse than ``promotion.drawdown_tolerance`` x the incumbent's;
    - its deflated Sharpe ratio (Bailey and López de Prado), for the number of candidates tried,
      is at least ``promotion.min_deflated_sharpe``: the best of many policies looks better than it
      is, and a Sharpe that luck alone would produce does not take the title.

    With no incumbent, or one absent from this tournament, the challenger becomes champion
    (``replaced`` is True; there is nothing else to run) and ``deflated_sharpe_ok`` records whether
    it met the bound. When the incumbent is itself the challenger nothing changes.
    """
    pool = list(metrics.index if candidates is None else candidates)
    missing = [name for name in pool if name not in metrics.index]
    if missing:
        raise ValueError(f"candidates absent from the metrics table: {missing}")
    sharpe = metrics["sharpe"]
    order = ranked({name: float(sharpe[name]) for name in pool})
    if not order:
        raise ValueError(f"no candidate has a Sharpe ratio: {pool}")
    challenger = order[0]
    rule = (
        f"the best-Sharpe candidate replaces the incumbent only if PSR(challenger vs the "
        f"incumbent's per-period Sharpe) >= {promotion.confidence:g}, its max drawdown is not "
        f"worse than {promotion.drawdown_tolerance:g} x the incumbent's and its deflated Sharpe "
        f"ratio over the {len(pool)} candidates tried is >= {promotion.min_deflated_sharpe:g}; "
        f"without an incumbent the challenger wins"
    )
    # Every candidate counts as a trial, the ones that never traded (NaN Sharpe) included.
    trials = [_per_period_sharpe(returns[name].dropna().to_numpy()) for name in pool]
    deflated = deflated_sharpe_ratio(
        returns[challenger], trial_sharpes=[t if math.isfinite(t) else math.nan for t in trials]
    )
    deflated_ok = bool(deflated >= promotion.min_deflated_sharpe)
    numbers: dict[str, float] = {
        "challenger_sharpe": float(sharpe[challenger]),
        "challenger_max_drawdown": float(metrics.loc[challenger, "max_drawdown"]),
        "confidence": float(promotion.confidence),
        "drawdown_tolerance": float(promotion.drawdown_tolerance),
        "trials": float(len(pool)),
        "deflated_sharpe": deflated,
        "min_deflated_sharpe": float(promotion.min_deflated_sharpe),
        "deflated_sharpe_ok": float(deflated_ok),
    }
    contested = (
        incumbent is not None and incumbent in metrics.index and incumbent in returns.columns
    )
    if not contested:
        return Verdict(
            champion=challenger, challenger=challenger, replaced=True, rule=rule, numbers=numbers
        )
    assert incumbent is not None
    numbers["incumbent_sharpe"] = float(sharpe[incumbent])
    numbers["incumbent_max_drawdown"] = float(metrics.loc[incumbent, "max_drawdown"])
    if challenger == incumbent:
        return Verdict(
            champion=incumbent, challenger=challenger, replaced=False, rule=rule, numbers=numbers
        )

    common = returns[[challenger, incumbent]].dropna()
    benchmark = _per_period_sharpe(common[incumbent].to_numpy())
    psr = (
        probabilistic_sharpe_ratio(common[challenger], benchmark_sharpe=benchmark)
        if not math.isnan(benchmark)
        else math.nan
    )
    numbers.update(
        {
            "benchmark_sharpe_per_period": benchmark,
            "benchmark_sharpe_annualised": benchmark * math.sqrt(periods_per_year),
            "psr": psr,
            "psr_of_difference": probabilistic_sharpe_ratio(common[challenger] - common[incumbent]),
            "common_periods": float(len(common)),
        }
    )
    # Both drawdowns are negative: "not worse" means at most tolerance x as deep.
    drawdown_ok = bool(
        numbers["challenger_max_drawdown"]
        >= promotion.drawdown_tolerance * numbers["incumbent_max_drawdown"]
    )
    replaced = bool(psr >= promotion.confidence) and drawdown_ok and deflated_ok
    return Verdict(
        champion=challenger if replaced else incumbent,
        challenger=challenger,
        replaced=replaced,
        rule=rule,
        numbers=numbers,
    )
