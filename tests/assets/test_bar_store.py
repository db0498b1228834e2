"""The segment bar store: incremental refreshes equal one build, atomic manifest switches,
compaction, window reads, and validation of only the rows a refresh adds or revises."""

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import synthetic_source
from tests.real.folders import BY_NAME, source
from tvq_assets import bar_store
from tvq_assets.quant import bars as bar_lake
from tvq_assets.quant import policy as policy_engine
from tvq_checks import contracts
from tvq_resources.lake import MANIFEST, ParquetLake
from tvq_resources.market_data import Batch, MarketData

SLEEVE = "s"
START = "2025-01-01"


def refresh(lake: ParquetLake, fetch, *, calendar: str, now, compact_after=bar_store.COMPACT_AFTER):
    """What the bars asset does, without Dagster: prepare, check the new rows, commit."""
    with lake.writer(["bars"], SLEEVE):
        plan, _ = bar_store.prepare(
            lake,
            SLEEVE,
            fetch=fetch,
            calendar=calendar,
            bar_policy=bar_lake.BarPolicy(),
            volume_spike_window=21,
            now=pd.Timestamp(now, tz="UTC"),
        )
        errors, _ = contracts.bar_violations(plan.frame, calendar=calendar, rows=plan.rows)
        assert errors.empty, errors
        return plan, bar_store.commit(lake, plan, compact_after=compact_after)


def synthetic(
    end: str, *, calendar: str = "crypto", start: str = START, symbols: int = 12, **options
):
    market = MarketData(
        sources={
            SLEEVE: synthetic_source(
                symbols=symbols, end=end, start=start, calendar=calendar, **options
            )
        }
    )
    return lambda since: market.fetch(SLEEVE, since=since)


def next_day(day: str) -> pd.Timestamp:
    return pd.Timestamp(day) + pd.Timedelta(days=1, hours=6)


