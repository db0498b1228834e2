"""The Parquet lake: round trips, partition paths, and writes that fail without damage."""

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tvq_resources import records
from tvq_resources.lake import MANIFEST, LakeBusy, LakeReadError, ParquetLake
from tvq_resources.records import lake_record

KEY = "2026-11-20|crypto"


@pytest.fixture
def lake(tmp_path) -> ParquetLake:
    return ParquetLake(root=str(tmp_path))


def returns_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        rng.normal(0.0, 0.02, (30, 4)),
        index=pd.date_range("2026-10-22", periods=30, name="date"),
        columns=pd.Index(["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"], name="symbol"),
    )
    frame.iloc[:5, 2] = np.nan
    return frame


def bars_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "symbol": ["AAA", "AAA", "BBB"],
            "date": pd.to_datetime(["2026-11-19", "2026-11-20", "2026-11-20"]),
            "open": [1.0, 1.1, 20.0],
            "high": [1.2, 1.2, 21.0],
            "low": [0.9, 1.0, 19.5],
            "close": [1.1, 1.15, 20.5],
            "volume": [1e6, 2e6, 3e4],
        }
    )


def features_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"momentum": [0.4, -0.1], "history": [500, 120], "stalled": [False, True]},
        index=pd.Index(["AAA", "BBB"], name="symbol"),
    )


def bundle(seed: int = 0) -> dict[str, pd.DataFrame]:
    returns = returns_frame(seed)
    return {"returns": returns, "dollar_volume": returns.abs() * 1e6, "excluded": bars_frame()}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def temporary_files(root: Path) -> list[str]:
    return [name for name in files_under(root) if name.endswith(".tmp")]


@pytest.mark.parametrize("make", [returns_frame, bars_frame, features_frame])
def test_a_dataframe_comes_back_with_its_index_columns_and_dtypes(lake, make):
    frame = make()
    lake.write(["asset"], KEY, frame)
    back = lake.read(["asset"], KEY)
    pd.testing.assert_frame_equal(back, frame, check_freq=False)
    assert back.index.name == frame.index.name
    assert back.columns.name == frame.columns.name
    assert list(back.dtypes) == list(frame.dtypes)


def test_a_bundle_comes_back_table_by_table(lake):
    tables = bundle()
    lake.write(["returns"], KEY, tables)
    back = lake.read(["returns"], KEY)
    assert set(back) == set(tables)
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(back[name], frame, check_freq=False)


def test_an_empty_bundle_comes_back_empty(lake):
    lake.write(["returns"], KEY, {})
    assert lake.exists(["returns"], KEY)
    assert lake.read(["returns"], KEY) == {}


def test_a_multi_partition_key_is_stored_sleeve_first(lake, tmp_path):
    path = lake.write(["returns"], KEY, returns_frame())
    assert path == tmp_path / "returns" / "crypto" / "2026-11-20.parquet"
    folder = lake.write(["selection"], KEY, bundle())
    assert folder == tmp_path / "selection" / "crypto" / "2026-11-20"
    assert (folder / MANIFEST).exists()


def test_single_partition_and_unpartitioned_values_have_their_own_paths(lake, tmp_path):
    assert lake.write(["bars"], "crypto", bars_frame()) == tmp_path / "bars" / "crypto.parquet"
    unpartitioned = lake.write(["catalog"], None, features_frame())
    assert unpartitioned == tmp_path / "catalog" / "value.parquet"
    assert lake.exists(["bars"], "crypto") and lake.exists(["catalog"], None)
    assert not lake.exists(["bars"], "weekday")


def test_a_later_write_replaces_the_value_whatever_its_kind(lake):
    lake.write(["returns"], KEY, bundle(seed=1))
    lake.write(["returns"], KEY, returns_frame(seed=2))
    pd.testing.assert_frame_equal(
        lake.read(["returns"], KEY), returns_frame(seed=2), check_freq=False
    )
    lake.write(["returns"], KEY, bundle(seed=3))
    back = lake.read(["returns"], KEY)
    pd.testing.assert_frame_equal(back["returns"], returns_frame(seed=3), check_freq=False)


