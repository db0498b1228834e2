"""The composed policy: one universe, stall and quarantine rule for assets and tournament."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from tests.settings import settings_for
from tvq_assets.quant import backtest, optimise, policy
from tvq_assets.quant.returns import eligibility
from tvq_resources.synthetic import Fault, generate_market, planted_clusters

END = "2026-06-30"
# The documented bar for recovering the planted sectors (stablecoins form their own group).
MIN_ADJUSTED_RAND = 0.9


SETTINGS = settings_for()
# A short walk-forward that still exercises every stage: 3 windows of 20 days.
SHORT = settings_for(lookback=300, train=240, test=20, step=20)


def window(*, symbols: int = 60, faults=(), end: str = END, settings=SETTINGS, bars=None):
    bars = (
        generate_market(seed=7, n_symbols=symbols, end=end, faults=faults) if bars is None else bars
    )
    return policy.point_in_time(bars, as_of=pd.Timestamp(end), settings=settings, quarantine=True)


@pytest.fixture(scope="module")
def market():
    return window()


def test_clustering_recovers_the_planted_sectors_of_the_synthetic_market(market):
    labels = policy.cluster(market.returns, SETTINGS)
    truth = planted_clusters(seed=7, n_symbols=60).reindex(labels.index)
    assert adjusted_rand_score(truth, labels) > MIN_ADJUSTED_RAND


def test_alpha_selects_within_bounds_and_never_a_stalled_symbol():
    stalled_window = window(faults=[Fault("stall")])
    table = policy.features(stalled_window.returns, stalled_window.dollar_volume, SETTINGS)
    stalled = list(table.index[table["stalled"]])
    assert len(stalled) >= 1
    history = stalled_window.history.tail(SETTINGS.lookback)
    result = policy.decide_alpha(
        history,
        stalled_window.history_dollar_volume.tail(SETTINGS.lookback),
        as_of=pd.Timestamp(END),
        settings=SETTINGS,
        defects=stalled_window.defects,
    )
    for outcome in result.selections.values():
        winners = outcome.winners
        assert SETTINGS.selection.min_winners <= len(winners) <= SETTINGS.selection.max_winners
        assert not set(stalled) & set(winners.index)


def test_eligibility_counts_staleness_in_calendar_days_from_the_as_of_date():
    dates = pd.bdate_range("2026-01-05", periods=100, name="date")
    returns = pd.DataFrame(0.01, index=dates, columns=["A", "B"])
    last_bar = pd.Series([dates[-1], dates[-1]], index=returns.columns)
    # A run on Monday before Monday's bars land: Friday's bars are 3 calendar days old.
    monday = dates[-1] + pd.Timedelta(days=3)
    kept = eligibility(returns, last_bar=last_bar, as_of=monday, stale_days=3, min_history=90)
    assert kept.empty
    dropped = eligibility(returns, last_bar=last_bar, as_of=monday, stale_days=2, min_history=90)
    assert list(dropped["rule"]) == ["stale_or_delisted"] * 2
    assert list(dropped["value"]) == [3.0, 3.0]


def test_the_stall_rule_fires_above_its_zero_share_and_not_at_it():
    rows = 120
    at_share = np.full((rows, 2), 0.01)
    at_share[: int(rows * 0.25), 0] = 0.0  # exactly 25% zero returns
    at_share[: int(rows * 0.25) + 1, 1] = 0.0  # one more: above 25%
    mask = policy.quality.stall_mask(at_share, window=rows, max_zero_share=0.25, stall_bars=3)
    assert list(mask) == [False, True]


def test_the_stall_rule_also_fires_on_a_run_of_identical_closes():
    values = np.full((120, 2), 0.01)
    values[-2:, 0] = 0.0  # three identical closes
    values[-1:, 1] = 0.0  # two
    mask = policy.quality.stall_mask(values, window=120, max_zero_share=0.25, stall_bars=3)
    assert list(mask) == [True, False]


def one_window(data, settings, rows: tuple[int, int]) -> pd.DataFrame:
    """The walk-forward's alpha of the history rows ``[start, stop)`` (``policy.window_alpha``)."""
    return policy.window_alpha(
        rows,
        history=data.history,
        dollar_volume=data.history_dollar_volume,
        defects=data.defects,
        settings=settings,
        scorers=policy.SCORERS,
    )


