"""The production policy as one composition, used by the assets and by every walk-forward window.

A decision is a pure function of a point-in-time data window and the sleeve's policy:

1. :func:`universe` — eligibility (``returns.eligibility``: stale by calendar days, no bar on the
   last day, minimum history), quarantine of symbols with a return or bar defect inside the
   window, and the minimum universe size;
2. :func:`features` — the feature table with the stall rule (``quality.stalled``);
3. :func:`score` / :func:`cluster` — conviction scores and clusters;
4. :func:`select_winners` — HTR selection with the safety vetoes;
5. :func:`allocate` — one risk profile's weights of the winners over the last ``train`` rows, with
   the cap, the cluster cap and the turnover penalty against the previous weights.

The assets call these pieces one by one (one asset each) and the tournament calls
:func:`decide_alpha` then :func:`allocate` on each window of the history, so the champion is
picked by replaying exactly what production would have done on each day.
"""

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tvq_assets.quant import backtest, clusters, inference, metrics, optimise, quality
from tvq_assets.quant import features as feature_engine
from tvq_assets.quant import returns as returns_engine
from tvq_assets.quant.returns import ReturnsWindow
from tvq_assets.quant.selection import Selection, SelectionPolicy, select

SCORERS: tuple[str, ...] = ("log_mps", "rank_ic")
BASELINES: tuple[str, ...] = ("baseline_universe", "baseline_winners")
# Exclusion reasons that make a symbol a hard (safety) veto in selection's audit.
QUARANTINE_REASONS = ("quarantine", "bar_defect")


@dataclass(frozen=True)
class PolicySettings:
    """Every parameter of the composed policy; built only from the sleeve's catalog ``Policy``
    (``tvq_assets.settings.policy_settings``), so it has no defaults of its own.

    Units: bars of the sleeve's calendar; volatilities and returns annualised with
    ``periods_per_year``; ``liquidity_baseline`` in quote currency per day; ``stale_days`` in
    calendar days.
    """

    calendar: str
    periods_per_year: int
    lookback: int
    train: int
    test: int
    step: int
    cost_rate: float
    liquidity_baseline: float
    feature_lookback: int
    min_history: int
    stale_days: int
    stall_bars: int
    max_zero_share: float
    min_universe: int
    toxic_threshold: float
    cluster_lookbacks: tuple[int, ...]
    cluster_threshold: float
    max_clusters: int
    selection: SelectionPolicy
    cap: float
    cluster_cap: float | None
    turnover_penalty: float
    ridge: float
    infeasible_cap: str

    @property
    def history_rows(self) -> int:
        """Rows of history a run keeps: one ``lookback`` window for the first walk-forward
        decision plus the ``lookback − train`` out-of-sample rows the tournament replays."""
        return self.lookback + max(self.lookback - self.train, 0)


@dataclass(frozen=True)
class Universe:
    """The symbols a decision may use, and every symbol left out with its rule and reason."""

    returns: pd.DataFrame
    dollar_volume: pd.DataFrame
    excluded: pd.DataFrame  # returns.EXCLUSION_COLUMNS

    @property
    def quarantined(self) -> pd.Index:
        reasons = self.excluded["reason"].isin(QUARANTINE_REASONS)
        return pd.Index(self.excluded.loc[reasons, "symbol"].unique())


def defects_in(defects: pd.DataFrame | None, start: pd.Timestamp, end: pd.Timestamp):
    """The defect rows dated inside ``[start, end]`` (a window's quarantine)."""
    if defects is None or defects.empty:
        return quality.empty_defects()
    dates = defects["date"]
    return defects[(dates >= start) & (dates <= end)]