def test_rewriting_a_bundle_removes_the_tables_of_the_previous_one(lake, tmp_path):
    lake.write(["returns"], KEY, bundle(seed=1))
    lake.write(["returns"], KEY, bundle(seed=2))
    folder = tmp_path / "returns" / "crypto" / "2026-11-20"
    assert len([p for p in folder.iterdir() if p.suffix == ".parquet"]) == 3


def test_a_frame_pyarrow_cannot_serialise_leaves_the_previous_value_intact(lake, tmp_path):
    lake.write(["features"], KEY, features_frame())
    broken = features_frame().assign(note=[1, "one"])  # mixed object types
    with pytest.raises(Exception, match=r"note|Conversion|convert"):
        lake.write(["features"], KEY, broken)
    pd.testing.assert_frame_equal(lake.read(["features"], KEY), features_frame())
    assert temporary_files(tmp_path) == []


def test_a_write_that_dies_half_way_leaves_the_previous_value_and_no_temporary_file(
    lake, tmp_path, monkeypatch
):
    lake.write(["returns"], KEY, returns_frame(seed=1))
    before = files_under(tmp_path)

    def half_write(self, path, **options):
        path.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_write)
    with pytest.raises(OSError, match="disk full"):
        lake.write(["returns"], KEY, returns_frame(seed=2))
    monkeypatch.undo()
    pd.testing.assert_frame_equal(
        lake.read(["returns"], KEY), returns_frame(seed=1), check_freq=False
    )
    assert files_under(tmp_path) == before


def test_a_first_write_that_fails_leaves_nothing_that_looks_materialised(
    lake, tmp_path, monkeypatch
):
    def failing(self, path, **options):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", failing)
    with pytest.raises(OSError):
        lake.write(["returns"], KEY, returns_frame())
    monkeypatch.undo()
    assert not lake.exists(["returns"], KEY)
    assert temporary_files(tmp_path) == []


def test_a_bundle_whose_second_table_fails_leaves_the_previous_bundle_readable(
    lake, tmp_path, monkeypatch
):
    lake.write(["returns"], KEY, bundle(seed=1))
    folder = tmp_path / "returns" / "crypto" / "2026-11-20"
    manifest = (folder / MANIFEST).read_text()
    before = files_under(tmp_path)
    original = pd.DataFrame.to_parquet
    calls = []

    def second_fails(self, path, **options):
        calls.append(path)
        if len(calls) == 2:
            path.write(b"PAR1 half")
            raise OSError("disk full")
        return original(self, path, **options)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", second_fails)
    with pytest.raises(OSError, match="disk full"):
        lake.write(["returns"], KEY, bundle(seed=2))
    monkeypatch.undo()
    assert (folder / MANIFEST).read_text() == manifest
    back = lake.read(["returns"], KEY)
    for name, frame in bundle(seed=1).items():
        pd.testing.assert_frame_equal(back[name], frame, check_freq=False)
    assert files_under(tmp_path) == before  # neither half nor orphaned tables remain
    assert set(json.loads(manifest)["tables"]) == set(bundle())


def test_reading_an_unmaterialised_partition_names_the_asset_and_partition(lake):
    lake.write(["returns"], "2026-11-19|crypto", returns_frame())
    with pytest.raises(FileNotFoundError, match=r"returns\[2026-11-20\|crypto\]"):
        lake.read(["returns"], KEY)


@pytest.mark.parametrize(
    "value", [[1, 2, 3], pd.Series([1.0, 2.0]), {"returns": [1.0]}, "a string", None]
)
def test_writing_something_other_than_dataframes_is_a_type_error(lake, tmp_path, value):
    with pytest.raises(TypeError, match="DataFrames"):
        lake.write(["returns"], KEY, value)
    assert files_under(tmp_path) == []


