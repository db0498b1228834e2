"""The sleeve catalog: defaults per calendar, and clear errors for a broken catalog."""

import pytest

from tvq_assets.catalog import CatalogError, load_catalog, parse_catalog, policy_parameters


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
        ({"calendar": "lunar"}, "calendar 'lunar'"),
        ({"toxic_policy": "ignore"}, "toxic_policy 'ignore'"),
        ({"source": {"kind": "csv"}}, "needs a `path`"),
        ({"source": {"kind": "ftp", "path": "/x"}}, "source kind 'ftp'"),
        ({"policy": {"lookbak": 5}}, "unknown policy parameters ['lookbak']"),
        ({"colour": "red"}, "unknown keys ['colour']"),
        ({"policy": {"infeasible_cap": "ignore"}}, "infeasible_cap 'ignore'"),
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