def universe(
    returns: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    *,
    as_of: pd.Timestamp,
    settings: PolicySettings,
    last_bar: pd.Series | None = None,
    defects: pd.DataFrame | None = None,
    bar_exclusions: pd.DataFrame | None = None,
    quarantine: bool = True,
) -> Universe:
    """The eligible universe of one window (dates × symbols ending at the window's last bar).

    ``last_bar``: each symbol's last bar date up to ``as_of`` (default: the last date with a
    dollar volume inside the window). ``defects``: dated return defects
    (``quality.return_defects``); with ``quarantine`` those inside the window exclude their symbol
    (reason ``quarantine``); without it they stay for the returns contract to block the run.
    ``bar_exclusions``: symbols the bar policy quarantined (same columns), always excluded
    (reason ``bar_defect``) when dated inside the window.
    """
    if last_bar is None:
        last_bar = returns_engine.last_bar_dates(dollar_volume)
    excluded = returns_engine.eligibility(
        returns,
        last_bar=last_bar,
        as_of=as_of,
        stale_days=settings.stale_days,
        min_history=settings.min_history,
    )
    tables = [excluded]
    if len(returns):
        start, end = returns.index[0], pd.Timestamp(as_of)
        gone = set(excluded["symbol"])
        for events, reason, applies in (
            (bar_exclusions, "bar_defect", True),
            (defects, "quarantine", quarantine),
        ):
            inside = defects_in(events, start, end)
            inside = inside[~inside["symbol"].isin(gone) & inside["symbol"].isin(returns.columns)]
            if applies and not inside.empty:
                first = inside.sort_values(["date", "rule"]).drop_duplicates("symbol")
                tables.append(
                    first[["symbol", "rule", "date", "value", "detail"]].assign(reason=reason)
                )
                gone |= set(first["symbol"])
    excluded = returns_engine.exclusions(pd.concat(tables, ignore_index=True))
    keep = returns.columns.difference(pd.Index(excluded["symbol"]), sort=False).sort_values()
    return Universe(returns[keep], dollar_volume[keep], excluded)


def too_small(universe: Universe, settings: PolicySettings) -> bool:
    """Fewer eligible symbols than ``min_universe``: production fails at ``returns``; the
    tournament holds cash in that window (there would have been no decision that day)."""
    return universe.returns.shape[1] < settings.min_universe


def point_in_time(
    bars: pd.DataFrame,
    *,
    as_of: pd.Timestamp,
    settings: PolicySettings,
    quarantine: bool,
    bar_exclusions: pd.DataFrame | None = None,
) -> ReturnsWindow:
    """The run's :class:`ReturnsWindow`: the decision window's universe (:func:`universe` on the
    last ``lookback`` rows, with every symbol's last bar from all its bars) and the history and
    dated defects the walk-forward replays."""
    history = returns_engine.returns_history(
        bars, as_of=as_of, rows=settings.history_rows, calendar=settings.calendar
    )
    defects = quality.return_defects(history.returns, toxic_threshold=settings.toxic_threshold)
    if bar_exclusions is not None and not bar_exclusions.empty:
        defects_all = pd.concat(
            [defects, bar_exclusions[list(quality.DEFECT_COLUMNS)]], ignore_index=True
        )
    else:
        defects_all = defects
    window = history.returns.tail(settings.lookback)
    chosen = universe(
        window,
        history.dollar_volume.tail(settings.lookback),
        as_of=as_of,
        settings=settings,
        last_bar=history.last_bar,
        defects=defects,
        bar_exclusions=bar_exclusions,
        quarantine=quarantine,
    )
    return ReturnsWindow(
        returns=chosen.returns,
        dollar_volume=chosen.dollar_volume,
        excluded=chosen.excluded,
        history=history.returns,
        history_dollar_volume=history.dollar_volume,
        defects=defects_all.reset_index(drop=True),
    )


def features(
    returns: pd.DataFrame, dollar_volume: pd.DataFrame, settings: PolicySettings
) -> pd.DataFrame:
    """The feature table of the universe, with the ``stalled`` flag of the stall rule."""
    table = feature_engine.compute_features(
        returns,
        dollar_volume,
        periods_per_year=settings.periods_per_year,
        lookback=settings.feature_lookback,
        liquidity_baseline=settings.liquidity_baseline,
    )
    stalled = quality.stalled(
        returns,
        window=settings.feature_lookback,
        max_zero_share=settings.max_zero_share,
        stall_bars=settings.stall_bars,
    )
    table["stalled"] = stalled.reindex(table.index).fillna(False).to_numpy(dtype=bool)
    return table