def test_a_policy_sees_only_its_training_slice(market):
    walked = policy.walk_forward(market, SHORT, profiles=("min_variance",))
    cut = walked.windows[1].train.stop
    changed = dataclasses.replace(market, history=market.history.copy())
    # Noise, not a rescaling: a minimum-variance book is blind to a covariance scaled uniformly.
    noise = np.random.default_rng(3).normal(0.0, 0.03, changed.history.iloc[cut:].shape)
    changed.history.iloc[cut:] = changed.history.iloc[cut:] + noise  # NaN (unlisted) stays NaN
    rewritten = policy.walk_forward(changed, SHORT, profiles=("min_variance",))
    assert rewritten.windows == walked.windows
    for name, by_window in walked.targets.items():
        for k in (0, 1):  # every window trained before the cut decides as before
            pd.testing.assert_series_equal(by_window[k], rewritten.targets[name][k])
    # and the rewrite is seen by a window that trains on it
    last = len(walked.windows) - 1
    assert not walked.targets["log_mps/min_variance"][last].equals(
        rewritten.targets["log_mps/min_variance"][last]
    )


def test_every_profile_of_a_scorer_allocates_the_same_winners(market):
    walked = policy.walk_forward(market, SHORT)
    for k, window in enumerate(walked.windows):
        frame = one_window(market, SHORT, (window.train.start, window.train.stop))
        winners = set(policy.winners_of(frame, "log_mps").index)
        for profile in optimise.PROFILES:
            assert set(walked.targets[f"log_mps/{profile}"][k].index) <= winners, (k, profile)
        equal = walked.targets["baseline_winners"][k]
        assert np.isclose(equal.sum(), 1.0) and set(equal.index) == winners


def test_the_tournament_honours_the_cluster_cap_on_every_window(market):
    capped = dataclasses.replace(SHORT, cluster_cap=0.3)
    walked = policy.walk_forward(market, capped)
    candidates = policy.candidates_of(policy.SCORERS, optimise.PROFILES)
    checked = 0
    for k, window in enumerate(walked.windows):
        frame = one_window(market, capped, (window.train.start, window.train.stop))
        for name in candidates:
            weights = walked.targets[name][k]
            if weights.empty:
                continue
            labels = policy.winners_of(frame, name.split("/")[0])["cluster"]
            by_cluster = weights.groupby(labels.reindex(weights.index)).sum()
            assert by_cluster.max() <= 0.3 + 1e-6, (name, k, by_cluster.max())
            checked += 1
    assert checked >= len(candidates) * len(walked.windows) - 2


def test_the_tournament_penalises_turnover_against_each_policys_previous_target(market):
    # The last two decisions of one policy, each step's reference the step before's target.
    rows = policy.decision_rows(len(market.history), SHORT)
    end = len(market.history)
    spans = [(end - 20 - rows, end - 20), (end - rows, end)]
    steps = tuple((k, span, one_window(market, SHORT, span)) for k, span in enumerate(spans))
    chain = policy.Chain(policy="log_mps/min_variance", previous=None, steps=steps)
    previous, free = policy.walk_chain(chain, history=market.history, settings=SHORT)
    penalised = dataclasses.replace(SHORT, turnover_penalty=1.0)
    same, held = policy.walk_chain(chain, history=market.history, settings=penalised)
    pd.testing.assert_series_equal(same, previous)  # no previous target: nothing to penalise

    def moved(weights):
        symbols = weights.index.union(previous.index)
        return (
            (weights.reindex(symbols).fillna(0) - previous.reindex(symbols).fillna(0)).abs().sum()
        )

    assert moved(held) < moved(free) - 1e-3


