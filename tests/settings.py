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
