"""MLflow shows the as-promoted record next to the champion's: the backtest describer's metrics."""

import pandas as pd
import pytest

from tests.quant.test_as_promoted import market, replayed
from tvq_assets.partitions import catalog
from tvq_assets.quant import backtest, metrics
from tvq_assets.quant.policy import TournamentRecord
from tvq_assets.tracking import describe


def test_the_backtest_metrics_carry_the_as_promoted_record_beside_the_champions():
    returns = market(5, 90, "crypto")
    promotion = backtest.Promotion(0.8, 1.1, 0.0)
    result, live = replayed(
        returns, train=10, test=6, step=5, calendar="crypto", cost_rate=0.0014, promotion=promotion
    )
    table = metrics.metrics_table(result.returns, periods_per_year=252, turnover=result.turnover)
    champion = str(table["sharpe"].idxmax())
    record = TournamentRecord(
        returns=result.returns,
        turnover=result.turnover,
        metrics=table,
        verdict=pd.DataFrame([{"champion": champion, "challenger": champion, **live.summary}]),
        champion_weights=pd.DataFrame({"weight": [1.0]}, index=["S0"]),
        targets=backtest.target_table(result, returns.index),
        promotions=live.promotions,
        as_promoted=live.stream,
    )
    described = describe.describe_backtest(
        "backtest", record, catalog.sleeve("crypto"), pd.Timestamp("2026-04-01")
    )
    assert described.headline["champion_sharpe"] == table.loc[champion, "sharpe"]
    for name in ("sharpe", "max_drawdown", "cagr", "psr", "deflated_sharpe", "days", "switches"):
        key = f"as_promoted_{name}"
        assert described.metrics[key] == pytest.approx(live.summary[key], nan_ok=True)
        assert described.headline[key] == pytest.approx(described.metrics[key], nan_ok=True)
    assert described.metrics["as_promoted_sharpe"] == metrics.sharpe_ratio(
        live.stream["return"], periods_per_year=252
    )
