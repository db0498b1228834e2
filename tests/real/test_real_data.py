"""The shipped real daily bars (../shared/data/real, never edited): every folder is read, cleaned
and recorded; session dates, venue holidays, revisions and unfinished bars behave on real files;
and a real sleeve runs from bars to backtest. The demo sleeve's folder ships in the repository
(tests/real/folders.py: DEMO), so its tests run in a clone alone; the others skip without
../shared."""

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from tests.conftest import evaluations, materialised, metadata, resources_for
from tests.real.folders import (
    BY_NAME,
    DEMO,
    FOLDERS,
    REAL,
    assert_same_load,
    blocking,
    cleaned,
    needs_real,
    params,
    source,
)
from tests.settings import settings_for
from tvq_assets import data
from tvq_assets.definitions import SLEEVE_ASSETS
from tvq_assets.quant.policy import point_in_time
from tvq_checks import contracts
from tvq_resources import clock, files
from tvq_resources.lake import ParquetLake
from tvq_resources.market_data import MarketData, SourceConfig

ALL = SLEEVE_ASSETS  # bars first: the runs below materialise the rest of the graph
PERP = DEMO  # Binance perpetuals: the demo sleeve's folder, shipped in the repository


def day(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


def rules_of(defects: pd.DataFrame, symbol: str) -> set[str]:
    return set(defects.loc[defects["symbol"] == symbol, "rule"])


@pytest.fixture(scope="module")
def every_folder():
    return {folder.name: cleaned(folder) for folder in FOLDERS if folder.root.is_dir()}


@pytest.mark.parametrize("folder", params())
def test_every_real_folder_is_read_and_cleaned_to_one_sorted_row_per_symbol_and_date(
    every_folder, folder
):
    batch, result = every_folder[folder.name]
    bars = result.bars
    assert not bars.duplicated(["symbol", "date"]).any()
    assert bars.equals(bars.sort_values(["symbol", "date"], ignore_index=True))
    assert np.isfinite(bars[["open", "high", "low", "close"]].to_numpy()).all()
    assert (bars[["open", "high", "low", "close"]].to_numpy() > 0).all()
    assert (bars["high"] >= np.maximum(bars["open"], bars["close"])).all()
    assert (bars["low"] <= np.minimum(bars["open"], bars["close"])).all()
    errors, _ = contracts.bar_violations(bars, calendar=folder.calendar)
    assert errors.empty, errors.head()
    if folder.name == "tradfi_skfolio":
        assert bars.empty and len(batch.errors) == 2
        assert all("wide close-only layout" in e.reason for e in batch.errors)
    else:
        assert batch.errors == () and len(bars) > 0


@needs_real
def test_the_readme_defects_of_the_crypto_folders_are_recorded(every_folder):
    _, klines = every_folder["crypto_binance_klines_yodumini"]
    juv = klines.defects[klines.defects["symbol"] == "JUVUSDT"]
    assert set(juv["rule"]) == {"duplicate_exact"} and juv["value"].sum() == 93
    assert set(juv["date"].dt.strftime("%Y-%m")) == {"2022-03"}
    partial = klines.defects[klines.defects["rule"] == "partial_last_bar"]
    assert set(partial["symbol"]) == {"TUSDUSDT", "USDCUSDT"}
    assert set(partial["date"]) == {day("2022-09-26")}

    _, spot = every_folder["crypto_binance_spot_soneyjohnt"]
    last = spot.defects[spot.defects["rule"] == "partial_last_bar"]
    assert last["symbol"].nunique() == 34 and set(last["date"]) == {day("2022-06-05")}
    assert spot.bars["date"].max() == day("2022-06-04")  # the snapshot's open day is held back

    batch, cdd = every_folder["crypto_cryptodatadownload_ziggerzz"]
    assert batch.files == 10  # the URL line before the header is skipped
    conflicts = cdd.defects[cdd.defects["rule"] == "duplicate_conflict"]
    assert set(conflicts["symbol"]) == {"BTCUSDT", "ETHUSDT", "LTCUSDT"}
    assert set(conflicts["date"]) == {day("2017-12-18")}
    assert set(conflicts["action"]) == {"repaired"}
    btc = cdd.bars[cdd.bars["symbol"] == "BTCUSDT"].set_index("date")
    assert btc.index.is_monotonic_increasing  # newest-first files are sorted
    assert btc.loc[day("2017-12-17") : day("2017-12-19")].shape[0] == 3  # mixed s/ms epochs

    batch, tradingview = every_folder["crypto_tradingview_uzanbtc"]
    assert set(tradingview.bars["symbol"]) == {"BNBUSDTPERP", "BTCUSDTPERP", "ETHUSDT"}


@needs_real
def test_the_readme_defects_of_the_tradfi_folders_are_recorded(every_folder):
    _, moex = every_folder["tradfi_yahoo_moex_zenoftrading"]
    exact = moex.defects[moex.defects["rule"] == "duplicate_exact"]
    assert set(exact["date"]) == {day("2014-12-30")} and len(exact) == 8
    weekend = moex.defects[moex.defects["rule"] == "weekend_row"]
    assert (weekend["date"].dt.dayofweek >= 5).all() and set(weekend["action"]) == {"dropped"}
    assert day("2018-12-29") in set(weekend["date"])
    assert "partial_last_bar" in rules_of(moex.defects, "BR")

    _, yahoo = every_folder["tradfi_yfinance_testdata"]
    missing = yahoo.defects[yahoo.defects["rule"] == "price_missing"]
    assert {"1398-HK-1D-BAD-DIV", "3988-HK-1D-BAD-DIV"} <= set(missing["symbol"])
    assert day("2024-07-05") in set(missing.loc[missing["symbol"] == "1398-HK-1D-BAD-DIV", "date"])
    assert (missing["symbol"] == "SSNLF-1D-BAD-DIV").sum() == 242
    ohlc = yahoo.defects[yahoo.defects["rule"] == "ohlc_inconsistent"]
    assert (ohlc["symbol"] == "ELCO-L-1D-BAD-DIV").sum() == 309
    assert set(ohlc["action"]) == {"repaired", "dropped"}
    assert (ohlc.loc[ohlc["action"] == "repaired", "value"] <= 0.01).all()
    assert (ohlc.loc[ohlc["action"] == "dropped", "value"] > 0.01).all()
    assert set(yahoo.defects.loc[yahoo.defects["rule"] == "weekend_row", "symbol"]) == {
        "KEN-TA-1D-BAD-DIV"  # Tel Aviv's Sundays: a Sunday-Thursday venue on a weekday sleeve
    }


@needs_real
def test_toxic_prints_and_silences_inside_the_window_are_named_at_returns(every_folder):
    findings = {
        folder.name: blocking(folder, every_folder[folder.name][1].bars) for folder in FOLDERS
    }
    perp = findings["crypto_binance_perp_gravestone"]
    toxic = perp[perp["rule"] == "toxic_return"]
    assert set(toxic["symbol"]) == {"BLESSUSDT", "COAIUSDT"}
    assert "BLESSUSDT on 2025-10-15: return +532% exceeds the toxic threshold" in set(
        m.split(" [")[0] for m in toxic["message"]
    )
    luna = findings["crypto_binance_spot_soneyjohnt"]
    assert set(luna["symbol"]) == {"LUNAUSDT"}
    assert luna["date"].min() == day("2022-05-14")  # the 17-day halt is never bridged
    assert findings["crypto_bybit_perp_zxckotee"].empty


@needs_real
def test_session_dates_of_real_london_and_us_stamps_are_their_local_days():
    root = REAL / "tradfi_yfinance_testdata"
    bars = files.read_csv_directory(root).bars
    london = bars[bars["symbol"] == "ABDP-L-1D-BAD-DIV"].set_index("date")
    # `2022-03-28 00:00:00+01:00` is Monday's bar (as a UTC date it would be Sunday the 27th).
    assert day("2022-03-28") in london.index and day("2022-03-27") not in london.index
    assert london.loc[day("2022-03-28"), "close"] == 11.5
    for symbol in ("ABDP-L-1D-BAD-DIV", "DODFX-1D-CG-DOUBLE-COUNT", "JENYX-1D-CG-DOUBLE-COUNT"):
        rows = bars[bars["symbol"] == symbol]
        assert (rows["date"].dt.dayofweek < 5).all(), symbol
    raw = pd.read_csv(root / "DODFX-1d-cg-double-count.csv")
    offsets = raw["Date"].str.slice(-6)
    assert set(offsets) == {"-05:00", "-04:00"}
    local_days = pd.to_datetime(raw["Date"].str.slice(0, 10))
    dodfx = bars[bars["symbol"] == "DODFX-1D-CG-DOUBLE-COUNT"]
    assert dodfx["date"].tolist() == sorted(local_days)


@needs_real
def test_tsla_stamped_at_the_us_open_in_utc_is_dated_by_its_us_session():
    root = REAL / "tradfi_tradingview_uzanbtc"
    loaded = files.read_csv_directory(root, pattern="{exchange}_{symbol}, 1D.csv")
    tsla = loaded.bars
    raw = pd.read_csv(root / "BATS_TSLA, 1D.csv")
    stamps = pd.to_datetime(raw["time"], unit="s", utc=True)
    assert set(stamps.dt.strftime("%H:%M")) == {"13:30", "14:30"}  # summer and winter opens
    assert len(tsla) == len(raw) and loaded.duplicates == 0
    assert tsla["date"].tolist() == stamps.dt.tz_localize(None).dt.normalize().tolist()
    assert (tsla["date"].dt.dayofweek < 5).all()
    assert tsla["symbol"].unique().tolist() == ["TSLA"]


@needs_real
def test_a_mixed_venue_weekday_sleeve_carries_a_us_holiday_from_the_last_close(every_folder):
    _, moex = every_folder["tradfi_yahoo_moex_zenoftrading"]
    window = point_in_time(
        moex.bars,
        as_of=day("2021-09-29"),
        settings=settings_for("weekday", lookback=250, train=200),
        quarantine=False,
    )
    returns = window.returns
    # 2021-07-05 (US Independence Day observed): MOEX traded, US listings did not.
    assert day("2021-07-05") in returns.index
    aapl = moex.bars[moex.bars["symbol"] == "AAPL"].set_index("date")["close"]
    assert returns.loc[day("2021-07-05"), "AAPL"] == 0.0
    expected = aapl[day("2021-07-06")] / aapl[day("2021-07-02")] - 1
    assert returns.loc[day("2021-07-06"), "AAPL"] == pytest.approx(expected, rel=1e-12)
    assert {"AAPL", "SBER", "SPY", "SI"} <= set(returns.columns)
    violations = contracts.returns_violations(returns)
    assert "non_null_after_genesis" not in set(violations["rule"]), violations.head()


def copy_files(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "perp"
    folder.mkdir()
    for name in names:
        shutil.copy(PERP.root / name, folder / name)
    return folder


def csv_source(folder: Path, **options) -> SourceConfig:
    return SourceConfig(kind="csv", path=str(folder), pattern="{symbol}.csv", **options)


def test_quote_volume_is_turned_into_base_units_so_dollar_volume_is_right(tmp_path):
    raw = pd.read_csv(PERP.root / "BTCUSDT.csv")
    folder = tmp_path / "quote"
    folder.mkdir()
    raw.drop(columns="volume").rename(columns={"quote_volume": "volume"}).to_csv(
        folder / "BTCUSDT.csv", index=False
    )
    bars = MarketData(sources={"q": csv_source(folder, volume="quote")}).fetch("q").bars
    dollars = (bars["close"] * bars["volume"]).to_numpy()
    assert np.allclose(dollars, raw["quote_volume"].to_numpy(), rtol=1e-12)
    # The base volume of the original file gives the same value to within the intraday VWAP.
    ratio = raw["quote_volume"] / (raw["close"] * raw["volume"])
    assert ratio.between(0.8, 1.25).all()


def test_a_source_revision_keeps_the_newest_value_and_is_a_warning_with_the_table(
    instance, lake_root, tmp_path
):
    folder = copy_files(tmp_path, ["BTCUSDT.csv", "ETHUSDT.csv"])
    resources = resources_for(lake_root, crypto=csv_source(folder))
    first = dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    )
    assert evaluations(first)[data.BARS_REVISIONS].passed

    path = folder / "ETHUSDT.csv"
    raw = pd.read_csv(path)
    # The exchange corrected one recent close (an incremental refresh re-reads the last
    # bars.REVISION_DAYS days; older corrections are seen by a full refresh only).
    row = raw.index[-3]
    old_close = float(raw.loc[row, "close"])
    raw.loc[row, "close"] = old_close * 1.002
    raw.to_csv(path, index=False)
    second = dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    )

    revision = evaluations(second)[data.BARS_REVISIONS]
    assert not revision.passed and revision.severity == dg.AssetCheckSeverity.WARN
    assert "ETHUSDT" in revision.metadata["table"].value
    history = ParquetLake(root=lake_root).read(["bars"], "crypto")
    when = pd.to_datetime(raw.loc[row, "timestamp"], unit="ms").normalize()
    stored = history.bars.set_index(["symbol", "date"]).loc[("ETHUSDT", when), "close"]
    assert stored == pytest.approx(old_close * 1.002)
    [row] = history.revisions.to_dict("records")
    assert (row["symbol"], row["date"], row["column"]) == ("ETHUSDT", when, "close")
    assert row["old"] == old_close and row["new"] == pytest.approx(old_close * 1.002)
    assert metadata(second, "bars")["rows_revised_at_source"] == 1


