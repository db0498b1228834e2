"""The production policy as one composition, used by the assets and by every walk-forward window.

A decision is a pure function of a point-in-time data window and the sleeve's policy:

1. :func:`universe` — eligibility (``returns.eligibility``: stale by calendar days, no bar on the
   last day although the symbol's venue traded, minimum history), quarantine of symbols with a
   return or bar defect inside the window, and the minimum universe size;
2. :func:`features` — the feature table with the stall rule (``quality.stalled``);
3. :func:`score` / :func:`cluster` — conviction scores and clusters;
4. :func:`select_winners` — HTR selection with the safety vetoes;
5. :func:`allocate` — one risk profile's weights of the winners over the last ``train`` rows, with
   the cap, the cluster cap and the turnover penalty against the previous weights.

The assets call these pieces one by one (one asset each) and the tournament calls
:func:`decide_alpha` then :func:`allocate` on each window of the history, so the champion is
picked by replaying exactly what production would have done on each day.

The tournament's windows sit on a fixed calendar grid (``backtest.grid_windows``) and each
window's outcome is stored content-addressed (``window_cache``), so the next day's run computes
only its newest window and a re-run or a backfill reuses what an earlier run computed.
"""

import dataclasses
import functools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tvq_assets.quant import backtest, clusters, inference, metrics, optimise, promoted, quality
from tvq_assets.quant import features as feature_engine
from tvq_assets.quant import returns as returns_engine
from tvq_assets.quant import window_cache as cache_keys
from tvq_assets.quant.returns import ReturnsWindow, Venues
from tvq_assets.quant.selection import Selection, SelectionPolicy, select
from tvq_resources.records import lake_record

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
    calendar days. ``venues``: a weekday sleeve's venues and their closed days (None for a 24/7
    sleeve), read by the eligibility of every window (``returns.eligibility``).
    """

    calendar: str
    venues: Venues | None
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
    cluster_method: str
    cluster_exact_max: int
    selection: SelectionPolicy
    cap: float
    cluster_cap: float | None
    turnover_penalty: float
    ridge: float
    infeasible_cap: str
    promotion: backtest.Promotion

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
        venues=settings.venues,
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
        bars,
        as_of=as_of,
        rows=settings.history_rows,
        calendar=settings.calendar,
        venues=settings.venues,
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
        method=settings.cluster_method,
        exact_max=settings.cluster_exact_max,
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


@lake_record  # a lake value: stored data names this type, never imports it
@dataclass(frozen=True)
class SelectionRecord:
    """What the ``selection`` asset stores: the winners and the audit of every decision."""

    winners: pd.DataFrame
    audit: pd.DataFrame


@lake_record  # a lake value: stored data names this type, never imports it
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
    """One window's decision of every scorer × profile, the view the tests and audits replay.

    Each window's decision is :func:`decide_alpha` on the history rows ending at the window's
    last training day (``lookback`` rows, every symbol of the sleeve, so the universe is
    point-in-time) followed by :func:`decide_target` with that policy's previous target as the
    turnover reference. The alpha of a window is computed once and shared by the profiles
    (thread-safe memo). :func:`tournament` runs the same decisions, and the baselines, through
    :func:`walk_forward`, which stores and fans them out.
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

    def __getstate__(self) -> dict:
        # Pickled for another process (a Ray worker): the lock and the memo are process-local.
        return {**self.__dict__, "_memo": {}, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def candidates(self) -> list[str]:
        return [f"{s}/{p}" for s in self.scorers for p in self.profiles]

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
        winners = winners_of(alpha_frame(alpha, self.scorers), scorer)
        return decide_target(profile, winners, train, self.settings, previous=previous)


@dataclass(frozen=True)
class TournamentOutcome:
    """The walk-forward tournament of one run: returns, metrics, verdict, champion's weights now,
    and how many windows came from the window store."""

    result: backtest.BacktestResult
    metrics: pd.DataFrame
    verdict: backtest.Verdict | None  # None when no candidate has a Sharpe ratio (never traded)
    champion_weights: pd.Series  # the champion's policy applied to the as-of window
    reuse: cache_keys.Reuse = dataclasses.field(default_factory=cache_keys.Reuse)
    # The promotion rule replayed window by window (None without a verdict).
    live: "promoted.AsPromoted | None" = None


@lake_record  # a lake value: stored data names this type, never imports it
@dataclass(frozen=True)
class TournamentRecord:
    """What the ``backtest`` asset stores: out-of-sample returns and turnover per policy, the
    metrics, the verdict (one row), the champion's weights for the as-of date, every policy's
    target weights per rebalance (``backtest.target_table``) for audit, and the as-promoted
    record (``quant.promoted``): who the rule crowned at each window (``promotions``) and the
    stream of the crowned policies held in turn (``as_promoted``; its metrics are the verdict's
    ``as_promoted_*`` columns). A value stored before the as-promoted record loads with both
    tables empty (``has_as_promoted`` is False)."""

    returns: pd.DataFrame
    turnover: pd.DataFrame
    metrics: pd.DataFrame
    verdict: pd.DataFrame
    champion_weights: pd.DataFrame
    targets: pd.DataFrame
    promotions: pd.DataFrame = dataclasses.field(default_factory=promoted.empty_promotions)
    as_promoted: pd.DataFrame = dataclasses.field(default_factory=promoted.empty_stream)

    @property
    def champion(self) -> str:
        return str(self.verdict["champion"].iloc[0])

    @property
    def has_as_promoted(self) -> bool:
        """Whether the value carries the as-promoted record (stored since it exists)."""
        return len(self.promotions) > 0


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
                **(outcome.live.summary if outcome.live is not None else {}),
            }
        ]
    )
    live = outcome.live
    return TournamentRecord(
        returns=outcome.result.returns,
        turnover=outcome.result.turnover,
        metrics=outcome.metrics,
        verdict=verdict_table,
        champion_weights=outcome.champion_weights.rename("weight").rename_axis("symbol").to_frame(),
        targets=backtest.target_table(outcome.result, dates),
        promotions=live.promotions if live is not None else promoted.empty_promotions(),
        as_promoted=live.stream if live is not None else promoted.empty_stream(),
    )