def test_the_root_comes_from_the_environment_when_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv("TVQ_LAKE", str(tmp_path / "from_env"))
    assert ParquetLake().root_path == tmp_path / "from_env"
    monkeypatch.delenv("TVQ_LAKE")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert ParquetLake().root_path == tmp_path / "home" / "lake"


def test_a_typed_value_round_trips_as_its_own_class(tmp_path):
    from tvq_assets.quant.returns import ReturnsWindow

    dates = pd.DatetimeIndex(["2026-01-01", "2026-01-02"], name="date")
    window = ReturnsWindow(
        returns=pd.DataFrame({"AAA": [0.01, -0.02]}, index=dates),
        dollar_volume=pd.DataFrame({"AAA": [1e6, 2e6]}, index=dates),
        excluded=pd.DataFrame({"symbol": ["BBB"], "rule": ["min_history"]}),
        history=pd.DataFrame({"AAA": [0.01, -0.02], "BBB": [None, 0.03]}, index=dates),
        history_dollar_volume=pd.DataFrame({"AAA": [1e6, 2e6], "BBB": [None, 1e5]}, index=dates),
        defects=pd.DataFrame({"symbol": ["BBB"], "date": [dates[1]]}),
    )
    lake = ParquetLake(root=str(tmp_path))
    lake.write(["returns"], "2026-01-02|crypto", window)
    back = lake.read(["returns"], "2026-01-02|crypto")
    assert type(back) is ReturnsWindow
    pd.testing.assert_frame_equal(back.returns, window.returns, check_freq=False)
    pd.testing.assert_frame_equal(back.excluded, window.excluded)
    pd.testing.assert_frame_equal(back.history, window.history, check_freq=False)


@lake_record
@dataclasses.dataclass(frozen=True)
class SeriesPair:
    """A record type of this test: one Series field, one DataFrame field."""

    weights: pd.Series
    table: pd.DataFrame


def test_a_series_field_comes_back_as_a_series(lake):
    value = SeriesPair(
        pd.Series([0.5, 0.5], index=pd.Index(["A", "B"], name="symbol"), name="weight"),
        pd.DataFrame({"x": [1]}),
    )
    folder = lake.write(["x"], KEY, value)
    assert json.loads((folder / MANIFEST).read_text())["series"] == ["weights"]
    back = lake.read(["x"], KEY)
    assert type(back) is SeriesPair
    pd.testing.assert_series_equal(back.weights, value.weights)


def test_a_dataclass_that_is_not_a_registered_record_type_is_not_written(lake, tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Unregistered:
        table: pd.DataFrame

    with pytest.raises(TypeError, match="not a registered record type"):
        lake.write(["x"], KEY, Unregistered(pd.DataFrame({"a": [1]})))
    assert files_under(tmp_path) == []


# Stored data is data: a manifest names a registered record type, never code.

TRIPPED: list[dict] = []


def _trip(**tables):
    """A registered decoder that records being called: a refusal must leave TRIPPED empty."""
    TRIPPED.append(tables)
    return tables


records.register_decoder("Tripwire", _trip, required=("a", "b"), optional=("c",))


@pytest.fixture
def tripwire():
    TRIPPED.clear()
    yield TRIPPED
    TRIPPED.clear()


def craft(lake, tmp_path, kind, tables=("a", "b"), series=None):
    """A bundle of ``tables`` (one small table each) whose manifest names ``kind``."""
    folder = lake.write(["x"], KEY, {t: pd.DataFrame({"argv": ["lake", "clean"]}) for t in tables})
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["type"] = kind
    if series is not None:
        manifest["series"] = series
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_the_tripwire_fires_when_its_tables_are_right(lake, tmp_path, tripwire):
    craft(lake, tmp_path, "Tripwire")
    assert set(lake.read(["x"], KEY)) == {"a", "b"} and len(tripwire) == 1


@pytest.mark.parametrize(
    ("target", "tables", "rule"),
    [
        ("tvq_assets.cli:main", ("argv",), "is not a registered record type"),
        ("tvq_resources.lake:Crafted", ("a", "b"), "is not a registered record type"),
        ("builtins:eval", ("source",), "is not a registered record type"),
        ("os:system", ("command",), "is not a registered record type"),
    ],
)
def test_a_manifest_naming_code_is_refused_and_nothing_runs(
    lake, tmp_path, monkeypatch, target, tables, rule
):
    # Each target, if it were looked up and called, would create `ran`: the project's CLI, a
    # class planted in a project module (as before, any callable of a project package was
    # rebuilt), and the builtins.
    import builtins

    from tvq_assets import cli
    from tvq_resources import lake as lake_module

    ran = tmp_path / "ran"
    monkeypatch.setattr(cli, "main", lambda *a, **k: ran.touch())
    monkeypatch.setattr(lake_module, "Crafted", lambda *a, **k: ran.touch(), raising=False)
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: ran.touch())
    folder = craft(lake, tmp_path, target, tables)
    with pytest.raises(LakeReadError) as error:
        lake.read(["x"], KEY)
    message = str(error.value)
    assert message.startswith(f"x[{KEY}]: cannot read {folder / MANIFEST}")
    assert rule in message and "RecordError" in message
    assert not ran.exists()
    damaged = [p for p in lake.verify() if p.kind == "damaged"]
    assert [(p.asset, p.path) for p in damaged] == [("x", folder / MANIFEST)]
    assert not ran.exists()


