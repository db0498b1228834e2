"""The sleeve catalog: defaults per calendar, and clear errors for a broken catalog."""

import dataclasses
import os
from pathlib import Path

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

SYNTHETIC = {"kind": "synthetic"}


def catalog_with(**sleeve):
    sleeve.setdefault("source", SYNTHETIC)
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


def test_a_file_source_takes_a_start_date_and_a_synthetic_key_is_still_refused(tmp_path):
    """`start` on a csv source is the oldest bar it reads (MarketData.fetch honours it)."""
    loaded = catalog_with(source={"kind": "csv", "path": str(tmp_path), "start": "2021-01-01"})
    assert loaded.sleeve("mine").source["start"] == "2021-01-01"
    with pytest.raises(CatalogError, match=r"source\.end applies to synthetic"):
        catalog_with(source={"kind": "csv", "path": str(tmp_path), "end": "2021-01-01"})


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
                "sleeves": {
                    "a": {"source": SYNTHETIC, "policy": {"cap": "abc"}},
                    "b": {"source": SYNTHETIC, "calendar": "lunar"},
                },
            },
            origin="two.yaml",
        )
    assert len(error.value.problems) == 3
    assert "two.yaml: first_run = '2025-13-01': not a date" in str(error.value)


@pytest.mark.parametrize("first_run", ["yesterday", "2025-02-30", 20250101, ""])
def test_a_bad_first_run_names_the_file_the_field_and_the_value(first_run):
    with pytest.raises(CatalogError, match=r"test\.yaml: first_run = .*: not a date"):
        parse_catalog(
            {"first_run": first_run, "sleeves": {"a": {"source": SYNTHETIC}}}, origin="test.yaml"
        )


def test_a_first_run_written_as_a_yaml_date_is_read():
    document = yaml.safe_load("first_run: 2025-03-20\nsleeves: {a: {source: {kind: synthetic}}}")
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


@pytest.mark.parametrize(
    ("sleeves", "message"),
    [
        ({"mine": None}, "sleeve 'mine': an empty entry"),
        ({"mine": {}}, "sleeve 'mine': an empty entry"),
        ({"mine": {"source": None}}, "sleeve 'mine': source = None: the sleeve has no source"),
        ({"mine": {"source": {}}}, "sleeve 'mine': source = {}: the sleeve has no source"),
        ({"mine": {"calendar": "crypto"}}, "sleeve 'mine': source = None: the sleeve has no"),
    ],
)
def test_a_sleeve_without_a_source_is_refused_instead_of_trading_a_synthetic_market(
    sleeves, message
):
    with pytest.raises(CatalogError) as error:
        parse_catalog({"sleeves": sleeves}, origin="test.yaml")
    assert f"test.yaml: {message}" in str(error.value)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"cluster_lookbacks": []}, "policy.cluster_lookbacks = []: an empty list"),
        ({"cluster_lookbacks": ()}, "policy.cluster_lookbacks = (): an empty list"),
    ],
)
def test_an_empty_list_is_refused_naming_the_field(policy, message):
    with pytest.raises(CatalogError, match=r"test\.yaml: sleeve 'mine': ") as error:
        catalog_with(policy=policy)
    assert message in str(error.value)


def test_an_empty_list_of_meta_sleeves_is_refused():
    sleeves = {"a": {"source": SYNTHETIC}}
    with pytest.raises(CatalogError, match=r"meta\.sleeves = \[\]: an empty list"):
        parse_catalog({"sleeves": sleeves, "meta": {"sleeves": []}}, origin="test.yaml")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"symbols": -5}, "source.symbols = -5: breaks the rule value >= 1"),
        ({"symbols": 0}, "source.symbols = 0: breaks the rule value >= 1"),
        ({"symbols": 10**9}, "source.symbols = 1000000000: breaks the rule value <= 100000"),
        ({"clusters": 0}, "source.clusters = 0: breaks the rule value >= 1"),
        ({"symbols": 100, "clusters": 200}, "source: clusters = 200 breaks the rule clusters <="),
        ({"symbols": 3, "clusters": 4}, "clusters = 4 breaks the rule clusters <= 3"),
        ({"seed": -1}, "source.seed = -1: breaks the rule value >= 0"),
        ({"start": "2024-13-01"}, "source.start = '2024-13-01': not a date (rule: an ISO date"),
        ({"end": "tomorrow"}, "source.end = 'tomorrow': not a date"),
        (
            {"start": "2025-01-01", "end": "2024-01-01"},
            "source: end = '2024-01-01' is before start = '2025-01-01' (rule: start <= end)",
        ),
        ({"end": "2023-01-01"}, "end = '2023-01-01' is before the default start '2023-11-01'"),
        ({"end": "20230101"}, "end = '20230101' is before the default start '2023-11-01'"),
        ({"faults": [{"kind": "meteor"}]}, "source.faults.0.kind = 'meteor': not an allowed"),
        ({"faults": [{"kind": "gap", "date": "soon"}]}, "source.faults.0.date = 'soon': not a"),
        ({"faults": [{"kind": "gap", "symbol": ""}]}, "source.faults.0.symbol = '': an empty"),
        ({"faults": [{"kind": "weekend_padding"}]}, "weekend_padding only applies to a weekday"),
        ({"faults": "gap"}, "source.faults = 'gap'"),
    ],
)
def test_a_nonsense_synthetic_source_is_refused_at_load_naming_field_value_and_rule(
    source, message
):
    with pytest.raises(CatalogError) as error:
        catalog_with(source={"kind": "synthetic", **source})
    assert "test.yaml: sleeve 'mine': " in str(error.value)
    assert message in str(error.value)


