import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from tvq_assets.quant import backtest, metrics


def make_returns(n_rows: int, n_symbols: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0005, 0.02, size=(n_rows, n_symbols))
    frame = pd.DataFrame(
        values,
        index=pd.date_range("2023-01-01", periods=n_rows, name="date"),
        columns=pd.Index([f"S{i:02d}" for i in range(n_symbols)], name="symbol"),
    )
    frame.iloc[:40, 3] = np.nan  # a symbol listing mid-window
    return frame


@pytest.fixture(scope="module")
def returns() -> pd.DataFrame:
    return make_returns(200, 6, seed=1)


def inverse_volatility(train: pd.DataFrame) -> pd.Series:
    """Weights proportional to 1 / vol over symbols with a full training history."""
    complete = train.dropna(axis=1)
    inverse = 1.0 / complete.std(ddof=1)
    return inverse / inverse.sum()


def equal_weight(train: pd.DataFrame) -> pd.Series:
    symbols = train.columns[train.notna().all()]
    return pd.Series(1.0 / len(symbols), index=symbols)


def best_momentum(train: pd.DataFrame) -> pd.Series:
    return pd.Series({train.mean().idxmax(): 1.0})


def cash(train: pd.DataFrame) -> pd.Series:
    return pd.Series(dtype=float)


POLICIES = {
    "inverse_volatility": inverse_volatility,
    "equal_weight": equal_weight,
    "best_momentum": best_momentum,
    "cash": cash,
}


def windows_of(frame: pd.DataFrame, *, train: int, test: int, step: int) -> list[backtest.Window]:
    """The walk-forward's windows over ``frame``'s daily dates (``grid_windows``, crypto)."""
    return backtest.grid_windows(frame.index, train=train, test=test, step=step, calendar="crypto")


def stitched(returns, policies, windows, *, cost_rate: float) -> backtest.BacktestResult:
    """Every policy's validated targets, each from its window's training rows only, held
    through ``windows`` (``stitch``)."""
    targets = {
        name: {
            w.index: backtest.validated_weights(
                chosen(returns.iloc[w.train].copy()), returns.columns, f"{name}, window {w.index}"
            )
            for w in windows
        }
        for name, chosen in policies.items()
    }
    return backtest.stitch(returns, targets, windows, cost_rate=cost_rate)


def reference_hold(targets, returns, windows, cost_rate):
    """Day-by-day loop: rebalance at each window's first test day, drift weight by weight."""
    symbols = list(returns.columns)
    weights = dict.fromkeys(symbols, 0.0)
    net, turnover = {}, {}
    for k, window in enumerate(windows):
        stop = window.test.stop
        if k + 1 < len(windows):
            stop = min(stop, windows[k + 1].test.start)
        target = {s: float(targets[window.index].get(s, 0.0)) for s in symbols}
        traded = sum(abs(target[s] - weights[s]) for s in symbols)  # bought plus sold
        turnover[returns.index[window.test.start]] = 0.5 * traded
        weights = target
        for row in range(window.test.start, stop):
            r = {s: returns.iloc[row][s] for s in symbols}
            r = {s: 0.0 if np.isnan(v) else v for s, v in r.items()}
            gross = sum(weights[s] * r[s] for s in symbols)
            if row == window.test.start:
                gross -= cost_rate * traded
            net[returns.index[row]] = gross
            total = sum(weights[s] * (1 + r[s]) for s in symbols)
            weights = {s: (weights[s] * (1 + r[s]) / total if total > 0 else 0.0) for s in symbols}
    return pd.Series(net), pd.Series(turnover)


# validated_weights


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (pd.Series({"S00": 0.5, "S01": 0.4}), "sum to"),
        (pd.Series({"S00": 1.2, "S01": -0.2}), "long-only"),
        (pd.Series({"NOPE": 1.0}), "absent"),
    ],
)
def test_weights_that_are_not_long_only_and_fully_invested_are_rejected(returns, weights, message):
    with pytest.raises(ValueError, match=message):
        backtest.validated_weights(weights, returns.columns, "policy 'bad', window 0")