def test_a_stale_symbol_leaves_the_tournaments_universe_with_its_rule(market):
    contest = policy.Tournament(market, SHORT)
    train = market.history.tail(SHORT.lookback).copy()
    volume = contest.dollar_volume.copy()
    victim = train.columns[0]
    volume.loc[train.index[-6:], victim] = np.nan  # no bar for the last 6 days
    contest.dollar_volume = volume
    universe = contest.alpha_of(train).universe
    assert victim not in universe.returns.columns
    [row] = universe.excluded[universe.excluded["symbol"] == victim].itertuples()
    assert row.rule == "stale_or_delisted" and row.value == 6.0
    frame = policy.alpha_frame(contest.alpha_of(train), policy.SCORERS)
    assert victim not in policy.baseline_targets(frame, policy.SCORERS)["baseline_universe"].index


def test_a_symbol_that_dies_inside_the_backtest_is_held_before_and_leaves_after():
    bars = generate_market(seed=7, n_symbols=40, end=END)
    victim = sorted(bars["symbol"].unique())[3]
    death = pd.Timestamp(END) - pd.Timedelta(days=35)
    alive = ~((bars["symbol"] == victim) & (bars["date"] > death))
    data = window(bars=bars[alive].reset_index(drop=True), settings=SHORT)
    assert victim in data.history.columns and victim not in data.returns.columns
    assert data.history[victim].loc[:death].notna().iloc[-1]
    assert data.history[victim].loc[death + pd.Timedelta(days=1) :].isna().all()

    walked = policy.walk_forward(data, SHORT, profiles=("min_variance",))
    result = backtest.stitch(
        data.history, walked.targets, walked.windows, cost_rate=SHORT.cost_rate
    )
    held = result.targets["baseline_universe"]
    ends = {i: data.history.index[w.train.stop - 1] for i, w in enumerate(result.windows)}
    before = [i for i, end in ends.items() if end <= death]
    after = [i for i, end in ends.items() if end > death + pd.Timedelta(days=SHORT.stale_days)]
    assert before and after
    assert all(victim in held[i].index for i in before)
    assert not any(victim in held[i].index for i in after)
    assert np.isfinite(result.returns["baseline_universe"]).all()


def test_a_toxic_print_quarantines_its_symbol_only_in_windows_that_contain_it():
    bars = generate_market(seed=7, n_symbols=40, end=END)
    victim = sorted(bars["symbol"].unique())[5]
    day = pd.Timestamp(END) - pd.Timedelta(days=30)
    spike = (bars["symbol"] == victim) & (bars["date"] >= day)
    bars.loc[spike, ["open", "high", "low", "close"]] *= 8.0  # +700% on `day`, then flat
    data = window(bars=bars, settings=SHORT)
    assert {"toxic_return"} <= set(data.defects.loc[data.defects["symbol"] == victim, "rule"])
    contest = policy.Tournament(data, SHORT)
    before = data.history.loc[: day - pd.Timedelta(days=1)].tail(SHORT.lookback)
    after = data.history.tail(SHORT.lookback)
    assert victim in contest.alpha_of(before).universe.returns.columns
    quarantined = contest.alpha_of(after).universe
    assert victim in quarantined.quarantined
    # The production window of the same day quarantines it in the same way.
    assert victim in data.excluded.loc[data.excluded["reason"] == "quarantine", "symbol"].values


def test_a_window_with_too_small_a_universe_holds_cash(market):
    tiny = dataclasses.replace(SHORT, min_universe=10_000)
    walked = policy.walk_forward(market, tiny)
    assert set(walked.targets) == {
        *policy.candidates_of(policy.SCORERS, optimise.PROFILES),
        *policy.BASELINES,
    }
    for name, by_window in walked.targets.items():
        assert by_window and all(weights.empty for weights in by_window.values()), name