def score(
    scorer: str,
    table: pd.DataFrame,
    returns: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    settings: PolicySettings,
) -> pd.DataFrame:
    """Conviction scores of one scorer: ``log_mps`` (the default) or ``rank_ic`` (challenger)."""
    if scorer == "log_mps":
        return inference.log_mps(table)
    if scorer == "rank_ic":
        return inference.rank_ic(
            returns,
            dollar_volume,
            periods_per_year=settings.periods_per_year,
            lookback=settings.feature_lookback,
            liquidity_baseline=settings.liquidity_baseline,
            features=table,
        )
    raise ValueError(f"unknown scorer {scorer!r}; expected one of {SCORERS}")


def cluster(returns: pd.DataFrame, settings: PolicySettings) -> pd.Series:
    return clusters.cluster_symbols(
        returns,
        lookbacks=settings.cluster_lookbacks,
        threshold=settings.cluster_threshold,
        max_clusters=settings.max_clusters,
    )


def select_winners(
    table: pd.DataFrame,
    scores: pd.Series,
    labels: pd.Series,
    excluded: pd.DataFrame,
    settings: PolicySettings,
) -> Selection:
    """HTR selection: stalled (feature flag) and quarantined (exclusion reason) symbols are hard
    vetoes; every excluded symbol is listed in the audit with its rule."""
    quarantined = excluded.loc[excluded["reason"].isin(QUARANTINE_REASONS), "symbol"]
    return select(
        table,
        scores,
        labels,
        policy=settings.selection,
        stalled=table.index[table["stalled"].to_numpy(dtype=bool)],
        quarantined=quarantined,
        excluded=dict(zip(excluded["symbol"], excluded["rule"], strict=True)),
    )


def constraints(
    settings: PolicySettings, *, clusters: pd.Series, previous: pd.Series | None
) -> optimise.Constraints:
    """The optimiser's constraints from the policy: cap, cluster cap on the winners' clusters, and
    the turnover penalty against ``previous`` (none without previous weights: a first run, a gap,
    or a previous run that held nothing)."""
    if previous is not None and not len(previous):
        previous = None
    return optimise.Constraints(
        cap=settings.cap,
        clusters=clusters,
        cluster_cap=settings.cluster_cap,
        previous=previous,
        turnover_penalty=settings.turnover_penalty if previous is not None else 0.0,
        ridge=settings.ridge,
        infeasible_cap=settings.infeasible_cap,
    )


def allocate(
    profile: str,
    winners: pd.DataFrame,
    returns: pd.DataFrame,
    settings: PolicySettings,
    *,
    previous: pd.Series | None,
) -> optimise.Allocation:
    """One profile's weights of ``winners`` (selection winners, with ``cluster``) from the last
    ``train`` rows of ``returns`` (Ledoit–Wolf covariance inside the optimiser)."""
    window = returns[winners.index].tail(settings.train)
    return optimise.allocate(
        profile,
        window,
        constraints=constraints(settings, clusters=winners["cluster"], previous=previous),
    )


@dataclass(frozen=True)
class SelectionRecord:
    """What the ``selection`` asset stores: the winners and the audit of every decision."""

    winners: pd.DataFrame
    audit: pd.DataFrame


@dataclass(frozen=True)
class WeightsRecord:
    """What the ``weights`` asset stores: weights (winners × profile) and solver diagnostics."""

    weights: pd.DataFrame
    diagnostics: pd.DataFrame


@dataclass(frozen=True)
class Alpha:
    """Everything the alpha layer decided on one window (before allocation)."""

    universe: Universe
    features: pd.DataFrame
    scores: dict[str, pd.DataFrame]  # scorer -> log_mps / rank_ic output
    clusters: pd.Series
    selections: dict[str, Selection]  # scorer -> selection with that scorer's scores
    too_small: bool