def test_an_old_correction_is_taken_in_by_a_full_refresh_not_by_an_incremental_one(
    instance, lake_root, tmp_path
):
    folder = copy_files(tmp_path, ["ETHUSDT.csv"])
    resources = resources_for(lake_root, crypto=csv_source(folder))
    dg.materialize([data.bars], partition_key="crypto", resources=resources, instance=instance)
    path = folder / "ETHUSDT.csv"
    raw = pd.read_csv(path)
    row = raw.index[600]  # years before the newest bar: outside the revision margin
    old_close = float(raw.loc[row, "close"])
    raw.loc[row, "close"] = old_close * 1.002
    raw.to_csv(path, index=False)
    when = pd.to_datetime(raw.loc[row, "timestamp"], unit="ms").normalize()

    def stored_close() -> float:
        history = ParquetLake(root=lake_root).read(["bars"], "crypto")
        return history.bars.set_index(["symbol", "date"]).loc[("ETHUSDT", when), "close"]

    incremental = dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    )
    # Not taken in, but not silent: the source's checksums show where source and lake disagree.
    warned = evaluations(incremental)[data.BARS_REVISIONS]
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert f"ETHUSDT {when:%Y-%m} (1 date(s): {when:%Y-%m-%d})" in warned.description
    assert "run a full refresh" in warned.description and stored_close() == old_close
    full = dg.materialize(
        [data.bars],
        partition_key="crypto",
        resources=resources,
        instance=instance,
        run_config={"ops": {"bars": {"config": {"full": True}}}},
    )
    revision = evaluations(full)[data.BARS_REVISIONS]
    assert not revision.passed and "ETHUSDT" in revision.metadata["table"].value
    assert stored_close() == pytest.approx(old_close * 1.002)
    assert metadata(full, "bars")["read_since"] == "everything"
    after = dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    )
    assert evaluations(after)[data.BARS_REVISIONS].passed  # source and lake agree again


