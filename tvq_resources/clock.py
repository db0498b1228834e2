"""Now: the one place tvq reads the calendar clock.

``TVQ_NOW`` (an ISO timestamp; a naive one is read as UTC) replaces the system clock, so that any
day — a Sunday, a venue holiday, the day after a failure — can be replayed: the newest run
partition, the unfinished-session rule, the refusal of future bars and the synthetic market's last
day all read :func:`now`. Durations (timings, lock leases, cache ages) are measured with the real
clock and never read it.
"""

import os

import pandas as pd

NOW_VARIABLE = "TVQ_NOW"


def now() -> pd.Timestamp:
    """The current time, tz-aware UTC: ``TVQ_NOW`` when it is set, else the system clock."""
    value = os.environ.get(NOW_VARIABLE, "").strip()
    if not value:
        return pd.Timestamp.now(tz="UTC")
    try:
        stamp = pd.Timestamp(value)
    except ValueError as error:
        raise ValueError(
            f"{NOW_VARIABLE}={value!r} is not an ISO timestamp (e.g. 2026-12-07T06:00:00Z)"
        ) from error
    if pd.isna(stamp):
        raise ValueError(f"{NOW_VARIABLE}={value!r} is not an ISO timestamp")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
