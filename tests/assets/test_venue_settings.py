"""A sleeve's venues become engine settings: each venue's closed weekdays from its exchange
calendar (``exchange_calendars``) over a fixed span, carried through the model's plain config."""

import json

import pandas as pd
import yaml

from tvq_assets.catalog import (
    CALENDAR_DEFAULTS,
    CALENDARS,
    Policy,
    Sleeve,
    parse_catalog,
    sessions_per_year,
)
from tvq_assets.quant import policy
from tvq_assets.quant.returns import Venues
from tvq_assets.settings import (
    VENUE_CALENDAR_END,
    policy_settings,
    venue_calendar,
    venues_of,
)

US_ONLY = ("2024-06-19", "2024-07-04", "2024-09-02", "2025-01-20")  # London traded
UK_ONLY = ("2024-04-01", "2024-05-06", "2024-08-26")  # New York traded
BOTH = ("2024-03-29", "2024-05-27", "2024-12-25")


def sleeve(calendar: str = "weekday", venues=()) -> Sleeve:
    return Sleeve(
        name="mixed",
        source={"kind": "synthetic"},
        calendar=calendar,
        periods_per_year=CALENDARS[calendar],
        toxic_policy="fail",
        policy=Policy(**CALENDAR_DEFAULTS[calendar]),
        venues=venues,
    )


def test_each_venues_closed_weekdays_are_its_own_holidays_and_not_the_others():
    new_york, london = set(venue_calendar("XNYS").closed), set(venue_calendar("XLON").closed)
    assert set(US_ONLY) <= new_york and not set(US_ONLY) & london
    assert set(UK_ONLY) <= london and not set(UK_ONLY) & new_york
    assert set(BOTH) <= new_york & london
    assert all(pd.Timestamp(d).dayofweek < 5 for d in new_york | london)  # weekdays only


def test_the_calendar_span_is_fixed_whatever_the_day_the_code_runs(monkeypatch):
    # The library's default span runs from about twenty years before today to a year ahead; the
    # explicit span gives the same closed days on any day (and under any TVQ_NOW).
    monkeypatch.setenv("TVQ_NOW", "2031-05-05T12:00:00+00:00")
    built = venue_calendar.__wrapped__("XNYS")
    assert (built.first, built.last) == ("1990-01-02", VENUE_CALENDAR_END)
    assert built == venue_calendar("XNYS")
    assert "1990-05-28" in built.closed and "2040-12-25" in built.closed


def test_a_weekday_sleeve_gets_its_declared_venues_and_a_crypto_sleeve_none():
    declared = venues_of(sleeve(venues=(("*-L", "XLON"), ("*.L", "XLON"), ("*", "XNYS"))))
    assert declared.patterns == (("*-L", "XLON"), ("*.L", "XLON"), ("*", "XNYS"))
    assert [c.code for c in declared.calendars] == ["XLON", "XNYS"]
    assert venues_of(sleeve()) == Venues()  # nothing declared: holidays inferred from the data
    assert venues_of(sleeve("crypto")) is None
    assert policy_settings(sleeve(venues=(("*", "XNYS"),))).venues.calendars[0].code == "XNYS"


def test_the_venues_survive_the_models_plain_config():
    settings = policy_settings(sleeve(venues=(("*-L", "XLON"), ("*", "XNYS"))))
    config = policy.settings_config(settings)
    plain = json.loads(json.dumps(config))
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # an MLmodel file can hold it
    assert policy.settings_from_config(plain) == settings
    assert policy.settings_from_config(config) == settings


def test_a_model_registered_before_venues_replays_without_them():
    config = policy.settings_config(policy_settings(sleeve(venues=(("*", "XNYS"),))))
    config.pop("venues")
    assert policy.settings_from_config(config).venues is None


def test_declaring_venues_changes_the_settings_digest_so_no_stored_window_is_reused():
    from tvq_assets.quant.window_cache import settings_digest

    def digest(venues) -> str:
        return settings_digest(policy.settings_config(policy_settings(sleeve(venues=venues))))

    assert digest(()) != digest((("*", "XNYS"),)) != digest((("*", "XLON"),))


def test_periods_per_year_of_a_weekday_sleeve_are_its_venues_sessions_a_year():
    assert sessions_per_year((("*", "XNYS"),)) == 252
    assert sessions_per_year((("*-L", "XLON"), ("*", "XNYS"))) == 257
    mixed = {"source": {"kind": "synthetic"}, "calendar": "weekday"}
    parsed = parse_catalog(
        {
            "sleeves": {
                "plain": mixed,
                "mixed": {**mixed, "venues": {"*-L": "XLON", "*": "XNYS"}},
                "pinned": {**mixed, "venues": "XLON", "periods_per_year": 250},
            }
        }
    )
    assert parsed.sleeve("plain").periods_per_year == 252
    assert parsed.sleeve("mixed").periods_per_year == 257
    assert parsed.sleeve("pinned").periods_per_year == 250  # a stated value wins