# --------------------------------------------------------------------------------------------
# A window's outcome as plain tables: what the walk-forward stores, reuses and fans out
# --------------------------------------------------------------------------------------------
def alpha_frame(alpha: Alpha, scorers: Sequence[str]) -> pd.DataFrame:
    """What allocation needs of a window's alpha (``window_cache.ALPHA_COLUMNS``): the universe
    and each scorer's winners with their clusters; empty when the universe is too small."""
    if alpha.too_small:
        return cache_keys.alpha_frame([], {})
    return cache_keys.alpha_frame(
        list(alpha.universe.returns.columns),
        {
            scorer: (
                list(alpha.selections[scorer].winners.index),
                alpha.selections[scorer].winners["cluster"].to_numpy(dtype=np.int64),
            )
            for scorer in scorers
        },
    )


def winners_of(frame: pd.DataFrame, scorer: str) -> pd.DataFrame:
    """One scorer's winners (index symbol, column ``cluster``) of an :func:`alpha_frame`."""
    rows = frame[frame["part"].to_numpy() == scorer]
    return pd.DataFrame(
        {"cluster": rows["cluster"].to_numpy(dtype=np.int64)},
        index=pd.Index(rows["symbol"].to_numpy(dtype=object), name="symbol"),
    )


def decide_target(
    profile: str,
    winners: pd.DataFrame,
    train: pd.DataFrame,
    settings: PolicySettings,
    *,
    previous: pd.Series | None,
) -> pd.Series:
    """One profile's target on one window: cash (empty) when nothing is selected (or the universe
    is too small), or when the cap is infeasible for the winners under ``infeasible_cap: fail``
    (the production run of that day would have stopped)."""
    if winners.empty:
        return pd.Series(dtype=float)
    try:
        return allocate(profile, winners, train, settings, previous=previous).weights
    except optimise.InfeasibleCap:
        return pd.Series(dtype=float)


