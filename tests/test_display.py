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
