"""The backtest asset on a tiny synthetic sleeve: it defends the previous run's champion, and a
tournament whose policies held cash names why."""

import dataclasses

import dagster as dg
import pandas as pd

from tests.assets.test_policy_replay import key, materialise, refresh
from tests.conftest import evaluations, materialised, metadata, resources_for, synthetic_source
from tests.settings import TINY
from tvq_assets import allocation, data
from tvq_resources.lake import ParquetLake

# A challenger can never reach a deflated Sharpe ratio of 1: whoever holds the title keeps it.
UNBEATABLE = {**TINY, "min_deflated_sharpe": 1.0}


def test_the_backtest_keeps_the_previous_runs_champion_when_the_challenger_fails_the_rule(
    instance, lake_root, sleeve_policy
):
    sleeve_policy("crypto", policy=UNBEATABLE)
    resources = resources_for(lake_root, crypto=synthetic_source(symbols=12))
    refresh(instance, resources, "crypto")
    yesterday = key("crypto", days_before=1)
    assert materialise(instance, resources, [data.returns, allocation.backtest], yesterday).success
    lake = ParquetLake(root=lake_root)
    stored = lake.read(["backtest"], yesterday)
    # Yesterday's run crowned its worst candidate (as an older rule or data might have).
    candidates = stored.metrics.drop(index=["baseline_universe", "baseline_winners"])
    worst = str(candidates["sharpe"].idxmin())
    assert worst != stored.champion
    lake.write(
        ["backtest"],
        yesterday,
        dataclasses.replace(stored, verdict=stored.verdict.assign(champion=worst)),
    )

    today = materialise(instance, resources, [data.returns, allocation.backtest], key("crypto"))
    assert today.success
    verdict = lake.read(["backtest"], key("crypto")).verdict.iloc[0]
    assert verdict["incumbent"] == worst and verdict["champion"] == worst
    assert verdict["challenger"] != worst and not verdict["replaced"]
    shown = metadata(today, "backtest")
    assert shown["incumbent"] == worst and shown["champion"] == worst


def test_when_every_window_held_cash_backtest_complete_names_the_infeasible_cap(
    instance, lake_root, sleeve_policy
):
    # Three names and a 25% cap: no candidate can be fully invested in any window, and the
    # sleeve's policy says fail, so every candidate held cash throughout.
    sleeve_policy("crypto", policy={**TINY, "min_universe": 2, "min_winners": 2})
    resources = resources_for(lake_root, crypto=synthetic_source(symbols=3, clusters=1))
    refresh(instance, resources, "crypto")
    result = materialise(instance, resources, [data.returns, allocation.backtest], key("crypto"))
    assert not result.success and "backtest" not in materialised(result)
    check = evaluations(result)[allocation.BACKTEST_COMPLETE]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "cap 25% infeasible for" in check.description
    assert "held cash in" in check.description
    windows = pd.Series(check.description).str.extract(r"held cash in (\d+) of (\d+) windows")
    assert windows.iloc[0, 0] == windows.iloc[0, 1]