def _equal(symbols) -> pd.Series:
    return pd.Series(np.full(len(symbols), 1.0 / max(len(symbols), 1)), index=pd.Index(symbols))


def baseline_targets(frame: pd.DataFrame, scorers: Sequence[str]) -> dict[str, pd.Series]:
    """The baselines of one window: equal weight of the eligible universe, and of the first
    scorer's winners (cash when the universe is too small)."""
    universe = frame.loc[frame["part"].to_numpy() == cache_keys.UNIVERSE_PART, "symbol"]
    return {
        "baseline_universe": _equal(list(universe)),
        "baseline_winners": _equal(list(winners_of(frame, scorers[0]).index)),
    }


def window_alpha(
    rows: tuple[int, int],
    *,
    history: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    defects: pd.DataFrame,
    settings: PolicySettings,
    scorers: Sequence[str],
) -> pd.DataFrame:
    """:func:`alpha_frame` of the history rows ``[start, stop)`` — :func:`decide_alpha` on the
    slice restricted by ``window_cache.used_slice`` (the slice its key digests), dated at its last
    row. A phase-1 task of the walk-forward (module-level, so a process or Ray pool can run it)."""
    start, stop = rows
    returns, volume, inside = cache_keys.used_slice(
        history.iloc[start:stop], dollar_volume.iloc[start:stop], defects
    )
    alpha = decide_alpha(
        returns,
        volume,
        as_of=returns.index[-1],
        settings=settings,
        defects=inside,
        scorers=scorers,
    )
    return alpha_frame(alpha, scorers)


@dataclass(frozen=True)
class Chain:
    """One stateful policy's walk over windows in order: ``steps`` are (window index, training
    rows ``(start, stop)``, the window's :func:`alpha_frame`); ``previous`` is its target on the
    window before the first step (None: the first window of the walk)."""

    policy: str
    previous: pd.Series | None
    steps: tuple[tuple[int, tuple[int, int], pd.DataFrame], ...]


def walk_chain(chain: Chain, *, history: pd.DataFrame, settings: PolicySettings) -> list[pd.Series]:
    """A phase-2 task: the policy's targets on every step, each step's turnover reference being
    the target of the step before (module-level, so a process or Ray pool can run it)."""
    scorer, profile = chain.policy.split("/")
    previous, chosen = chain.previous, []
    for _, (start, stop), frame in chain.steps:
        winners = winners_of(frame, scorer)
        train = history[winners.index].iloc[start:stop]
        previous = decide_target(profile, winners, train, settings, previous=previous)
        chosen.append(previous)
    return chosen


def _serial_map(function, items) -> list:
    return [function(item) for item in items]


def _mapped(map_tasks, function, items: list) -> list:
    """``map_tasks(function, items)`` checked to return one result per item (none: no call)."""
    if not items:
        return []
    results = list((map_tasks or _serial_map)(function, items))
    if len(results) != len(items):
        raise ValueError(f"map_tasks returned {len(results)} results for {len(items)} items")
    return results


@dataclass(frozen=True)
class WalkForward:
    """Every policy's targets on the grid windows of a run, the as-of window's alpha, and how much
    of it was reused."""

    windows: list[backtest.Window]
    targets: dict[str, dict[int, pd.Series]]
    latest: pd.DataFrame  # alpha_frame of the newest decision_rows rows (today's decision)
    reuse: cache_keys.Reuse


def candidates_of(scorers: Sequence[str], profiles: Sequence[str]) -> list[str]:
    return [f"{s}/{p}" for s in scorers for p in profiles]


