"""From a sleeve's catalog policy to the engine's parameter object: the only place it is built."""

import functools

import pandas as pd

from tvq_assets.catalog import Sleeve
from tvq_assets.quant.backtest import Promotion
from tvq_assets.quant.policy import PolicySettings
from tvq_assets.quant.returns import VenueCalendar, Venues
from tvq_assets.quant.selection import SelectionPolicy

# The span over which a venue's closed weekdays are taken from its exchange calendar: fixed, so
# that a run's decision never depends on the day the code runs (the library's default span is
# relative to today). A run dated outside it infers its venues' holidays from the data.
VENUE_CALENDAR_START = "1990-01-01"
VENUE_CALENDAR_END = "2040-12-31"


def policy_settings(sleeve: Sleeve) -> PolicySettings:
    """The composed policy's parameters, every one of them from the sleeve's catalog entry."""
    policy = sleeve.policy
    return PolicySettings(
        calendar=sleeve.calendar,
        venues=venues_of(sleeve),
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
        cluster_method=policy.cluster_method,
        cluster_exact_max=policy.cluster_exact_max,
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


def venues_of(sleeve: Sleeve) -> Venues | None:
    """The venues of a weekday sleeve (its catalog ``venues`` with each venue's closed weekdays;
    none declared: every holiday is inferred from the data); None for a 24/7 sleeve."""
    if sleeve.calendar != "weekday":
        return None
    codes = dict.fromkeys(code for _, code in sleeve.venues)
    return Venues(
        patterns=tuple(sleeve.venues),
        calendars=tuple(venue_calendar(code) for code in codes),
    )


@functools.cache
def venue_calendar(code: str) -> VenueCalendar:
    """The weekdays without a session of exchange calendar ``code`` (``exchange_calendars``)
    between VENUE_CALENDAR_START and VENUE_CALENDAR_END (within the calendar's own bounds)."""
    import exchange_calendars as xc  # ~0.6 s: only for a sleeve that names a venue

    calendar = xc.get_calendar(code, start=VENUE_CALENDAR_START, end=VENUE_CALENDAR_END)
    first, last = calendar.sessions[0], calendar.sessions[-1]
    weekdays = pd.bdate_range(first, last)
    closed = weekdays.difference(pd.DatetimeIndex(calendar.sessions).tz_localize(None))
    return VenueCalendar(
        code=code,
        first=f"{first:%Y-%m-%d}",
        last=f"{last:%Y-%m-%d}",
        closed=tuple(f"{day:%Y-%m-%d}" for day in closed),
    )
