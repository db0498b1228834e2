"""The wording of the terminal summary (tvq_assets/summary.py)."""

import math

import pandas as pd

from tvq_assets import summary

DATES = pd.date_range("2026-04-12", periods=239, freq="D", name="date")


def test_a_sharpe_is_shown_with_its_out_of_sample_span_and_rebalances():
    returns = pd.DataFrame({"rank_ic/max_sharpe": 0.001}, index=DATES)
    returns.iloc[:10] = math.nan  # before the policy's first window
    metrics = pd.DataFrame({"sharpe": [1.29], "rebalances": [24.0]}, index=["rank_ic/max_sharpe"])
    measured = summary.policy_span(returns, metrics, "rank_ic/max_sharpe")
    assert measured == "2026-04-22 .. 2026-12-06, 229 days, 24 rebalances"
    line = summary.metrics_line("rank_ic/max_sharpe", 1.29, -0.235, 0.516, measured)
    assert line.endswith("sharpe   1.29  max drawdown  -23.5%  CAGR   51.6%  (" + measured + ")")


def test_weights_that_round_to_zero_are_counted_not_listed():
    weights = pd.Series({"VASOGUSDT": 0.25, "XAJEUSDT": 0.0001, "KUSEUSDT": 0.7499, "GONE": 0.0})
    shown = summary.holdings(weights)
    assert shown == "KUSEUSDT 75.0%, VASOGUSDT 25.0% (and 1 name(s) below 0.05%)"
    assert "0.0%" not in shown and "GONE" not in shown
    assert summary.holdings(pd.Series(dtype=float)) == "cash"


def test_a_first_run_is_built_from_cash_not_traded_against_a_previous_portfolio():
    assert "built from cash (first run" in summary.turnover(0.5, from_cash=True)
    assert "previous run" not in summary.turnover(0.5, from_cash=True)
    assert "against the previous run's portfolio" in summary.turnover(0.12, from_cash=False)


def test_the_log_mps_pick_is_not_called_the_champions_winners_when_it_scores_otherwise():
    assert summary.selection_label("log_mps/max_sharpe") == "winners"
    label = summary.selection_label("rank_ic/max_sharpe")
    assert label.startswith("selection (log_mps") and "rank_ic/max_sharpe picks its own" in label


def test_a_deflated_sharpe_below_its_bound_gets_a_plain_line():
    verdict = pd.Series({"deflated_sharpe": 0.24, "min_deflated_sharpe": 0.5, "trials": 10.0})
    note = summary.deflated_sharpe_note(verdict)
    assert note == (
        "   NOTE: the champion's deflated Sharpe 0.24 is below the bound 0.5: its lead over the "
        "10 candidates may be luck"
    )
    assert summary.deflated_sharpe_note(verdict.replace(0.24, 0.75)) is None
    assert summary.deflated_sharpe_note(pd.Series({"trials": 10.0})) is None  # older record


def test_a_meta_portfolio_trailing_its_equal_weight_baseline_gets_a_plain_line():
    metrics = pd.DataFrame({"sharpe": [0.23, 1.22]}, index=["meta", "baseline_equal_sleeves"])
    words = {"what": "the meta-portfolio", "against": "the equal weight of its sleeves"}
    note = summary.trails_baseline_note(metrics, "meta", "baseline_equal_sleeves", **words)
    assert note is not None and note.startswith("   NOTE: the meta-portfolio trails")
    assert "0.23 against 1.22" in note
    ahead = metrics.assign(sharpe=[1.5, 1.22])
    assert summary.trails_baseline_note(ahead, "meta", "baseline_equal_sleeves", **words) is None