def grid_windows(dates: pd.Index, settings: PolicySettings) -> list[backtest.Window]:
    """The tournament's walk-forward windows over a history dated ``dates``
    (``backtest.grid_windows`` with :func:`decision_rows` training rows)."""
    return backtest.grid_windows(
        pd.DatetimeIndex(dates),
        train=decision_rows(len(dates), settings),
        test=settings.test,
        step=settings.step,
        calendar=settings.calendar,
    )


@dataclass(frozen=True)
class WalkPlan:
    """The fixed facts of one walk-forward: the run's history, its grid windows, the rows each
    decision reads (``spans``: every window's training rows, then today's decision rows) and the
    store keys of those slices and of the parameters."""

    history: pd.DataFrame
    dollar_volume: pd.DataFrame  # aligned with ``history``
    defects: pd.DataFrame
    windows: list[backtest.Window]
    spans: list[tuple[int, int]]
    slice_keys: list[str]
    settings_key: str
    scorers: tuple[str, ...]
    candidates: list[str]
    stateful: bool  # a turnover penalty: each decision reads the previous target

    @property
    def names(self) -> list[str]:
        """Every policy of the walk: the candidates, then the baselines."""
        return [*self.candidates, *BASELINES]

    @property
    def today(self) -> int:
        """The index of today's decision in ``spans`` (after the last grid window)."""
        return len(self.windows)


def plan_walk(
    window: ReturnsWindow,
    settings: PolicySettings,
    *,
    scorers: Sequence[str],
    profiles: Sequence[str],
) -> WalkPlan:
    """The :class:`WalkPlan` of a run's window; a clear error when the history has no decision
    row on the grid."""
    history = window.history
    volume = window.history_dollar_volume.reindex(index=history.index, columns=history.columns)
    rows = decision_rows(len(history), settings)
    windows = grid_windows(history.index, settings)
    if not windows:
        raise ValueError(
            f"the history has {len(history)} rows; the walk-forward needs a decision row on the "
            f"{settings.calendar} grid (every {settings.step}) after {rows} rows and before the "
            "last"
        )
    spans = [(w.train.start, w.train.stop) for w in windows] + [(len(history) - rows, len(history))]
    slice_keys = [
        cache_keys.slice_digest(
            *cache_keys.used_slice(history.iloc[a:b], volume.iloc[a:b], window.defects)
        )
        for a, b in spans
    ]
    return WalkPlan(
        history=history,
        dollar_volume=volume,
        defects=window.defects,
        windows=windows,
        spans=spans,
        slice_keys=slice_keys,
        settings_key=cache_keys.settings_digest(settings_config(settings)),
        scorers=tuple(scorers),
        candidates=candidates_of(scorers, profiles),
        stateful=settings.turnover_penalty > 0,
    )


def window_targets_key(plan: WalkPlan, k: int, done: Mapping[int, dict[str, pd.Series]]) -> str:
    """The store key of window ``k``'s targets; a stateful walk keys it also by the previous
    window's candidate targets (``done[k - 1]``, or none on the first window)."""
    previous = "stateless"
    if plan.stateful:
        before = done.get(k - 1) if k > 0 else None
        previous = cache_keys.targets_digest(
            None if before is None else {n: before[n] for n in plan.candidates}
        )
    return cache_keys.targets_key(
        plan.slice_keys[k], plan.settings_key, [*plan.names, "|", *plan.scorers], previous
    )


def read_stored(
    cache: cache_keys.WindowStore | None, entry_key: str, columns: Sequence[str]
) -> pd.DataFrame | None:
    """The entry ``entry_key`` of ``cache`` in canonical form; None without a cache, for a miss
    or for a damaged entry."""
    return cache_keys.checked(cache.get(entry_key), columns) if cache is not None else None