def decide_alpha(
    returns: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    *,
    as_of: pd.Timestamp,
    settings: PolicySettings,
    defects: pd.DataFrame | None = None,
    scorers: Sequence[str] = SCORERS,
) -> Alpha:
    """Universe, features, scores, clusters and one selection per scorer for one window.

    ``returns`` / ``dollar_volume``: every symbol over the window's rows (at most ``lookback``),
    ending at ``as_of``. Return defects are quarantined whatever the sleeve's toxic policy: a past
    day cannot be stopped, and the production run of that day would not have used the symbol.
    """
    chosen = universe(returns, dollar_volume, as_of=as_of, settings=settings, defects=defects)
    small = too_small(chosen, settings)
    table = features(chosen.returns, chosen.dollar_volume, settings)
    labels = cluster(chosen.returns, settings) if not small else pd.Series(dtype=int)
    scores, selections = {}, {}
    for scorer in scorers:
        if small:
            continue
        scores[scorer] = score(scorer, table, chosen.returns, chosen.dollar_volume, settings)
        selections[scorer] = select_winners(
            table, scores[scorer]["score"], labels, chosen.excluded, settings
        )
    return Alpha(chosen, table, scores, labels, selections, small)


class Tournament:
    """The backtest's policies: every scorer × profile, plus two equal-weight baselines.

    Each window's decision is :func:`decide_alpha` on the history rows ending at the window's
    last training day (``lookback`` rows, every symbol of the sleeve, so the universe is
    point-in-time) followed by :func:`allocate` with that policy's previous target as the
    turnover reference. The alpha of a window is computed once and shared by the profiles
    (thread-safe memo; separate processes simply recompute).
    """

    def __init__(
        self,
        window: ReturnsWindow,
        settings: PolicySettings,
        *,
        scorers: Sequence[str] = SCORERS,
        profiles: Sequence[str] = optimise.PROFILES,
    ) -> None:
        self.history = window.history
        self.dollar_volume = window.history_dollar_volume
        self.defects = window.defects
        self.settings = settings
        self.scorers = tuple(scorers)
        self.profiles = tuple(profiles)
        self._memo: dict[tuple, Alpha] = {}
        self._lock = threading.Lock()

    @property
    def candidates(self) -> list[str]:
        return [f"{s}/{p}" for s in self.scorers for p in self.profiles]

    def policies(self) -> dict[str, backtest.Policy]:
        chosen: dict[str, backtest.Policy] = {
            name: backtest.Stateful(self._policy(*name.split("/"))) for name in self.candidates
        }
        chosen["baseline_universe"] = self._equal_universe
        chosen["baseline_winners"] = self._equal_winners
        return chosen

    def alpha_of(self, train: pd.DataFrame, *, as_of: pd.Timestamp | None = None) -> Alpha:
        """The alpha of a window's rows (every symbol), computed once and then shared.

        ``as_of`` defaults to the window's last date (a walk-forward decision is taken at the
        close of its last training day); a production run may be dated later than its last bar.
        """
        as_of = train.index[-1] if as_of is None else pd.Timestamp(as_of)
        key = (train.index[0], train.index[-1], len(train), as_of)
        with self._lock:
            if key not in self._memo:
                self._memo[key] = decide_alpha(
                    train,
                    self.dollar_volume.loc[train.index, train.columns],
                    as_of=as_of,
                    settings=self.settings,
                    defects=self.defects,
                    scorers=self.scorers,
                )
            return self._memo[key]

    def decide(
        self,
        scorer: str,
        profile: str,
        train: pd.DataFrame,
        previous: pd.Series | None,
        *,
        as_of: pd.Timestamp | None = None,
    ) -> pd.Series:
        """Target weights of policy ``scorer/profile`` on one window; cash (empty) when the
        universe is too small, nothing is selected, or the cap is infeasible for the winners
        under ``infeasible_cap: fail`` (the production run of that day would have stopped)."""
        alpha = self.alpha_of(train, as_of=as_of)
        if alpha.too_small or alpha.selections[scorer].winners.empty:
            return pd.Series(dtype=float)
        winners = alpha.selections[scorer].winners
        try:
            return allocate(profile, winners, train, self.settings, previous=previous).weights
        except optimise.InfeasibleCap:
            return pd.Series(dtype=float)

    def _policy(
        self, scorer: str, profile: str
    ) -> Callable[[pd.DataFrame, pd.Series | None], pd.Series]:
        def weights(train: pd.DataFrame, previous: pd.Series | None) -> pd.Series:
            return self.decide(scorer, profile, train, previous)

        return weights

    def _equal_universe(self, train: pd.DataFrame) -> pd.Series:
        alpha = self.alpha_of(train)
        symbols = alpha.universe.returns.columns if not alpha.too_small else pd.Index([])
        return pd.Series(np.full(len(symbols), 1.0 / max(len(symbols), 1)), index=symbols)

    def _equal_winners(self, train: pd.DataFrame) -> pd.Series:
        alpha = self.alpha_of(train)
        if alpha.too_small:
            return pd.Series(dtype=float)
        chosen = alpha.selections[self.scorers[0]].winners.index
        return pd.Series(np.full(len(chosen), 1.0 / max(len(chosen), 1)), index=chosen)