@pytest.mark.parametrize(
    ("tables", "series", "rule"),
    [
        (("a", "b", "surplus"), None, r"table\(s\) \['surplus'\] are not fields"),
        (("a",), None, r"needs table\(s\) \['b'\]"),
        (("a", "b"), ["unknown"], r"`series` names \['unknown'\]"),
        (("a", "b"), "a", "`series` must be a list"),
    ],
)
def test_a_registered_type_with_tables_that_do_not_fit_is_refused_before_it_is_built(
    lake, tmp_path, tripwire, tables, series, rule
):
    folder = craft(lake, tmp_path, "Tripwire", tables, series)
    with pytest.raises(LakeReadError, match=rule) as error:
        lake.read(["x"], KEY)
    assert str(folder / MANIFEST) in str(error.value)
    assert tripwire == []
    assert [p.kind for p in lake.verify()] == ["damaged"] and tripwire == []


def test_a_record_class_with_a_table_too_many_or_too_few_is_refused(lake, tmp_path):
    from tvq_assets.quant.policy import SelectionRecord

    frame = pd.DataFrame({"x": [1.0]})
    folder = lake.write(["selection"], KEY, SelectionRecord(winners=frame, audit=frame))
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    assert manifest["type"] == "SelectionRecord"
    for tables, rule in (
        ({**manifest["tables"], "decide": manifest["tables"]["audit"]}, "not fields"),
        ({"winners": manifest["tables"]["winners"]}, "needs table"),
    ):
        path.write_text(json.dumps({**manifest, "tables": tables}))
        with pytest.raises(LakeReadError, match=rule):
            lake.read(["selection"], KEY)


def test_a_value_stored_before_the_registry_loads_by_its_module_path(lake):
    from tvq_assets.quant.policy import SelectionRecord

    frame = pd.DataFrame({"x": [1.0]})
    folder = lake.write(["selection"], KEY, SelectionRecord(winners=frame, audit=frame))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["type"] = "tvq_assets.quant.policy:SelectionRecord"  # what the lake used to write
    (folder / MANIFEST).write_text(json.dumps(manifest))
    back = lake.read(["selection"], KEY)
    assert type(back) is SelectionRecord
    pd.testing.assert_frame_equal(back.winners, frame)
    assert lake.verify() == []


# One writer per value, readable errors, leftovers of killed writes.