def test_an_in_progress_bar_is_held_back_and_a_future_bar_is_refused(instance, lake_root, tmp_path):
    folder = copy_files(tmp_path, ["BTCUSDT.csv"])
    path = folder / "BTCUSDT.csv"
    raw = pd.read_csv(path)
    today = clock.now().normalize()
    live = raw.iloc[[-1]].assign(timestamp=int(today.timestamp() * 1000), volume=12.0)
    pd.concat([raw, live]).to_csv(path, index=False)
    resources = resources_for(lake_root, crypto=csv_source(folder))

    result = dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    )
    assert result.success
    history = ParquetLake(root=lake_root).read(["bars"], "crypto")
    assert history.bars["date"].max() == day("2026-03-19")
    defects = evaluations(result)[data.BARS_DEFECTS]
    assert defects.metadata["unfinished_bars_held_back"].value == 1

    ahead = raw.iloc[[-1]].assign(timestamp=int(pd.Timestamp("2031-01-02").timestamp() * 1000))
    pd.concat([raw, ahead]).to_csv(path, index=False)
    refused = dg.materialize(
        [data.bars],
        partition_key="crypto",
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert not refused.success
    [failure] = [e for e in refused.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "BTCUSDT on 2031-01-02" in message and "nothing was stored" in message
    after = ParquetLake(root=lake_root).read(["bars"], "crypto")
    pd.testing.assert_frame_equal(after.bars, history.bars)


def test_a_plus_700_percent_print_inside_the_window_still_stops_a_fail_sleeve(
    instance, lake_root, tmp_path
):
    folder = copy_files(tmp_path, ["BTCUSDT.csv", "ETHUSDT.csv", "SOLUSDT.csv"])
    path = folder / "SOLUSDT.csv"
    raw = pd.read_csv(path)
    spike = raw.index[-30]
    for column in ("open", "high", "low", "close"):
        raw.loc[spike:, column] *= 8.0  # a price-scale error from this bar on: +700%
    raw.to_csv(path, index=False)
    when = pd.to_datetime(raw.loc[spike, "timestamp"], unit="ms").normalize()
    resources = resources_for(lake_root, crypto=csv_source(folder))
    assert dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    ).success
    result = dg.materialize(
        [data.bars, data.returns],
        partition_key=f"{PERP.as_of}|crypto",
        selection=[data.returns.key],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success and "returns" not in materialised(result)
    contract = evaluations(result)[data.RETURNS_CONTRACT]
    assert not contract.passed
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert f"SOLUSDT on {when:%Y-%m-%d}" in message
    assert "exceeds the toxic threshold [toxic_return]" in message
    assert "(threshold +500%, policy: fail)" in message


@pytest.mark.slow
@pytest.mark.parametrize("folder", params([f for f in FOLDERS if f.name != "tradfi_skfolio"]))
def test_each_real_folder_runs_from_bars_to_backtest_under_quarantine(
    instance, lake_root, sleeve_policy, folder
):
    sleeve = "crypto" if folder.calendar == "crypto" else "tradfi"
    # What a user with a handful of symbols configures: fewer winners, a universe of one, and a
    # cap raised (under a WARN naming both values) when it cannot be met by the names left.
    small = {"min_winners": 3, "max_winners": 10, "min_universe": 1, "infeasible_cap": "raise"}
    sleeve_policy(sleeve, toxic_policy="quarantine", policy=small)
    resources = resources_for(lake_root, **{sleeve: source(folder)})
    bars = dg.materialize([data.bars], partition_key=sleeve, resources=resources, instance=instance)
    assert bars.success
    result = dg.materialize(
        ALL,
        partition_key=f"{folder.as_of}|{sleeve}",
        selection=[asset.key for asset in ALL[1:]],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    failures = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
    assert result.success, failures
    assert materialised(result) >= {"returns", "selection", "weights", "backtest"}
    stored = ParquetLake(root=lake_root).read(["backtest"], f"{folder.as_of}|{sleeve}")
    assert stored.champion


def test_a_source_start_date_leaves_older_history_unread():
    config = source(PERP, start="2025-06-01")
    bars = MarketData(sources={"p": config}).fetch("p").bars
    assert bars["date"].min() == day("2025-06-01")
    everything = MarketData(sources={"p": source(PERP)}).fetch("p").bars
    assert everything["date"].min() < day("2025-06-01")


@needs_real
def test_an_illiquid_real_name_reaches_the_features_with_zero_liquidity(every_folder):
    from tvq_assets.partitions import catalog
    from tvq_assets.quant import policy
    from tvq_assets.settings import policy_settings

    folder = BY_NAME["tradfi_yfinance_testdata"]
    _, yahoo = every_folder[folder.name]
    window = point_in_time(
        yahoo.bars, as_of=day(folder.as_of), settings=settings_for("weekday"), quarantine=False
    )
    table = policy.features(
        window.returns, window.dollar_volume, policy_settings(catalog.sleeves["tradfi"])
    )
    # A mutual fund reports volume 0 on every row: zero traded value, whatever its NAV path.
    fund = "VWILX-1D-CG-DOUBLE-COUNT"
    assert window.returns[fund].notna().sum() >= 90  # eligible by history ...
    assert window.dollar_volume[fund].fillna(0).max() == 0.0
    assert table.loc[fund, "liquidity"] == 0.0  # ... but never liquid
    assert table.loc["HSBK-IL-1D-NO-BAD-DIVS", "liquidity"] > 0.0


@pytest.mark.parametrize("folder", params())
def test_a_real_folder_parsed_as_tasks_reads_as_in_one_pass(folder, monkeypatch):
    from tvq_resources.ray_fanout import SerialMap

    market = MarketData(sources={"real": source(folder)})
    whole = market.fetch("real")
    monkeypatch.setattr(files, "FILES_PER_TASK", 4)
    fanout = SerialMap()
    split = market.fetch("real", map_tasks=fanout)
    chunks = -(-(whole.files + len(whole.errors)) // 4)
    assert fanout.tasks == (chunks if chunks > 1 else 0)
    assert_same_load(split, whole)


def stored_values(lake_root: str, partition: str) -> dict[str, dict[str, object]]:
    """Every table of every stored sleeve-run value of ``partition``, by asset and field."""
    import dataclasses

    lake = ParquetLake(root=lake_root)
    values = {}
    for asset in ALL[1:]:
        name = asset.key.path[-1]
        if not lake.exists([name], partition):
            continue
        value = lake.read([name], partition)
        if dataclasses.is_dataclass(value):
            values[name] = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        else:
            values[name] = {"": value}
    return values


def _results(value):
    """A stored table without its timing columns (how long a step took is not a result)."""
    if isinstance(value, pd.DataFrame):
        return value.drop(columns=[c for c in value.columns if "seconds" in str(c)])
    return value


def assert_identical(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for asset, tables in left.items():
        assert tables.keys() == right[asset].keys(), asset
        for name, value in tables.items():
            value, other = _results(value), _results(right[asset][name])
            if isinstance(value, pd.DataFrame):
                pd.testing.assert_frame_equal(value, other, check_exact=True, obj=f"{asset}.{name}")
            elif isinstance(value, pd.Series):
                pd.testing.assert_series_equal(
                    value, other, check_exact=True, obj=f"{asset}.{name}"
                )
            else:
                assert value == other, f"{asset}.{name}"


@pytest.mark.slow
def test_a_past_run_is_reproduced_bit_for_bit_after_a_full_refresh_unless_restated(
    instance, lake_root, tmp_path, sleeve_policy
):
    names = ["BTCUSDT.csv", "ETHUSDT.csv", "SOLUSDT.csv", "BNBUSDT.csv", "XRPUSDT.csv"]
    folder = copy_files(tmp_path, names)
    small = {"min_winners": 2, "max_winners": 5, "min_universe": 1, "infeasible_cap": "raise"}
    sleeve_policy("crypto", policy=small)
    resources = resources_for(lake_root, crypto=csv_source(folder))
    run = f"{PERP.as_of}|crypto"

    def bars(**config):
        return dg.materialize(
            [data.bars],
            partition_key="crypto",
            resources=resources,
            instance=instance,
            run_config={"ops": {"bars": {"config": config}}} if config else None,
        )

    def run_d(**config):
        result = dg.materialize(
            ALL,
            partition_key=run,
            selection=[asset.key for asset in ALL[1:]],
            resources=resources,
            instance=instance,
            run_config={"ops": {"returns": {"config": config}}} if config else None,
            raise_on_error=False,
        )
        failures = [
            e.step_failure_data.error.message for e in result.all_events if e.is_step_failure
        ]
        assert result.success, failures
        return result

    assert bars().success
    first = run_d()
    assert {"returns", "selection", "weights", "backtest", "portfolio"} <= materialised(first)
    known = metadata(first, "returns")["bars_version"]
    as_first = stored_values(lake_root, run)

    # The exchange corrects an old close inside run D's window, weeks before the re-read margin
    # (above the high: the full refresh also records a repair, so the defects change too).
    path = folder / "BTCUSDT.csv"
    raw = pd.read_csv(path)
    row = raw.index[-40]
    when = pd.to_datetime(raw.loc[row, "timestamp"], unit="ms").normalize()
    raw.loc[row, "close"] = float(raw.loc[row, "high"]) * 1.004
    raw.to_csv(path, index=False)

    incremental = bars()
    warned = evaluations(incremental)[data.BARS_REVISIONS]
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    assert f"BTCUSDT {when:%Y-%m} (1 date(s): {when:%Y-%m-%d})" in warned.description
    full = bars(full=True)
    assert metadata(full, "bars")["rows_revised_at_source"] == 1

    again = run_d()
    read = metadata(again, "returns")
    assert read["bars_version"] == known and "as known at version" in read["bars_read_as"]
    assert_identical(stored_values(lake_root, run), as_first)

    restated = run_d(restate=True)
    read = metadata(restated, "returns")
    assert read["restate"] is True and read["restated_version"] == known
    assert read["bars_version"] > known
    assert read["restated_symbols"] == ["BTCUSDT"] and read["restated_bars"] == 1
    assert f"{when:%Y-%m-%d}" in read["restated_changes"]
    after = stored_values(lake_root, run)
    with pytest.raises(AssertionError):
        pd.testing.assert_frame_equal(
            after["returns"]["returns"], as_first["returns"]["returns"], check_exact=True
        )
    # Materialised again, the restated run is what is reproduced now.
    assert metadata(run_d(), "returns")["bars_version"] == read["bars_version"]
    assert_identical(stored_values(lake_root, run), after)