# hold


def test_two_asset_drift_and_costs_match_a_hand_computation():
    returns = pd.DataFrame(
        {"A": [0.0, 0.0, 0.10, -0.05, 0.02, 0.03], "B": [0.0, 0.0, -0.02, 0.04, 0.01, -0.01]},
        index=pd.date_range("2024-01-01", periods=6, name="date"),
    )
    windows = [
        backtest.Window(index=0, train=slice(0, 2), test=slice(2, 4)),
        backtest.Window(index=1, train=slice(2, 4), test=slice(4, 6)),
    ]
    targets = {0: pd.Series({"A": 0.5, "B": 0.5}), 1: pd.Series({"A": 0.5, "B": 0.5})}
    net, turnover = backtest.hold(targets, returns, windows, cost_rate=0.01)

    # window 0: build from cash (buys 1.0 of notional, turnover 0.5); day 1 gross
    # 0.5*0.10 + 0.5*(-0.02) = 0.04
    w_a, w_b = 0.5 * 1.10 / 1.04, 0.5 * 0.98 / 1.04
    day_two = w_a * -0.05 + w_b * 0.04
    total = w_a * 0.95 + w_b * 1.04
    w_a, w_b = w_a * 0.95 / total, w_b * 1.04 / total
    # window 1: back to 50/50 from the drifted weights
    traded = abs(0.5 - w_a) + abs(0.5 - w_b)  # A sold and B bought: both legs pay
    expected = [0.04 - 0.01 * 1.0, day_two, 0.5 * 0.02 + 0.5 * 0.01 - 0.01 * traded]
    w_a, w_b = 0.5 * 1.02 / 1.015, 0.5 * 1.01 / 1.015
    expected.append(w_a * 0.03 + w_b * -0.01)

    assert net.to_numpy() == pytest.approx(expected, rel=1e-12)
    assert list(net.index) == list(returns.index[2:])
    assert turnover.to_numpy() == pytest.approx([0.5, 0.5 * traded], rel=1e-12)
    assert list(turnover.index) == [returns.index[2], returns.index[4]]


