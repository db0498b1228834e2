"""The as-promoted record equals what a series of production runs, one per decision date, held.

Each production run at a window's decision date D sees only the returns up to D: it runs the
walk-forward on them and the promotion rule against the champion the previous run named. The
long run's replay (``promoted.replay``) must name the same champion at every window, and its
stream must be the crowned policies' test slices held in turn.
"""

import json
import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.quant.test_backtest import stitched
from tvq_assets.quant import backtest, metrics, promoted

CANDIDATES = ("momentum/top2", "momentum/leader", "risk/inverse_vol", "risk/equal")


def _top2(train: pd.DataFrame) -> pd.Series:
    chosen = train.mean().sort_values(ascending=False, kind="stable").index[:2]
    return pd.Series(0.5, index=chosen)


def _leader(train: pd.DataFrame) -> pd.Series:
    best = train.tail(5).sum().sort_values(ascending=False, kind="stable").index[0]
    return pd.Series(1.0, index=[best])


def _inverse_vol(train: pd.DataFrame) -> pd.Series:
    inverse = 1.0 / train.std(ddof=1).clip(lower=1e-9)
    return inverse / inverse.sum()


def _equal(train: pd.DataFrame) -> pd.Series:
    return pd.Series(1.0 / train.shape[1], index=train.columns)


POLICIES = dict(zip(CANDIDATES, (_top2, _leader, _inverse_vol, _equal), strict=True))


def production_verdict(returns, *, incumbent, train, test, step, calendar, cost_rate, promotion):
    """What a production run whose history ends at ``returns``' last date decides: its own
    walk-forward and the promotion rule against ``incumbent`` (None when it cannot run or has
    nothing to crown, as such a run stores no verdict)."""
    windows = backtest.grid_windows(
        pd.DatetimeIndex(returns.index), train=train, test=test, step=step, calendar=calendar
    )
    if not windows:
        return None, None
    result = stitched(returns, POLICIES, windows, cost_rate=cost_rate)
    table = metrics.metrics_table(result.returns, periods_per_year=252)
    if not np.isfinite(table.loc[list(CANDIDATES), "sharpe"].to_numpy(dtype=float)).any():
        return None, result
    verdict = backtest.champion_verdict(
        table,
        result.returns,
        incumbent=incumbent,
        periods_per_year=252,
        promotion=promotion,
        candidates=CANDIDATES,
    )
    return verdict, result


def replayed(returns, *, train, test, step, calendar, cost_rate, promotion):
    windows = backtest.grid_windows(
        pd.DatetimeIndex(returns.index), train=train, test=test, step=step, calendar=calendar
    )
    result = stitched(returns, POLICIES, windows, cost_rate=cost_rate)
    live = promoted.replay(
        result,
        returns,
        candidates=CANDIDATES,
        periods_per_year=252,
        promotion=promotion,
        cost_rate=cost_rate,
    )
    return result, live