def assert_same_history(left: bar_lake.BarHistory, right: bar_lake.BarHistory) -> None:
    pd.testing.assert_frame_equal(left.bars, right.bars)
    pd.testing.assert_frame_equal(
        left.defects.reset_index(drop=True), right.defects.reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(
        left.revisions.reset_index(drop=True), right.revisions.reset_index(drop=True)
    )


FAULTS = [
    {"kind": "stall", "symbol": None, "date": "2025-03-05"},
    {"kind": "volume_spike", "symbol": None, "date": "2025-03-11"},
    {"kind": "nan_after_genesis", "symbol": None, "date": "2025-03-12"},
]


@pytest.mark.slow
@pytest.mark.parametrize("calendar", ["crypto", "weekday"])
def test_a_lake_built_by_daily_refreshes_equals_one_built_in_one_go(tmp_path, calendar):
    days = [f"{d:%Y-%m-%d}" for d in pd.date_range("2025-03-01", "2025-03-20")]
    padding = {"kind": "weekend_padding", "date": "2025-02-10"}
    faults = FAULTS if calendar == "crypto" else [*FAULTS, padding]
    daily = ParquetLake(root=str(tmp_path / "daily"))
    for day in days:
        refresh(
            daily,
            synthetic(day, calendar=calendar, faults=faults),
            calendar=calendar,
            now=next_day(day),
            compact_after=5,
        )
    once = ParquetLake(root=str(tmp_path / "once"))
    refresh(
        once,
        synthetic(days[-1], calendar=calendar, faults=faults),
        calendar=calendar,
        now=next_day(days[-1]),
    )
    built = daily.read(["bars"], SLEEVE)
    assert_same_history(built, once.read(["bars"], SLEEVE))
    assert len(built.bars) > 500 and not built.defects.empty
    state = bar_store.state(daily, SLEEVE)
    # A base and a segment per day that brought bars, compacted whenever more than 5 were live.
    assert 1 <= len(state.segments) <= 5 and len(days) / 2 < state.sequence <= len(days)
    assert state.rows == len(built.bars)


def test_three_refreshes_with_a_compaction_equal_one_build(tmp_path):
    days = ("2025-03-01", "2025-03-02", "2025-03-04")
    stepped = ParquetLake(root=str(tmp_path / "stepped"))
    for day in days:
        _, written = refresh(
            stepped,
            synthetic(day, faults=FAULTS[:1]),
            calendar="crypto",
            now=next_day(day),
            compact_after=2,
        )
    assert written.compacted and written.segments == 1
    once = ParquetLake(root=str(tmp_path / "once"))
    refresh(once, synthetic(days[-1], faults=FAULTS[:1]), calendar="crypto", now=next_day(days[-1]))
    assert_same_history(stepped.read(["bars"], SLEEVE), once.read(["bars"], SLEEVE))


def test_one_day_refresh_reads_only_the_tail_and_checks_only_the_new_rows(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    first, second = (
        synthetic("2025-03-01", start="2024-06-01"),
        synthetic("2025-03-02", start="2024-06-01"),
    )
    refresh(lake, first, calendar="crypto", now=next_day("2025-03-01"))
    plan, written = refresh(lake, second, calendar="crypto", now=next_day("2025-03-02"))
    symbols = plan.frame["symbol"].nunique()
    # The source was read from the stored last date minus the revision margin only.
    assert plan.since == pd.Timestamp("2025-03-01") - pd.Timedelta(days=bar_lake.REVISION_DAYS)
    assert plan.rows_read == symbols * (bar_lake.REVISION_DAYS + 1)
    assert plan.update.added == symbols and plan.update.revised == 0
    assert plan.rows.sum() == symbols  # only the new day is checked ...
    assert (plan.frame.loc[plan.rows, "date"] == pd.Timestamp("2025-03-02")).all()
    # ... against at least the context rows per symbol its continuity rules look back on.
    per_symbol = plan.frame.groupby("symbol").size()
    stored = lake.read(["bars"], SLEEVE).bars.groupby("symbol").size()
    assert (per_symbol >= np.minimum(stored, bar_lake.context_rows(21) + 1)).all()
    assert len(plan.frame) < 0.5 * bar_store.state(lake, SLEEVE).rows
    assert written.segments == 2
    segment = bar_store.state(lake, SLEEVE).segments[-1]
    assert segment.rows == symbols and segment.first == segment.last == "2025-03-02"


def test_a_symbol_new_to_the_store_comes_in_with_its_whole_history(tmp_path):
    """A new file in a folder source brings years of bars: a refresh that read only the tail
    would cut them off, so it reads the whole source once."""
    lake = ParquetLake(root=str(tmp_path))
    wide = synthetic("2025-03-02", start="2024-06-01")

    def without(symbol: str):
        def fetch(since):
            batch = wide(since)
            kept = batch.bars[batch.bars["symbol"] != symbol].reset_index(drop=True)
            return dataclasses.replace(batch, bars=kept)

        return fetch

    everything = wide(None).bars
    late = str(everything["symbol"].iloc[-1])
    refresh(lake, without(late), calendar="crypto", now=next_day("2025-03-02"))
    assert late not in set(lake.read(["bars"], SLEEVE).bars["symbol"])
    plan, _ = refresh(lake, wide, calendar="crypto", now=next_day("2025-03-02"))
    assert plan.since is None  # the whole source, once
    stored = lake.read(["bars"], SLEEVE).bars
    assert len(stored[stored["symbol"] == late]) == len(everything[everything["symbol"] == late])


def test_a_filler_copy_of_the_last_stored_bar_is_caught_across_the_refresh_boundary(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    stored = lake.read(["bars"], SLEEVE).bars
    last = stored[stored["date"] == "2025-03-01"].iloc[0]
    copy = last.copy()
    copy["date"] = pd.Timestamp("2025-03-02")
    copy[["open", "high", "low"]] = last["close"]
    copy["volume"] = 0.0
    delivered = pd.DataFrame([copy])[list(bar_lake.BAR_COLUMNS)].reset_index(drop=True)
    plan, _ = refresh(
        lake, lambda since: Batch(bars=delivered), calendar="crypto", now="2025-03-03"
    )
    found = plan.defects
    assert found[["symbol", "rule"]].values.tolist() == [[last["symbol"], "filler_bar"]]
    assert plan.update.added == 0


def test_the_contract_on_new_rows_names_symbol_date_value_and_rule_and_skips_stored_rows():
    dates = pd.date_range("2025-01-01", periods=5)
    frame = pd.DataFrame(
        {
            "symbol": ["AAA"] * 5,
            "date": dates,
            "open": [1.0, 1.1, 1.2, 1.3, 1.4],
            "high": [1.1, 1.2, 1.3, 1.4, 1.5],
            "low": [0.9, 1.0, 1.1, 1.2, 1.3],
            "close": [1.05, 1.15, 1.25, 1.35, -2.0],
            "volume": [10.0, 10, 10, 10, 10],
        }
    )
    frame.loc[1, "close"] = -1.0  # a stored row that passed before: not re-checked
    new = np.array([False, False, False, False, True])
    errors, _ = contracts.bar_violations(frame, calendar="crypto", rows=new)
    assert set(errors["date"]) == {pd.Timestamp("2025-01-05")}
    row = errors[errors["rule"] == "prices_positive_finite"].iloc[0]
    assert (row["symbol"], row["value"]) == ("AAA", -2.0)
    assert "AAA on 2025-01-05" in row["message"] and "[prices_positive_finite]" in row["message"]


def test_a_revision_inside_the_margin_is_recorded_and_wins(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    fetch = synthetic("2025-03-02")

    def revised(since):
        batch = fetch(since)
        bars = batch.bars.copy()
        hit = (bars["symbol"] == bars["symbol"].iloc[0]) & (bars["date"] == "2025-02-27")
        bars.loc[hit, "volume"] = bars.loc[hit, "volume"] * 2
        return Batch(bars=bars)

    plan, _ = refresh(lake, revised, calendar="crypto", now=next_day("2025-03-02"))
    assert plan.update.revised == 1
    history = lake.read(["bars"], SLEEVE)
    [revision] = history.revisions.itertuples(index=False)
    assert (revision.date, revision.column) == (pd.Timestamp("2025-02-27"), "volume")
    assert revision.new == 2 * revision.old
    stored = history.bars.set_index(["symbol", "date"]).loc[(revision.symbol, revision.date)]
    assert stored["volume"] == revision.new
    assert plan.rows.sum() == plan.update.added + 1  # the revised row is checked again


def test_compaction_keeps_the_content_and_removes_the_old_segments(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    for day in ("2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04"):
        refresh(lake, synthetic(day), calendar="crypto", now=next_day(day))
    before = lake.read(["bars"], SLEEVE)
    folder = bar_store.folder(lake, SLEEVE)
    old_files = {s.file for s in bar_store.state(lake, SLEEVE).segments}
    assert len(old_files) == 4
    written = bar_store.compact(lake, SLEEVE)
    assert written.compacted and written.segments == 1
    assert_same_history(lake.read(["bars"], SLEEVE), before)
    assert not old_files & {p.name for p in folder.iterdir()}
    assert lake.verify() == []


def _kill_during(root: Path, day: str, target: str) -> subprocess.CompletedProcess:
    """Run a refresh in a child process that dies (SIGKILL-like ``os._exit``) when it is about
    to write ``target`` (``manifest`` or ``segment``)."""
    script = textwrap.dedent(
        f"""
        import os
        from tvq_resources import lake as lake_module
        from tests.assets.test_bar_store import refresh, synthetic, next_day
        from tvq_resources.lake import ParquetLake
        real = lake_module.write_file
        def dying(data, path):
            if {target!r} == "manifest" and path.name == "manifest.json":
                os._exit(9)
            real(data, path)
            if {target!r} == "segment" and path.name.startswith("bars_"):
                os._exit(9)
        lake_module.write_file = dying
        lake = ParquetLake(root={str(root)!r})
        refresh(lake, synthetic({day!r}), calendar="crypto", now=next_day({day!r}))
        """
    )
    return subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["segment", "manifest"])
def test_a_refresh_killed_before_the_switch_leaves_the_previous_lake(tmp_path, target):
    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    before = lake.read(["bars"], SLEEVE)
    manifest = (bar_store.folder(lake, SLEEVE) / MANIFEST).read_bytes()
    assert _kill_during(tmp_path, "2025-03-02", target).returncode == 9
    assert (bar_store.folder(lake, SLEEVE) / MANIFEST).read_bytes() == manifest
    assert_same_history(lake.read(["bars"], SLEEVE), before)
    leftovers = [p for p in lake.verify() if p.kind == "leftover"]
    assert leftovers and all(p.asset == "bars" and p.partition == SLEEVE for p in leftovers)
    assert {p.path.name for p in lake.clean()} == {p.path.name for p in leftovers}
    assert lake.verify() == []
    # The next refresh starts from the previous lake and adds the day.
    plan, _ = refresh(lake, synthetic("2025-03-02"), calendar="crypto", now=next_day("2025-03-02"))
    assert plan.update.added == plan.frame["symbol"].nunique()


def test_a_failed_switch_removes_what_it_wrote_and_keeps_the_previous_lake(tmp_path, monkeypatch):
    from tvq_resources import lake as lake_module

    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    before = lake.read(["bars"], SLEEVE)
    files = {p.name for p in bar_store.folder(lake, SLEEVE).iterdir()}
    real = lake_module.write_file

    def full_disk(data, path):
        if path.name == MANIFEST:
            raise OSError(28, "No space left on device")
        real(data, path)

    monkeypatch.setattr(lake_module, "write_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        refresh(lake, synthetic("2025-03-02"), calendar="crypto", now=next_day("2025-03-02"))
    assert {p.name for p in bar_store.folder(lake, SLEEVE).iterdir()} == files
    assert_same_history(lake.read(["bars"], SLEEVE), before)


def test_a_lake_of_the_single_bundle_layout_is_taken_over(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    fetch = synthetic("2025-03-01")
    cleaned = bar_lake.clean(
        fetch(None).bars, calendar="crypto", policy=bar_lake.BarPolicy(), now=next_day("2025-03-01")
    )
    legacy = bar_lake.refresh(None, cleaned, seen_at=next_day("2025-03-01")).history
    lake.write(["bars"], SLEEVE, legacy)
    assert bar_store.state(lake, SLEEVE) is None
    refresh(lake, synthetic("2025-03-02"), calendar="crypto", now=next_day("2025-03-02"))
    once = ParquetLake(root=str(tmp_path / "once"))
    refresh(once, synthetic("2025-03-02"), calendar="crypto", now=next_day("2025-03-02"))
    assert_same_history(lake.read(["bars"], SLEEVE), once.read(["bars"], SLEEVE))
    assert bar_store.state(lake, SLEEVE) is not None and lake.verify() == []


@pytest.mark.parametrize("calendar", ["crypto", "weekday"])
def test_a_run_reading_its_window_sees_the_same_returns_as_one_reading_everything(
    tmp_path, calendar
):
    from tvq_assets.settings import policy_settings

    lake = ParquetLake(root=str(tmp_path))
    for day in ("2025-12-01", "2025-12-05", "2025-12-09"):
        refresh(
            lake,
            synthetic(day, calendar=calendar, start="2022-06-01", faults=FAULTS),
            calendar=calendar,
            now=next_day(day),
        )
    settings = policy_settings(_sleeve(calendar))
    full = lake.read(["bars"], SLEEVE)
    for as_of in ("2025-12-03", "2025-12-09"):
        window = bar_store.read_history(
            lake, SLEEVE, as_of=pd.Timestamp(as_of), rows=settings.history_rows, calendar=calendar
        )
        assert len(window.bars) < len(full.bars)
        pit = [
            policy_engine.point_in_time(
                history.bars, as_of=pd.Timestamp(as_of), settings=settings, quarantine=True
            )
            for history in (window, full)
        ]
        for name in ("returns", "dollar_volume", "excluded", "history", "defects"):
            pd.testing.assert_frame_equal(getattr(pit[0], name), getattr(pit[1], name))


def _sleeve(calendar: str):
    from tvq_assets.partitions import catalog

    return next(s for s in catalog.sleeves.values() if s.calendar == calendar)


REAL_STEPS = {
    "crypto_binance_spot_soneyjohnt": (40, [1, 1, 3, 9, 26]),
    "tradfi_yahoo_moex_zenoftrading": (60, [1, 4, 7, 20, 28]),
    "tradfi_yfinance_testdata": (60, [1, 2, 10, 47]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL_STEPS))
def test_real_folders_refreshed_in_steps_equal_one_build(tmp_path, name):
    """The real exports as they stood on earlier days (rows up to a cutoff), refreshed step by
    step, give the lake that one build of the last day gives."""
    folder = BY_NAME[name]
    batch = MarketData(sources={"real": source(folder)}).fetch("real")
    back, steps = REAL_STEPS[name]
    last = pd.Timestamp(folder.as_of)
    cutoffs = list(np.cumsum([0, *steps]) + 0)
    cutoffs = [last - pd.Timedelta(days=back) + pd.Timedelta(days=int(c)) for c in cutoffs]
    cutoffs[-1] = last

    def as_of(cutoff):
        def fetch(since):
            def upto(frame):
                if frame is None:
                    return None
                keep = frame["date"] <= cutoff
                if since is not None:
                    keep &= frame["date"] > since
                return frame[keep].reset_index(drop=True)

            return Batch(bars=upto(batch.bars), superseded=upto(batch.superseded))

        return fetch

    stepped = ParquetLake(root=str(tmp_path / "stepped"))
    for cutoff in cutoffs:
        refresh(
            stepped,
            as_of(cutoff),
            calendar=folder.calendar,
            now=cutoff + pd.Timedelta(days=1),
            compact_after=3,
        )
    once = ParquetLake(root=str(tmp_path / "once"))
    refresh(once, as_of(last), calendar=folder.calendar, now=last + pd.Timedelta(days=1))
    built = stepped.read(["bars"], SLEEVE)
    assert_same_history(built, once.read(["bars"], SLEEVE))
    assert built.bars["date"].max() <= last and len(built.bars) > 1000
    manifest = json.loads((bar_store.folder(stepped, SLEEVE) / MANIFEST).read_text())
    assert manifest["bar_store"]["sequence"] >= 1


def full_refresh(lake: ParquetLake, fetch, *, now):
    """A refresh that re-reads the whole source (``bars`` config ``full: true``)."""
    with lake.writer(["bars"], SLEEVE):
        plan, _ = bar_store.prepare(
            lake,
            SLEEVE,
            fetch=fetch,
            calendar="crypto",
            bar_policy=bar_lake.BarPolicy(),
            volume_spike_window=21,
            now=pd.Timestamp(now, tz="UTC"),
            full=True,
        )
        return plan, bar_store.commit(lake, plan)


def revised_close(fetch, day: str, factor: float = 1.005, *, above_high: bool = False):
    """``fetch`` with the close on ``day`` of the first symbol (by name) trading then corrected
    (high widened, or set just above the high: a repair the cleaning records), and that symbol."""
    whole = fetch(None).bars
    symbol = whole.loc[whole["date"] == day, "symbol"].min()

    def revised(since):
        batch = fetch(since)
        bars = batch.bars.copy()
        hit = (bars["symbol"] == symbol) & (bars["date"] == day)
        if above_high:
            bars.loc[hit, "close"] = bars.loc[hit, "high"] * factor
        else:
            bars.loc[hit, "close"] *= factor
            bars.loc[hit, "high"] = bars.loc[hit, ["high", "close"]].max(axis=1)
        return Batch(bars=bars)

    return revised, symbol


def test_bars_as_known_at_a_version_survive_a_full_refresh_and_a_compaction(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    refresh(lake, synthetic("2025-03-02"), calendar="crypto", now=next_day("2025-03-02"))
    then = bar_store.state(lake, SLEEVE).sequence
    known_then = lake.read(["bars"], SLEEVE)
    old_day = "2025-01-20"  # weeks before the re-read margin
    fetch, symbol = revised_close(synthetic("2025-03-02"), old_day, above_high=True)

    later = next_day("2025-03-02") + pd.Timedelta(hours=1)
    plan, _ = refresh(lake, fetch, calendar="crypto", now=later)
    assert plan.update.revised == 0  # outside the margin: not taken in by an incremental refresh
    _, written = full_refresh(lake, fetch, now=later)
    assert written.segments > 1  # the full refresh appended its changes: older versions stay
    bar_store.compact(lake, SLEEVE)
    now = lake.read(["bars"], SLEEVE)
    key = (symbol, pd.Timestamp(old_day))
    assert (
        now.bars.set_index(["symbol", "date"]).loc[key, "close"]
        != (known_then.bars.set_index(["symbol", "date"]).loc[key, "close"])
    )

    assert len(now.defects) == len(known_then.defects) + 1  # the full refresh's repair
    as_then = bar_store.as_known(lake, SLEEVE, then)
    assert_same_history(
        bar_lake.BarHistory(as_then.bars, as_then.defects, as_then.revisions), known_then
    )
    assert_same_history(
        bar_store.as_known(lake, SLEEVE, bar_store.state(lake, SLEEVE).sequence), now
    )
    assert lake.verify() == []


def test_a_window_read_as_known_now_equals_the_daily_window_read(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    for day in ("2025-03-01", "2025-03-02", "2025-03-03"):
        refresh(lake, synthetic(day), calendar="crypto", now=next_day(day))
    version = bar_store.state(lake, SLEEVE).sequence
    for as_of in ("2025-03-03", "2025-02-10"):
        daily = bar_store.read_history(
            lake, SLEEVE, as_of=pd.Timestamp(as_of), rows=20, calendar="crypto"
        )
        known = bar_store.read_history(
            lake, SLEEVE, as_of=pd.Timestamp(as_of), rows=20, calendar="crypto", known=version
        )
        assert_same_history(known, daily)


def test_a_version_the_store_never_wrote_is_refused_with_what_to_do(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    with pytest.raises(bar_store.UnknownVersion, match=r"never written here.*restate"):
        bar_store.as_known(lake, SLEEVE, bar_store.state(lake, SLEEVE).sequence + 1)


def test_an_old_revision_is_reported_with_its_dates_until_a_full_refresh_takes_it_in(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    fetch, symbol = revised_close(synthetic("2025-03-02"), "2025-01-20")

    plan, _ = refresh(lake, fetch, calendar="crypto", now=next_day("2025-03-02"))
    [row] = plan.source_check.disagreements.itertuples(index=False)
    assert (row.symbol, row.period, row.dates) == (symbol, "2025-01", "2025-01-20")
    again, _ = refresh(lake, fetch, calendar="crypto", now=next_day("2025-03-02"))
    assert len(again.source_check.disagreements) == 1  # not forgotten by the next refresh
    full_refresh(lake, fetch, now=next_day("2025-03-02"))
    settled, _ = refresh(lake, fetch, calendar="crypto", now=next_day("2025-03-02"))
    assert settled.source_check.disagreements.empty


def test_a_refresh_that_only_brings_new_days_finds_no_disagreement(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    for day in ("2025-03-02", "2025-03-05", "2025-04-10"):  # a day, a gap, a month later
        plan, _ = refresh(lake, synthetic(day), calendar="crypto", now=next_day(day))
        assert plan.source_check.disagreements.empty, day
        assert plan.source_check.baselined == 0


def _as_before_versions(lake: ParquetLake) -> None:
    """Rewrite a store as the segment layout wrote it before versions: no ``version`` column,
    no segment sequence, no defects history, checksums or write times."""
    import pyarrow.parquet as pq

    folder = bar_store.folder(lake, SLEEVE)
    manifest = json.loads((folder / MANIFEST).read_text())
    entry = manifest["bar_store"]
    for segment in entry["segments"]:
        segment.pop("sequence")
        path = folder / segment["file"]
        pq.write_table(pq.read_table(path).drop(["version"]), path)
    for key in ("defects_since", "written"):
        entry.pop(key)
    manifest["tables"].pop(bar_store.CHECKSUMS)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_a_store_written_before_versions_is_read_and_refreshed_on(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    for day in ("2025-03-01", "2025-03-02"):
        refresh(lake, synthetic(day), calendar="crypto", now=next_day(day))
    before = lake.read(["bars"], SLEEVE)
    _as_before_versions(lake)
    assert_same_history(lake.read(["bars"], SLEEVE), before)
    old = bar_store.state(lake, SLEEVE).sequence
    assert_same_history(bar_store.as_known(lake, SLEEVE, old), before)
    plan, _ = refresh(lake, synthetic("2025-03-03"), calendar="crypto", now=next_day("2025-03-03"))
    assert plan.source_check.disagreements.empty and plan.source_check.baselined > 0
    assert_same_history(bar_store.as_known(lake, SLEEVE, old), before)
    once = ParquetLake(root=str(tmp_path / "once"))
    refresh(once, synthetic("2025-03-03"), calendar="crypto", now=next_day("2025-03-03"))
    pd.testing.assert_frame_equal(
        lake.read(["bars"], SLEEVE).bars, once.read(["bars"], SLEEVE).bars
    )


def test_a_refresh_the_contract_rejects_leaves_the_store_as_it_was(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    before = bar_store.state(lake, SLEEVE)
    stored = lake.read(["bars"], SLEEVE)

    def reject_the_first_new_row(plan):
        errors, warnings = contracts.bar_violations(plan.frame, calendar="crypto", rows=plan.rows)
        new = plan.frame[plan.rows].head(1)
        rejected = new.assign(value=new["close"], rule="test_rule", message="rejected")
        return rejected[list(errors.columns)], warnings

    with lake.writer(["bars"], SLEEVE):
        refreshed = bar_store.refresh(
            lake,
            SLEEVE,
            fetch=synthetic("2025-03-05"),
            validate=reject_the_first_new_row,
            calendar="crypto",
            bar_policy=bar_lake.BarPolicy(),
            volume_spike_window=21,
            now=pd.Timestamp(next_day("2025-03-05"), tz="UTC"),
        )
    assert refreshed.written is None and len(refreshed.errors) == 1
    assert refreshed.plan.update.added > 0
    assert bar_store.state(lake, SLEEVE).sequence == before.sequence
    assert_same_history(lake.read(["bars"], SLEEVE), stored)


def test_a_refresh_the_contract_passes_is_the_stores_next_version(tmp_path):
    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    before = bar_store.state(lake, SLEEVE)
    with lake.writer(["bars"], SLEEVE):
        refreshed = bar_store.refresh(
            lake,
            SLEEVE,
            fetch=synthetic("2025-03-05"),
            validate=lambda plan: contracts.bar_violations(
                plan.frame, calendar="crypto", rows=plan.rows
            ),
            calendar="crypto",
            bar_policy=bar_lake.BarPolicy(),
            volume_spike_window=21,
            now=pd.Timestamp(next_day("2025-03-05"), tz="UTC"),
        )
    assert refreshed.errors.empty
    assert refreshed.written.version == bar_store.state(lake, SLEEVE).sequence > before.sequence
    assert lake.read(["bars"], SLEEVE).bars["date"].max() == pd.Timestamp("2025-03-05")


def test_a_source_without_quote_volume_writes_ohlcv_segments_and_one_with_it_keeps_it(tmp_path):
    import pyarrow.parquet as pq

    lake = ParquetLake(root=str(tmp_path))
    refresh(lake, synthetic("2025-03-01"), calendar="crypto", now=next_day("2025-03-01"))
    first = bar_store.state(lake, SLEEVE)
    base = bar_store.folder(lake, SLEEVE) / first.segments[0].file
    assert pq.read_schema(base).names == [*bar_lake.BAR_COLUMNS, "removed", "version"]
    assert tuple(lake.read(["bars"], SLEEVE).bars.columns) == bar_lake.BAR_COLUMNS

    def with_quote_volume(end):
        fetch = synthetic(end)

        def given(since):
            batch = fetch(since)
            bars = batch.bars.assign(quote_volume=batch.bars["close"] * batch.bars["volume"] * 2)
            return dataclasses.replace(batch, bars=bars)

        return given

    # Two refreshes from a source that reports quote volume; the second compacts every segment.
    refresh(lake, with_quote_volume("2025-03-02"), calendar="crypto", now=next_day("2025-03-02"))
    _, written = refresh(
        lake,
        with_quote_volume("2025-03-03"),
        calendar="crypto",
        now=next_day("2025-03-03"),
        compact_after=1,
    )
    assert written.compacted
    bars = lake.read(["bars"], SLEEVE).bars
    given = bars.loc[bars["date"] > first_since(first), "quote_volume"]
    assert given.notna().all() and len(given)
    expected = bars.loc[given.index, "close"] * bars.loc[given.index, "volume"] * 2
    assert (given == expected).all()
    # bars never re-read keep no quote volume (none was given), and none was a revision
    assert bars.loc[bars["date"] <= first_since(first), "quote_volume"].isna().all()
    assert lake.read(["bars"], SLEEVE).revisions.empty
    # as known before the quote volume came: the OHLCV bars of then, unchanged
    then = bar_store.as_known(lake, SLEEVE, first.sequence).bars
    assert then["quote_volume"].isna().all()
    pd.testing.assert_frame_equal(
        then[list(bar_lake.BAR_COLUMNS)], first_history(tmp_path, "2025-03-01")
    )


def first_since(state: bar_store.State) -> pd.Timestamp:
    """The date after which the first refresh after ``state`` re-reads the source."""
    return bar_store.resume_date(state, bar_lake.empty_defects())


def first_history(tmp_path: Path, end: str) -> pd.DataFrame:
    lake = ParquetLake(root=str(tmp_path / "alone"))
    refresh(lake, synthetic(end), calendar="crypto", now=next_day(end))
    return lake.read(["bars"], SLEEVE).bars


segment_rows = st.lists(
    st.tuples(
        st.sampled_from(["AAA", "BBB", "CCC"]),
        st.integers(0, 4),  # the day
        st.integers(0, 3),  # the version
        st.booleans(),  # a tombstone
        st.floats(0.5, 2.0),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(segment_rows, min_size=1, max_size=4), st.booleans())
def test_the_resolved_bars_are_the_newest_version_of_each_key_whatever_the_segments(
    segments, quote_volume_in_first
):
    """Against a reference built row by row: per (symbol, date) the row of the highest version,
    then of the later segment, wins; a winning tombstone deletes the key; sorted by key."""
    frames = []
    for number, rows in enumerate(segments):
        frame = pd.DataFrame(
            {
                "symbol": pd.Series([r[0] for r in rows], dtype=object),
                "date": pd.to_datetime([r[1] for r in rows], unit="D").astype("datetime64[ns]"),
                **{c: [r[4] for r in rows] for c in ("open", "high", "low", "close", "volume")},
                "removed": pd.Series([r[3] for r in rows], dtype=bool),
                "version": pd.Series([r[2] for r in rows], dtype=np.int64),
            }
        )
        if number == 0 and quote_volume_in_first:
            frame["quote_volume"] = frame["close"] * 10
        frames.append(frame)
    bars, tombstones = bar_store._resolve(frames)

    winners: dict[tuple, tuple] = {}
    for number, frame in enumerate(frames):
        for row in frame.to_dict("records"):
            key = (row["symbol"], row["date"])
            rank = (row["version"], number)
            if key not in winners or rank >= winners[key][0]:
                winners[key] = (rank, row)
    kept = sorted((key, row) for key, (_, row) in winners.items() if not row["removed"])
    assert tombstones == sum(row["removed"] for _, row in winners.values())
    assert list(zip(bars["symbol"], bars["date"], strict=True)) == [key for key, _ in kept]
    assert list(bars.columns[:2]) == ["symbol", "date"]
    assert ("quote_volume" in bars) == (quote_volume_in_first and any(len(f) for f in frames[:1]))
    for column in bars.columns[2:]:
        expected = [row.get(column, np.nan) for _, row in kept]
        np.testing.assert_array_equal(bars[column].to_numpy(), np.asarray(expected, dtype=float))


def reference_segment(bars, removed, version):
    """A segment built by sorting whole frames (what the store wrote before it built segments
    column by column): the reference the column-wise build must equal."""
    columns = bar_lake.bar_columns(bars)
    frame = bars[[*columns, *(c for c in ("removed", "version") if c in bars)]]
    if "removed" not in frame:
        frame = frame.assign(removed=False)
    if "version" not in frame:
        frame = frame.assign(version=version)
    if removed is not None and len(removed):
        stones = removed[["symbol", "date"]].assign(
            **{name: np.nan for name in columns[2:]}, removed=True, version=version
        )
        frame = pd.concat([frame, stones[frame.columns]], ignore_index=True)
    frame = frame[[*columns, "removed", "version"]]
    return frame.sort_values(["date", "symbol", "version"], ignore_index=True, kind="stable")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(segment_rows.filter(len), min_size=1, max_size=2),
    st.booleans(),
    st.booleans(),
    st.integers(1, 9),
)
def test_a_segment_is_its_rows_and_tombstones_sorted_by_date_symbol_and_version(
    parts, quote_volume, carry_version, version
):
    rows = [row for part in parts for row in part]
    bars = pd.DataFrame(
        {
            "symbol": pd.Series([r[0] for r in rows], dtype=object),
            "date": pd.to_datetime([r[1] for r in rows], unit="D").astype("datetime64[ns]"),
            **{c: [r[4] for r in rows] for c in ("open", "high", "low", "close", "volume")},
        }
    )
    if quote_volume:
        bars["quote_volume"] = bars["close"] * 3
    if carry_version:  # a compaction's rows keep their versions and tombstones
        bars["removed"] = [r[3] for r in rows]
        bars["version"] = np.asarray([r[2] for r in rows], dtype=np.int64)
    removed = bars[["symbol", "date"]].iloc[::3].reset_index(drop=True)
    for stones in (None, removed):
        table = bar_store._segment_frame(bars, stones, version=version)
        expected = reference_segment(bars, stones, version)
        assert table.schema.names == list(expected.columns)
        pd.testing.assert_frame_equal(table.to_pandas(), expected)


def test_a_window_read_is_the_rows_since_its_start_and_every_symbols_last_bar(tmp_path):
    """Against the whole store windowed in memory (``_windowed``): a symbol whose bars all end
    before the window is still seen by its last bar, from whichever segment holds it."""
    lake = ParquetLake(root=str(tmp_path))
    for day in ("2025-06-01", "2025-09-01", "2025-09-03", "2025-12-01"):
        refresh(
            lake,
            synthetic(day, start="2022-06-01", symbols=40),
            calendar="crypto",
            now=next_day(day),
        )
    whole = lake.read(["bars"], SLEEVE)
    last = whole.bars.groupby("symbol")["date"].max()
    for since in ("2025-01-01", "2025-08-31", "2025-11-01"):
        window = bar_store.read_window(lake, SLEEVE, since=pd.Timestamp(since), tables=False)
        expected = bar_store._windowed(whole, pd.Timestamp(since))
        pd.testing.assert_frame_equal(window.bars, expected.bars)
    assert (last < pd.Timestamp("2025-11-01")).any()  # some symbols ended before the last window
