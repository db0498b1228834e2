"""The sleeve catalog: defaults per calendar, and clear errors for a broken catalog."""

import dataclasses

import pandas as pd
import pytest
import yaml

from tvq_assets.catalog import (
    CALENDARS,
    CatalogError,
    Policy,
    UnknownVenue,
    _range_problem,
    load_catalog,
    parse_catalog,
    policy_parameters,
    venue_code,
)


def catalog_with(**sleeve):
    return parse_catalog({"sleeves": {"mine": sleeve}}, origin="test.yaml")


def test_the_shipped_catalog_has_synthetic_crypto_and_tradfi_sleeves_and_a_real_one():
    catalog = load_catalog()
    assert list(catalog.sleeves) == ["crypto", "tradfi", "binance_perp"]
    crypto, tradfi = catalog.sleeve("crypto"), catalog.sleeve("tradfi")
    assert (crypto.calendar, crypto.periods_per_year) == ("crypto", 365)
    assert (tradfi.calendar, tradfi.periods_per_year) == ("weekday", 252)
    assert crypto.source["kind"] == tradfi.source["kind"] == "synthetic"
    real = catalog.sleeve("binance_perp")
    assert real.source["kind"] == "csv" and real.toxic_policy == "quarantine"


def test_calendar_defaults_follow_the_domain_conventions():
    crypto = catalog_with(calendar="crypto").sleeve("mine")
    weekday = catalog_with(calendar="weekday").sleeve("mine")
    assert crypto.policy.step == 10 and weekday.policy.step == 20
    assert crypto.policy.cost_rate == pytest.approx(0.0014)
    assert weekday.policy.cost_rate == pytest.approx(0.0006)
    assert crypto.policy.liquidity_baseline == 10e6 and weekday.policy.liquidity_baseline == 500e6
    assert crypto.policy.lookback == 500 and crypto.policy.toxic_threshold == 5.0


def test_policy_overrides_apply_and_are_listed_in_the_parameters():
    sleeve = catalog_with(policy={"min_winners": 10, "cluster_lookbacks": [30, 60]}).sleeve("mine")
    assert sleeve.policy.min_winners == 10 and sleeve.policy.cluster_lookbacks == (30, 60)
    assert policy_parameters(sleeve)["min_winners"] == 10


@pytest.mark.parametrize(
    ("sleeve", "message"),
    [
        ({"calendar": "lunar"}, "calendar = 'lunar' is not a calendar"),
        ({"calendar": "weekdays"}, "(did you mean 'weekday'?)"),
        ({"toxic_policy": "quarantaine"}, "toxic_policy = 'quarantaine'"),
        ({"source": {"kind": "csv"}}, "needs a `path`"),
        ({"source": {"kind": "ftp", "path": "/x"}}, "source.kind = 'ftp'"),
        (
            {"policy": {"lookbak": 5}},
            "unknown policy parameter 'lookbak' (did you mean 'lookback'?)",
        ),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"polciy": {}}, "(did you mean 'policy'?)"),
        ({"periods_per_year": 0}, "periods_per_year = 0 breaks the rule"),
        ({"policy": {"cap": "abc"}}, "policy.cap = 'abc': expected a number"),
        ({"policy": {"cap": -0.5}}, "policy.cap = -0.5: breaks the rule value > 0 and value <= 1"),
        ({"policy": {"cap": 1.5}}, "policy.cap = 1.5: breaks the rule"),
        ({"policy": {"lookback": 0}}, "policy.lookback = 0: breaks the rule value >= 2"),
        ({"policy": {"lookback": 2.5}}, "policy.lookback = 2.5: expected a whole number"),
        ({"policy": {"min_winners": True}}, "expected a whole number"),
        ({"policy": {"max_entropy": float("nan")}}, "expected a finite number"),
        ({"policy": {"cluster_cap": 0}}, "policy.cluster_cap = 0: breaks the rule value > 0"),
        ({"policy": {"cluster_lookbacks": [60, 1]}}, "element 1: breaks the rule value >= 2"),
        ({"policy": {"cluster_lookbacks": 60}}, "policy.cluster_lookbacks = 60: expected a list"),
        (
            {"policy": {"min_winners": 30, "max_winners": 20}},
            "min_winners = 30, max_winners = 20 breaks the rule min_winners <= max_winners",
        ),
        ({"policy": {"lookback": 200}}, "breaks the rule train + test <= lookback"),
        ({"policy": {"lookback": 150, "train": 100}}, "every cluster lookback <= lookback"),
        ({"policy": {"lookback": 80, "train": 40, "cluster_lookbacks": [60]}}, "min_history"),
        (
            {"source": {"kind": "csv", "path": "/x", "patern": "{symbol}.csv"}},
            "unknown source key 'patern' for a csv source (did you mean 'pattern'?)",
        ),
        ({"source": {"kind": "csv", "path": "/x", "seed": 3}}, "source.seed applies to synthetic"),
        ({"source": {"kind": "synthetic", "symbols": "many"}}, "source.symbols = 'many'"),
        ({"source": {"kind": "synthetic", "calendar": "crypto"}}, "set `calendar` on the sleeve"),
        ({"policy": {"infeasible_cap": "ignore"}}, "policy.infeasible_cap = 'ignore'"),
        (
            {"policy": {"bar_actions": {"filler_bar": "repair"}}},
            "filler_bar: no unambiguous repair exists",
        ),
    ],
)
def test_a_broken_sleeve_is_refused_naming_the_file_the_sleeve_and_the_field(sleeve, message):
    with pytest.raises(CatalogError) as error:
        catalog_with(**sleeve)
    assert "test.yaml" in str(error.value) and "'mine'" in str(error.value)
    assert message in str(error.value)