def stored_targets(
    plan: WalkPlan, cache: cache_keys.WindowStore | None
) -> tuple[dict[int, dict[str, pd.Series]], list[int]]:
    """The windows whose targets the store holds (``done``) and those to compute (``pending``).

    A stateful walk stops looking at the first miss: every later window's key names a previous
    target not known yet. A stateless walk looks each window up on its own."""
    done: dict[int, dict[str, pd.Series]] = {}
    pending: list[int] = []
    for k in range(len(plan.windows)):
        if plan.stateful and pending:
            pending.append(k)
            continue
        stored = read_stored(cache, window_targets_key(plan, k, done), cache_keys.TARGET_COLUMNS)
        if stored is None:
            pending.append(k)
        else:
            done[k] = cache_keys.targets_from(stored, plan.names)
    return done, pending


def alphas_needed(
    plan: WalkPlan,
    settings: PolicySettings,
    needed: Sequence[int],
    *,
    map_tasks: backtest.TaskMap | None,
    cache: cache_keys.WindowStore | None,
) -> tuple[dict[int, pd.DataFrame], int]:
    """Phase 1: the alpha (:func:`window_alpha`) of each window in ``needed``, from the store or
    computed in ONE ``map_tasks`` call and stored; and how many were computed. Every alpha is
    read through the stored form, exactly as a later run will read it."""
    alpha_keys = {
        k: cache_keys.alpha_key(plan.slice_keys[k], plan.settings_key, plan.scorers) for k in needed
    }
    alphas: dict[int, pd.DataFrame] = {}
    for k, entry_key in alpha_keys.items():
        stored = read_stored(cache, entry_key, cache_keys.ALPHA_COLUMNS)
        if stored is not None:
            alphas[k] = stored
    missing = [k for k in alpha_keys if k not in alphas]
    task = functools.partial(
        window_alpha,
        history=plan.history,
        dollar_volume=plan.dollar_volume,
        defects=plan.defects,
        settings=settings,
        scorers=plan.scorers,
    )
    computed = _mapped(map_tasks, task, [plan.spans[k] for k in missing])
    for k, frame in zip(missing, computed, strict=True):
        if cache is not None:
            cache.put(alpha_keys[k], frame)
        alphas[k] = cache_keys.checked(frame, cache_keys.ALPHA_COLUMNS)
    return alphas, len(missing)


def walk_chains(
    plan: WalkPlan,
    settings: PolicySettings,
    pending: Sequence[int],
    done: Mapping[int, dict[str, pd.Series]],
    alphas: Mapping[int, pd.DataFrame],
    *,
    map_tasks: backtest.TaskMap | None,
) -> list[list[pd.Series]]:
    """Phase 2: ONE ``map_tasks`` call over the stateful policies (:func:`walk_chain`), each
    walking the ``pending`` windows in order from its target on the window before them; one list
    of targets per candidate, in ``plan.candidates`` order."""
    first = pending[0] if pending else plan.today
    chains = [
        Chain(
            policy=name,
            previous=done[first - 1][name] if first > 0 and (first - 1) in done else None,
            steps=tuple((k, plan.spans[k], alphas[k]) for k in pending),
        )
        for name in (plan.candidates if pending else [])
    ]
    return _mapped(
        map_tasks, functools.partial(walk_chain, history=plan.history, settings=settings), chains
    )


def window_targets_frame(
    plan: WalkPlan, k: int, chosen: Mapping[str, pd.Series], alpha: pd.DataFrame
) -> pd.DataFrame:
    """Window ``k``'s ``targets`` entry: the candidates' targets ``chosen`` and the baselines of
    its ``alpha``, each validated against the history's symbols (an error names the window)."""
    targets = {**chosen, **baseline_targets(alpha, plan.scorers)}
    last_training_day = plan.history.index[plan.windows[k].train.stop - 1]
    where = f"window {k} (training rows to {last_training_day:%Y-%m-%d})"
    return cache_keys.targets_frame(
        {
            name: backtest.validated_weights(
                targets[name], plan.history.columns, f"{where}, {name}"
            )
            for name in plan.names
        }
    )


