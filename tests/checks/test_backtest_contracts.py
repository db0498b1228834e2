"""The backtest_complete contract: it passes a complete tournament and names what is missing."""

import numpy as np
import pandas as pd

from tvq_assets.quant import metrics
from tvq_checks.backtest_contracts import backtest_violations

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
