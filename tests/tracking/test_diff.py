"""Stage-level diffs between two stored run partitions."""

import pandas as pd
import pytest

from tvq_assets import cli
from tvq_assets.tracking import diff
from tvq_resources.lake import ParquetLake


def _selection(symbols, stage=1):
    winners = pd.DataFrame({"score": 0.5, "stage": stage}, index=pd.Index(symbols, name="symbol"))
    return {"winners": winners, "audit": pd.DataFrame({"symbol": symbols, "rule": "kept"})}


def _weights(**profiles):
    return {"weights": pd.DataFrame(profiles).fillna(0.0).rename_axis("symbol")}


def test_symbols_added_and_removed_are_listed():
    table = diff.symbol_changes(pd.Index(["A", "B", "C"]), pd.Index(["B", "C", "D"]))
    assert table.to_dict("records") == [
        {"symbol": "D", "change": "added"},
        {"symbol": "A", "change": "removed"},
    ]


def test_weight_changes_above_the_threshold_and_one_sided_turnover():
    before = pd.Series({"A": 0.5, "B": 0.35, "C": 0.15})
    after = pd.Series({"A": 0.498, "B": 0.1, "D": 0.402})
    table, turnover = diff.weight_changes(before, after, threshold=0.005)
    assert list(table["symbol"]) == ["D", "B", "C"]  # A moved 0.2%: noise
    assert table.set_index("symbol").loc["B", "change"] == pytest.approx(-0.25)
    assert turnover == pytest.approx((0.002 + 0.25 + 0.15 + 0.402) / 2)


def test_tvq_diff_prints_the_stages_of_two_stored_partitions(tmp_path, monkeypatch, capsys):
    lake = ParquetLake(root=str(tmp_path / "lake"))
    lake.write(["selection"], "2026-06-29|crypto", _selection(["A", "B", "C"]))
    lake.write(["selection"], "2026-06-30|crypto", _selection(["B", "C", "D"], stage=2))
    lake.write(["weights"], "2026-06-29|crypto", _weights(min_variance={"A": 0.6, "B": 0.4}))
    lake.write(["weights"], "2026-06-30|crypto", _weights(min_variance={"B": 0.5, "D": 0.5}))
    comparison = diff.compare(lake, "crypto", "2026-06-29", "2026-06-30", ("selection", "weights"))
    summary = comparison["selection"]["summary"].iloc[0]
    assert (summary["added"], summary["removed"], summary["stage_after"]) == (1, 1, 2)
    assert comparison["weights"]["summary"].iloc[0]["turnover"] == pytest.approx(0.6)

    monkeypatch.setenv("TVQ_LAKE", str(tmp_path / "lake"))
    assert cli.main(["diff", "crypto", "2026-06-29", "2026-06-30", "--stage", "weights"]) == 0
    printed = capsys.readouterr().out
    assert "== weights" in printed and "min_variance" in printed and "== selection" not in printed


def test_a_partition_that_was_never_stored_is_named():
    with pytest.raises(
        FileNotFoundError, match=r"selection: nothing stored for 2026-01-01\|crypto"
    ):
        diff.compare(ParquetLake(root="/nonexistent"), "crypto", "2026-01-01", "2026-01-02")


def test_a_materialisation_records_what_changed_since_the_previous_run_partition(tmp_path):
    lake = ParquetLake(root=str(tmp_path / "lake"))
    lake.write(["weights"], "2026-06-29|crypto", _weights(min_variance={"A": 0.6, "B": 0.4}))
    today = _weights(min_variance={"B": 0.5, "D": 0.5})
    found = diff.changes_since_previous(lake, "weights", "2026-06-30|crypto", today)
    assert found["compared_with"] == "2026-06-29|crypto"
    assert found["turnover_min_variance"] == pytest.approx(0.6)
    assert "| D |" in found["changes_moves"].value
    # A gap (a weekend, a failed day): the newest run stored in the week before.
    gap = diff.changes_since_previous(lake, "weights", "2026-07-02|crypto", today)
    assert gap["compared_with"] == "2026-06-29|crypto"
    late = diff.changes_since_previous(lake, "weights", "2026-07-07|crypto", today)
    assert late == {"compared_with": "none (no run stored in the 7 days before)"}


def test_the_portfolio_diff_lists_entries_exits_moves_and_turnover(tmp_path):
    from tvq_assets.quant.policy import portfolio_record

    before = portfolio_record(pd.Series({"A": 0.6, "B": 0.4}), None)
    after = portfolio_record(pd.Series({"B": 0.5, "D": 0.5}), before.weights["weight"])
    lake = ParquetLake(root=str(tmp_path / "lake"))
    lake.write(["portfolio"], "2026-06-29|crypto", before)
    lake.write(["portfolio"], "2026-06-30|crypto", after)
    parts = diff.compare(lake, "crypto", "2026-06-29", "2026-06-30", ("portfolio",))["portfolio"]
    assert parts["symbols"].to_dict("records") == [
        {"symbol": "D", "change": "added"},
        {"symbol": "A", "change": "removed"},
    ]
    assert list(parts["moves"]["symbol"]) == ["A", "D", "B"]
    assert parts["summary"].iloc[0]["turnover"] == pytest.approx(0.6) == after.turnover