def store_walked(
    plan: WalkPlan,
    pending: Sequence[int],
    walked: Sequence[Sequence[pd.Series]],
    alphas: Mapping[int, pd.DataFrame],
    done: Mapping[int, dict[str, pd.Series]],
    cache: cache_keys.WindowStore | None,
) -> dict[int, dict[str, pd.Series]]:
    """Every window's targets: ``done`` and the ``pending`` windows' new outcomes, stored in
    order (a stateful key names the window before) and read back through the stored form, so a
    run from the store equals a cold run bit for bit."""
    targets = dict(done)
    for position, k in enumerate(pending):
        chosen = {name: walked[i][position] for i, name in enumerate(plan.candidates)}
        frame = window_targets_frame(plan, k, chosen, alphas[k])
        targets[k] = cache_keys.targets_from(frame, plan.names)
        if cache is not None:
            cache.put(window_targets_key(plan, k, targets), frame)
    return targets


def walk_forward(
    window: ReturnsWindow,
    settings: PolicySettings,
    *,
    scorers: Sequence[str] = SCORERS,
    profiles: Sequence[str] = optimise.PROFILES,
    map_tasks: backtest.TaskMap | None = None,
    cache: cache_keys.WindowStore | None = None,
) -> WalkForward:
    """Every policy's target on every grid window, reusing what ``cache`` holds.

    1. :func:`plan_walk`: the windows and each one's slice digest; a window's targets entry is
       keyed by that, the parameters, the policy list and — when the decision reads it (a
       turnover penalty) — the digest of the previous window's targets (:func:`stored_targets`).
    2. :func:`alphas_needed`: the alpha of every window to compute and of today's window, unless
       stored: ONE ``map_tasks`` call over those windows.
    3. :func:`walk_chains`: ONE ``map_tasks`` call over the stateful policies, each walking its
       windows in order from the phase-1 alphas; baselines follow from the alphas.
    4. :func:`store_walked`: the new outcomes are validated and stored, and every target is read
       back through the same table form, so a run from the store equals a cold run bit for bit.
    """
    plan = plan_walk(window, settings, scorers=scorers, profiles=profiles)
    done, pending = stored_targets(plan, cache)
    needed = [*pending, plan.today]
    alphas, computed = alphas_needed(plan, settings, needed, map_tasks=map_tasks, cache=cache)
    walked = walk_chains(plan, settings, pending, done, alphas, map_tasks=map_tasks)
    done = store_walked(plan, pending, walked, alphas, done, cache)
    windows = len(plan.windows)
    targets = {name: {k: done[k][name] for k in range(windows)} for name in plan.names}
    reuse = cache_keys.Reuse(
        windows=windows,
        windows_computed=len(pending),
        windows_reused=windows - len(pending),
        alphas_computed=computed,
        alphas_reused=len(needed) - computed,
    )
    return WalkForward(plan.windows, targets, alphas[plan.today], reuse)


