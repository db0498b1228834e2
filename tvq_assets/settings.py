"""From a sleeve's catalog policy to the engine's parameter objects."""

from tvq_assets.catalog import Sleeve
from tvq_assets.quant.pipeline import AlphaSettings
from tvq_assets.quant.selection import SelectionPolicy


def alpha_settings(sleeve: Sleeve) -> AlphaSettings:
    policy = sleeve.policy
    return AlphaSettings(
        periods_per_year=sleeve.periods_per_year,
        liquidity_baseline=policy.liquidity_baseline,
        feature_lookback=policy.feature_lookback,
        min_history=policy.min_history,
        stale_bars=max(1, round(policy.stale_days * sleeve.periods_per_year / 365)),
        stall_bars=policy.stall_bars,
        cluster_lookbacks=policy.cluster_lookbacks,
        cluster_threshold=policy.cluster_threshold,
        max_clusters=policy.max_clusters,
        selection=SelectionPolicy.of(policy),
    )