def test_a_second_writer_waits_for_the_first_and_then_sees_its_rows(lake):
    import threading

    lake.write(["bars"], "crypto", bars_frame().iloc[:1])
    order = []
    first_has_lock = threading.Event()

    def first():
        with lake.writer(["bars"], "crypto"):
            stored = lake.read(["bars"], "crypto")
            first_has_lock.set()
            time.sleep(0.5)  # a slow source: the second writer arrives meanwhile
            lake.write(["bars"], "crypto", pd.concat([stored, bars_frame().iloc[1:2]]))
            order.append("first")

    def second():
        first_has_lock.wait()
        with lake.writer(["bars"], "crypto"):
            stored = lake.read(["bars"], "crypto")
            lake.write(["bars"], "crypto", pd.concat([stored, bars_frame().iloc[2:3]]))
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == ["first", "second"]
    pd.testing.assert_frame_equal(
        lake.read(["bars"], "crypto").reset_index(drop=True), bars_frame()
    )


def test_a_writer_that_waits_too_long_fails_naming_the_value_and_the_holder(tmp_path):
    import multiprocessing

    lake = ParquetLake(root=str(tmp_path), lock_timeout=0.3)
    holder = multiprocessing.get_context("fork").Process(
        target=_hold_lock, args=(str(tmp_path), 5.0)
    )
    holder.start()
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "bars" / ".crypto.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        with pytest.raises(LakeBusy, match=rf"bars\[crypto\]: another writer \(pid {holder.pid}\)"):
            lake.write(["bars"], "crypto", bars_frame())
    finally:
        holder.kill()
        holder.join()
    lake.write(["bars"], "crypto", bars_frame())  # the kernel released the dead holder's lock


def _hold_lock(root: str, seconds: float) -> None:
    with ParquetLake(root=root).writer(["bars"], "crypto"):
        time.sleep(seconds)


def test_the_writer_lock_is_reentrant_so_the_io_manager_can_write_inside_it(lake):
    with lake.writer(["bars"], "crypto"), lake.writer(["bars"], "crypto"):
        lake.write(["bars"], "crypto", bars_frame())
    assert lake.exists(["bars"], "crypto")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_file_is_reported_with_asset_partition_and_path(lake, tmp_path):
    path = lake.write(["bars"], "crypto", bars_frame())
    truncate(path)
    with pytest.raises(LakeReadError) as error:
        lake.read(["bars"], "crypto")
    message = str(error.value)
    assert message.startswith("bars[crypto]: cannot read ") and str(path) in message
    assert "tvq lake quarantine bars crypto" in message


def test_a_truncated_bundle_table_is_reported_with_its_file(lake):
    folder = lake.write(["returns"], KEY, bundle())
    table = folder / json.loads((folder / MANIFEST).read_text())["tables"]["excluded"]
    truncate(table)
    with pytest.raises(LakeReadError, match=rf"returns\[{re.escape(KEY)}\]: cannot read {table}"):
        lake.read(["returns"], KEY)


def test_verify_finds_damaged_values_and_leftovers_and_clean_removes_only_leftovers(lake, tmp_path):
    good = lake.write(["returns"], KEY, bundle())
    damaged = lake.write(["bars"], "crypto", bars_frame())
    truncate(damaged)
    (good / "returns-0123456789ab.parquet").write_bytes(b"orphan table")
    (good / ".manifest.x1.tmp").write_text("{}")
    (tmp_path / "bars" / ".tradfi.parquet.x2.tmp").write_bytes(b"PAR1")
    orphan_bundle = tmp_path / "selection" / "crypto" / "2026-11-21"
    orphan_bundle.mkdir(parents=True)
    (orphan_bundle / "winners-abcdefabcdef.parquet").write_bytes(b"PAR1")
    problems = lake.verify()
    assert [(p.kind, p.asset, p.partition) for p in problems if p.kind == "damaged"] == [
        ("damaged", "bars", "crypto")
    ]
    leftovers = sorted(p.path.name for p in problems if p.kind == "leftover")
    assert leftovers == [
        ".manifest.x1.tmp",
        ".tradfi.parquet.x2.tmp",
        "returns-0123456789ab.parquet",
        "winners-abcdefabcdef.parquet",
    ]
    removed = lake.clean()
    assert sorted(p.path.name for p in removed) == leftovers
    assert [p.kind for p in lake.verify()] == ["damaged"]
    assert not orphan_bundle.exists()
    assert set(lake.read(["returns"], KEY)) == set(bundle())


