"""The synthesis layer through Dagster: weights per risk profile and the walk-forward backtest."""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import empyrical
import numpy as np
import pandas as pd
import pytest
from sklearn.covariance import LedoitWolf

from tests.conftest import AS_OF, evaluations, metadata, resources_for, synthetic_source
from tvq_assets import allocation, alpha, data
from tvq_assets.partitions import catalog
from tvq_assets.quant import optimise, policy
from tvq_assets.settings import policy_settings
from tvq_resources.lake import ParquetLake

KEY = f"{AS_OF}|crypto"
ALPHA = [alpha.features, alpha.inference, alpha.clusters, alpha.selection]
ALL = [
    *(data.bars, data.returns, *ALPHA),
    *(allocation.weights, allocation.backtest, allocation.portfolio),
]
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


def one_norm_moves(today: pd.DataFrame, yesterday: pd.DataFrame) -> pd.Series:
    """Per profile, Σ|w_today − w_yesterday| over the union of symbols (missing = 0)."""
    symbols = today.index.union(yesterday.index)
    return (today.reindex(symbols).fillna(0.0) - yesterday.reindex(symbols).fillna(0.0)).abs().sum()


@pytest.fixture
def clean_resources(lake_root):
    return resources_for(lake_root, crypto=synthetic_source(symbols=30))


@dataclass(frozen=True)
class WeightsRuns:
    """Runs D-1 then D of one clean 30-symbol sleeve, and the values they stored (a snapshot)."""

    instance: dg.DagsterInstance
    resources: dict
    lake: ParquetLake
    results: dict[str, dg.ExecuteInProcessResult]  # run key -> result
    values: dict[tuple[str, str], object]  # (asset, run key) -> stored value


@pytest.fixture(scope="module")
def weights_runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("weights") / "lake")
    resources = resources_for(root, crypto=synthetic_source(symbols=30))
    lake = ParquetLake(root=root)
    with dg.DagsterInstance.ephemeral() as instance:
        refresh_bars(instance, resources)
        results = {
            key: run(instance, resources, [data.returns, *ALPHA, allocation.weights], partition=key)
            for key in (run_key(1), KEY)
        }
        values = {
            (asset, key): lake.read([asset], key)
            for asset in ("returns", "selection", "weights")
            for key in results
        }
        yield WeightsRuns(instance, resources, lake, results, values)


def test_weights_of_every_profile_are_a_valid_long_only_portfolio_of_the_winners(weights_runs):
    result = weights_runs.results[KEY]
    assert result.success
    found = evaluations(result)
    for name in (allocation.WEIGHTS_CONTRACT, allocation.SOLVER_STATUS):
        assert found[name].passed and found[name].partition == KEY, found[name].description
    winners = weights_runs.values["selection", KEY].winners
    stored = weights_runs.values["weights", KEY]
    table, diagnostics = stored.weights, stored.diagnostics
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


def test_min_variance_has_the_lowest_ledoit_wolf_variance_of_all_profiles(weights_runs):
    table = weights_runs.values["weights", KEY].weights
    train = catalog.sleeve("crypto").policy.train
    window = weights_runs.values["returns", KEY].returns[table.index].tail(train)
    # The optimiser's documented convention: missing returns count as zero.
    covariance = LedoitWolf().fit(window.fillna(0.0).to_numpy()).covariance_
    variance = {p: table[p].to_numpy() @ covariance @ table[p].to_numpy() for p in table.columns}
    assert variance["min_variance"] <= min(variance.values()) * (1 + 1e-4)
    assert variance["min_variance"] < variance["equal_weight"]


def test_weights_name_the_previous_run_partition_only_when_one_exists(weights_runs):
    first = metadata(weights_runs.results[run_key(1)], "weights")["previous_run"]
    assert first == "none (first run, or no run stored in the 7 days before)"
    shown = metadata(weights_runs.results[KEY], "weights")["previous_run"]
    assert shown == f"{run_key(1)} (1 day before)"


def test_the_turnover_penalty_reads_the_previous_run_and_moves_the_weights_less(
    weights_runs, sleeve_policy
):
    yesterday = weights_runs.values["weights", run_key(1)].weights
    free = weights_runs.values["weights", KEY].weights
    sleeve_policy("crypto", policy={"turnover_penalty": 1.0})
    result = run(weights_runs.instance, weights_runs.resources, [allocation.weights])
    assert result.success
    assert metadata(result, "weights")["previous_run"] == f"{run_key(1)} (1 day before)"
    assert evaluations(result)[allocation.WEIGHTS_CONTRACT].passed
    held = weights_runs.lake.read(["weights"], KEY).weights

    free_moves = one_norm_moves(free, yesterday)
    held_moves = one_norm_moves(held, yesterday)
    for profile in PENALISED:
        assert held_moves[profile] <= free_moves[profile] + 1e-6, profile
    assert held_moves["min_variance"] < free_moves["min_variance"] - 1e-3
    # HRP and equal weight have no objective to penalise: they do not change.
    pd.testing.assert_frame_equal(held[["hrp", "equal_weight"]], free[["hrp", "equal_weight"]])


