"""The data layer through Dagster: bars and returns materialised per partition, with checks."""

import dagster as dg
import pandas as pd

from tests.conftest import AS_OF, materialised, resources_for, synthetic_source
from tvq_assets import data
from tvq_assets.quant.returns import ReturnsWindow
from tvq_resources.lake import ParquetLake

KEY = f"{AS_OF}|crypto"


@dg.asset(partitions_def=data.sleeve_run)
def downstream_probe(returns: ReturnsWindow) -> pd.DataFrame:
    """Stands for the first asset after returns: it must never run on blocked data."""
    return returns.returns.tail(1)


def materialise(instance, resources, *, partition=KEY, assets=None):
    sleeve_name = partition.split("|")[-1]
    bars_result = dg.materialize(
        [data.bars],
        partition_key=sleeve_name,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    if not bars_result.success:
        return bars_result, None
    targets = assets or [data.returns, downstream_probe]
    result = dg.materialize(
        [data.bars, *targets],
        partition_key=partition,
        selection=[a.key for a in targets],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    return bars_result, result


def check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def test_a_clean_synthetic_sleeve_passes_every_check(instance, lake_root):
    resources = resources_for(lake_root, crypto=synthetic_source())
    bars_result, result = materialise(instance, resources)
    assert bars_result.success and result.success
    for evaluation in (
        bars_result.get_asset_check_evaluations() + result.get_asset_check_evaluations()
    ):
        assert evaluation.passed, (evaluation.check_name, evaluation.description)
    assert check(result, data.RETURNS_CONTRACT).partition == KEY
    assert materialised(result) == {"returns", "downstream_probe"}


def test_a_toxic_spike_under_policy_fail_blocks_everything_downstream(instance, lake_root):
    resources = resources_for(lake_root, crypto=synthetic_source(faults=[{"kind": "toxic_spike"}]))
    _, result = materialise(instance, resources)
    assert not result.success
    evaluation = check(result, data.RETURNS_CONTRACT)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    table = evaluation.metadata["first_failures"].value
    assert "toxic_return" in table and "+700%" in table
    assert materialised(result) == set()
    assert not ParquetLake(root=lake_root).exists(["returns"], KEY)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert f"returns[{KEY}]" in message and "+700%" in message and "policy: fail" in message


def test_quarantine_drops_the_toxic_symbol_lists_it_and_keeps_the_run_going(
    instance, lake_root, sleeve_policy
):
    sleeve_policy("crypto", toxic_policy="quarantine")
    resources = resources_for(lake_root, crypto=synthetic_source(faults=[{"kind": "toxic_spike"}]))
    _, result = materialise(instance, resources)
    assert result.success
    evaluation = check(result, data.RETURNS_CONTRACT)
    [symbol] = evaluation.metadata["quarantined_symbols"].value
    assert evaluation.passed
    bundle = ParquetLake(root=lake_root).read(["returns"], KEY)
    assert symbol not in bundle.returns.columns
    [row] = bundle.excluded.query("symbol == @symbol").itertuples()
    assert (row.rule, row.reason) == ("toxic_return", "quarantine")
    # The symbol's history is kept for the walk-forward, with the dated defect.
    assert symbol in bundle.history.columns
    assert "toxic_return" in set(bundle.defects.query("symbol == @symbol")["rule"])
    assert "downstream_probe" in materialised(result)


def test_a_gap_after_genesis_fails_the_returns_contract_naming_symbol_and_date(instance, lake_root):
    resources = resources_for(
        lake_root, crypto=synthetic_source(faults=[{"kind": "gap", "date": "2026-05-01"}])
    )
    _, result = materialise(instance, resources)
    evaluation = check(result, data.RETURNS_CONTRACT)
    assert not evaluation.passed
    assert "non_null_after_genesis" in evaluation.metadata["first_failures"].value
    assert "2026-05-01" in evaluation.metadata["first_failures"].value


def test_weekend_padding_in_a_weekday_sleeve_is_dropped_recorded_and_never_blocks(
    instance, lake_root
):
    source = synthetic_source(calendar="weekday", seed=11, faults=[{"kind": "weekend_padding"}])
    resources = resources_for(lake_root, tradfi=source)
    bars_result, result = materialise(instance, resources, partition=f"{AS_OF}|tradfi")
    assert bars_result.success and result.success
    assert check(bars_result, data.BARS_CONTRACT).passed
    defects = check(bars_result, data.BARS_DEFECTS)
    assert not defects.passed and defects.severity == dg.AssetCheckSeverity.WARN
    assert "weekend_row" in defects.metadata["by_rule"].value
    history = ParquetLake(root=lake_root).read(["bars"], "tradfi")
    assert (history.bars["date"].dt.dayofweek < 5).all()
    weekend = history.defects[history.defects["rule"] == "weekend_row"]
    assert len(weekend) > 0 and set(weekend["action"]) == {"dropped"}
    assert (weekend["date"].dt.dayofweek >= 5).all()


def test_stalls_and_volume_spikes_are_warnings_that_do_not_block(instance, lake_root):
    source = synthetic_source(faults=[{"kind": "stall"}, {"kind": "volume_spike"}])
    resources = resources_for(lake_root, crypto=source)
    bars_result, result = materialise(instance, resources)
    assert bars_result.success and result.success
    evaluation = check(bars_result, data.BARS_QUALITY)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert set(evaluation.metadata["by_rule"].value) == {"price_stall", "volume_spike"}


def test_returns_of_run_d_do_not_change_when_bars_after_d_arrive(instance, lake_root):
    early = resources_for(lake_root, crypto=synthetic_source(end=AS_OF))
    materialise(instance, early)
    before = ParquetLake(root=lake_root).read(["returns"], KEY)
    later = resources_for(lake_root, crypto=synthetic_source(end="2026-08-15"))
    materialise(instance, later)
    after = ParquetLake(root=lake_root).read(["returns"], KEY)
    stored = ParquetLake(root=lake_root).read(["bars"], "crypto").bars
    assert stored["date"].max() > pd.Timestamp(AS_OF)
    pd.testing.assert_frame_equal(before.returns, after.returns)
    pd.testing.assert_frame_equal(before.excluded, after.excluded)
    pd.testing.assert_frame_equal(before.history, after.history)


def test_a_second_bars_materialisation_adds_exactly_the_new_rows(instance, lake_root):
    first = dg.materialize(
        [data.bars],
        partition_key="crypto",
        instance=instance,
        resources=resources_for(lake_root, crypto=synthetic_source(end=AS_OF)),
    )
    second = dg.materialize(
        [data.bars],
        partition_key="crypto",
        instance=instance,
        resources=resources_for(lake_root, crypto=synthetic_source(end="2026-07-10")),
    )
    stored = ParquetLake(root=lake_root).read(["bars"], "crypto").bars
    added = second.asset_materializations_for_node("bars")[0].metadata["rows_added"].value
    first_rows = first.asset_materializations_for_node("bars")[0].metadata["rows"].value
    new_rows = (stored["date"] > pd.Timestamp(AS_OF)).sum()
    assert added == new_rows == len(stored) - first_rows
    assert new_rows > 0


def test_a_csv_sleeve_loads_good_files_and_reports_the_broken_one(instance, lake_root, tmp_path):
    from tvq_resources.market_data import SourceConfig
    from tvq_resources.synthetic import generate_market

    folder = tmp_path / "csv"
    folder.mkdir()
    market = generate_market(seed=3, n_symbols=12, end=AS_OF)
    for symbol, rows in market.groupby("symbol"):
        layout = rows.drop(columns="symbol").rename(columns={"date": "Date", "volume": "Volume"})
        layout.to_csv(folder / f"{symbol}.csv", index=False)
    (folder / "BROKEN.csv").write_text(
        "Date,Open,High,Low,Close,Volume\n2026-01-01,1,2,0.5,oops,10\n"
    )
    resources = resources_for(lake_root, crypto=SourceConfig(kind="csv", path=str(folder)))
    result = dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    )
    readable = check(result, data.SOURCE_READABLE)
    assert not readable.passed and readable.severity == dg.AssetCheckSeverity.WARN
    assert "BROKEN.csv" in readable.metadata["load_errors"].value
    assert "oops" in readable.metadata["load_errors"].value
    stored = ParquetLake(root=lake_root).read(["bars"], "crypto").bars
    assert set(stored["symbol"]) == set(market["symbol"])
    assert check(result, data.BARS_CONTRACT).passed


def test_a_negative_and_a_nan_close_in_csv_files_are_named_where_the_returns_stop(
    instance, lake_root, tmp_path
):
    from tvq_resources.market_data import SourceConfig
    from tvq_resources.synthetic import generate_market

    folder = tmp_path / "csv"
    folder.mkdir()
    market = generate_market(seed=3, n_symbols=12, end=AS_OF)
    listed_early = market.groupby("symbol")["date"].min() < pd.Timestamp("2025-01-01")
    negative, missing = sorted(listed_early[listed_early].index)[:2]
    for symbol, rows in market.groupby("symbol"):
        rows = rows.drop(columns="symbol").rename(columns={"date": "Date"}).reset_index(drop=True)
        if symbol == negative:
            rows.loc[rows["Date"] == "2026-03-12", "close"] = -3.2
        if symbol == missing:
            rows.loc[rows["Date"] == "2026-04-02", "close"] = float("nan")
        rows.to_csv(folder / f"{symbol}.csv", index=False)
    resources = resources_for(lake_root, crypto=SourceConfig(kind="csv", path=str(folder)))
    _, result = materialise(instance, resources)
    evaluation = check(result, data.RETURNS_CONTRACT)
    assert not evaluation.passed
    failures = evaluation.metadata["first_failures"].value
    assert (
        f"{negative} on 2026-03-12: return is missing after the symbol's first bar because its "
        "bar of 2026-03-12 was dropped as price_non_positive (price not finite and positive, "
        "value -3.2)"
    ) in failures
    # The day after: its return needs the dropped close too, and names the same bar.
    assert (
        f"{negative} on 2026-03-13: return is missing after the symbol's first bar because its "
        "bar of 2026-03-12" in failures
    )
    assert (
        f"{missing} on 2026-04-02: return is missing after the symbol's first bar because its "
        "bar of 2026-04-02 was dropped as price_missing (empty open/high/low/close cell, value nan)"
    ) in failures
    assert "set policy.bar_actions {price_non_positive: quarantine}" in failures
    assert "downstream_probe" not in materialised(result)


def test_quarantine_also_excludes_a_symbol_whose_gap_runs_into_the_last_bar(
    instance, lake_root, sleeve_policy
):
    # Bars missing on 06-27..06-29, back on the as-of date 06-30: the returns of 06-27..06-30
    # are NaN (06-30's needs the close of 06-29), after the symbol's last present return. The
    # engine's dated defects see a gap only before a later return; the returns contract sees a
    # missing return after genesis, and under `quarantine` the asset excludes the symbol for it.
    sleeve_policy("crypto", toxic_policy="quarantine")
    resources = resources_for(
        lake_root, crypto=synthetic_source(faults=[{"kind": "gap", "date": "2026-06-27"}])
    )
    _, result = materialise(instance, resources)
    assert result.success
    evaluation = check(result, data.RETURNS_CONTRACT)
    [symbol] = evaluation.metadata["quarantined_symbols"].value
    bundle = ParquetLake(root=lake_root).read(["returns"], KEY)
    assert symbol not in bundle.returns.columns
    rows = bundle.excluded.query("symbol == @symbol")
    assert set(zip(rows["rule"], rows["reason"], strict=True)) == {
        ("non_null_after_genesis", "quarantine")
    }
    assert list(rows["date"].dt.strftime("%m-%d")) == ["06-27", "06-28", "06-29", "06-30"]
    assert "downstream_probe" in materialised(result)