def test_clean_leaves_the_temporary_files_of_a_live_writer(lake, tmp_path):
    lake.write(["bars"], "crypto", bars_frame())
    in_progress = tmp_path / "bars" / ".crypto.parquet.live.tmp"
    in_progress.write_bytes(b"PAR1")
    with lake.writer(["bars"], "crypto"):
        import threading

        thread = threading.Thread(target=lake.clean)  # another thread: the lock is not its own
        thread.start()
        thread.join()
        assert in_progress.exists()
    lake.clean()
    assert not in_progress.exists()


def test_the_next_write_of_a_value_removes_what_a_killed_write_left(lake, tmp_path):
    folder = lake.write(["returns"], KEY, bundle(seed=1))
    (folder / "returns-0123456789ab.parquet").write_bytes(b"orphan")
    (folder / ".manifest.killed.tmp").write_text("{")
    (folder.parent / ".2026-11-20.parquet.killed.tmp").write_bytes(b"PAR1")
    lake.write(["returns"], KEY, bundle(seed=2))
    assert temporary_files(tmp_path) == []
    assert len(list(folder.glob("*.parquet"))) == len(bundle())


def test_quarantine_moves_a_damaged_value_aside_and_the_next_write_recomputes_it(lake, tmp_path):
    path = lake.write(["bars"], "crypto", bars_frame())
    truncate(path)
    target = lake.quarantine(["bars"], "crypto")
    assert target.is_relative_to(tmp_path / ".corrupt" / "bars")
    assert (target / "crypto.parquet").read_bytes() != b""  # kept, not deleted
    assert not lake.exists(["bars"], "crypto") and lake.verify() == []
    lake.write(["bars"], "crypto", bars_frame())
    pd.testing.assert_frame_equal(lake.read(["bars"], "crypto"), bars_frame())
    with pytest.raises(FileNotFoundError, match=r"bars\[tradfi\]: nothing stored"):
        lake.quarantine(["bars"], "tradfi")


def test_a_read_only_lake_refuses_a_write_naming_the_value_and_the_lock(tmp_path):
    import os

    lake = ParquetLake(root=str(tmp_path))
    lake.write(["bars"], "crypto", bars_frame())
    (tmp_path / "bars" / ".crypto.lock").unlink()
    os.chmod(tmp_path / "bars", 0o555)
    try:
        if os.access(tmp_path / "bars", os.W_OK):
            pytest.skip("running as a user that ignores permissions")
        with pytest.raises(OSError, match=r"bars\[crypto\]: cannot create the writer lock"):
            lake.write(["bars"], "crypto", bars_frame())
        pd.testing.assert_frame_equal(lake.read(["bars"], "crypto"), bars_frame())
    finally:
        os.chmod(tmp_path / "bars", 0o755)


# The same lake on an fsspec filesystem that is not the local disk (object-store code paths,
# without a server: tests/resources/test_lake_s3.py runs them against an S3 server).


@pytest.fixture
def remote_lake() -> ParquetLake:
    import uuid

    return ParquetLake(root=f"memory://lake-{uuid.uuid4().hex[:8]}")


def test_a_lake_on_a_url_keeps_the_layout_and_round_trips(remote_lake):
    from tvq_resources.lake import is_remote

    path = remote_lake.write(["returns"], KEY, returns_frame())
    assert is_remote(path) and str(path).endswith("/returns/crypto/2026-11-20.parquet")
    pd.testing.assert_frame_equal(
        remote_lake.read(["returns"], KEY), returns_frame(), check_freq=False
    )
    folder = remote_lake.write(["returns"], KEY, bundle(seed=1))  # table -> bundle
    assert not path.exists() and (folder / MANIFEST).exists()
    back = remote_lake.read(["returns"], KEY)
    pd.testing.assert_frame_equal(back["excluded"], bars_frame())


