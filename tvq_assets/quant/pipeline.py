"""The alpha pipeline as one composable function chain, shared by the assets and the backtest.

``alpha`` runs features → scores → clusters → selection on one returns window; the assets call
the same pieces one by one, and the walk-forward tournament calls ``alpha`` on each training
slice, so a policy in the backtest is exactly what production would have done on that day.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from tvq_assets.quant import backtest, clusters, features, inference, metrics, optimise
from tvq_assets.quant.selection import Selection, SelectionPolicy, select

SCORERS: tuple[str, ...] = ("log_mps", "rank_ic")
BASELINES: tuple[str, ...] = ("baseline_universe", "baseline_winners")


@dataclass(frozen=True)
class AlphaSettings:
    """Parameters of the alpha layer.

    Units: bars of the sleeve's calendar; volatilities and returns annualised with
    ``periods_per_year``; ``liquidity_baseline`` in quote currency per day.
    """

    periods_per_year: int
    liquidity_baseline: float
    feature_lookback: int = 120
    min_history: int = 90
    stale_bars: int = 5
    stall_bars: int = 3
    cluster_lookbacks: tuple[int, ...] = (60, 120, 200)
    cluster_threshold: float = 0.7
    max_clusters: int = 25
    selection: SelectionPolicy = field(kw_only=True)


@dataclass(frozen=True)
class Alpha:
    """Everything the alpha layer decided on one returns window (eligible symbols only)."""

    features: pd.DataFrame
    scores: dict[str, pd.DataFrame]  # scorer -> log_mps / rank_ic output
    clusters: pd.Series
    selections: dict[str, Selection]  # scorer -> selection with that scorer's scores


def compute_features(
    returns: pd.DataFrame, dollar_volume: pd.DataFrame, settings: AlphaSettings
) -> pd.DataFrame:
    return features.compute_features(
        returns,
        dollar_volume,
        periods_per_year=settings.periods_per_year,
        lookback=settings.feature_lookback,
        liquidity_baseline=settings.liquidity_baseline,
    )


def score(
    scorer: str,
    table: pd.DataFrame,
    returns: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    settings: AlphaSettings,
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
        )
    raise ValueError(f"unknown scorer {scorer!r}; expected one of {SCORERS}")


def cluster(returns: pd.DataFrame, settings: AlphaSettings) -> pd.Series:
    return clusters.cluster_symbols(
        returns,
        lookbacks=settings.cluster_lookbacks,
        threshold=settings.cluster_threshold,
        max_clusters=settings.max_clusters,
    )


def stalled_in_returns(returns: pd.DataFrame, stall_bars: int) -> list[str]:
    """Symbols whose last ``stall_bars`` closes are identical: ``stall_bars - 1`` zero returns."""
    tail = returns.tail(max(stall_bars - 1, 1))
    return sorted(returns.columns[(tail == 0.0).all().to_numpy()])


def eligible(returns: pd.DataFrame, settings: AlphaSettings) -> pd.Index:
    """Symbols with ``min_history`` returns or more and a return in the last ``stale_bars`` rows."""
    history = returns.notna().sum()
    recent = returns.tail(settings.stale_bars).notna().any()
    return returns.columns[((history >= settings.min_history) & recent).to_numpy()]


def alpha(
    returns: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    settings: AlphaSettings,
    *,
    scorers: Sequence[str] = SCORERS,
) -> Alpha:
    """Features, scores, clusters and one selection per scorer for a returns window.

    Only the eligible symbols of the window enter; stalled symbols are vetoed by selection.
    """
    universe = eligible(returns, settings)
    window, volume = returns[universe], dollar_volume[universe]
    table = compute_features(window, volume, settings)
    labels = cluster(window, settings)
    stalled = stalled_in_returns(window, settings.stall_bars)
    scores, selections = {}, {}
    for scorer in scorers:
        scores[scorer] = score(scorer, table, window, volume, settings)
        selections[scorer] = select(
            table, scores[scorer]["score"], labels, policy=settings.selection, stalled=stalled
        )
    return Alpha(table, scores, labels, selections)


class Tournament:
    """The backtest's policies: every scorer × profile, plus two equal-weight baselines.

    A policy maps a training slice to target weights. The alpha pipeline depends only on the
    slice and the scorer, so it is computed once per (slice, scorer) and shared by the profiles
    (thread-safe memo; separate processes simply recompute).
    """

    def __init__(
        self,
        dollar_volume: pd.DataFrame,
        settings: AlphaSettings,
        constraints: optimise.Constraints,
        *,
        scorers: Sequence[str] = SCORERS,
        profiles: Sequence[str] = optimise.PROFILES,
    ) -> None:
        self.dollar_volume = dollar_volume
        self.settings = settings
        self.constraints = constraints
        self.scorers = tuple(scorers)
        self.profiles = tuple(profiles)
        self._memo: dict[tuple, Alpha] = {}
        self._lock = threading.Lock()

    @property
    def candidates(self) -> list[str]:
        return [f"{s}/{p}" for s in self.scorers for p in self.profiles]

    def policies(self) -> dict[str, Callable[[pd.DataFrame], pd.Series]]:
        chosen = {name: self._policy(*name.split("/")) for name in self.candidates}
        chosen["baseline_universe"] = self._equal_universe
        chosen["baseline_winners"] = self._equal_winners
        return chosen

    def alpha_of(self, train: pd.DataFrame) -> Alpha:
        """The alpha of a training slice, computed once per (dates, symbols) and then shared."""
        key = (train.index[0], train.index[-1], len(train), tuple(train.columns))
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        result = alpha(
            train,
            self.dollar_volume.loc[train.index, train.columns],
            self.settings,
            scorers=self.scorers,
        )
        with self._lock:
            self._memo[key] = result
        return result

    def _policy(self, scorer: str, profile: str) -> Callable[[pd.DataFrame], pd.Series]:
        def weights(train: pd.DataFrame) -> pd.Series:
            chosen = self.alpha_of(train).selections[scorer].winners
            if chosen.empty:
                return pd.Series(dtype=float)
            constraints = replace(self.constraints, clusters=chosen["cluster"], previous=None)
            allocation = optimise.allocate(profile, train[chosen.index], constraints=constraints)
            return allocation.weights

        return weights

    def _equal_universe(self, train: pd.DataFrame) -> pd.Series:
        universe = eligible(train, self.settings)
        return pd.Series(np.full(len(universe), 1.0 / max(len(universe), 1)), index=universe)

    def _equal_winners(self, train: pd.DataFrame) -> pd.Series:
        chosen = self.alpha_of(train).selections[self.scorers[0]].winners.index
        return pd.Series(np.full(len(chosen), 1.0 / max(len(chosen), 1)), index=chosen)


@dataclass(frozen=True)
class TournamentOutcome:
    """The walk-forward tournament of one run: returns, metrics, verdict, champion's weights now."""

    result: backtest.BacktestResult
    metrics: pd.DataFrame
    verdict: backtest.Verdict
    champion_weights: pd.Series  # the champion's policy applied to the latest training window


