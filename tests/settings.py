"""The composed policy's settings of a test sleeve, built the way production builds them."""

from tvq_assets.catalog import CALENDAR_DEFAULTS, CALENDARS, Policy, Sleeve
from tvq_assets.quant import policy
from tvq_assets.settings import policy_settings


def settings_for(calendar: str = "crypto", **overrides) -> policy.PolicySettings:
    """The composed policy's settings of a catalog sleeve (defaults, then ``overrides``)."""
    sleeve = Sleeve(
        name="test",
        source={"kind": "synthetic"},
        calendar=calendar,
        periods_per_year=CALENDARS[calendar],
        toxic_policy="fail",
        policy=Policy(**{**CALENDAR_DEFAULTS[calendar], **overrides}),
    )
    return policy_settings(sleeve)


# A policy small enough to walk forward in seconds.
TINY = {
    "lookback": 120,
    "train": 60,
    "test": 10,
    "step": 10,
    "min_history": 30,
    "feature_lookback": 60,
    "cluster_lookbacks": (30, 60),
    "min_winners": 4,
    "max_winners": 8,
}
# The same with a history of 120 + 65 rows: 65 is not a multiple of the step, so the day a window
# enters is not the day the oldest leaves.
TINY_UNEVEN = {**TINY, "train": 55}
