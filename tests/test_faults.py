"""The fault suite: each way the platform was seen to lose data, hang or fail unclearly, replayed.

Every test reproduces one fault an operator can cause (two refreshes at once, a killed run, a
broken catalog, a damaged or half-written lake file) and asserts the preserved data or the clear
error. Tests that start processes or a daemon are marked slow.
"""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import resources_for, start_daemon, stop
from tvq_assets import data
from tvq_resources import synthetic
from tvq_resources.lake import MANIFEST, ParquetLake
from tvq_resources.market_data import SourceConfig

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"


# 1. Lost update of the bar lake.


def _csv_sources(tmp_path: Path, groups: int, symbols: int) -> list[Path]:
    """Disjoint CSV directories of real-looking daily bars, ``symbols`` files each."""
    market = synthetic.generate_market(
        seed=3,
        n_symbols=groups * symbols,
        n_clusters=4,
        start="2024-01-01",
        end="2026-06-30",
        calendar="crypto",
    )
    names = sorted(market["symbol"].unique())
    folders = []
    for group in range(groups):
        folder = tmp_path / f"source{group}"
        folder.mkdir()
        for name in names[group * symbols : (group + 1) * symbols]:
            bars = market[market["symbol"] == name].drop(columns="symbol")
            bars.assign(date=bars["date"].dt.strftime("%Y-%m-%d")).to_csv(
                folder / f"{name}.csv", index=False
            )
        folders.append(folder)
    return folders


@pytest.mark.slow
def test_two_concurrent_refreshes_of_one_sleeve_keep_every_row(tmp_path, lake_root):
    folders = _csv_sources(tmp_path, groups=2, symbols=8)
    start = threading.Barrier(2)
    results = {}

    def refresh(folder: Path) -> None:
        source = SourceConfig(kind="csv", path=str(folder), calendar="crypto")
        with dg.DagsterInstance.ephemeral() as instance:
            start.wait()
            results[folder.name] = dg.materialize(
                [data.bars],
                partition_key="crypto",
                resources=resources_for(lake_root, crypto=source),
                instance=instance,
                raise_on_error=False,
            )

    threads = [threading.Thread(target=refresh, args=(f,)) for f in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.success for r in results.values())
    added = sum(
        r.asset_materializations_for_node("bars")[0].metadata["rows_added"].value
        for r in results.values()
    )
    stored = ParquetLake(root=lake_root).read(["bars"], "crypto").bars
    assert stored["symbol"].nunique() == 16
    assert len(stored) == added  # every row a run reported adding is in the lake


# 3. Killed runs stay STARTED forever; 1. the per-sleeve queue limit never applied to refresh_bars.

SMALL_CATALOG = """
first_run: "2026-06-01"
sleeves:
  crypto:
    source:
      {kind: synthetic, seed: 7, symbols: 12, clusters: 3, start: "2025-06-01", end: "2026-06-30"}
"""


def _wait(instance, run_id: str, done, *, seconds: float = 240) -> dg.DagsterRun:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if done(run):
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} is still {run.status} after {seconds} s")


