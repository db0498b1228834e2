"""The backtest_complete contract: it passes a complete tournament and names what is missing."""

import numpy as np
import pandas as pd

from tvq_assets.quant import metrics
from tvq_assets.quant.window_cache import alpha_frame
from tvq_checks.backtest_contracts import backtest_violations, cash_reason, cash_reasons

AS_OF = pd.Timestamp("2026-06-30")


def tournament_returns() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    dates = pd.date_range("2026-01-01", periods=60, name="date")
    return pd.DataFrame(
        rng.normal(0.001, 0.01, size=(60, 3)), index=dates, columns=["a/x", "b/y", "cash"]
    )


def test_a_complete_tournament_passes():
    returns = tournament_returns()
    table = metrics.metrics_table(returns, periods_per_year=365)
    assert backtest_violations(returns, table, as_of=AS_OF).empty


def test_missing_days_and_non_finite_metrics_are_named_per_policy():
    returns = tournament_returns()
    returns.iloc[5:8, 0] = np.nan
    returns["cash"] = 0.0  # never invested: no Sharpe ratio
    table = metrics.metrics_table(returns, periods_per_year=365)
    found = backtest_violations(returns, table, as_of=AS_OF)
    assert list(found["symbol"]) == ["a/x", "cash"]
    assert set(found["rule"]) == {"backtest_complete"}
    assert (
        found.loc[0, "value"] == 3.0
        and "3 missing out-of-sample days of 60" in found.loc[0, "message"]
    )
    assert "sharpe nan" in found.loc[1, "message"]


def test_a_policy_without_metrics_or_an_empty_backtest_fails():
    returns = tournament_returns()
    table = metrics.metrics_table(returns, periods_per_year=365).drop(index="b/y")
    assert list(backtest_violations(returns, table, as_of=AS_OF)["symbol"]) == ["b/y"]
    empty = returns.iloc[0:0]
    assert len(backtest_violations(empty, table, as_of=AS_OF)) == 3


def test_a_young_sleeves_single_out_of_sample_day_is_too_short_for_a_sharpe_not_broken():
    """A sleeve whose history only just covers one decision tests on 1 to `test` rows, 1 every
    `step` days: that record has no Sharpe ratio yet, and the run goes on."""
    one_day = tournament_returns().iloc[:1]
    table = metrics.metrics_table(one_day, periods_per_year=365)
    assert table["sharpe"].isna().all()
    assert backtest_violations(one_day, table, as_of=AS_OF).empty
    # A missing day or a non-finite drawdown is still named, and two days need a Sharpe.
    gap = one_day.copy()
    gap.iloc[0, 0] = np.nan
    assert list(backtest_violations(gap, table, as_of=AS_OF)["symbol"]) == ["a/x"]
    flat = tournament_returns().iloc[:2].assign(cash=0.0)
    flat_table = metrics.metrics_table(flat, periods_per_year=365)
    assert list(backtest_violations(flat, flat_table, as_of=AS_OF)["symbol"]) == ["cash"]


def test_a_policy_that_held_cash_throughout_is_named_with_the_windows_reasons():
    returns = tournament_returns()
    returns["log_mps/hrp"] = 0.0
    returns["baseline_winners"] = 0.0
    too_small = alpha_frame([], {})
    two_names = alpha_frame(["A", "B"], {"log_mps": (["A", "B"], [0, 1]), "rank_ic": ([], [])})
    alphas = {0: too_small, 1: two_names, 2: two_names}
    cash = pd.Series(dtype=float)
    invested = pd.Series({"A": 0.5, "B": 0.5})
    targets = {
        "log_mps/hrp": dict.fromkeys(alphas, cash),
        "baseline_winners": {0: cash, 1: invested, 2: invested},
        "a/x": dict.fromkeys(alphas, invested),
    }
    reasons = cash_reasons(
        targets, alphas, scorers=("log_mps", "rank_ic"), min_universe=4, cap=0.25
    )
    assert reasons["a/x"] == {}
    assert reasons["baseline_winners"] == {"universe smaller than min_universe 4": 1}
    table = metrics.metrics_table(returns, periods_per_year=365)
    found = backtest_violations(returns, table, as_of=AS_OF, cash=reasons, windows=3)
    message = found.set_index("symbol").loc["log_mps/hrp", "message"]
    assert message.endswith(
        "held cash in 3 of 3 windows: 2 x cap 25% infeasible for 2 winners (infeasible_cap: "
        "fail), 1 x universe smaller than min_universe 4 [backtest_complete]"
    )
    assert cash_reason(
        "rank_ic/min_variance", two_names, scorers=("log_mps", "rank_ic"), min_universe=2, cap=0.5
    ) == ("no rank_ic winner selected")