def test_a_profile_without_a_working_solver_falls_back_to_hrp_with_a_warning(
    weights_runs, monkeypatch
):
    monkeypatch.setattr(optimise.cp, "installed_solvers", lambda: [])
    result = run(weights_runs.instance, weights_runs.resources, [allocation.weights])
    assert result.success
    found = evaluations(result)
    assert found[allocation.WEIGHTS_CONTRACT].passed
    warning = found[allocation.SOLVER_STATUS]
    assert not warning.passed and warning.severity == dg.AssetCheckSeverity.WARN
    assert warning.metadata["failures"].value == len(PENALISED)
    assert "fallback hrp" in warning.description and "not installed" in warning.description
    stored = weights_runs.lake.read(["weights"], KEY)
    diagnostics = stored.diagnostics
    assert list(diagnostics.loc[list(PENALISED), "fallback"]) == ["hrp"] * len(PENALISED)
    for profile in PENALISED:
        pd.testing.assert_series_equal(
            stored.weights[profile], stored.weights["hrp"], check_names=False
        )


def test_an_empty_universe_fails_at_returns_naming_the_exclusions(
    instance, lake_root, clean_resources
):
    # The source stopped at AS_OF: sixty days later every symbol is stale and nothing is eligible.
    refresh_bars(instance, clean_resources)
    later = f"{pd.Timestamp(AS_OF) + pd.Timedelta(days=60):%Y-%m-%d}|crypto"
    result = run(
        instance,
        clean_resources,
        [data.returns, *ALPHA, allocation.weights, allocation.backtest],
        partition=later,
    )
    assert not result.success
    contract = evaluations(result)[data.RETURNS_CONTRACT]
    assert not contract.passed and contract.severity == dg.AssetCheckSeverity.ERROR
    assert contract.metadata["by_rule"].value == {"universe_too_small": 1}
    assert "0 < 4" in contract.description
    assert "(stale_or_delisted, ineligible: no bar for 60 days)" in contract.description
    materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert not materialised & {"returns", "features", "weights", "backtest"}


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
    assert isinstance(stored, policy.TournamentRecord)

    candidates = [f"{s}/{p}" for s in policy.SCORERS for p in optimise.PROFILES]
    metrics = stored.metrics
    assert set(metrics.index) == {*candidates, *policy.BASELINES}
    assert set(stored.returns.columns) == set(metrics.index)
    for name in metrics.index:
        expected = empyrical.sharpe_ratio(stored.returns[name].dropna(), annualization=365)
        assert metrics.loc[name, "sharpe"] == pytest.approx(expected, rel=1e-9)
    assert set(stored.targets["policy"]) == set(metrics.index)

    verdict = stored.verdict.iloc[0]
    assert verdict["champion"] in candidates
    assert verdict["incumbent"] == ""
    best = metrics.loc[candidates, "sharpe"].idxmax()
    assert verdict["challenger"] == best == verdict["champion"]
    champion_weights = stored.champion_weights["weight"]
    assert abs(champion_weights.sum() - 1) <= 1e-6

    shown = metadata(first, "backtest")
    assert shown["champion"] == verdict["champion"]
    assert "equity_curve" not in shown  # a file (and an MLflow artifact), never base64 in the log
    png = Path(shown["equity_curve_file"])
    assert png.exists() and png.read_bytes().startswith(b"\x89PNG")

    second = run(instance, clean_resources, [data.returns, allocation.backtest])
    assert second.success
    follow_up = lake.read(["backtest"], KEY).verdict.iloc[0]
    assert follow_up["incumbent"] == verdict["champion"]
    assert follow_up["champion"] in candidates


