"""The lake on S3: moto's S3 server on 127.0.0.1 stands for the object store.

Credentials and endpoint reach s3fs only through the standard AWS environment
(``AWS_ENDPOINT_URL`` …), as they would for a user who sets ``TVQ_LAKE=s3://bucket/prefix``.
"""

import json
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import s3fs

from tests.conftest import AS_OF, resources_for, stop, synthetic_source
from tests.tracking.conftest import free_port
from tvq_resources.lake import (
    MANIFEST,
    LakeBusy,
    LakeReadError,
    ParquetLake,
    exclusive,
    lake_path,
    read_table,
    write_file,
    write_table,
)

# Starting the server and importing the definitions take several seconds on a loaded machine.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEY = f"{AS_OF}|crypto"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free port, and the AWS environment pointing at it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start: {log.read_text()}") from None
                time.sleep(0.2)
        with pytest.MonkeyPatch.context() as environment:
            for name, value in {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }.items():
                environment.setenv(name, value)
            environment.delenv("AWS_PROFILE", raising=False)
            s3fs.S3FileSystem.clear_instance_cache()  # a client made before saw no endpoint
            yield endpoint
    finally:
        stop(process)
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def root(s3_server) -> str:
    """A fresh bucket per test: ``s3://{bucket}/lake``."""
    bucket = f"tvq-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}/lake"


@pytest.fixture
def lake(root) -> ParquetLake:
    return ParquetLake(root=root, lock_timeout=60.0)


def returns_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        rng.normal(0.0, 0.02, (20, 3)),
        index=pd.date_range("2026-06-01", periods=20, name="date"),
        columns=pd.Index(["AAA", "BBB", "CCC"], name="symbol"),
    )


def bundle(seed: int = 0) -> dict[str, pd.DataFrame]:
    frame = returns_frame(seed)
    return {"returns": frame, "dollar_volume": frame.abs() * 1e6}