def market(seed: int, rows: int, calendar: str) -> pd.DataFrame:
    """Five symbols whose drifts change regime halfway, so the best policy changes too."""
    random = np.random.default_rng(seed)
    dates = pd.date_range("2026-01-01", periods=rows, freq="D" if calendar == "crypto" else "B")
    drift = random.normal(0.0, 0.004, (2, 5))
    regime = (np.arange(rows) >= rows // 2).astype(int)
    values = drift[regime] + random.normal(0.0, 0.02, (rows, 5))
    return pd.DataFrame(values, index=dates, columns=[f"S{i}" for i in range(5)])


@settings(max_examples=15)
@given(
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    rows=st.integers(min_value=40, max_value=80),
    train=st.integers(min_value=5, max_value=20),
    test=st.integers(min_value=2, max_value=12),
    step=st.integers(min_value=4, max_value=9),
    calendar=st.sampled_from(["crypto", "weekday"]),
    cost_rate=st.sampled_from([0.0, 0.0014]),
    confidence=st.sampled_from([0.5, 0.8, 0.95]),
    tolerance=st.sampled_from([1.0, 1.1, 3.0]),
    min_deflated=st.sampled_from([0.0, 0.5]),
)
def test_the_as_promoted_record_is_what_a_run_at_each_decision_date_would_have_crowned_and_held(
    seed, rows, train, test, step, calendar, cost_rate, confidence, tolerance, min_deflated
):
    returns = market(seed, rows, calendar)
    promotion = backtest.Promotion(confidence, tolerance, min_deflated)
    shape = {"train": train, "test": test, "step": step, "calendar": calendar}
    result, live = replayed(returns, cost_rate=cost_rate, promotion=promotion, **shape)
    windows = sorted(result.windows, key=lambda w: w.test.start)
    assert list(live.promotions["window"]) == [w.index for w in windows]

    # A production run at each decision date, each taking the previous run's champion.
    champion = None
    checked_at = {windows[len(windows) // 2].index, windows[-1].index}
    for window, row in zip(windows, live.promotions.itertuples(), strict=True):
        decided = returns.index[window.train.stop - 1]
        assert row.decision == decided
        verdict, _ = production_verdict(
            returns.loc[:decided],
            incumbent=champion,
            cost_rate=cost_rate,
            promotion=promotion,
            **shape,
        )
        if verdict is not None:
            champion = verdict.champion
            assert row.challenger == verdict.challenger
            assert row.replaced == verdict.replaced
        assert row.champion == (champion or "")

        # Point in time: the record up to this date is the one a run ending here replays (on
        # the middle and the last decisions, which keeps the example fast).
        if verdict is not None and window.index in checked_at:
            _, earlier = replayed(
                returns.loc[:decided], cost_rate=cost_rate, promotion=promotion, **shape
            )
            pd.testing.assert_frame_equal(
                earlier.stream, live.stream.loc[live.stream.index <= decided]
            )

    # The stream: each date carries the crowned policy of the window that last rebalanced, and
    # its return is that policy's own out-of-sample return, except on a rebalance day where the
    # book changes hands (a switch, or the first build-up from cash): there only the cost of the
    # trade differs, and with no cost nothing does.
    crowned = live.promotions.set_index("window")["champion"]
    if live.stream.empty:
        assert (crowned == "").all()
        return
    assert (live.stream["policy"] == crowned.loc[live.stream["window"]].to_numpy()).all()
    assert not (live.stream["policy"] == "").any()
    own = np.array(
        [
            result.returns.loc[d, p]
            for d, p in zip(live.stream.index, live.stream["policy"], strict=True)
        ]
    )
    rebalance = live.promotions.set_index("window")["rebalance"]
    previous = crowned.shift(1).fillna("")
    handed_over = set(rebalance[(crowned != previous) & (crowned != "")])
    for date, value, expected in zip(live.stream.index, live.stream["return"], own, strict=True):
        if cost_rate == 0.0 or date not in handed_over:
            assert value == expected
        else:
            assert abs(value - expected) <= 2 * cost_rate + 1e-15
    # No date without a crowned policy is in the stream, and none after one is left out.
    first = rebalance[crowned != ""].min()
    assert live.stream.index.min() == first
    assert live.stream.index.equals(result.returns.index[result.returns.index >= first])


def test_the_first_window_crowns_nobody_and_the_first_verdict_crowns_the_best():
    returns = market(7, 80, "crypto")
    promotion = backtest.Promotion(0.95, 1.1, 0.5)
    result, live = replayed(
        returns, train=10, test=5, step=5, calendar="crypto", cost_rate=0.0, promotion=promotion
    )
    first, second = live.promotions.iloc[0], live.promotions.iloc[1]
    assert first["known_days"] == 0 and first["champion"] == "" and first["challenger"] == ""
    known = result.returns.loc[: second["decision"]]
    best = metrics.metrics_table(known, periods_per_year=252)["sharpe"].idxmax()
    assert second["incumbent"] == "" and second["champion"] == best and second["replaced"]
    assert live.stream.index[0] == second["rebalance"]
    # The first crowned window builds its book from cash: its first day pays nothing at no cost.
    assert live.summary["as_promoted_days"] == len(live.stream)


def test_the_summary_uses_the_metric_functions_on_the_stream():
    returns = market(11, 120, "weekday")
    promotion = backtest.Promotion(0.5, 3.0, 0.0)
    _, live = replayed(
        returns, train=15, test=8, step=6, calendar="weekday", cost_rate=0.0014, promotion=promotion
    )
    stream = live.stream["return"]
    assert live.summary["as_promoted_sharpe"] == metrics.sharpe_ratio(stream, periods_per_year=252)
    assert live.summary["as_promoted_max_drawdown"] == metrics.max_drawdown(stream)
    assert live.summary["as_promoted_psr"] == metrics.probabilistic_sharpe_ratio(stream)
    dsr = live.summary["as_promoted_deflated_sharpe"]
    assert math.isfinite(dsr) and 0.0 <= dsr <= 1.0
    assert live.summary["as_promoted_switches"] == float(
        (live.stream["policy"] != live.stream["policy"].shift()).sum() - 1
    )


def test_without_a_window_that_can_crown_the_record_is_empty():
    returns = market(3, 30, "crypto")
    only = backtest.Window(index=0, train=slice(0, 25), test=slice(25, 30))
    result = stitched(returns, POLICIES, [only], cost_rate=0.0)
    live = promoted.replay(
        result,
        returns,
        candidates=CANDIDATES,
        periods_per_year=252,
        promotion=backtest.Promotion(0.95, 1.1, 0.5),
        cost_rate=0.0,
    )
    assert list(live.promotions["champion"]) == [""]
    assert live.stream.empty and live.summary["as_promoted_days"] == 0.0
    assert math.isnan(live.summary["as_promoted_sharpe"])


def test_a_tournament_record_stored_before_the_as_promoted_record_still_loads(tmp_path):
    from tvq_assets.quant.policy import TournamentRecord
    from tvq_resources.lake import MANIFEST, ParquetLake

    frame = pd.DataFrame({"champion": ["a/b"]})
    lake = ParquetLake(root=str(tmp_path))
    folder = lake.write(["backtest"], "2026-06-30|crypto", TournamentRecord(*[frame] * 6))
    manifest = json.loads((folder / MANIFEST).read_text())
    new = {"promotions", "as_promoted"}
    assert new <= set(manifest["tables"])
    # What the lake held before: the six tables, no more.
    manifest["tables"] = {k: v for k, v in manifest["tables"].items() if k not in new}
    manifest["series"] = [s for s in manifest.get("series", []) if s not in new]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    back = lake.read(["backtest"], "2026-06-30|crypto")
    assert back.promotions.empty and back.as_promoted.empty
    assert not back.has_as_promoted
    pd.testing.assert_frame_equal(back.verdict, frame)
