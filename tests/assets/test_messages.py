"""Sentences for the selection engine's codes (no Dagster: the rendering is pure)."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tvq_assets import messages
from tvq_assets.catalog import Policy
from tvq_assets.quant.selection import (
    Code,
    SelectionPolicy,
    SelectionWarning,
    WarningCode,
    select,
)

POLICY = SelectionPolicy.of(Policy())


def _selection(**changes):
    """A small universe that exercises every code: exclusions, vetoes, every stage, duplicates."""
    symbols = [
        "BTCUSDT", "BTCUSDC", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "DUSTUSDT",
        "NOVOLUSDT", "STUCKUSDT", "BADUSDT", "NOSCOREUSDT", "LINKUSDT", "DOTUSDT",
    ]  # fmt: skip
    index = pd.Index(symbols, name="symbol")
    features = pd.DataFrame(
        {
            "momentum": 0.5,
            "volatility": 0.6,
            "entropy": 0.85,
            "efficiency": 0.1,
            "kurtosis": 3.0,
            "dollar_volume": 1e9,
        },
        index=index,
    )
    features.loc["ETHUSDT", "entropy"] = 0.95  # strict veto, passes relaxed
    features.loc["SOLUSDT", "kurtosis"] = 40.0  # feature veto, overridden by rescue/fill
    features.loc["XRPUSDT", "efficiency"] = np.nan  # undefined: vetoed
    features.loc["ADAUSDT", "efficiency"] = 0.01  # below the minimum, even relaxed
    features.loc["DUSTUSDT", "dollar_volume"] = 4.0  # illiquid
    features.loc["NOVOLUSDT", "dollar_volume"] = np.nan  # no dollar volume
    scores = pd.Series(np.linspace(1.0, 0.1, len(symbols)), index=index)
    scores["NOSCOREUSDT"] = np.nan
    clusters = pd.Series([1, 1, 2, 3, 4, 1, 1, 5, 5, 5, 5, 5, 1, 1], index=index)
    policy = replace(POLICY, **{"min_winners": 9, "max_winners": 9, "top_n": 1, **changes})
    return select(
        features.drop(index="LINKUSDT"),
        scores,
        clusters,
        policy=policy,
        stalled=["STUCKUSDT"],
        quarantined=["BADUSDT"],
        excluded={"DOTUSDT": "stale: last bar 9 days ago"},
    )


def test_every_code_of_a_rich_selection_gets_a_sentence():
    selection = _selection()
    rendered = messages.render_selection(selection)
    full = messages.render_selection(_selection(min_winners=1, max_winners=1, top_n=2))

    assert set(rendered.audit["code"]) | set(full.audit["code"]) == {str(code) for code in Code}
    [capped] = full.audit.loc[full.audit["code"] == Code.SELECTION_FULL, "detail"]
    assert capped == "the selection is full at max_winners=1"
    assert rendered.audit["detail"].map(lambda text: isinstance(text, str) and text != "").all()
    detail = rendered.audit.set_index(["symbol", "rule", "stage"])["detail"].sort_index()
    assert detail["DOTUSDT", "upstream", 0] == "stale: last bar 9 days ago"
    assert detail["LINKUSDT", "missing_input", 0] == "absent from features"
    assert detail["ETHUSDT", "entropy", 1] == "entropy 0.95 > 0.9"
    assert detail["XRPUSDT", "efficiency", 1] == "efficiency is NaN (veto)"
    assert detail["ADAUSDT", "efficiency", 2] == "efficiency 0.01 < 0.016"
    assert detail["DUSTUSDT", "friction", 1].startswith("friction/|momentum| 600 > 1: illiquid")
    assert "no dollar volume" in detail["NOVOLUSDT", "friction", 1]
    assert detail["STUCKUSDT", "stalled", 4] == "stalled: safety veto, never admitted at any stage"
    assert set(detail["BTCUSDC", "economic_identity"]) == {"BTC is already held by BTCUSDT"}
    reasons = rendered.winners["reason"]
    assert reasons["ETHUSDT"].startswith("stage 2 (relaxed): winner 1 of 1 in cluster 2")
    assert "(entropy <= 1.08, efficiency >= 0.016)" in reasons["ETHUSDT"]
    assert "feature vetoes overridden: efficiency=nan" in reasons["XRPUSDT"]
    assert "feature vetoes overridden: kurtosis=40" in reasons["SOLUSDT"]
    assert rendered.winners.loc["SOLUSDT", "stage_name"] in ("cluster_rescue", "global_fill")
    assert not rendered.winners.index.isin(["DUSTUSDT", "NOVOLUSDT", "STUCKUSDT", "BADUSDT"]).any()


@pytest.mark.parametrize("code", list(WarningCode))
def test_every_warning_code_gets_a_sentence_with_its_numbers(code):
    numbers = {
        "winners": 3,
        "min_winners": 15,
        "universe": 40,
        "vetoed_for_safety": 37,
        "stalled": 1,
        "quarantined": 2,
        "friction": 34,
        "admissible": 3,
        "identities": 3,
        "stage_reached": 4,
        "rescued": 2,
    }
    sentence = messages.selection_warning(SelectionWarning(code, numbers))
    assert sentence.startswith("selection: ")
    if code == WarningCode.SHORTFALL:
        assert "only 3 winners for min_winners=15" in sentence
        assert "37 of them vetoed for safety (1 stalled, 34 illiquid, 2 quarantined)" in sentence
    if code == WarningCode.RESCUED:
        assert "stage 4 (global_fill); 2 of 3 winners" in sentence


def test_an_unknown_code_is_an_error_not_a_silent_blank():
    audit = _selection().audit.head(1).assign(code="no_such_code")
    with pytest.raises(KeyError):
        messages.audit_details(audit, POLICY)