@dataclass(frozen=True)
class TournamentOutcome:
    """The walk-forward tournament of one run: returns, metrics, verdict, champion's weights now."""

    result: backtest.BacktestResult
    metrics: pd.DataFrame
    verdict: backtest.Verdict | None  # None when no candidate has a Sharpe ratio (never traded)
    champion_weights: pd.Series  # the champion's policy applied to the as-of window


@dataclass(frozen=True)
class TournamentRecord:
    """What the ``backtest`` asset stores: out-of-sample returns and turnover per policy, the
    metrics, the verdict (one row), the champion's weights for the as-of date, and every policy's
    target weights per rebalance (``backtest.target_table``) for audit."""

    returns: pd.DataFrame
    turnover: pd.DataFrame
    metrics: pd.DataFrame
    verdict: pd.DataFrame
    champion_weights: pd.DataFrame
    targets: pd.DataFrame

    @property
    def champion(self) -> str:
        return str(self.verdict["champion"].iloc[0])


def record(outcome: "TournamentOutcome", *, incumbent: str | None, dates: pd.Index):
    """The stored form of a tournament outcome (``dates``: the history's index)."""
    verdict = outcome.verdict
    if verdict is None:
        raise ValueError("a tournament without a verdict has nothing to record")
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
    return TournamentRecord(
        returns=outcome.result.returns,
        turnover=outcome.result.turnover,
        metrics=outcome.metrics,
        verdict=verdict_table,
        champion_weights=outcome.champion_weights.rename("weight").rename_axis("symbol").to_frame(),
        targets=backtest.target_table(outcome.result, dates),
    )


def tournament(
    window: ReturnsWindow,
    settings: PolicySettings,
    *,
    incumbent: str | None,
    map_tasks: backtest.TaskMap | None = None,
) -> TournamentOutcome:
    """Every scorer × profile and the baselines, walk-forward over the run's history; the best
    candidate challenges ``incumbent`` by the rule of ``backtest.champion_verdict``.

    Each window decides on the ``lookback`` history rows before its test slice; the test slices
    cover the last ``lookback − train`` rows (at least ``test``). Metrics use
    ``settings.periods_per_year``; costs ``settings.cost_rate`` per unit of one-sided turnover.
    """
    contest = Tournament(window, settings)
    policies = contest.policies()
    history = window.history
    result = backtest.run(
        history,
        policies,
        train=decision_rows(len(history), settings),
        test=settings.test,
        step=settings.step,
        cost_rate=settings.cost_rate,
        map_tasks=map_tasks,
    )
    table = metrics.metrics_table(
        result.returns, periods_per_year=settings.periods_per_year, turnover=result.turnover
    )
    if not np.isfinite(table.loc[contest.candidates, "sharpe"].to_numpy(dtype=float)).any():
        # Nothing to crown: the backtest_complete contract reports why.
        return TournamentOutcome(result, table, None, pd.Series(dtype=float))
    verdict = backtest.champion_verdict(
        table,
        result.returns,
        incumbent=incumbent,
        periods_per_year=settings.periods_per_year,
        candidates=contest.candidates,
    )
    targets = result.targets[verdict.champion]
    held = targets[max(targets)] if targets else None
    current = decide_portfolio(window, settings, verdict.champion, held, contest=contest)
    return TournamentOutcome(result, table, verdict, current)


