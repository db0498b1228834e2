"""The tournament replays production: its last window, fed the run's slice, decides exactly what
the assets stored; and the backtest asset carries the incumbent from the previous run."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from tests.conftest import (
    AS_OF,
    evaluations,
    materialised,
    metadata,
    resources_for,
    synthetic_source,
)
from tests.settings import TINY
from tvq_assets import allocation, alpha, data
from tvq_assets.partitions import catalog
from tvq_assets.quant import optimise, policy
from tvq_assets.settings import policy_settings
from tvq_resources.lake import ParquetLake
from tvq_resources.market_data import SourceConfig
from tvq_resources.synthetic import generate_market

ALPHA = [alpha.features, alpha.inference, alpha.clusters, alpha.selection]
ALL = [data.bars, data.returns, *ALPHA, allocation.weights, allocation.backtest]
PRODUCTION = [data.returns, *ALPHA, allocation.weights]


def key(sleeve: str, as_of: str = AS_OF, days_before: int = 0) -> str:
    return f"{pd.Timestamp(as_of) - pd.Timedelta(days=days_before):%Y-%m-%d}|{sleeve}"


def materialise(instance, resources, targets, partition) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL,
        partition_key=partition,
        selection=[a.key for a in targets],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def refresh(instance, resources, sleeve: str) -> None:
    result = dg.materialize(
        [data.bars], partition_key=sleeve, resources=resources, instance=instance
    )
    assert result.success


def write_csv_sleeve(folder: Path, *, symbols: int, end: str, start: str, genesis=None) -> Path:
    """One plain ``date,open,high,low,close,volume`` file per symbol, from the synthetic market.

    ``genesis``: list every symbol only from that date (a sleeve too young for a walk-forward).
    One symbol dies 40 days before ``end``; another prints +700% 20 days before ``end``.
    """
    bars = generate_market(seed=21, n_symbols=symbols, n_clusters=4, start=start, end=end)
    names = sorted(bars["symbol"].unique())
    dies, spikes = names[1], names[2]
    bars = bars[
        ~((bars["symbol"] == dies) & (bars["date"] > pd.Timestamp(end) - pd.Timedelta(days=40)))
    ]
    jump = (bars["symbol"] == spikes) & (bars["date"] >= pd.Timestamp(end) - pd.Timedelta(days=20))
    bars.loc[jump, ["open", "high", "low", "close"]] *= 8.0
    if genesis is not None:
        bars = bars[bars["date"] >= pd.Timestamp(genesis)]
    folder.mkdir(parents=True, exist_ok=True)
    for symbol, group in bars.groupby("symbol"):
        frame = group[["date", "open", "high", "low", "close", "volume"]].copy()
        frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
        frame.to_csv(folder / f"{symbol}.csv", index=False)
    return folder


def assert_tournament_replays_the_assets(lake: ParquetLake, sleeve_name: str, partition: str):
    """The property: the tournament's window at the as-of date, fed the run's slice, selects the
    same winners and weights every profile exactly as the stored assets did."""
    sleeve = catalog.sleeve(sleeve_name)
    settings = policy_settings(sleeve)
    window = lake.read(["returns"], partition)
    stored_winners = lake.read(["selection"], partition).winners
    stored_weights = lake.read(["weights"], partition).weights
    previous_key = key(sleeve_name, partition.split("|")[0], 1)
    previous = (
        lake.read(["weights"], previous_key).weights
        if lake.exists(["weights"], previous_key)
        else None
    )
    as_of = pd.Timestamp(partition.split("|")[0])
    contest = policy.Tournament(window, settings)
    last = window.history.tail(settings.lookback)
    replayed = contest.alpha_of(last, as_of=as_of)
    assert list(replayed.universe.returns.columns) == list(window.returns.columns)
    winners = replayed.selections["log_mps"].winners
    # The stored winners add the rendered sentence of each admission (``reason``).
    pd.testing.assert_frame_equal(winners, stored_winners.drop(columns="reason"), check_dtype=False)
    assert len(winners) > 0
    for profile in optimise.PROFILES:
        held = previous[profile] if previous is not None else None
        weights = contest.decide("log_mps", profile, last, held, as_of=as_of)
        expected = stored_weights[profile]
        expected = expected[expected > 0]
        pd.testing.assert_series_equal(
            weights.reindex(expected.index).fillna(0.0),
            expected,
            check_names=False,
            atol=1e-9,
            rtol=0,
        )
        assert set(weights.index[weights > 0]) == set(expected.index), profile


@pytest.mark.parametrize(
    ("sleeve_name", "as_of"), [("crypto", AS_OF), ("tradfi", AS_OF), ("tradfi", "2026-06-27")]
)
def test_the_tournaments_last_window_replays_every_demo_sleeve(
    instance, lake_root, sleeve_name, as_of
):
    # The catalog's sleeves and policies, on their synthetic sources cut at the test's date.
    source = catalog.sleeve(sleeve_name).source
    resources = resources_for(
        lake_root,
        **{
            sleeve_name: synthetic_source(
                symbols=40,
                end=AS_OF,
                calendar=catalog.sleeve(sleeve_name).calendar,
                seed=source["seed"],
                clusters=source["clusters"],
            )
        },
    )
    refresh(instance, resources, sleeve_name)
    partition = key(sleeve_name, as_of)
    result = materialise(instance, resources, PRODUCTION, partition)
    assert result.success, [e.description for e in evaluations(result).values() if not e.passed]
    assert_tournament_replays_the_assets(ParquetLake(root=lake_root), sleeve_name, partition)


def test_the_tournaments_last_window_replays_a_csv_sleeve_with_state_quarantine_and_caps(
    instance, lake_root, tmp_path, sleeve_policy
):
    folder = write_csv_sleeve(tmp_path / "csv", symbols=24, start="2024-09-01", end=AS_OF)
    sleeve_policy(
        "crypto",
        toxic_policy="quarantine",
        policy={"turnover_penalty": 1e-4, "cluster_cap": 0.4, "min_winners": 8},
    )
    resources = resources_for(
        lake_root, crypto=SourceConfig(kind="csv", path=str(folder), calendar="crypto")
    )
    refresh(instance, resources, "crypto")
    for partition in (key("crypto", days_before=1), key("crypto")):
        result = materialise(instance, resources, PRODUCTION, partition)
        assert result.success, [e.description for e in evaluations(result).values() if not e.passed]
    lake = ParquetLake(root=lake_root)
    window = lake.read(["returns"], key("crypto"))
    reasons = dict(zip(window.excluded["symbol"], window.excluded["reason"], strict=True))
    assert "quarantine" in reasons.values() and "ineligible" in reasons.values()
    assert (
        metadata(result, "weights")["previous_run"]
        == f"{key('crypto', days_before=1)} (1 day before)"
    )
    assert_tournament_replays_the_assets(lake, "crypto", key("crypto"))


def test_the_backtest_defends_the_previous_runs_champion(
    instance, lake_root, sleeve_policy, tmp_path
):
    sleeve_policy("crypto", policy=TINY)
    resources = resources_for(lake_root, crypto=synthetic_source(symbols=12))
    refresh(instance, resources, "crypto")
    first = materialise(
        instance, resources, [data.returns, allocation.backtest], key("crypto", days_before=1)
    )
    assert first.success
    assert evaluations(first)[allocation.BACKTEST_COMPLETE].passed
    shown = metadata(first, "backtest")
    assert shown["incumbent"] == "none"
    assert shown["previous_run"] == "none (first run, or no run stored in the 7 days before)"
    lake = ParquetLake(root=lake_root)
    champion = lake.read(["backtest"], key("crypto", days_before=1)).champion

    second = materialise(instance, resources, [data.returns, allocation.backtest], key("crypto"))
    assert second.success
    stored = lake.read(["backtest"], key("crypto"))
    verdict = stored.verdict.iloc[0]
    assert verdict["incumbent"] == champion
    assert metadata(second, "backtest")["previous_run"] == (
        f"{key('crypto', days_before=1)} (1 day before)"
    )
    assert "incumbent_sharpe" in stored.verdict.columns
    if not verdict["replaced"]:
        assert verdict["champion"] == champion
    # The audit trail: every policy's target weights at every rebalance.
    targets = stored.targets
    assert set(targets["policy"]) == set(stored.metrics.index)
    sums = targets.groupby(["policy", "rebalance"])["weight"].sum()
    assert np.allclose(sums, 1.0)

    # A gap (no run the day before: a weekday sleeve's Monday, a failed day) defends the newest
    # run before it.
    gap = materialise(
        instance, resources, [data.returns, allocation.backtest], key("crypto", days_before=-2)
    )
    assert gap.success
    assert metadata(gap, "backtest")["incumbent"] == stored.champion
    assert metadata(gap, "backtest")["previous_run"] == f"{key('crypto')} (2 days before)"
    assert (
        lake.read(["backtest"], key("crypto", days_before=-2)).verdict.iloc[0]["incumbent"]
        == stored.champion
    )


def test_a_sleeve_too_young_for_any_walk_forward_window_fails_backtest_complete(
    instance, lake_root, sleeve_policy, tmp_path
):
    sleeve_policy("crypto", policy=TINY)
    # Every symbol lists 35 days before the as-of date: enough history (30) for today's run, too
    # little for every walk-forward window (the last decides 10 days earlier): all policies hold
    # cash, so no policy has a Sharpe ratio.
    genesis = f"{pd.Timestamp(AS_OF) - pd.Timedelta(days=35):%Y-%m-%d}"
    folder = write_csv_sleeve(
        tmp_path / "young", symbols=12, start="2025-06-01", end=AS_OF, genesis=genesis
    )
    resources = resources_for(
        lake_root, crypto=SourceConfig(kind="csv", path=str(folder), calendar="crypto")
    )
    sleeve_policy("crypto", policy=TINY, toxic_policy="quarantine")
    refresh(instance, resources, "crypto")
    result = materialise(instance, resources, [data.returns, allocation.backtest], key("crypto"))
    assert not result.success
    check = evaluations(result)[allocation.BACKTEST_COMPLETE]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["failures"].value == len(policy.SCORERS) * len(optimise.PROFILES) + 2
    assert "sharpe nan" in check.description
    assert "universe smaller than min_universe 4" in check.description
    assert "backtest" not in materialised(result)