def test_an_unknown_sleeve_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="crypto"):
        load_catalog().sleeve("equities")


def test_cap_none_for_the_cluster_and_numbers_spelled_as_yaml_strings_are_accepted():
    sleeve = catalog_with(policy={"cluster_cap": None, "liquidity_baseline": "10e6"}).sleeve("mine")
    assert sleeve.policy.cluster_cap is None and sleeve.policy.liquidity_baseline == 10e6


def test_every_problem_of_a_catalog_is_reported_at_once():
    with pytest.raises(CatalogError) as error:
        parse_catalog(
            {
                "first_run": "2025-13-01",
                "sleeves": {"a": {"policy": {"cap": "abc"}}, "b": {"calendar": "lunar"}},
            },
            origin="two.yaml",
        )
    assert len(error.value.problems) == 3
    assert "two.yaml: first_run = '2025-13-01': not a date" in str(error.value)


@pytest.mark.parametrize("first_run", ["yesterday", "2025-02-30", 20250101, ""])
def test_a_bad_first_run_names_the_file_the_field_and_the_value(first_run):
    with pytest.raises(CatalogError, match=r"test\.yaml: first_run = .*: not a date"):
        parse_catalog({"first_run": first_run, "sleeves": {"a": {}}}, origin="test.yaml")


def test_a_first_run_written_as_a_yaml_date_is_read():
    document = yaml.safe_load("first_run: 2025-03-20\nsleeves: {a: {}}")
    assert parse_catalog(document).first_run == pd.Timestamp("2025-03-20")


def test_the_policy_defaults_satisfy_their_own_ranges_and_rules():
    for calendar in CALENDARS:
        catalog_with(calendar=calendar, policy={})  # raises on a default outside its range


def test_every_policy_default_lies_inside_its_declared_range():
    for item in dataclasses.fields(Policy):
        limits = item.metadata.get("range", {})
        values = item.default if isinstance(item.default, tuple) else [item.default]
        for value in [v for v in values if v is not None]:
            assert _range_problem(value, limits) == "", item.name


# --------------------------------------------------------------------------------------------
# venues: which exchange calendar each symbol of a weekday sleeve trades on
# --------------------------------------------------------------------------------------------
def test_venues_map_symbol_patterns_to_exchange_calendars_in_catalog_order():
    document = yaml.safe_load(
        'sleeves: {mine: {calendar: weekday, venues: {"*.L": XLON, "*-L": LSE, "*": NYSE}}}'
    )
    sleeve = parse_catalog(document).sleeve("mine")
    # Aliases are accepted and stored as the calendar's own code.
    assert sleeve.venues == (("*.L", "XLON"), ("*-L", "XLON"), ("*", "XNYS"))
    assert policy_parameters(sleeve)["venues"] == {"*.L": "XLON", "*-L": "XLON", "*": "XNYS"}


def test_one_venue_for_every_symbol_is_written_as_its_code_and_none_is_the_default():
    assert catalog_with(calendar="weekday", venues="XNYS").sleeve("mine").venues == (("*", "XNYS"),)
    assert catalog_with(calendar="weekday").sleeve("mine").venues == ()
    assert policy_parameters(catalog_with(calendar="weekday").sleeve("mine"))["venues"] == {}


@pytest.mark.parametrize(
    ("venues", "message"),
    [
        (
            {"*.L": "XLOM"},
            "venues['*.L'] = 'XLOM' is not an exchange calendar (close matches: 'XLON'",
        ),
        ({"*": "xnys"}, "'xnys' is not an exchange calendar (close matches: 'XNYS'"),
        ({"*": "MARS"}, "'MARS' is not an exchange calendar (no close match"),
        ({"*": 5}, "venues['*'] = 5 is not an exchange calendar"),
        ({"*": "XNYS", "*.L": "XLON"}, "venues['*.L'] comes after the catch-all '*'"),
        (["XNYS"], "venues = ['XNYS']: expected an exchange calendar code"),
        ({}, "venues = {}: expected an exchange calendar code"),
        ({"": "XNYS"}, "venues: pattern '' must be a non-empty text"),
    ],
)
def test_a_broken_venue_is_refused_naming_the_pattern_and_the_close_matches(venues, message):
    with pytest.raises(CatalogError) as error:
        catalog_with(calendar="weekday", venues=venues)
    assert "test.yaml: sleeve 'mine'" in str(error.value) and message in str(error.value)


def test_venues_on_a_crypto_sleeve_are_refused():
    with pytest.raises(CatalogError, match="venues apply to a weekday sleeve only"):
        catalog_with(calendar="crypto", venues="XNYS")


def test_an_unknown_venue_code_is_its_own_error_listing_the_close_matches():
    with pytest.raises(UnknownVenue, match=r"'XNYZ' is not an exchange calendar .*'XNYS'"):
        venue_code("XNYZ")
    assert venue_code("NASDAQ") == "XNYS" and venue_code("XLON") == "XLON"