def decision_rows(history_rows: int, settings: PolicySettings) -> int:
    """Rows of history one walk-forward decision reads (the newest decision too): ``lookback``,
    fewer only when the history leaves less than one ``test`` slice after them."""
    return min(settings.lookback, max(history_rows - settings.test, 1))


def decide_portfolio(
    window: ReturnsWindow,
    settings: PolicySettings,
    champion: str,
    held: pd.Series | None,
    *,
    contest: "Tournament | None" = None,
) -> pd.Series:
    """The production decision: policy ``champion`` (``scorer/profile``) applied to the newest
    :func:`decision_rows` rows of the run's history — target weights by symbol, empty for cash.

    ``held``: the turnover-penalty reference, the champion's own last walk-forward target (the
    tournament's reference), so the decision is exactly the policy whose record crowned it; the
    book actually held (the previous run's portfolio) only prices the trades
    (:func:`portfolio_trades`). ``contest``: a tournament over ``window`` whose alpha memo to
    reuse; by default one for this policy alone.
    """
    scorer, profile = champion.split("/")
    if contest is None:
        contest = Tournament(window, settings, scorers=(scorer,), profiles=(profile,))
    latest = window.history.tail(decision_rows(len(window.history), settings))
    return contest.decide(scorer, profile, latest, held).rename("weight").rename_axis("symbol")


def last_target(targets: pd.DataFrame, policy_name: str, windows: int) -> pd.Series | None:
    """Policy ``policy_name``'s target of the last walk-forward window (``windows`` in all) from a
    stored ``backtest.target_table``: None without windows, empty when it held cash then."""
    if windows <= 0:
        return None
    rows = targets[(targets["policy"] == policy_name) & (targets["window"] == windows - 1)]
    return pd.Series(rows["weight"].to_numpy(dtype=float), index=pd.Index(rows["symbol"]))


def walk_forward_count(history_rows: int, settings: PolicySettings) -> int:
    """How many walk-forward windows :func:`tournament` runs over ``history_rows`` rows."""
    return len(
        backtest.walk_forward_windows(
            history_rows,
            train=decision_rows(history_rows, settings),
            test=settings.test,
            step=settings.step,
        )
    )


TRADE_COLUMNS = ("previous", "target", "trade")


@dataclass(frozen=True)
class PortfolioRecord:
    """What the ``portfolio`` asset stores: the champion's target weights (``weight`` by symbol,
    no row for cash) and the trades from the previous run's book (``previous``, ``target``,
    ``trade`` by symbol, every symbol either side)."""

    weights: pd.DataFrame
    trades: pd.DataFrame

    @property
    def turnover(self) -> float:
        """One-sided turnover ``½ Σ|Δw|`` of the trades (the whole book on a first run)."""
        return float(self.trades["trade"].abs().sum() / 2)


def portfolio_record(target: pd.Series, previous: pd.Series | None) -> PortfolioRecord:
    """Targets and trades against ``previous`` (the previous run's weights; None: from cash)."""
    held = previous if previous is not None else pd.Series(dtype=float)
    symbols = target.index.union(held.index).sort_values()
    before = held.reindex(symbols).fillna(0.0).to_numpy(dtype=float)
    after = target.reindex(symbols).fillna(0.0).to_numpy(dtype=float)
    trades = pd.DataFrame(
        {"previous": before, "target": after, "trade": after - before},
        index=pd.Index(symbols.astype(str), name="symbol"),
    )
    weights = target.astype(float).rename("weight").rename_axis("symbol").to_frame()
    return PortfolioRecord(weights=weights, trades=trades)


