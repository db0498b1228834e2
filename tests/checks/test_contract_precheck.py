"""The vectorised pre-check of a contract (``contracts.holds``) agrees with Pandera: it says a
frame holds exactly when Pandera's validation passes, on frames with every kind of defect the
bar rules look for; and a frame it cannot judge goes to Pandera."""

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvq_checks import contracts
from tvq_resources.synthetic import generate_market

MARKET = generate_market(n_symbols=6, n_clusters=2, start="2025-01-01", end="2025-03-01", seed=5)
DEFECTS = (
    "none",
    "nan_price",
    "negative_price",
    "infinite_volume",
    "symbol_not_text",
    "symbol_missing",
    "float32_close",
    "duplicate_row",
    "out_of_order",
    "missing_column",
    "date_missing",
)


def prepared(defect: str, row: int) -> pd.DataFrame:
    bars = MARKET.copy()
    row = row % len(bars)
    if defect == "nan_price":
        bars.loc[row, "open"] = np.nan
    elif defect == "negative_price":
        bars.loc[row, "low"] = -1.0
    elif defect == "infinite_volume":
        bars.loc[row, "volume"] = np.inf
    elif defect == "duplicate_row":
        bars = pd.concat([bars, bars.iloc[[row]]]).sort_values(["symbol", "date"], kind="stable")
        bars = bars.reset_index(drop=True)
    elif defect == "out_of_order":
        bars = pd.concat([bars.iloc[[row]], bars.drop(index=row)], ignore_index=True)
    frame = contracts.prepare_bars(bars)
    if defect == "symbol_not_text":
        frame["symbol"] = frame["symbol"].astype(object)
        frame.loc[row, "symbol"] = 7
    elif defect == "symbol_missing":
        frame.loc[row, "symbol"] = None
    elif defect == "float32_close":
        frame["close"] = frame["close"].astype(np.float32)
    elif defect == "missing_column":
        frame = frame.drop(columns=["high_excess"])
    elif defect == "date_missing":
        frame.loc[row, "date"] = pd.NaT
    return frame


def pandera_passes(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> bool:
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors:
        return False
    return True


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(DEFECTS), st.integers(0, 10_000), st.sampled_from(["crypto", "weekday"]))
def test_the_precheck_holds_exactly_when_pandera_passes(defect, row, calendar):
    schema = contracts.bars_schema(calendar=calendar)
    frame = prepared(defect, row)
    assert contracts.holds(schema, frame) == pandera_passes(schema, frame), defect


@pytest.mark.parametrize("defect", DEFECTS)
def test_the_violations_are_pandera_s_whichever_path_decides(defect, monkeypatch):
    schema = contracts.bars_schema(calendar="weekday")
    frame = prepared(defect, 17)
    found = contracts.violations(schema, frame)
    monkeypatch.setattr(contracts, "holds", lambda schema, frame: False)  # Pandera alone
    pd.testing.assert_frame_equal(found, contracts.violations(schema, frame))


def test_a_schema_with_an_index_or_schema_wide_checks_is_left_to_pandera():
    frame = pd.DataFrame({"x": [1.0, 2.0]}, index=pd.Index(["A", "B"], name="symbol"))
    with_index = pa.DataFrameSchema({"x": pa.Column(float)}, index=pa.Index(str, name="symbol"))
    wide = pa.DataFrameSchema({"x": pa.Column(float)}, checks=[pa.Check(lambda f: len(f) > 0)])
    plain = pa.DataFrameSchema({"x": pa.Column(float)})
    assert pandera_passes(with_index, frame) and pandera_passes(wide, frame)
    assert not contracts.holds(with_index, frame) and not contracts.holds(wide, frame)
    assert contracts.holds(plain, frame)


def test_missing_values_are_judged_as_pandera_judges_them():
    """A check that ignores missing values is not run on them; a column that allows none fails."""
    positive = contracts.rule_check("positive", lambda s: s > 0)
    nullable = pa.DataFrameSchema({"x": pa.Column(float, checks=[positive], nullable=True)})
    required = pa.DataFrameSchema({"x": pa.Column(float, checks=[positive])})
    frame = pd.DataFrame({"x": [1.0, np.nan, 2.0]})
    assert pandera_passes(nullable, frame) and contracts.holds(nullable, frame)
    assert not pandera_passes(required, frame) and not contracts.holds(required, frame)
