"""The costs a stored backtest charged, recomputed from what it stored: every traded dollar pays
the catalog's per-side rate (slippage + commission bps)."""

import numpy as np
import pandas as pd

from tests.assets.test_policy_replay import key, materialise, refresh
from tests.conftest import resources_for, synthetic_source
from tests.settings import TINY
from tvq_assets import allocation, data
from tvq_assets.partitions import catalog
from tvq_resources.lake import ParquetLake


def audited_costs(stored, history: pd.DataFrame, rate: float) -> pd.DataFrame:
    """Per policy and rebalance: the cost the stored net return implies and the one the rate
    implies, recomputed weight by weight from the stored targets (no row: cash) and the weights
    drifted with the stored returns since the previous rebalance; and the one-sided turnover."""
    oos = stored.returns.index
    rows = []
    for name in stored.returns.columns:
        rebalances = stored.turnover[name].dropna().index
        mine = stored.targets[stored.targets["policy"] == name]
        weights: dict[str, float] = {}  # the book starts in cash
        for k, day in enumerate(rebalances):
            chosen = mine[mine["rebalance"] == day]
            target = dict(zip(chosen["symbol"], chosen["weight"], strict=True))
            bought_and_sold = sum(
                abs(target.get(s, 0.0) - weights.get(s, 0.0)) for s in set(target) | set(weights)
            )
            first = history.loc[day].fillna(0.0)
            gross = sum(w * first[s] for s, w in target.items())
            rows.append(
                {
                    "policy": name,
                    "rebalance": day,
                    "charged": gross - float(stored.returns.loc[day, name]),
                    "expected": rate * bought_and_sold,
                    "turnover": float(stored.turnover.loc[day, name]),
                    "one_sided": 0.5 * bought_and_sold,
                }
            )
            # Drift through the held days up to (not including) the next rebalance.
            end = rebalances[k + 1] if k + 1 < len(rebalances) else None
            held = oos[(oos >= day) & ((oos < end) if end is not None else True)]
            weights = dict(target)
            for date in held:
                moved = history.loc[date].fillna(0.0)
                grown = {s: w * (1.0 + moved[s]) for s, w in weights.items()}
                total = sum(grown.values())
                weights = {s: v / total for s, v in grown.items()} if total > 0 else {}
    return pd.DataFrame(rows)


def test_a_stored_backtest_charged_the_per_side_rate_on_every_traded_dollar(
    instance, lake_root, sleeve_policy
):
    sleeve_policy("crypto", policy=TINY)
    resources = resources_for(lake_root, crypto=synthetic_source(symbols=12))
    refresh(instance, resources, "crypto")
    result = materialise(instance, resources, [data.returns, allocation.backtest], key("crypto"))
    assert result.success
    lake = ParquetLake(root=lake_root)
    stored = lake.read(["backtest"], key("crypto"))
    history = lake.read(["returns"], key("crypto")).history
    chosen = catalog.sleeve("crypto").policy
    rate = (chosen.slippage_bps + chosen.commission_bps) / 1e4

    audit = audited_costs(stored, history, rate)
    assert len(audit) == stored.turnover.notna().sum().sum() and audit["expected"].gt(0).any()
    np.testing.assert_allclose(audit["charged"], audit["expected"], rtol=0, atol=1e-12)
    # The reported turnover stays the one-sided metric, half of what was bought and sold.
    np.testing.assert_allclose(audit["turnover"], audit["one_sided"], rtol=0, atol=1e-12)