def tournament(
    window: ReturnsWindow,
    settings: PolicySettings,
    *,
    incumbent: str | None,
    map_tasks: backtest.TaskMap | None = None,
    cache: cache_keys.WindowStore | None = None,
) -> TournamentOutcome:
    """Every scorer × profile and the baselines, walk-forward over the run's history; the best
    candidate challenges ``incumbent`` by the rule of ``backtest.champion_verdict``.

    Windows sit on the calendar grid of ``backtest.grid_windows`` (decisions every ``step`` days
    of the sleeve's calendar from a fixed epoch, ``decision_rows`` training rows each); the test
    slices cover the rows after the first decision. Metrics use ``settings.periods_per_year``;
    costs ``settings.cost_rate`` per traded dollar, each side. ``cache``: the window store whose
    outcomes are reused and extended (:func:`walk_forward`); ``map_tasks(function, items)``: how
    the two phases fan out (serial by default; results must equal ``[function(i) for i in
    items]``).
    """
    walked = walk_forward(window, settings, map_tasks=map_tasks, cache=cache)
    history = window.history
    candidates = candidates_of(SCORERS, optimise.PROFILES)
    result = backtest.stitch(history, walked.targets, walked.windows, cost_rate=settings.cost_rate)
    table = metrics.metrics_table(
        result.returns, periods_per_year=settings.periods_per_year, turnover=result.turnover
    )
    if np.isfinite(table.loc[candidates, "sharpe"].to_numpy(dtype=float)).any():
        verdict = backtest.champion_verdict(
            table,
            result.returns,
            incumbent=incumbent,
            periods_per_year=settings.periods_per_year,
            promotion=settings.promotion,
            candidates=candidates,
        )
    elif len(result.returns) < 2 and incumbent in candidates:
        # A young sleeve's only window tests on one day every `step` days: no Sharpe ratio to
        # judge by, so the incumbent holds (as it would against any challenger it beat).
        verdict = backtest.Verdict(
            champion=incumbent,
            challenger=incumbent,
            replaced=False,
            rule=TOO_SHORT_TO_JUDGE,
            numbers={},
        )
    else:
        # Nothing to crown: the backtest_complete contract reports why.
        return TournamentOutcome(result, table, None, pd.Series(dtype=float), walked.reuse)
    targets = result.targets[verdict.champion]
    held = targets[max(targets)] if targets else None
    current = _decide_latest(window, settings, verdict.champion, held, walked.latest)
    live = promoted.replay(
        result,
        history,
        candidates=candidates,
        periods_per_year=settings.periods_per_year,
        promotion=settings.promotion,
        cost_rate=settings.cost_rate,
    )
    return TournamentOutcome(result, table, verdict, current, walked.reuse, live)


# The verdict of a tournament whose out-of-sample record is one day long and has an incumbent.
TOO_SHORT_TO_JUDGE = (
    "fewer than 2 out-of-sample days: no Sharpe ratio to judge by; the incumbent holds"
)


def decision_rows(history_rows: int, settings: PolicySettings) -> int:
    """Rows of history one walk-forward decision reads (the newest decision too): ``lookback``,
    fewer only when the history leaves less than one ``test`` slice after them."""
    return min(settings.lookback, max(history_rows - settings.test, 1))


def _decide_latest(
    window: ReturnsWindow,
    settings: PolicySettings,
    champion: str,
    held: pd.Series | None,
    frame: pd.DataFrame,
) -> pd.Series:
    scorer, profile = champion.split("/")
    latest = window.history.tail(decision_rows(len(window.history), settings))
    winners = winners_of(frame, scorer)
    weights = decide_target(profile, winners, latest, settings, previous=held)
    return weights.rename("weight").rename_axis("symbol")


def latest_alpha(
    window: ReturnsWindow,
    settings: PolicySettings,
    *,
    scorers: Sequence[str] = SCORERS,
    cache: cache_keys.WindowStore | None = None,
) -> pd.DataFrame:
    """:func:`alpha_frame` of the newest :func:`decision_rows` rows of the run's history, from
    ``cache`` when the tournament stored it (same key as :func:`walk_forward`'s)."""
    history = window.history
    volume = window.history_dollar_volume.reindex(index=history.index, columns=history.columns)
    rows = decision_rows(len(history), settings)
    span = (len(history) - rows, len(history))
    entry_key = None
    if cache is not None:
        slice_key = cache_keys.slice_digest(
            *cache_keys.used_slice(history.iloc[span[0] :], volume.iloc[span[0] :], window.defects)
        )
        settings_key = cache_keys.settings_digest(settings_config(settings))
        entry_key = cache_keys.alpha_key(slice_key, settings_key, scorers)
        stored = cache_keys.checked(cache.get(entry_key), cache_keys.ALPHA_COLUMNS)
        if stored is not None:
            return stored
    frame = window_alpha(
        span,
        history=history,
        dollar_volume=volume,
        defects=window.defects,
        settings=settings,
        scorers=tuple(scorers),
    )
    if cache is not None and entry_key is not None:
        cache.put(entry_key, frame)
    return cache_keys.checked(frame, cache_keys.ALPHA_COLUMNS)


