"""From a sleeve's catalog policy to the engine's parameter object: the only place it is built."""

from tvq_assets.catalog import Sleeve
from tvq_assets.quant.backtest import Promotion
from tvq_assets.quant.policy import PolicySettings
from tvq_assets.quant.selection import SelectionPolicy


def policy_settings(sleeve: Sleeve) -> PolicySettings:
    """The composed policy's parameters, every one of them from the sleeve's catalog entry."""
    policy = sleeve.policy
    return PolicySettings(
        calendar=sleeve.calendar,
        periods_per_year=sleeve.periods_per_year,
        lookback=policy.lookback,
        train=policy.train,
        test=policy.test,
        step=policy.step,
        cost_rate=policy.cost_rate,
        liquidity_baseline=policy.liquidity_baseline,
        feature_lookback=policy.feature_lookback,
        min_history=policy.min_history,
        stale_days=policy.stale_days,
        stall_bars=policy.stall_bars,
        max_zero_share=policy.max_zero_share,
        min_universe=policy.min_universe,
        toxic_threshold=policy.toxic_threshold,
        cluster_lookbacks=policy.cluster_lookbacks,
        cluster_threshold=policy.cluster_threshold,
        max_clusters=policy.max_clusters,
        selection=SelectionPolicy.of(policy),
        cap=policy.cap,
        cluster_cap=policy.cluster_cap,
        turnover_penalty=policy.turnover_penalty,
        ridge=policy.ridge,
        infeasible_cap=policy.infeasible_cap,
        promotion=Promotion(
            confidence=policy.promotion_confidence,
            drawdown_tolerance=policy.drawdown_tolerance,
            min_deflated_sharpe=policy.min_deflated_sharpe,
        ),
    )