def test_the_cluster_bound_follows_the_sleeve_calendar():
    # 12 crypto symbols hold a stablecoin and a pair of twins: 9 identities; 12 weekday: 12.
    with pytest.raises(CatalogError, match="clusters <= 9"):
        catalog_with(source={"kind": "synthetic", "symbols": 12, "clusters": 12})
    catalog_with(calendar="weekday", source={"kind": "synthetic", "symbols": 12, "clusters": 12})


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "bars"
    path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"pattern": "{sym}.csv"}, "source.pattern = '{sym}.csv': file name pattern"),
        ({"pattern": "bars/{symbol}.csv"}, "must not contain path separators"),
        ({"pattern": "{exchange}.csv"}, "must contain {symbol}"),
        ({"volume": "coins"}, "source.volume = 'coins': not an allowed value"),
        ({"path": ""}, "needs a `path`"),
        ({"path": 7}, "source.path = 7"),
    ],
)
def test_a_nonsense_file_source_is_refused_at_load(folder, kind, source, message):
    with pytest.raises(CatalogError) as error:
        catalog_with(source={"kind": kind, "path": str(folder), **source})
    assert "test.yaml: sleeve 'mine': " in str(error.value)
    assert message in str(error.value)


def test_a_file_source_over_an_existing_folder_loads(folder):
    sleeve = catalog_with(source={"kind": "csv", "path": str(folder)})
    assert sleeve.sleeve("mine").source["path"] == str(folder)


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda folder: folder / "missing", "no such folder"),
        (lambda folder: folder / "missing" / "deeper", "no such folder"),
        (lambda folder: (folder / "AAA.csv").write_text("x") and folder / "AAA.csv", "a file)"),
        (lambda folder: folder / ("x" * 300), "not a usable path (File name too long)"),
        (lambda folder: Path("/") / ("long" * 1100), "not a usable path (File name too long)"),
    ],
)
def test_an_unusable_path_is_refused_at_load_naming_the_folder(folder, make_path, message):
    path = str(make_path(folder))
    with pytest.raises(CatalogError) as error:
        catalog_with(source={"kind": "csv", "path": path})
    text = str(error.value)
    assert "test.yaml: sleeve 'mine': source.path = " in text and message in text
    assert "(rule: an existing, readable folder of the sleeve's csv files)" in text
    assert len(text) < 600  # a path of thousands of characters is shown cut


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder_is_refused_at_load(folder):
    folder.chmod(0)
    try:
        with pytest.raises(CatalogError, match="cannot be read"):
            catalog_with(source={"kind": "parquet", "path": str(folder)})
    finally:
        folder.chmod(0o755)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "sleeves.yaml"
    path.write_text(text)
    return path


def test_a_sleeve_given_twice_is_refused_naming_both_lines(tmp_path):
    path = write(
        tmp_path,
        "sleeves:\n"
        "  crypto:\n"
        "    source: {kind: synthetic, symbols: 30}\n"
        "  crypto:\n"
        "    source: {kind: synthetic, symbols: 60}\n",
    )
    with pytest.raises(CatalogError) as error:
        load_catalog(path)
    assert str(error.value) == (
        f"{path}:4: sleeves: key 'crypto' is given twice (first on line 2; YAML would silently "
        "keep only the last): remove one"
    )


def test_a_duplicate_key_at_any_depth_is_refused_with_every_other_problem(tmp_path):
    path = write(
        tmp_path,
        "first_run: 2025-01-01\n"
        "first_run: 2025-02-01\n"
        "sleeves:\n"
        "  crypto:\n"
        "    source: {kind: synthetic, seed: 1, seed: 2}\n"
        "    policy:\n"
        "      cap: 0.3\n"
        "      cap: 0.4\n"
        "      lookbak: 9\n",
    )
    with pytest.raises(CatalogError) as error:
        load_catalog(path)
    problems = error.value.problems
    assert f"{path}:2: top level: key 'first_run' is given twice (first on line 1;" in problems[0]
    assert f"{path}:5: sleeves.crypto.source: key 'seed' is given twice" in problems[1]
    assert (
        f"{path}:8: sleeves.crypto.policy: key 'cap' is given twice (first on line 7;"
        in (problems[2])
    )
    assert "unknown policy parameter 'lookbak' (did you mean 'lookback'?)" in problems[3]
    assert len(problems) == 4


def test_an_empty_source_in_a_yaml_file_is_refused(tmp_path):
    path = write(tmp_path, "sleeves:\n  crypto:\n    source:\n  tradfi:\n")
    with pytest.raises(CatalogError) as error:
        load_catalog(path)
    assert error.value.problems == [
        f"{path}: sleeve 'crypto': source = None: the sleeve has no source (rule: `source: "
        "{kind: ...}` with kind one of ['synthetic', 'csv', 'parquet', 'exchange'])",
        f"{path}: sleeve 'tradfi': an empty entry (rule: a sleeve names its data, e.g. "
        "`source: {kind: synthetic}`)",
    ]


# --------------------------------------------------------------------------------------------
# venues: which exchange calendar each symbol of a weekday sleeve trades on
# --------------------------------------------------------------------------------------------
def test_venues_map_symbol_patterns_to_exchange_calendars_in_catalog_order():
    document = yaml.safe_load(
        "sleeves: {mine: {source: {kind: synthetic}, calendar: weekday,"
        ' venues: {"*.L": XLON, "*-L": LSE, "*": NYSE}}}'
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