def test_a_remote_bundle_whose_manifest_fails_keeps_the_previous_bundle(remote_lake, monkeypatch):
    folder = remote_lake.write(["returns"], KEY, bundle(seed=1))
    before = sorted(p.name for p in folder.iterdir())
    fs = folder.fs
    original = fs.pipe_file

    def manifest_fails(path, data, **options):
        if path.endswith(MANIFEST):
            raise OSError("connection reset")
        return original(path, data, **options)

    monkeypatch.setattr(fs, "pipe_file", manifest_fails)
    with pytest.raises(OSError, match="connection reset"):
        remote_lake.write(["returns"], KEY, bundle(seed=2))
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == before
    pd.testing.assert_frame_equal(
        remote_lake.read(["returns"], KEY)["returns"], returns_frame(seed=1), check_freq=False
    )


def test_verify_clean_and_quarantine_on_a_url(remote_lake):
    from tvq_resources.lake import write_file

    good = remote_lake.write(["returns"], KEY, bundle())
    damaged = remote_lake.write(["bars"], "crypto", bars_frame())
    damaged.write_bytes(damaged.read_bytes()[:50])
    write_file(b"orphan", good / "returns-0123456789ab.parquet")
    assert [(p.kind, p.asset) for p in remote_lake.verify()] == [
        ("damaged", "bars"),
        ("leftover", "returns"),
    ]
    assert [p.path.name for p in remote_lake.clean()] == ["returns-0123456789ab.parquet"]
    target = remote_lake.quarantine(["bars"], "crypto")
    assert ".corrupt/bars/crypto." in str(target) and remote_lake.verify() == []


def test_a_value_read_again_is_decoded_once_and_every_reader_gets_its_own_copy(tmp_path):
    from tvq_assets.quant.returns import ReturnsWindow
    from tvq_resources.lake import RecentReads

    reads = RecentReads()
    dates = pd.DatetimeIndex(["2026-01-01", "2026-01-02"], name="date")
    frame = pd.DataFrame({"AAA": [0.01, -0.02]}, index=dates)
    window = ReturnsWindow(
        returns=frame,
        dollar_volume=frame * 1e6,
        excluded=pd.DataFrame({"symbol": ["BBB"], "rule": ["min_history"]}),
        history=frame,
        history_dollar_volume=frame * 1e6,
        defects=pd.DataFrame({"symbol": ["BBB"], "date": [dates[1]]}),
    )
    lake = ParquetLake(root=str(tmp_path))
    folder = lake.write(["returns"], KEY, window)
    from tvq_resources.lake import read_bundle

    def decode():
        return read_bundle(folder)

    first = reads.read(folder / MANIFEST, decode)
    first.returns.iloc[0, 0] = 99.0  # a reader changing its copy in place
    second = reads.read(folder / MANIFEST, decode)
    assert reads.decoded == 1 and type(second) is ReturnsWindow
    assert second.returns.iloc[0, 0] == 0.01 and second.returns is not first.returns
    # A write replaces the manifest: the next read decodes the new value.
    lake.write(["returns"], KEY, dataclasses.replace(window, returns=frame * 2))
    third = reads.read(folder / MANIFEST, decode)
    assert reads.decoded == 2 and third.returns.iloc[0, 0] == 0.02
    # A value over the budget is handed out as decoded and never held.
    small = RecentReads(budget=8)
    small.read(folder / MANIFEST, decode)
    small.read(folder / MANIFEST, decode)
    assert small.decoded == 2


def test_the_lake_reads_a_stored_table_once_until_it_is_written_again(lake):
    from tvq_resources.lake import RECENT_READS

    lake.write(["features"], KEY, features_frame())
    before = RECENT_READS.decoded
    first, second = lake.read(["features"], KEY), lake.read(["features"], KEY)
    assert RECENT_READS.decoded == before + 1
    pd.testing.assert_frame_equal(first, second)
    lake.write(["features"], KEY, features_frame().assign(history=[1, 2]))
    assert list(lake.read(["features"], KEY)["history"]) == [1, 2]
    assert RECENT_READS.decoded == before + 2