# --------------------------------------------------------------------------------------------
# The decision as a model: one frame in, the portfolio out (wrapped by ``tvq_assets.policy_model``)
# --------------------------------------------------------------------------------------------
MODEL_COLUMNS = ("kind", "date", "symbol", "return", "dollar_volume", "rule", "value", "detail")


def model_input(window: ReturnsWindow) -> pd.DataFrame:
    """The run's point-in-time history as one long frame (:data:`MODEL_COLUMNS`):

    - ``kind == "bar"``: one row per date × symbol of the history grid, ``return`` and
      ``dollar_volume`` (NaN where the symbol had no bar);
    - ``kind == "defect"``: one row per dated defect (return defects and quarantining bar
      defects), ``rule``, ``value``, ``detail``.
    """
    bars = pd.DataFrame(
        {
            "return": window.history.stack(future_stack=True),
            "dollar_volume": window.history_dollar_volume.reindex_like(window.history).stack(
                future_stack=True
            ),
        }
    )
    bars = bars.rename_axis(["date", "symbol"]).reset_index().assign(kind="bar")
    defects = window.defects.assign(kind="defect")
    return pd.concat([bars, defects], ignore_index=True).reindex(columns=list(MODEL_COLUMNS))


def window_from_input(frame: pd.DataFrame, settings: PolicySettings) -> ReturnsWindow:
    """The inverse of :func:`model_input`: the history and defects a decision replays (the
    decision window is the history's last ``lookback`` rows; exclusions are recomputed by the
    policy itself)."""
    bars = frame[frame["kind"] == "bar"].assign(date=lambda f: pd.to_datetime(f["date"]))
    history = bars.pivot(index="date", columns="symbol", values="return").rename_axis(
        index=None, columns=None
    )
    volume = bars.pivot(index="date", columns="symbol", values="dollar_volume").rename_axis(
        index=None, columns=None
    )
    defects = frame.loc[frame["kind"] == "defect", list(quality.DEFECT_COLUMNS)]
    defects = defects.assign(date=pd.to_datetime(defects["date"])).reset_index(drop=True)
    return ReturnsWindow(
        returns=history.tail(settings.lookback),
        dollar_volume=volume.tail(settings.lookback),
        excluded=returns_engine.exclusions([]),
        history=history,
        history_dollar_volume=volume,
        defects=defects,
    )


def replayed_reference(window: ReturnsWindow, settings: PolicySettings, champion: str):
    """Policy ``champion``'s target on the last walk-forward window, replayed alone over the
    history: the turnover-penalty reference :func:`decide_portfolio` needs, so a model that only
    sees the history decides exactly as the tournament did."""
    scorer, profile = champion.split("/")
    contest = Tournament(window, settings, scorers=(scorer,), profiles=(profile,))
    result = backtest.run(
        window.history,
        {champion: contest.policies()[champion]},
        train=decision_rows(len(window.history), settings),
        test=settings.test,
        step=settings.step,
        cost_rate=settings.cost_rate,
    )
    targets = result.targets[champion]
    return (targets[max(targets)] if targets else None), contest


def predict_portfolio(frame: pd.DataFrame, settings: PolicySettings, champion: str) -> pd.Series:
    """The registered model's prediction: :func:`decide_portfolio` of policy ``champion`` on the
    history in ``frame`` (:func:`model_input` layout), with the replayed reference."""
    window = window_from_input(frame, settings)
    held, contest = replayed_reference(window, settings, champion)
    return decide_portfolio(window, settings, champion, held, contest=contest)


def settings_config(settings: PolicySettings) -> dict:
    """Every policy parameter as plain JSON values (a model's ``model_config``)."""
    values = dataclasses.asdict(settings)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def settings_from_config(values: dict) -> PolicySettings:
    fields = {f.name: f for f in dataclasses.fields(PolicySettings)}
    chosen = {k: v for k, v in values.items() if k in fields}
    chosen["selection"] = SelectionPolicy(**chosen["selection"])
    chosen["cluster_lookbacks"] = tuple(chosen["cluster_lookbacks"])
    return PolicySettings(**chosen)
