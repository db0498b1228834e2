"""The alpha chain and the backtest's policies on the embedded synthetic market."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from tvq_assets.catalog import Policy
from tvq_assets.quant import optimise, pipeline
from tvq_assets.quant.returns import returns_window
from tvq_assets.quant.selection import SelectionPolicy
from tvq_resources.synthetic import Fault, generate_market, planted_clusters

SETTINGS = pipeline.AlphaSettings(
    periods_per_year=365, liquidity_baseline=10e6, selection=SelectionPolicy.of(Policy())
)
# The documented bar for recovering the planted sectors (stablecoins form their own group).
MIN_ADJUSTED_RAND = 0.9


def window(*, symbols: int = 60, faults=(), end: str = "2026-06-30"):
    bars = generate_market(seed=7, n_symbols=symbols, end=end, faults=faults)
    return returns_window(
        bars,
        as_of=pd.Timestamp(end),
        lookback=500,
        calendar="crypto",
        stale_days=5,
        min_history=90,
    )


@pytest.fixture(scope="module")
def market():
    return window()


def test_clustering_recovers_the_planted_sectors_of_the_synthetic_market(market):
    labels = pipeline.cluster(market.returns, SETTINGS)
    truth = planted_clusters(seed=7, n_symbols=60).reindex(labels.index)
    assert adjusted_rand_score(truth, labels) > MIN_ADJUSTED_RAND


def test_alpha_selects_within_bounds_and_never_a_stalled_symbol():
    stalled_symbol_window = window(faults=[Fault("stall")])
    stalled = pipeline.stalled_in_returns(stalled_symbol_window.returns, SETTINGS.stall_bars)
    assert len(stalled) == 1
    result = pipeline.alpha(
        stalled_symbol_window.returns, stalled_symbol_window.dollar_volume, SETTINGS
    )
    for outcome in result.selections.values():
        winners = outcome.winners
        assert SETTINGS.selection.min_winners <= len(winners) <= SETTINGS.selection.max_winners
        assert stalled[0] not in winners.index


def test_a_policy_sees_only_its_training_slice(market):
    tournament = pipeline.Tournament(
        market.dollar_volume, SETTINGS, optimise.Constraints.of(Policy())
    )
    train = market.returns.iloc[:300]
    before = tournament.policies()["log_mps/min_variance"](train)
    changed = market.returns.copy()
    changed.iloc[300:] = changed.iloc[300:] * -3.0
    fresh = pipeline.Tournament(
        changed.abs() * 0 + market.dollar_volume, SETTINGS, optimise.Constraints.of(Policy())
    )
    after = fresh.policies()["log_mps/min_variance"](changed.iloc[:300])
    pd.testing.assert_series_equal(before, after)


def test_every_profile_of_a_scorer_allocates_the_same_winners(market):
    tournament = pipeline.Tournament(
        market.dollar_volume, SETTINGS, optimise.Constraints.of(Policy())
    )
    train = market.returns.iloc[-252:]
    policies = tournament.policies()
    held = {name: set(policies[name](train).index) for name in tournament.candidates}
    winners = set(tournament.alpha_of(train).selections["log_mps"].winners.index)
    for profile in optimise.PROFILES:
        assert held[f"log_mps/{profile}"] <= winners
    assert np.isclose(policies["baseline_winners"](train).sum(), 1.0)
    assert set(policies["baseline_winners"](train).index) == winners