@pytest.mark.slow
def test_killed_runs_are_marked_failed_free_the_sleeves_slot_and_are_retried(tmp_path, monkeypatch):
    from tvq_resources.run_launcher import run_worker_pid

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    catalog = tmp_path / "sleeves.yaml"
    catalog.write_text(SMALL_CATALOG)
    lake = tmp_path / "lake"
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TVQ_SLEEVES": str(catalog),
        "TVQ_LAKE": str(lake),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    tags = ["--tags", '{"dagster/partition": "crypto"}']
    dagster = [str(BIN / "dagster"), "job"]
    # The test holds the sleeve's lake lock, so a started refresh waits inside its bars step:
    # a run that stays STARTED for as long as the test needs.
    held = ParquetLake(root=str(lake)).writer(["bars"], "crypto")
    held.__enter__()
    daemon = None
    try:
        with dg.DagsterInstance.get() as instance:
            # A run executed by a CLI process (as `tvq production` does), killed: no code server
            # watches it, so only run monitoring can tell it is dead.
            cli_run = subprocess.Popen(
                [*dagster, "execute", "-m", "tvq_assets.definitions", "-j", "refresh_bars", *tags],
                env=environment,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            orphan = _wait_for_runs(instance, 1)[0].run_id
            _wait(instance, orphan, lambda r: r.status == dg.DagsterRunStatus.STARTED)
            assert run_worker_pid(instance, orphan) == cli_run.pid
            cli_run.kill()
            cli_run.wait()
            # Two refreshes of the sleeve through the queue, as the UI or the schedule submit them.
            launch = [*dagster, "launch", "-w", "workspace.yaml", "-j", "refresh_bars", *tags]
            for _ in range(2):
                subprocess.run(launch, env=environment, cwd=ROOT, check=True)
            second, first = (r.run_id for r in instance.get_runs()[:2])  # newest first
            daemon = start_daemon(environment)
            failed = _wait(instance, orphan, lambda r: r.is_finished)
            assert failed.status == dg.DagsterRunStatus.FAILURE
            [failure] = instance.all_logs(orphan, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert f"the run worker (pid {cli_run.pid}) is gone" in failure.dagster_event.message
            # The dead run held the sleeve's slot; now the first queued refresh starts, the
            # second waits behind it (one run per sleeve).
            started = _wait(instance, first, lambda r: r.status == dg.DagsterRunStatus.STARTED)
            assert started.tags["dagster/partition"] == "crypto"
            time.sleep(10)  # several dequeue passes
            assert instance.get_run_by_id(second).status == dg.DagsterRunStatus.QUEUED
            os.kill(run_worker_pid(instance, first), 9)  # a launched run's worker, killed
            assert _wait(instance, first, lambda r: r.is_finished).status == (
                dg.DagsterRunStatus.FAILURE
            )
            _wait(instance, second, lambda r: r.status == dg.DagsterRunStatus.STARTED)
            held.__exit__(None, None, None)
            assert _wait(instance, second, lambda r: r.is_finished).is_success
            retry = _wait_for_retry(instance, first)
            assert _wait(instance, retry.run_id, lambda r: r.is_finished).is_success
    finally:
        held.__exit__(None, None, None)
        if daemon is not None:
            stop(daemon)
    assert ParquetLake(root=str(lake)).read(["bars"], "crypto").bars["symbol"].nunique() == 12


def _wait_for_runs(instance, count: int, seconds: float = 120) -> list[dg.DagsterRun]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = instance.get_runs()
        if len(runs) >= count:
            return runs
        time.sleep(0.5)
    raise AssertionError(f"fewer than {count} runs after {seconds} s")


def _wait_for_retry(instance, run_id: str, seconds: float = 120) -> dg.DagsterRun:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        retries = [r for r in instance.get_runs() if r.tags.get("dagster/parent_run_id") == run_id]
        if retries:
            return retries[0]
        time.sleep(1)
    raise AssertionError(f"no retry of {run_id} within {seconds} s")


# 6. A corrupt lake file: named, set aside, recomputed; `tvq demo` never shows stale values.


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def cli_home(tmp_path, monkeypatch) -> Path:
    """A throwaway DAGSTER_HOME (the committed dagster.yaml) and lake for in-process CLI calls."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("TVQ_LAKE", str(tmp_path / "lake"))
    return tmp_path / "lake"


def test_lake_verify_names_a_truncated_file_and_quarantine_sets_it_aside(cli_home, capsys):
    from tvq_assets import cli

    lake = ParquetLake(root=str(cli_home))
    path = lake.write(["bars"], "tradfi", _bars())
    lake.write(["bars"], "crypto", _bars())
    _truncate(path)
    damaged_size = path.stat().st_size
    (path.parent / ".crypto.parquet.killed.tmp").write_bytes(b"PAR1" * 1000)
    assert cli.main(["lake", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"damaged  bars[tradfi]: {path}" in out and "tvq lake quarantine bars tradfi" in out
    assert "leftover bars[crypto]" in out and "1 leftover(s)" in out
    assert cli.main(["lake", "clean"]) == 0
    assert "removed 1 leftover(s)" in capsys.readouterr().out
    assert cli.main(["lake", "quarantine", "bars", "tradfi", "--no-recompute"]) == 0
    assert "moved to" in capsys.readouterr().out
    assert cli.main(["lake", "verify"]) == 0
    [kept] = (cli_home / ".corrupt" / "bars").glob("tradfi.*/tradfi.parquet")
    assert kept.stat().st_size == damaged_size  # kept as it was, not deleted


def _bars() -> pd.DataFrame:
    return pd.DataFrame(
        {"symbol": ["AAA"] * 3, "date": pd.date_range("2026-06-01", periods=3), "close": 1.0}
    )


@pytest.mark.slow
def test_a_corrupt_bar_lake_is_named_recomputed_by_one_command_and_never_shown_as_today(
    cli_home, capsys
):
    from tvq_assets import cli

    demo = ["demo", "--sleeve", "tradfi", "--as-of", "2026-06-30"]
    assert cli.main(demo) == 0
    assert "today's portfolio" in capsys.readouterr().out
    # The bar lake is a bundle (BarHistory): damage its main table.
    folder = cli_home / "bars" / "tradfi"
    path = folder / json.loads((folder / MANIFEST).read_text())["tables"]["bars"]
    _truncate(path)
    assert cli.main(demo) == 1
    out = capsys.readouterr().out
    assert "FAILED:  bars: " in out and f"bars[tradfi]: cannot read {path}" in out
    assert "today's portfolio" not in out and "bars: not produced by this run" in out
    assert cli.main(["lake", "quarantine", "bars", "tradfi"]) == 0
    assert "recomputed bars[tradfi]: success" in capsys.readouterr().out
    assert cli.main(["lake", "verify"]) == 0
    assert cli.main(demo) == 0
    assert "today's portfolio" in capsys.readouterr().out


# 9a. `make dev` did not stop on SIGINT/SIGTERM.


def _processes_with(home: Path) -> list[int]:
    """Pids of processes whose environment names this DAGSTER_HOME."""
    found = []
    marker = f"DAGSTER_HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "to_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["term", "ctrl-c"]
)
def test_make_dev_stops_with_everything_it_started(tmp_path, sig, to_group):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    make = subprocess.Popen(
        ["make", "dev", f"DAGSTER_HOME={home}", f"PORT={port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                time.sleep(2)
        else:
            raise AssertionError("make dev did not serve within 4 minutes")
        assert _processes_with(home)
        if to_group:
            os.killpg(make.pid, sig)  # what Ctrl-C in the terminal does
        else:
            make.send_signal(sig)  # `kill PID` of make alone
        make.wait(timeout=90)
        time.sleep(2)
        left = {pid: _command(pid) for pid in _processes_with(home)}
        assert left == {}
    finally:
        for pid in _processes_with(home):
            os.kill(pid, signal.SIGKILL)
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)


# 5. The catalog was not validated when it loaded.

BROKEN_CATALOGS = {
    "cap_not_a_number": (
        "sleeves:\n  crypto:\n    source: {kind: synthetic}\n    policy: {cap: abc}\n",
        "sleeve 'crypto': policy.cap = 'abc': expected a number",
    ),
    "lookback_zero": (
        "sleeves:\n  crypto:\n    source: {kind: synthetic}\n    policy: {lookback: 0}\n",
        "sleeve 'crypto': policy.lookback = 0: breaks the rule value >= 2",
    ),
    "negative_cap": (
        "sleeves:\n  crypto:\n    source: {kind: synthetic}\n    policy: {cap: -0.5}\n",
        "sleeve 'crypto': policy.cap = -0.5: breaks the rule value > 0 and value <= 1",
    ),
    "source_typo": (
        "sleeves:\n  crypto:\n    source: {kind: csv, path: /, patern: '{symbol}.csv'}\n",
        "sleeve 'crypto': unknown source key 'patern' for a csv source (did you mean 'pattern'?)",
    ),
    "bad_first_run": (
        "first_run: 2025-02-30\nsleeves:\n  crypto: {source: {kind: synthetic}}\n",
        "first_run = '2025-02-30': not a date (rule: an ISO date, YYYY-MM-DD)",
    ),
}


@pytest.mark.parametrize("name", BROKEN_CATALOGS)
def test_a_broken_catalog_is_refused_naming_file_sleeve_field_value_and_rule(tmp_path, name):
    from tvq_assets.catalog import CatalogError, load_catalog

    text, message = BROKEN_CATALOGS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as error:
        load_catalog(path)
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.slow
def test_dg_check_defs_fails_on_a_broken_catalog_with_the_reason(tmp_path):
    path = tmp_path / "sleeves.yaml"
    path.write_text(BROKEN_CATALOGS["source_typo"][0])
    checked = subprocess.run(
        [str(BIN / "dg"), "check", "defs"],
        cwd=ROOT,
        env={**os.environ, "TVQ_SLEEVES": str(path)},
        capture_output=True,
        text=True,
    )
    assert checked.returncode != 0
    assert f"{path}: {BROKEN_CATALOGS['source_typo'][1]}" in checked.stdout + checked.stderr


# 7. kill -9 during writes left temporary files and orphan tables that nothing removed.


def _write_forever(root: str) -> None:
    lake = ParquetLake(root=root)
    frame = pd.DataFrame({"x": range(200_000)}, dtype="float64")
    while True:
        lake.write(["backtest"], "2026-06-30|crypto", {"a": frame, "b": frame, "c": frame})


def test_values_survive_kill_9_mid_write_and_clean_removes_every_leftover(tmp_path):
    import multiprocessing
    import random

    root = str(tmp_path)
    lake = ParquetLake(root=root)
    lake.write(["backtest"], "2026-06-30|crypto", {"a": pd.DataFrame({"x": [1.0]})})
    rng = random.Random(7)
    for _ in range(6):
        writer = multiprocessing.get_context("fork").Process(target=_write_forever, args=(root,))
        writer.start()
        time.sleep(rng.uniform(0.3, 1.5))
        writer.kill()
        writer.join()
        assert set(lake.read(["backtest"], "2026-06-30|crypto")) <= {"a", "b", "c"}
    lake.clean()
    assert lake.verify() == []
    folder = tmp_path / "backtest" / "crypto" / "2026-06-30"
    names = json.loads((folder / "manifest.json").read_text())["tables"].values()
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, "manifest.json"])


def test_the_run_worker_health_check_sees_a_killed_process_even_before_it_is_reaped():
    from tvq_resources.run_launcher import process_fate, process_identity

    child = subprocess.Popen(["sleep", "60"])
    known = process_identity(child.pid)
    assert process_fate(child.pid, known, "here") is None
    child.kill()
    time.sleep(0.5)  # dead but not reaped: a zombie still answers kill(pid, 0)
    assert process_fate(child.pid, known, "here").startswith("the process has exited on here")
    child.wait()
    assert process_fate(child.pid, known, "here").startswith("no process has that pid on here")


def test_every_refresh_run_carries_the_tag_the_queue_limits_to_one_per_sleeve(instance):
    import datetime

    import yaml

    from tvq_assets.definitions import defs
    from tvq_assets.jobs import daily_schedule

    job = defs.resolve_job_def("refresh_bars")
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime.datetime(2026, 11, 27, 0, 15)
    )
    scheduled = [
        request.with_resolved_tags_and_config(job, [], instance).tags
        for request in daily_schedule(context)
    ]
    from tvq_assets.partitions import catalog

    assert [tags["dagster/partition"] for tags in scheduled] == list(catalog.sleeves)
    # A refresh from the UI or `tvq demo` is a run of the job for a partition key.
    assert job.partitions_def.get_tags_for_partition_key("crypto") == {
        "dagster/partition": "crypto"
    }
    config = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())
    limits = config["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {
        "key": "dagster/partition",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    } in limits


def test_the_committed_instance_monitors_runs_and_retries_only_crashed_ones(tmp_path, monkeypatch):
    from tvq_resources.run_launcher import MonitoredRunLauncher

    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_launcher, MonitoredRunLauncher)
        assert instance.run_monitoring_enabled
        assert 0 < instance.run_monitoring_start_timeout_seconds <= 600
        assert 0 < instance.run_monitoring_cancel_timeout_seconds <= 600
        assert instance.run_monitoring_max_resume_run_attempts == 0  # cannot resume in place
        assert instance.run_retries_max_retries == 1
        assert not instance.run_retries_retry_on_asset_or_op_failure


def test_the_window_cache_is_surveyed_apart_from_values_and_pruned_by_age(cli_home, capsys):
    from tvq_assets import cli
    from tvq_resources.window_cache import LEFTOVER_SECONDS, WindowCache, lake_window_cache

    lake = ParquetLake(root=str(cli_home))
    lake.write(["bars"], "tradfi", _bars())
    cache = lake_window_cache(lake)
    frame = pd.DataFrame({"window": [1, 2], "weight": [0.25, 0.75]})
    old, new, bad = "a1" + "0" * 38, "b2" + "0" * 38, "c3" + "0" * 38
    forged, foreign = "d4" + "0" * 38, "e5" + "0" * 38
    for key in (old, new, bad, forged):
        cache.put(key, frame)
    _truncate(cache.path(bad))
    # Someone who can write the lake but not read DAGSTER_HOME: an entry altered with its content
    # digest recomputed, and one signed with another secret (another instance's).
    forge_entry(cache.path(forged), weight=[0.75, 0.25])
    WindowCache(cache.root, secret=b"another instance" * 2).put(foreign, frame)
    assert cache.get(forged) is None and cache.get(foreign) is None
    week_ago = time.time() - 7 * 86400
    os.utime(cache.path(old), (week_ago, week_ago))
    killed = cache.path(new).parent / f".{new}.parquet.x.tmp"
    writing = cache.path(new).parent / f".{new}.parquet.y.tmp"
    for leftover in (killed, writing):
        leftover.write_bytes(b"PAR1")
    long_ago = time.time() - 2 * LEFTOVER_SECONDS
    os.utime(killed, (long_ago, long_ago))

    # Cache entries are not asset values: a damaged entry does not fail verify (it is a miss).
    assert cli.main(["lake", "verify"]) == 0
    out = capsys.readouterr().out
    assert "cache[" not in out and "0 damaged value(s); 0 leftover(s)" in out
    assert "5 entries" in out and "3 unreadable, 1 leftover(s)" in out
    assert cli.main(["lake", "prune-cache", "--older-than", "3"]) == 0
    assert "removed 4 entries" in capsys.readouterr().out
    assert [path.stem for path in cache.entries()] == [new]
    assert not killed.exists() and writing.exists()  # a young temporary file may be in use
    assert cache.get(new) is not None
    assert cli.main(["lake", "prune-cache"]) == 0
    assert len(cache) == 0


def forge_entry(path: Path, **columns) -> None:
    """Rewrite a window-cache entry with changed columns and its content digest recomputed (what
    anyone who can write the lake can do), keeping its old HMAC."""
    from tvq_resources.window_cache import CONTENT_KEY, content_digest

    frame = pq.read_table(path).to_pandas()
    for name, values in columns.items():
        frame[name] = values
    table = pa.Table.from_pandas(frame, preserve_index=False)
    metadata = {**pq.read_schema(path).metadata, CONTENT_KEY: content_digest(frame).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), path)


def test_the_instance_secret_is_created_once_under_dagster_home_readable_by_its_owner_only(
    cli_home,
):
    from tvq_resources.window_cache import instance_secret

    home = Path(os.environ["DAGSTER_HOME"])
    secret = instance_secret()
    path = home / "secrets" / "window_cache.key"
    assert path.read_bytes() == secret and len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert instance_secret() == secret  # read, not replaced
    assert not str(cli_home).startswith(str(home))  # the lake is elsewhere (it may be a bucket)


def test_lake_verify_reports_a_value_whose_manifest_names_code_as_damaged(cli_home, capsys):
    from tvq_assets import cli

    lake = ParquetLake(root=str(cli_home))
    folder = lake.write(["backtest"], "2026-06-30|crypto", {"argv": pd.DataFrame({"lake": [1]})})
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "type": "tvq_assets.cli:main"}))
    assert cli.main(["lake", "verify"]) == 1
    out = capsys.readouterr().out
    assert "damaged  backtest[2026-06-30|crypto]" in out
    assert "'tvq_assets.cli:main' is not a registered record type" in out
    assert "1 damaged value(s)" in out