def decide_portfolio(
    window: ReturnsWindow,
    settings: PolicySettings,
    champion: str,
    held: pd.Series | None,
    *,
    cache: cache_keys.WindowStore | None = None,
) -> pd.Series:
    """The production decision: policy ``champion`` (``scorer/profile``) applied to the newest
    :func:`decision_rows` rows of the run's history — target weights by symbol, empty for cash.

    ``held``: the turnover-penalty reference, the champion's own last walk-forward target (the
    tournament's reference), so the decision is exactly the policy whose record crowned it; the
    book actually held (the previous run's portfolio) only prices the trades
    (:func:`portfolio_trades`). ``cache``: the window store the tournament filled, whose alpha of
    the newest window is reused (without one, the champion's scorer alone is computed).
    """
    scorer, _ = champion.split("/")
    frame = latest_alpha(
        window, settings, scorers=SCORERS if cache is not None else (scorer,), cache=cache
    )
    return _decide_latest(window, settings, champion, held, frame)


def last_target(targets: pd.DataFrame, policy_name: str, windows: int) -> pd.Series | None:
    """Policy ``policy_name``'s target of the last walk-forward window (``windows`` in all) from a
    stored ``backtest.target_table``: None without windows, empty when it held cash then."""
    if windows <= 0:
        return None
    rows = targets[(targets["policy"] == policy_name) & (targets["window"] == windows - 1)]
    return pd.Series(rows["weight"].to_numpy(dtype=float), index=pd.Index(rows["symbol"]))


def walk_forward_count(dates: pd.Index, settings: PolicySettings) -> int:
    """How many walk-forward windows :func:`tournament` runs over a history dated ``dates``."""
    return len(grid_windows(dates, settings))


TRADE_COLUMNS = ("previous", "target", "trade")


@lake_record  # a lake value: stored data names this type, never imports it
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
# The decision as a model: one frame in, the portfolio out (``tvq_assets.tracking.policy_model``)
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
    history (its chain does not depend on the other policies), and the newest window's alpha: the
    turnover-penalty reference and the alpha :func:`decide_portfolio` needs, so a model that only
    sees the history decides exactly as the tournament did."""
    scorer, profile = champion.split("/")
    walked = walk_forward(window, settings, scorers=(scorer,), profiles=(profile,))
    targets = walked.targets[champion]
    return (targets[max(targets)] if targets else None), walked.latest


def predict_portfolio(frame: pd.DataFrame, settings: PolicySettings, champion: str) -> pd.Series:
    """The registered model's prediction: :func:`decide_portfolio` of policy ``champion`` on the
    history in ``frame`` (:func:`model_input` layout), with the replayed reference."""
    window = window_from_input(frame, settings)
    held, latest = replayed_reference(window, settings, champion)
    return _decide_latest(window, settings, champion, held, latest)


def settings_config(settings: PolicySettings) -> dict:
    """Every policy parameter as plain JSON values (a model's ``model_config``)."""
    values = dataclasses.asdict(settings)
    values["venues"] = settings.venues.config() if settings.venues is not None else None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def settings_from_config(values: dict) -> PolicySettings:
    fields = {f.name: f for f in dataclasses.fields(PolicySettings)}
    chosen = {k: v for k, v in values.items() if k in fields}
    chosen["selection"] = SelectionPolicy(**chosen["selection"])
    chosen["promotion"] = backtest.Promotion(**chosen["promotion"])
    chosen["cluster_lookbacks"] = tuple(chosen["cluster_lookbacks"])
    # A model registered before the cluster method existed clustered exactly: replay it so.
    chosen.setdefault("cluster_method", "exact")
    chosen.setdefault("cluster_exact_max", 0)  # not read by the exact method
    # A model registered before venues existed decided without them: replay it so.
    venues = chosen.get("venues")
    chosen["venues"] = Venues.from_config(venues) if venues is not None else None
    return PolicySettings(**chosen)
