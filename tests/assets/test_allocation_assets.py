"""The synthesis layer through Dagster: weights per risk profile and the walk-forward backtest."""

from pathlib import Path

import dagster as dg
import empyrical
import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import LedoitWolf

from tests.conftest import AS_OF, resources_for, synthetic_source
from tvq_assets import allocation, alpha, data
from tvq_assets.partitions import catalog
from tvq_assets.quant import optimise, pipeline
from tvq_resources.lake import ParquetLake

KEY = f"{AS_OF}|crypto"
ALPHA = [alpha.features, alpha.inference, alpha.clusters, alpha.selection]
ALL = [data.bars, data.returns, *ALPHA, allocation.weights, allocation.backtest]
PENALISED = ("min_variance", "risk_parity", "max_sharpe")


def run_key(days_before: int = 0) -> str:
    return f"{pd.Timestamp(AS_OF) - pd.Timedelta(days=days_before):%Y-%m-%d}|crypto"


def refresh_bars(instance, resources) -> None:
    result = dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    )
    assert result.success


def run(instance, resources, targets, *, partition=KEY) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL,
        partition_key=partition,
        selection=[a.key for a in targets],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = result.asset_materializations_for_node(asset)
    return {name: value.value for name, value in event.metadata.items()}


def one_norm_moves(today: pd.DataFrame, yesterday: pd.DataFrame) -> pd.Series:
    """Per profile, Σ|w_today − w_yesterday| over the union of symbols (missing = 0)."""
    symbols = today.index.union(yesterday.index)
    return (today.reindex(symbols).fillna(0.0) - yesterday.reindex(symbols).fillna(0.0)).abs().sum()


@pytest.fixture
def clean_resources(lake_root):
    return resources_for(lake_root, crypto=synthetic_source(symbols=30))


def test_weights_of_every_profile_are_a_valid_long_only_portfolio_of_the_winners(
    instance, lake_root, clean_resources
):
    refresh_bars(instance, clean_resources)
    result = run(instance, clean_resources, [data.returns, *ALPHA, allocation.weights])
    assert result.success
    found = evaluations(result)
    for name in (allocation.WEIGHTS_CONTRACT, allocation.SOLVER_STATUS):
        assert found[name].passed and found[name].partition == KEY, found[name].description
    lake = ParquetLake(root=lake_root)
    winners = lake.read(["selection"], KEY)["winners"]
    stored = lake.read(["weights"], KEY)
    table, diagnostics = stored["weights"], stored["diagnostics"]
    assert list(table.columns) == list(optimise.PROFILES)
    assert list(table.index) == list(winners.index)
    cap = max(catalog.sleeve("crypto").policy.cap, 1 / len(winners))
    for profile in optimise.PROFILES:
        weights = table[profile]
        assert np.isfinite(weights).all(), profile
        assert (weights >= 0).all() and (weights <= cap + 1e-9).all(), profile
        assert abs(weights.sum() - 1) <= 1e-6, profile
    assert list(diagnostics.index) == list(optimise.PROFILES)
    assert {"solver", "status"} <= set(diagnostics.columns)
    for profile in PENALISED:
        assert diagnostics.loc[profile, "solver"] in optimise.SOLVERS
        assert diagnostics.loc[profile, "status"] == "optimal"
    assert metadata(result, "weights")["previous_run"] == "none"


def test_min_variance_has_the_lowest_ledoit_wolf_variance_of_all_profiles(
    instance, lake_root, clean_resources
):
    refresh_bars(instance, clean_resources)
    assert run(instance, clean_resources, [data.returns, *ALPHA, allocation.weights]).success
    lake = ParquetLake(root=lake_root)
    table = lake.read(["weights"], KEY)["weights"]
    train = catalog.sleeve("crypto").policy.train
    window = lake.read(["returns"], KEY)["returns"][table.index].tail(train)
    # The optimiser's documented convention: missing returns count as zero.
    covariance = LedoitWolf().fit(window.fillna(0.0).to_numpy()).covariance_
    variance = {p: table[p].to_numpy() @ covariance @ table[p].to_numpy() for p in table.columns}
    assert variance["min_variance"] <= min(variance.values()) * (1 + 1e-4)
    assert variance["min_variance"] < variance["equal_weight"]


