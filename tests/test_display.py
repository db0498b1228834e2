"""Numbers in text metadata are rounded for reading (tvq_assets/quant/display.py)."""

import math

import pandas as pd

from tvq_assets.quant import display
from tvq_checks.checks import markdown


def test_a_sharpe_is_shown_to_four_significant_digits():
    assert display.significant(1.496127729870878) == "1.496"
    assert display.significant(-0.23486812) == "-0.2349"
    assert display.significant(0.000123456) == "0.0001235"
    assert display.significant(math.nan) == "nan"


def test_a_markdown_metadata_table_rounds_its_floats_and_keeps_dates_and_text():
    table = pd.DataFrame(
        {
            "policy": ["rank_ic/max_sharpe"],
            "sharpe": [1.496127729870878],
            "rebalances": [24.0],
            "date": pd.to_datetime(["2026-12-06"]),
        }
    )
    text = markdown(table)
    assert "| rank_ic/max_sharpe | 1.496 | 24 | 2026-12-06 |" in text
    assert "1.4961" not in text


def test_an_assets_plain_float_metadata_is_rounded_and_exact_values_are_kept_for_charts():
    import dagster as dg

    from tvq_assets.partitions import Run, catalog
    from tvq_assets.settings import policy_settings

    sleeve = catalog.sleeve("crypto")
    run = Run("2026-12-06|crypto", sleeve, pd.Timestamp("2026-12-06"), policy_settings(sleeve))
    exact = dg.MetadataValue.float(1.496127729870878)
    shown = run.metadata(sharpe=1.496127729870878, champion_sharpe=exact, windows=24, ok=True)
    assert shown["sharpe"] == 1.496 and shown["champion_sharpe"] is exact
    assert shown["windows"] == 24 and shown["ok"] is True
