"""Walk-forward windows on a fixed calendar grid: consecutive runs share their windows, and rows
appended later never move a window (point-in-time)."""

import numpy as np
import pandas as pd
import pytest

from tests.settings import TINY
from tvq_assets.quant import backtest, policy
from tvq_assets.quant.backtest import GRID_EPOCH, grid_windows
from tvq_resources.synthetic import generate_market

from .test_policy import settings_for, window


def decision_dates(dates: pd.DatetimeIndex, **options) -> list[pd.Timestamp]:
    return [dates[w.train.stop - 1] for w in grid_windows(dates, **options)]


def test_crypto_decisions_fall_every_step_calendar_days_from_the_epoch_whatever_the_as_of_date():
    for end in pd.date_range("2026-06-01", periods=25, freq="D"):
        dates = pd.date_range(end=end, periods=200, freq="D")
        windows = grid_windows(dates, train=60, test=20, step=10, calendar="crypto")
        decided = [dates[w.train.stop - 1] for w in windows]
        assert decided, end
        days = [(np.datetime64(d.date()) - GRID_EPOCH).astype(int) for d in decided]
        assert all(day % 10 == 0 for day in days)
        # Every grid date with a full training slice and a next row decides; the last row never.
        assert decided[0] - dates[0] < pd.Timedelta(days=60 + 10)
        assert decided[-1] < dates[-1] and dates[-1] - decided[-1] <= pd.Timedelta(days=10)
        for w in windows:
            assert w.train.stop - w.train.start == 60
            assert w.test.start == w.train.stop and w.test.stop <= len(dates)


def test_consecutive_runs_share_every_window_but_the_newest():
    for end in pd.date_range("2026-06-01", periods=12, freq="D"):
        today = pd.date_range(end=end, periods=200, freq="D")
        tomorrow = pd.date_range(end=end + pd.Timedelta(days=1), periods=200, freq="D")
        before = decision_dates(today, train=60, test=20, step=10, calendar="crypto")
        after = decision_dates(tomorrow, train=60, test=20, step=10, calendar="crypto")
        # Tomorrow adds at most the newest window (decided today) and may lose the oldest one.
        assert set(after) - set(before) <= {end}
        assert set(before) - set(after) <= {before[0]}
        assert after[:-1] == [d for d in before if d in set(after)][: len(after) - 1]


def test_rows_appended_later_never_move_a_window():
    dates = pd.bdate_range("2025-01-01", periods=300)
    # Holidays on three anchors (one a two-day run) and elsewhere: a weekday anchor on a holiday
    # decides on the session before it.
    anchors = np.flatnonzero(backtest.grid_ordinals(dates, "weekday") % 20 == 0)
    chosen = [anchors[4], anchors[6], anchors[6] + 1, anchors[9], 97, 150]
    dates = dates.difference(dates[chosen])
    full = grid_windows(dates, train=50, test=20, step=20, calendar="weekday")
    for cut in range(60, len(dates), 7):
        head = dates[:cut]
        early = grid_windows(head, train=50, test=20, step=20, calendar="weekday")
        shared = {head[w.train.stop - 1] for w in early}
        assert shared == {dates[w.train.stop - 1] for w in full if w.train.stop < cut}
    # Anchors count weekdays from the epoch, holidays included: a holiday anchor falls back.
    ordinal = backtest.grid_ordinals(dates, "weekday")
    for w in full:
        p = w.train.stop - 1
        assert (ordinal[p] - 1) // 20 < (ordinal[p + 1] - 1) // 20
    assert any(ordinal[w.train.stop - 1] % 20 for w in full)  # some fell back from a holiday


def test_grid_parameters_are_checked():
    dates = pd.date_range("2026-01-01", periods=100, freq="D")
    with pytest.raises(ValueError, match="step must be at least 1"):
        grid_windows(dates, train=10, test=5, step=0, calendar="crypto")
    with pytest.raises(ValueError, match="unknown calendar 'lunar'"):
        grid_windows(dates, train=10, test=5, step=5, calendar="lunar")
    assert grid_windows(dates[:1], train=1, test=1, step=1, calendar="crypto") == []


@pytest.mark.slow
def test_a_tournament_on_the_grid_is_point_in_time_and_shares_yesterdays_windows():
    settings = settings_for(**TINY)
    bars = generate_market(seed=11, n_symbols=16, end="2026-06-20")
    as_of = pd.Timestamp("2026-06-10")
    cut = policy.point_in_time(
        bars[bars["date"] <= as_of], as_of=as_of, settings=settings, quarantine=True
    )
    later = policy.point_in_time(bars, as_of=as_of, settings=settings, quarantine=True)
    today = policy.tournament(cut, settings, incumbent=None)
    again = policy.tournament(later, settings, incumbent=None)
    pd.testing.assert_frame_equal(today.result.returns, again.result.returns, check_exact=True)
    pd.testing.assert_series_equal(today.champion_weights, again.champion_weights)

    # The next day: every window it shares with today decided the same targets, computed afresh
    # (no turnover penalty, so each window's decision reads only its own slice).
    next_day = window(bars=bars, end="2026-06-11", settings=settings)
    tomorrow = policy.tournament(next_day, settings, incumbent=None)
    by_date = {cut.history.index[w.train.stop - 1]: w.index for w in today.result.windows}
    shared = 0
    for w in tomorrow.result.windows:
        decided = next_day.history.index[w.train.stop - 1]
        if decided in by_date:
            shared += 1
            for name in today.result.targets:
                pd.testing.assert_series_equal(
                    tomorrow.result.targets[name][w.index],
                    today.result.targets[name][by_date[decided]],
                    check_exact=True,
                )
    assert shared >= len(tomorrow.result.windows) - 1 >= 1