def test_hold_matches_a_day_by_day_reference_with_overlaps_and_missing_prices(returns):
    frame = returns.copy()
    frame.iloc[120:, 5] = np.nan  # a delisting while held
    windows = windows_of(frame, train=60, test=25, step=15)
    rng = np.random.default_rng(9)
    targets = {}
    for window in windows:
        raw = pd.Series(rng.uniform(0.0, 1.0, frame.shape[1]), index=frame.columns)
        targets[window.index] = raw / raw.sum()
    targets[3] = pd.Series(dtype=float)  # one window in cash

    net, turnover = backtest.hold(targets, frame, windows, cost_rate=0.002)
    expected_net, expected_turnover = reference_hold(targets, frame, windows, 0.002)

    assert net.index.is_unique
    assert list(net.index) == list(frame.index[windows[0].test.start :])
    np.testing.assert_allclose(net.to_numpy(), expected_net.to_numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(turnover.to_numpy(), expected_turnover.to_numpy(), rtol=1e-10)
    assert list(turnover.index) == [frame.index[w.test.start] for w in windows]


def test_costs_are_the_rate_on_every_traded_dollar_on_rebalance_days_only(returns):
    windows = windows_of(returns, train=60, test=20, step=20)
    targets = {w.index: inverse_volatility(returns.iloc[w.train]) for w in windows}
    gross, turnover = backtest.hold(targets, returns, windows, cost_rate=0.0)
    net, same_turnover = backtest.hold(targets, returns, windows, cost_rate=0.0014)

    pd.testing.assert_series_equal(turnover, same_turnover)
    charged = gross - net
    # Bought plus sold is twice the one-sided turnover; each side pays the rate.
    np.testing.assert_allclose(charged[turnover.index], 0.0014 * 2 * turnover, rtol=1e-12)
    assert (charged.drop(turnover.index).abs() < 1e-15).all()
    assert turnover.iloc[0] == pytest.approx(0.5)
    assert ((turnover >= 0.0) & (turnover <= 1.0)).all()


def test_a_cash_policy_earns_nothing_and_pays_nothing(returns):
    windows = windows_of(returns, train=60, test=20, step=20)
    targets = {w.index: pd.Series(dtype=float) for w in windows}
    net, turnover = backtest.hold(targets, returns, windows, cost_rate=0.01)
    assert (net == 0.0).all() and (turnover == 0.0).all()


# stitch


def test_stitch_holds_one_out_of_sample_return_per_date_and_policy(returns):
    windows = windows_of(returns, train=60, test=20, step=20)
    result = stitched(returns, POLICIES, windows, cost_rate=0.001)
    assert list(result.returns.columns) == list(POLICIES)
    assert list(result.returns.index) == list(returns.index[windows[0].test.start :])
    assert result.returns.notna().all().all()
    assert list(result.turnover.index) == [returns.index[w.test.start] for w in result.windows]
    assert set(result.targets) == set(POLICIES)
    assert all(len(t) == len(result.windows) for t in result.targets.values())
    table = metrics.metrics_table(result.returns, periods_per_year=365, turnover=result.turnover)
    assert (table["rebalances"] == len(result.windows)).all()


# champion_verdict

# The deflated-Sharpe bound off: these tests are about PSR and drawdown (it has its own below).
RULE = backtest.Promotion(confidence=0.95, drawdown_tolerance=1.1, min_deflated_sharpe=0.0)


@pytest.fixture(scope="module")
def tournament() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(21)
    n = 1000
    noise = rng.normal(0.0, 0.01, size=(n, 4))
    frame = pd.DataFrame(
        {
            "strong": 0.004 + noise[:, 0],
            "weak": 0.0002 + noise[:, 1],
            # more return per unit of risk, but levered three times: deeper drawdowns
            "strong_but_deep": 3.0 * (0.005 + noise[:, 0]),
            "baseline": 0.01 + 0.1 * noise[:, 3],
        },
        index=pd.date_range("2023-01-01", periods=n, name="date"),
    )
    return metrics.metrics_table(frame, periods_per_year=365), frame


def test_without_an_incumbent_the_challenger_becomes_champion(tournament):
    table, frame = tournament
    candidates = ["strong", "weak"]
    verdict = backtest.champion_verdict(
        table, frame, incumbent=None, periods_per_year=365, promotion=RULE, candidates=candidates
    )
    assert verdict.challenger == "strong" and verdict.champion == "strong" and verdict.replaced


def test_an_incumbent_outside_the_tournament_is_replaced(tournament):
    table, frame = tournament
    verdict = backtest.champion_verdict(
        table,
        frame,
        incumbent="retired",
        periods_per_year=365,
        promotion=RULE,
        candidates=["weak", "strong"],
    )
    assert verdict.champion == "strong" and verdict.replaced


def test_baselines_excluded_from_candidates_never_win(tournament):
    table, frame = tournament
    assert table.loc["baseline", "sharpe"] == table["sharpe"].max()
    verdict = backtest.champion_verdict(
        table,
        frame,
        incumbent=None,
        periods_per_year=365,
        promotion=RULE,
        candidates=["weak", "strong"],
    )
    assert verdict.challenger == "strong"


def test_a_clearly_better_challenger_replaces_the_incumbent(tournament):
    table, frame = tournament
    verdict = backtest.champion_verdict(
        table,
        frame,
        incumbent="weak",
        periods_per_year=365,
        promotion=RULE,
        candidates=["weak", "strong"],
    )
    assert verdict.replaced and verdict.champion == "strong"
    assert verdict.numbers["psr"] >= 0.95
    assert verdict.numbers["incumbent_sharpe"] == table.loc["weak", "sharpe"]
    assert "PSR" in verdict.rule


def test_a_challenger_with_a_much_deeper_drawdown_does_not_replace(tournament):
    table, frame = tournament
    verdict = backtest.champion_verdict(
        table,
        frame,
        incumbent="strong",
        periods_per_year=365,
        candidates=["strong", "strong_but_deep"],
        promotion=RULE,
    )
    assert verdict.challenger == "strong_but_deep"
    assert verdict.numbers["psr"] >= 0.95
    numbers = verdict.numbers
    assert numbers["challenger_max_drawdown"] < 1.1 * numbers["incumbent_max_drawdown"]
    assert not verdict.replaced and verdict.champion == "strong"
    lenient = backtest.champion_verdict(
        table,
        frame,
        incumbent="strong",
        periods_per_year=365,
        candidates=["strong", "strong_but_deep"],
        promotion=dataclasses.replace(RULE, drawdown_tolerance=10.0),
    )
    assert lenient.replaced and lenient.champion == "strong_but_deep"


def test_a_challenger_that_is_not_significantly_better_does_not_replace(tournament):
    _, frame = tournament
    both = pd.DataFrame({"incumbent": frame["weak"], "slightly_better": frame["weak"] + 0.0003})
    table = metrics.metrics_table(both, periods_per_year=365)
    verdict = backtest.champion_verdict(
        table, both, incumbent="incumbent", periods_per_year=365, promotion=RULE
    )
    assert verdict.challenger == "slightly_better"
    assert 0.5 < verdict.numbers["psr"] < 0.95
    assert verdict.champion == "incumbent" and not verdict.replaced


def test_the_incumbent_keeps_the_title_when_it_is_the_best(tournament):
    table, frame = tournament
    verdict = backtest.champion_verdict(
        table,
        frame,
        incumbent="strong",
        periods_per_year=365,
        promotion=RULE,
        candidates=["strong", "weak"],
    )
    assert verdict.champion == "strong" and not verdict.replaced


def test_equal_sharpe_ties_are_broken_by_name_whatever_the_column_order(tournament):
    _, frame = tournament
    same = pd.DataFrame({"zeta": frame["strong"], "alpha": frame["strong"]})
    for order in (["zeta", "alpha"], ["alpha", "zeta"]):
        subset = same[order]
        verdict = backtest.champion_verdict(
            metrics.metrics_table(subset, periods_per_year=365),
            subset,
            incumbent=None,
            periods_per_year=365,
            promotion=RULE,
        )
        assert verdict.challenger == "alpha"


def _many_lucky_trials(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` noise policies around the weak one: a wide field of trials the winner is one of."""
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 0.01, size=(len(frame), n))
    lucky = pd.DataFrame(noise + 0.0002, index=frame.index).add_prefix("lucky_")
    return pd.concat([frame[["weak", "strong"]], lucky], axis=1)


def test_the_deflated_sharpe_is_the_challengers_against_every_candidate_tried(tournament):
    _, frame = tournament
    field = _many_lucky_trials(frame, 10)
    table = metrics.metrics_table(field, periods_per_year=365)
    verdict = backtest.champion_verdict(
        table, field, incumbent="weak", periods_per_year=365, promotion=RULE
    )
    trials = (field.mean() / field.std(ddof=1)).to_numpy()
    assert verdict.numbers["trials"] == field.shape[1]
    assert verdict.numbers["deflated_sharpe"] == pytest.approx(
        metrics.deflated_sharpe_ratio(field[verdict.challenger], trial_sharpes=trials), abs=1e-12
    )


def test_a_challenger_below_the_deflated_sharpe_bound_does_not_replace(tournament):
    """PSR and drawdown pass, but among many trials its Sharpe is what luck would give."""
    _, frame = tournament
    extra = np.random.default_rng(8).normal(0.0012, 0.002, size=len(frame))
    both = pd.DataFrame({"incumbent": frame["weak"], "challenger": frame["weak"] + extra})
    field = pd.concat([both, _many_lucky_trials(frame, 40).drop(columns=["strong"])], axis=1)
    table = metrics.metrics_table(field, periods_per_year=365)
    lenient = backtest.champion_verdict(
        table, field, incumbent="incumbent", periods_per_year=365, promotion=RULE
    )
    assert lenient.challenger == "challenger" and lenient.replaced
    bound = lenient.numbers["deflated_sharpe"] + 0.01
    assert 0 < lenient.numbers["deflated_sharpe"] < 0.99 and lenient.numbers["psr"] >= 0.95
    strict = backtest.champion_verdict(
        table,
        field,
        incumbent="incumbent",
        periods_per_year=365,
        promotion=dataclasses.replace(RULE, min_deflated_sharpe=bound),
    )
    assert not strict.replaced and strict.champion == "incumbent"
    assert strict.numbers["deflated_sharpe_ok"] == 0.0
    assert "deflated Sharpe" in strict.rule


def test_a_first_champion_below_the_deflated_sharpe_bound_is_crowned_and_flagged(tournament):
    _, frame = tournament
    field = _many_lucky_trials(frame, 10).drop(columns=["strong"])
    table = metrics.metrics_table(field, periods_per_year=365)
    verdict = backtest.champion_verdict(
        table,
        field,
        incumbent=None,
        periods_per_year=365,
        promotion=dataclasses.replace(RULE, min_deflated_sharpe=0.999),
    )
    assert verdict.numbers["deflated_sharpe"] < 0.999
    assert verdict.champion == verdict.challenger and verdict.replaced
    assert verdict.numbers["deflated_sharpe_ok"] == 0.0


# ties


def _fifty_fifty_books() -> pd.DataFrame:
    """Two 50/50 books of the same two assets: one weighted exactly, one with the last-bit error
    an optimiser's arithmetic leaves (as HRP's does), signed so that it shows the higher Sharpe."""
    frame = make_returns(300, 4, seed=4).iloc[:, :2]
    windows = windows_of(frame, train=20, test=20, step=20)
    symbols = frame.columns

    def book(first: float) -> pd.Series:
        weights = pd.Series([first, 1.0 - first], index=symbols)
        net, _ = backtest.hold(
            {w.index: weights for w in windows}, frame, windows, cost_rate=0.0014
        )
        return net

    exact = book(0.5)
    noisy = max(
        (book(0.5 + k * 2.0**-53) for k in range(-8, 9) if k),
        key=lambda net: metrics.sharpe_ratio(net, periods_per_year=365),
    )
    return pd.DataFrame({"log_mps/hrp": noisy, "log_mps/equal_weight": exact})


def test_identical_books_differing_by_float_noise_tie_and_the_name_order_decides():
    books = _fifty_fifty_books()
    table = metrics.metrics_table(books, periods_per_year=365)
    hrp, equal = table.loc["log_mps/hrp", "sharpe"], table.loc["log_mps/equal_weight", "sharpe"]
    assert hrp > equal and (hrp - equal) / abs(equal) < 1e-12  # noise, and it favours hrp
    for order in (list(books.columns), list(reversed(books.columns))):
        verdict = backtest.champion_verdict(
            table.loc[order], books[order], incumbent=None, periods_per_year=365, promotion=RULE
        )
        assert verdict.challenger == "log_mps/equal_weight"


def test_a_sharpe_ahead_by_more_than_the_tolerance_wins_whatever_its_name():
    assert backtest.ranked({"a": 1.0, "b": 1.0 + 1e-11}) == ["b", "a"]
    assert backtest.ranked({"a": 1.0, "b": 1.0 + 1e-13}) == ["a", "b"]
    assert backtest.ranked({"b": -2.0, "a": -2.0 * (1 + 1e-13), "c": math.nan}) == ["a", "b"]
    assert backtest.ranked({"b": math.inf, "a": math.inf, "c": 5.0}) == ["a", "b", "c"]