def tournament(
    returns: pd.DataFrame,
    dollar_volume: pd.DataFrame,
    settings: AlphaSettings,
    constraints: optimise.Constraints,
    *,
    train: int,
    test: int,
    step: int,
    cost_rate: float,
    incumbent: str | None,
    map_tasks: backtest.TaskMap | None = None,
) -> TournamentOutcome:
    """Every scorer × profile and the baselines, walk-forward over ``returns``; the best candidate
    challenges ``incumbent`` by the rule of ``backtest.champion_verdict``. Metrics use
    ``settings.periods_per_year``; ``cost_rate`` is per unit of one-sided turnover."""
    contest = Tournament(dollar_volume, settings, constraints)
    policies = contest.policies()
    result = backtest.run(
        returns,
        policies,
        train=train,
        test=test,
        step=step,
        cost_rate=cost_rate,
        map_tasks=map_tasks,
    )
    table = metrics.metrics_table(
        result.returns, periods_per_year=settings.periods_per_year, turnover=result.turnover
    )
    verdict = backtest.champion_verdict(
        table,
        result.returns,
        incumbent=incumbent,
        periods_per_year=settings.periods_per_year,
        candidates=contest.candidates,
    )
    current = policies[verdict.champion](returns.tail(train))
    return TournamentOutcome(result, table, verdict, current)