def test_a_window_whose_cap_is_infeasible_holds_cash_under_fail_and_raises_the_cap_under_raise(
    market,
):
    # The production run of such a day stops (infeasible_cap: fail): its replay holds cash.
    strict = dataclasses.replace(SHORT, cap=0.01, infeasible_cap="fail")
    train = market.history.tail(SHORT.lookback)
    held = policy.Tournament(market, strict).decide("log_mps", "min_variance", train, None)
    assert held.empty
    with pytest.raises(optimise.InfeasibleCap, match=r"cap 0\.01 is infeasible"):
        winners = policy.Tournament(market, strict).alpha_of(train).selections["log_mps"].winners
        policy.allocate("min_variance", winners, train, strict, previous=None)
    raised = dataclasses.replace(strict, infeasible_cap="raise")
    weights = policy.Tournament(market, raised).decide("log_mps", "min_variance", train, None)
    assert np.isclose(weights.sum(), 1.0) and weights.max() <= 1 / len(weights) + 1e-9


def test_bar_exclusions_inside_the_window_quarantine_their_symbol_and_older_ones_do_not(market):
    data = market.history.tail(SETTINGS.lookback)
    volume = market.history_dollar_volume.tail(SETTINGS.lookback)
    inside, before = data.columns[0], data.columns[1]
    bar_exclusions = pd.DataFrame(
        {
            "symbol": [inside, before],
            "rule": ["ohlc_inconsistent", "ohlc_inconsistent"],
            "date": [data.index[-3], data.index[0] - pd.Timedelta(days=1)],
            "value": [1.0, 1.0],
            "detail": ["quarantined by the bar policy"] * 2,
        }
    )
    chosen = policy.universe(
        data,
        volume,
        as_of=data.index[-1],
        settings=SETTINGS,
        bar_exclusions=bar_exclusions,
        quarantine=False,
    )
    assert inside not in chosen.returns.columns and before in chosen.returns.columns
    [row] = chosen.excluded[chosen.excluded["symbol"] == inside].itertuples()
    assert (row.rule, row.reason) == ("ohlc_inconsistent", "bar_defect")
    assert inside in chosen.quarantined


def test_a_young_sleeves_one_day_record_keeps_its_incumbent_and_crowns_no_first_champion():
    """A sleeve whose history only just covers a decision tests on 1 to `test` rows; on the day
    its only window tests on one row no Sharpe ratio exists: the incumbent holds, and a first run
    (no incumbent) crowns nobody (the backtest_complete contract then names why)."""
    # A weekday sleeve's grid is the days its symbols traded: a young one's history is short.
    young = settings_for("weekday", lookback=60, train=40, test=10, step=10, min_history=20)
    bars = generate_market(seed=11, n_symbols=12, start="2026-01-01", end=END, calendar="weekday")
    one_day = None
    for end in pd.date_range("2026-03-02", "2026-04-10", freq="B"):
        candidate = window(bars=bars[bars["date"] <= end], end=f"{end:%F}", settings=young)
        windows = policy.grid_windows(candidate.history.index, young)
        test_rows = {row for w in windows for row in range(w.test.start, w.test.stop)}
        if len(test_rows) == 1:
            one_day = candidate
            break
    assert one_day is not None, "no day of the span tests on exactly one row"
    kept = policy.tournament(one_day, young, incumbent="log_mps/hrp")
    assert len(kept.result.returns) == 1
    assert kept.verdict.champion == "log_mps/hrp" and not kept.verdict.replaced
    assert kept.verdict.rule == policy.TOO_SHORT_TO_JUDGE
    assert np.isclose(kept.champion_weights.sum(), 1.0) or kept.champion_weights.empty
    assert policy.tournament(one_day, young, incumbent=None).verdict is None