def objects(root: str) -> list[str]:
    """Every object key under the lake root, as the store lists them (no cache)."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    top = root.removeprefix("s3://")
    return sorted(key[len(top) + 1 :] for key in fs.find(top))


def test_values_round_trip_under_the_same_keys_as_on_disk(lake, root):
    path = lake.write(["returns"], KEY, returns_frame())
    assert str(path) == f"{root}/returns/crypto/{AS_OF}.parquet"
    pd.testing.assert_frame_equal(lake.read(["returns"], KEY), returns_frame(), check_freq=False)
    folder = lake.write(["selection"], KEY, bundle())
    assert str(folder) == f"{root}/selection/crypto/{AS_OF}"
    back = lake.read(["selection"], KEY)
    for name, frame in bundle().items():
        pd.testing.assert_frame_equal(back[name], frame, check_freq=False)
    assert lake.exists(["returns"], KEY) and not lake.exists(["returns"], f"{AS_OF}|tradfi")
    # A value changes kind (bundle -> table): the old bundle's objects go.
    lake.write(["selection"], KEY, returns_frame(seed=3))
    assert [k for k in objects(root) if k.startswith("selection/")] == [
        f"selection/crypto/{AS_OF}.parquet"
    ]
    # No lock object outlives its write.
    assert not [k for k in objects(root) if k.endswith(".lock")]


def test_the_root_comes_from_tvq_lake_as_a_url(root, monkeypatch):
    monkeypatch.setenv("TVQ_LAKE", root)
    from tvq_assets.definitions import build_resources

    lake = build_resources()["lake"]
    assert isinstance(lake.root, dg.EnvVar) and lake.root.env_var_name == "TVQ_LAKE"
    assert str(lake.root_path) == root
    lake.write(["bars"], "crypto", returns_frame())
    assert "bars/crypto.parquet" in objects(root)


def test_a_bundle_whose_manifest_put_fails_leaves_the_previous_bundle_and_no_orphans(
    lake, root, monkeypatch
):
    lake.write(["returns"], KEY, bundle(seed=1))
    before = objects(root)
    fs = lake.root_path.fs
    original = fs.pipe_file

    def manifest_put_fails(path, data, **options):
        if path.endswith(MANIFEST):
            raise OSError("connection reset while sending the manifest")
        return original(path, data, **options)

    monkeypatch.setattr(fs, "pipe_file", manifest_put_fails)
    with pytest.raises(OSError, match="connection reset"):
        lake.write(["returns"], KEY, bundle(seed=2))
    monkeypatch.undo()
    back = lake.read(["returns"], KEY)
    for name, frame in bundle(seed=1).items():
        pd.testing.assert_frame_equal(back[name], frame, check_freq=False)
    assert objects(root) == before  # the new tables were taken back


def test_a_table_that_fails_to_serialise_leaves_the_previous_value(lake, root):
    lake.write(["features"], KEY, returns_frame(seed=1))
    broken = returns_frame().assign(note=[1, "one", *[None] * 18])
    with pytest.raises(Exception, match=r"note|Conversion|convert"):
        lake.write(["features"], KEY, broken)
    pd.testing.assert_frame_equal(
        lake.read(["features"], KEY), returns_frame(seed=1), check_freq=False
    )


def test_a_second_writer_waits_for_the_lock_object_then_sees_the_first_ones_rows(lake, root):
    lake.write(["bars"], "crypto", returns_frame().iloc[:1])
    first_holds, release, second_in = threading.Event(), threading.Event(), threading.Event()
    order = []

    def first():
        with lake.writer(["bars"], "crypto"):
            stored = lake.read(["bars"], "crypto")
            first_holds.set()
            release.wait(60)  # a slow source: the second writer arrives meanwhile
            lake.write(["bars"], "crypto", pd.concat([stored, returns_frame().iloc[1:2]]))
            order.append("first")

    def second():
        first_holds.wait()
        with lake.writer(["bars"], "crypto"):
            second_in.set()
            stored = lake.read(["bars"], "crypto")
            lake.write(["bars"], "crypto", pd.concat([stored, returns_frame().iloc[2:3]]))
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    try:
        first_holds.wait(60)
        time.sleep(2.0)
        assert not second_in.is_set(), "the second writer got in while the first held the lock"
        assert "bars/.crypto.lock" in objects(root)  # the lock is an object while held
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert order == ["first", "second"]
    pd.testing.assert_frame_equal(
        lake.read(["bars"], "crypto"), returns_frame().iloc[:3], check_freq=False
    )
    assert "bars/.crypto.lock" not in objects(root)


def test_a_writer_gives_up_naming_the_holder_and_breaks_only_an_expired_lease(root):
    lake = ParquetLake(root=root, lock_timeout=1.0)
    lock = lake_path(f"{root}/bars/.crypto.lock")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    held = {"holder": "worker-7 pid 4242", "expires": time.time() + 600}
    fs.pipe_file(lock.path, json.dumps(held).encode())
    with pytest.raises(LakeBusy, match=r"bars\[crypto\]: another writer \(worker-7 pid 4242\)"):
        lake.write(["bars"], "crypto", returns_frame())
    assert not lake.exists(["bars"], "crypto")
    # The holder died an hour ago: its lease has run out, the next writer breaks it.
    fs.pipe_file(lock.path, json.dumps({**held, "expires": time.time() - 1}).encode())
    lake.write(["bars"], "crypto", returns_frame())
    assert lake.exists(["bars"], "crypto") and not fs.exists(lock.path)


def test_a_holder_whose_lease_was_broken_does_not_delete_the_new_holders_lock(root):
    lock = lake_path(f"{root}/bars/.crypto.lock")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    taken = []

    def take():  # another writer, which keeps the lock after the thread ends
        holding = exclusive(lock, what="bars[crypto]", timeout=5)
        holding.__enter__()
        taken.append(holding)

    with exclusive(lock, what="bars[crypto]", timeout=1, lease=0.5):
        time.sleep(0.8)  # our lease runs out; another writer breaks it and takes the lock
        other = threading.Thread(target=take)
        other.start()
        other.join()
        theirs = fs.cat_file(lock.path)
    assert taken and fs.cat_file(lock.path) == theirs  # our release left their lock alone
    taken[0].__exit__(None, None, None)
    assert not fs.exists(lock.path)


def test_verify_clean_and_quarantine_work_on_the_store(lake, root):
    good = lake.write(["returns"], KEY, bundle())
    damaged = lake.write(["bars"], "crypto", returns_frame())
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe_file(damaged.path, fs.cat_file(damaged.path)[:100])  # a truncated object
    orphan = good / "returns-0123456789ab.parquet"
    write_file(b"orphan table of a killed write", orphan)
    problems = lake.verify()
    assert [(p.kind, p.asset, p.partition) for p in problems] == [
        ("damaged", "bars", "crypto"),
        ("leftover", "returns", KEY),
    ]
    with pytest.raises(LakeReadError, match=r"bars\[crypto\]: cannot read s3://"):
        lake.read(["bars"], "crypto")
    assert [p.path.name for p in lake.clean()] == [orphan.name]
    assert [p.kind for p in lake.verify()] == ["damaged"]
    target = lake.quarantine(["bars"], "crypto")
    assert str(target).startswith(f"{root}/.corrupt/bars/crypto.")
    assert not lake.exists(["bars"], "crypto") and lake.verify() == []
    assert set(lake.read(["returns"], KEY)) == set(bundle())


def test_the_public_helpers_take_a_upath(root):
    path = lake_path(f"{root}/bars/store/part-0001.parquet")
    write_table(returns_frame(), path)
    pd.testing.assert_frame_equal(
        read_table(path, what="bars[crypto]"), returns_frame(), check_freq=False
    )
    assert path.exists() and [p.name for p in path.parent.glob("*.parquet")] == [path.name]


def test_the_graph_materialises_a_partition_into_the_s3_lake(root, instance):
    """Bars, then every asset of one sleeve × run partition, with the lake on S3."""
    from tvq_assets.definitions import SLEEVE_ASSETS

    resources = resources_for(root, crypto=synthetic_source())
    bars = dg.materialize(
        SLEEVE_ASSETS,
        selection=["bars"],
        partition_key="crypto",
        resources=resources,
        instance=instance,
    )
    assert bars.success
    result = dg.materialize(
        SLEEVE_ASSETS,
        selection=[a.key for a in SLEEVE_ASSETS if a.key.path != ["bars"]],
        partition_key=KEY,
        resources=resources,
        instance=instance,
    )
    assert result.success
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.severity == dg.AssetCheckSeverity.ERROR:
            assert evaluation.passed, (evaluation.check_name, evaluation.description)
    stored = objects(root)
    assert f"backtest/crypto/{AS_OF}.png" in stored
    assert f"returns/crypto/{AS_OF}/{MANIFEST}" in stored
    lake = resources["lake"]
    window = lake.read(["returns"], KEY)
    assert window.returns.shape[1] > 0 and str(window.returns.index.max().date()) <= AS_OF
    assert lake.read(["backtest"], KEY).metrics.shape[0] > 0
    assert lake.verify() == []
    [event] = result.asset_materializations_for_node("returns")
    assert event.metadata["path"].value == f"{root}/returns/crypto/{AS_OF}"