def test_the_portfolio_is_the_champions_decision_with_trades_from_the_previous_run(
    instance, lake_root, clean_resources, sleeve_policy
):
    # A turnover penalty makes the decision depend on its reference (the champion's own last
    # walk-forward target), which must be the tournament's for the two to agree.
    sleeve_policy("crypto", policy={"test": 40, "step": 40, "turnover_penalty": 1.0})
    refresh_bars(instance, clean_resources)
    lake = ParquetLake(root=lake_root)
    targets = [data.returns, allocation.backtest, allocation.portfolio]
    first = run(instance, clean_resources, targets, partition=run_key(1))
    assert first.success
    assert evaluations(first)[allocation.PORTFOLIO_CONTRACT].passed
    yesterday = lake.read(["portfolio"], run_key(1))
    assert isinstance(yesterday, policy.PortfolioRecord)
    # A first run builds its book from cash: every target is a trade.
    assert yesterday.turnover == pytest.approx(yesterday.weights["weight"].sum() / 2, abs=1e-12)
    assert metadata(first, "portfolio")["previous_run"].startswith("none")

    second = run(instance, clean_resources, targets)
    assert second.success
    stored, tournament = lake.read(["portfolio"], KEY), lake.read(["backtest"], KEY)
    weights = stored.weights["weight"]
    assert len(weights) and abs(weights.sum() - 1) <= 1e-6
    assert (weights >= 0).all() and (weights <= catalog.sleeve("crypto").policy.cap + 1e-9).all()
    pd.testing.assert_series_equal(
        weights, tournament.champion_weights["weight"], check_exact=False, rtol=0, atol=1e-12
    )

    # The tournament's own decision on its last window, recomputed from scratch.
    returns = lake.read(["returns"], KEY)
    settings = policy_settings(catalog.sleeve("crypto"))
    scorer, profile = tournament.champion.split("/")
    rows = policy.decision_rows(len(returns.history), settings)
    walked = policy.walk_forward(returns, settings, scorers=(scorer,), profiles=(profile,))
    held = walked.targets[tournament.champion][len(walked.windows) - 1]
    decided = policy.Tournament(returns, settings).decide(
        scorer, profile, returns.history.tail(rows), held
    )
    pd.testing.assert_series_equal(
        weights, decided, check_names=False, check_index_type=False, rtol=0, atol=1e-12
    )

    # Trades and turnover against the previous run's book, over the union of symbols.
    before = yesterday.weights["weight"]
    trades = stored.trades
    assert set(trades.index) == set(before.index) | set(weights.index)
    assert np.allclose(
        trades["trade"],
        weights.reindex(trades.index).fillna(0) - before.reindex(trades.index).fillna(0),
    )
    expected = one_norm_moves(weights.to_frame(), before.to_frame()).iloc[0] / 2
    shown = metadata(second, "portfolio")
    assert stored.turnover == pytest.approx(expected, abs=1e-9)
    # The metadata shows four significant digits (partitions.shown); the record is exact.
    assert shown["turnover"] == float(f"{stored.turnover:.4g}")
    assert shown["names"] == int((weights > 0).sum())
    assert shown["largest_weight"] == float(f"{weights.max():.4g}")
    assert shown["policy"] == tournament.champion
    assert shown["previous_run"] == f"{run_key(1)} (1 day before)"


def test_a_one_percent_cap_stops_weights_naming_the_cap_the_names_and_the_minimum(
    instance, lake_root, clean_resources, sleeve_policy
):
    sleeve_policy("crypto", policy={"cap": 0.01})
    refresh_bars(instance, clean_resources)

    result = run(instance, clean_resources, [data.returns, *ALPHA, allocation.weights])

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "weights"
    error, messages = failure.event_specific_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    message = " ".join(messages)
    assert f"weights[{KEY}]" in message and "sleeve 'crypto'" in message
    assert "cap 0.01 is infeasible for" in message and "a cap of at least" in message
    assert not ParquetLake(root=lake_root).exists(["weights"], KEY)


def test_a_one_percent_cap_under_policy_raise_warns_with_both_caps(
    instance, lake_root, clean_resources, sleeve_policy
):
    sleeve_policy("crypto", policy={"cap": 0.01, "infeasible_cap": "raise"})
    refresh_bars(instance, clean_resources)

    result = run(instance, clean_resources, [data.returns, *ALPHA, allocation.weights])

    assert result.success
    found = evaluations(result)
    assert found[allocation.WEIGHTS_CONTRACT].passed
    status = found[allocation.SOLVER_STATUS]
    assert not status.passed and status.severity == dg.AssetCheckSeverity.WARN
    assert "cap raised from the configured 0.01 to the minimum feasible" in status.description
    diagnostics = ParquetLake(root=lake_root).read(["weights"], KEY).diagnostics
    assert (diagnostics["cap"] == 0.01).all()
    assert (diagnostics["effective_cap"] > 0.01).all()