def test_the_turnover_penalty_reads_the_previous_run_and_moves_the_weights_less(
    instance, lake_root, clean_resources, sleeve_policy
):
    refresh_bars(instance, clean_resources)
    targets = [data.returns, *ALPHA, allocation.weights]
    lake = ParquetLake(root=lake_root)
    assert run(instance, clean_resources, targets, partition=run_key(1)).success
    yesterday = lake.read(["weights"], run_key(1))["weights"]

    free = run(instance, clean_resources, targets)
    assert free.success and metadata(free, "weights")["previous_run"] == run_key(1)
    free_weights = lake.read(["weights"], KEY)["weights"]

    sleeve_policy("crypto", policy={"turnover_penalty": 1.0})
    penalised = run(instance, clean_resources, [allocation.weights])
    assert penalised.success and metadata(penalised, "weights")["previous_run"] == run_key(1)
    assert evaluations(penalised)[allocation.WEIGHTS_CONTRACT].passed
    held = lake.read(["weights"], KEY)["weights"]

    free_moves = one_norm_moves(free_weights, yesterday)
    held_moves = one_norm_moves(held, yesterday)
    for profile in PENALISED:
        assert held_moves[profile] <= free_moves[profile] + 1e-6, profile
    assert held_moves["min_variance"] < free_moves["min_variance"] - 1e-3
    # HRP and equal weight have no objective to penalise: they do not change.
    pd.testing.assert_frame_equal(
        held[["hrp", "equal_weight"]], free_weights[["hrp", "equal_weight"]]
    )


@pytest.mark.slow
def test_the_backtest_compares_every_policy_with_the_baselines_and_names_a_champion(
    instance, lake_root, clean_resources, sleeve_policy
):
    # Fewer, longer test windows keep the walk-forward short; the glue is what is tested here.
    sleeve_policy("crypto", policy={"test": 40, "step": 40})
    refresh_bars(instance, clean_resources)
    first = run(
        instance, clean_resources, [data.returns, allocation.backtest], partition=run_key(1)
    )
    assert first.success
    assert evaluations(first)[allocation.BACKTEST_COMPLETE].passed
    assert evaluations(first)[allocation.BACKTEST_COMPLETE].partition == run_key(1)
    lake = ParquetLake(root=lake_root)
    stored = lake.read(["backtest"], run_key(1))
    assert {"returns", "turnover", "metrics", "verdict", "champion_weights"} <= set(stored)

    candidates = [f"{s}/{p}" for s in pipeline.SCORERS for p in optimise.PROFILES]
    metrics = stored["metrics"]
    assert set(metrics.index) == {*candidates, *pipeline.BASELINES}
    assert set(stored["returns"].columns) == set(metrics.index)
    for policy in metrics.index:
        expected = empyrical.sharpe_ratio(stored["returns"][policy].dropna(), annualization=365)
        assert metrics.loc[policy, "sharpe"] == pytest.approx(expected, rel=1e-9)

    verdict = stored["verdict"].iloc[0]
    assert verdict["champion"] in candidates
    assert verdict["incumbent"] == ""
    best = metrics.loc[candidates, "sharpe"].idxmax()
    assert verdict["challenger"] == best == verdict["champion"]
    champion_weights = stored["champion_weights"]["weight"]
    assert abs(champion_weights.sum() - 1) <= 1e-6

    shown = metadata(first, "backtest")
    assert shown["champion"] == verdict["champion"]
    assert shown["equity_curve"].startswith("![equity](data:image/png;base64,")
    png = Path(shown["equity_curve_file"])
    assert png.exists() and png.read_bytes().startswith(b"\x89PNG")

    second = run(instance, clean_resources, [data.returns, allocation.backtest])
    assert second.success
    follow_up = lake.read(["backtest"], KEY)["verdict"].iloc[0]
    assert follow_up["incumbent"] == verdict["champion"]
    assert follow_up["champion"] in candidates
