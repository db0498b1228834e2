"""The ``ray`` resource: serial and Ray fan-out of the tournament give identical results, tasks run
on the cluster the test started, and no Ray process outlives the run that started it."""

import functools
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cloudpickle
import dagster as dg
import pandas as pd
import psutil
import pytest

from tests.conftest import AS_OF, metadata, resources_for, synthetic_source
from tests.quant.test_policy import SHORT, window
from tests.real.folders import DEMO, assert_same_load
from tvq_assets import allocation, data
from tvq_assets.definitions import build_resources, ray_resource
from tvq_assets.quant import policy
from tvq_assets.quant.optimise import PROFILES
from tvq_resources import files, ray_fanout
from tvq_resources.ray_fanout import FanoutError, LocalHead, RayFanout, RayMap, SerialMap

ROOT = Path(__file__).resolve().parents[2]
KEY = f"{AS_OF}|crypto"


@pytest.fixture(scope="module")
def small():
    return window(symbols=40, settings=SHORT)


def assert_same_outcome(left: policy.TournamentOutcome, right: policy.TournamentOutcome) -> None:
    pd.testing.assert_frame_equal(left.result.returns, right.result.returns, check_exact=True)
    pd.testing.assert_frame_equal(left.result.turnover, right.result.turnover, check_exact=True)
    pd.testing.assert_frame_equal(left.metrics, right.metrics, check_exact=True)
    assert left.verdict == right.verdict
    pd.testing.assert_series_equal(left.champion_weights, right.champion_weights, check_exact=True)
    for name, by_window in left.result.targets.items():
        for index, weights in by_window.items():
            pd.testing.assert_series_equal(
                weights, right.result.targets[name][index], check_exact=True
            )


def alive(pids: list[int]) -> list[int]:
    return [
        pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]


def wait_gone(pids: list[int], timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive(pids)


# --------------------------------------------------------------------------------------------
# Fast: no Ray process
# --------------------------------------------------------------------------------------------
def test_the_local_default_is_serial_and_production_connects_to_RAY_ADDRESS():
    local = build_resources()["ray"]
    assert isinstance(local, RayFanout) and local.mode == "serial"
    chosen = ray_fanout.task_map(local)
    assert isinstance(chosen, SerialMap)
    assert chosen(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]
    assert (chosen.calls, chosen.tasks) == (1, 3)

    production = ray_resource(production=True)
    assert production.mode == "ray"
    assert isinstance(production.address, dg.EnvVar) and production.address == "RAY_ADDRESS"


def test_ray_mode_refuses_to_map_before_it_is_connected():
    with pytest.raises(FanoutError, match="not connected"):
        RayFanout(address="127.0.0.1:1").task_map()


def test_the_walk_forwards_tasks_pickle_for_another_process_and_decide_the_same(small):
    # What the tournament sends to a Ray worker: each phase's module-level function and items.
    rows = policy.decision_rows(len(small.history), SHORT)
    spans = [(0, rows), (20, rows + 20)]
    alpha = functools.partial(
        policy.window_alpha,
        history=small.history,
        dollar_volume=small.history_dollar_volume,
        defects=small.defects,
        settings=SHORT,
        scorers=policy.SCORERS,
    )
    alpha_clone = cloudpickle.loads(cloudpickle.dumps(alpha))
    frames = [alpha(span) for span in spans]
    for span, frame in zip(spans, frames, strict=True):
        pd.testing.assert_frame_equal(alpha_clone(span), frame, check_exact=True)
    steps = tuple(
        (k, span, frame) for k, (span, frame) in enumerate(zip(spans, frames, strict=True))
    )
    walk = functools.partial(policy.walk_chain, history=small.history, settings=SHORT)
    walk_clone = cloudpickle.loads(cloudpickle.dumps(walk))
    for name in policy.candidates_of(policy.SCORERS, PROFILES):
        chain = policy.Chain(
            policy=name,
            previous=None,
            steps=steps,
        )
        sent = cloudpickle.loads(cloudpickle.dumps(chain))
        for mine, theirs in zip(walk(chain), walk_clone(sent), strict=True):
            pd.testing.assert_series_equal(theirs, mine, check_exact=True)


# --------------------------------------------------------------------------------------------
# Slow: a real Ray head on 127.0.0.1, started by the test and stopped by process id
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def head():
    # Under /tmp (the default): Ray's socket paths inside a pytest tmp_path exceed AF_UNIX's limit.
    # The dashboard (on 127.0.0.1, a free port) serves Ray's state API.
    started = LocalHead.start(num_cpus=2, timeout=900, dashboard=True)
    supervisor = started.process.pid
    everything = [supervisor, *started.pids]
    yield started
    started.stop()
    assert wait_gone(everything) == []


@pytest.fixture
def connected(head):
    # One driver connection per test: a resource's own ray.init (the asset, a local head) needs
    # this process disconnected.
    with ray_fanout.connected(RayFanout(address=head.address)) as resource:
        yield resource


@pytest.mark.slow
def test_the_tournament_runs_on_the_cluster_and_equals_the_serial_path(small, connected, head):
    import ray
    from ray.util.state import list_tasks

    fanout = connected.task_map()
    assert isinstance(fanout, RayMap)
    on_ray = policy.tournament(small, SHORT, incumbent=None, map_tasks=fanout)
    serial = policy.tournament(small, SHORT, incumbent=None)
    assert_same_outcome(on_ray, serial)

    # Two coarse calls: every window's alpha (and today's), then one chain per scored policy.
    windows = policy.walk_forward_count(small.history.index, SHORT)
    assert on_ray.reuse.alphas_computed == serial.reuse.alphas_computed >= windows
    assert fanout.calls == 2
    assert fanout.tasks == on_ray.reuse.alphas_computed + len(policy.SCORERS) * len(PROFILES)
    ours = set(fanout.task_names)

    def finished() -> list:
        return [
            task
            for task in list_tasks(
                address=head.address, limit=10_000, raise_on_missing_output=False
            )
            if task.name in ours and task.state == "FINISHED"
        ]

    # Workers report task events to the head in batches (every second, later on a busy machine):
    # the state API shows a finished task some time after `ray.get` returned its result.
    deadline = time.monotonic() + 60
    ran = finished()
    while len({task.name for task in ran}) < fanout.tasks and time.monotonic() < deadline:
        time.sleep(0.5)
        ran = finished()
    assert len({task.name for task in ran}) == fanout.tasks
    node = ray.get_runtime_context().get_node_id()
    assert {task.node_id for task in ran} == {node}


@pytest.mark.slow
def test_a_real_folders_files_are_parsed_on_the_cluster_as_read_in_process(connected, monkeypatch):
    folder = DEMO  # 37 files, shipped in the repository: 5 tasks of 8
    monkeypatch.setattr(files, "FILES_PER_TASK", 8)
    fanout = connected.task_map()
    on_ray = files.read_csv_directory(folder.root, pattern=folder.pattern, map_tasks=fanout)
    serial = files.read_csv_directory(folder.root, pattern=folder.pattern)
    assert (fanout.calls, fanout.tasks) == (1, 5)
    assert_same_load(on_ray, serial)


@pytest.mark.slow
def test_a_failing_task_is_named_and_an_unpicklable_function_is_refused(connected):
    fanout = connected.task_map()

    def fragile(item: int) -> int:
        if item == 3:
            raise ValueError(f"item {item} is bad")
        return item

    with pytest.raises(FanoutError, match=r"task 4/5 .*on item 3 failed: ValueError: item 3") as e:
        fanout(fragile, [0, 1, 2, 3, 4])
    assert isinstance(e.value.__cause__, ValueError)

    lock = threading.Lock()

    def locked(item: int) -> int:
        with lock:
            return item

    with pytest.raises(FanoutError, match="not picklable"):
        fanout(locked, [1, 2])


@pytest.mark.slow
def test_the_backtest_asset_fans_out_on_the_cluster_and_records_how(
    instance, lake_root, sleeve_policy, head
):
    sleeve_policy("crypto", policy={"test": 40, "step": 40})
    resources = resources_for(lake_root, crypto=synthetic_source(symbols=30))
    assert dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    ).success
    stored = {}
    for mode, ray in (("serial", RayFanout()), ("ray", RayFanout(address=head.address))):
        # Each mode computes every window: the lake's window cache would serve the second run.
        shutil.rmtree(Path(lake_root) / "cache", ignore_errors=True)
        result = dg.materialize(
            [data.bars, data.returns, allocation.backtest],
            partition_key=KEY,
            selection=[data.returns.key, allocation.backtest.key],
            resources={**resources, "ray": ray},
            instance=instance,
        )
        shown = metadata(result, "backtest")
        assert shown["tournament_mode"] == mode
        assert shown["tournament_tasks"] > 0 and shown["tournament_seconds"] > 0
        assert shown["tournament_address"] == (head.address if mode == "ray" else "in-process")
        stored[mode] = allocation_record(lake_root)
    for field in ("returns", "turnover", "metrics", "verdict", "champion_weights", "targets"):
        pd.testing.assert_frame_equal(
            getattr(stored["ray"], field), getattr(stored["serial"], field), check_exact=True
        )


def allocation_record(lake_root: str) -> policy.TournamentRecord:
    from tvq_resources.lake import ParquetLake

    return ParquetLake(root=lake_root).read(["backtest"], KEY)


# --------------------------------------------------------------------------------------------
# Slow: zombie purge — a run with a private local head, ended four ways
# --------------------------------------------------------------------------------------------
RUN = textwrap.dedent(
    """
    import json, sys, time
    import dagster as dg
    from dagster_ray import RayResource
    from tvq_resources import files, ray_fanout

    ending, report = sys.argv[1], sys.argv[2]

    def work(item):
        if ending == "fail" and item == 1:
            raise ValueError("planted failure")
        if ending in ("cancel", "kill"):
            time.sleep(600)
        return item

    @dg.asset
    def fan(ray: RayResource):
        head = ray.head
        with open(report, "w") as out:
            json.dump({"supervisor": head.process.pid, "pids": head.pids}, out)
        return ray_fanout.task_map(ray)(work, [0, 1, 2])

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [fan],
            resources={"ray": ray_fanout.RayFanout(local=True, num_cpus=1)},
            instance=instance,
            raise_on_error=False,
        )
        print("RUN", result.run_id, instance.get_run_by_id(result.run_id).status.value, flush=True)
    """
)


def start_run(ending: str, tmp_path: Path) -> tuple[subprocess.Popen, dict, list[int]]:
    """A Dagster run whose ``ray`` resource starts a private head; returns once the asset runs,
    with the pids the run reports and every descendant of the run's process seen by the test."""
    report = tmp_path / "pids.json"
    script = tmp_path / "run.py"
    script.write_text(RUN)
    process = subprocess.Popen(
        [sys.executable, str(script), ending, str(report)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 900
    while not report.exists() or not report.read_text():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "the run never reached its asset"
        time.sleep(0.5)
    time.sleep(1.0)  # the JSON is complete once written and closed
    reported = json.loads(report.read_text())
    seen = {reported["supervisor"], *reported["pids"]}
    supervisor = psutil.Process(reported["supervisor"])
    seen |= {child.pid for child in supervisor.children(recursive=True)}
    seen |= {child.pid for child in psutil.Process(process.pid).children(recursive=True)}
    assert set(reported["pids"]) <= seen and len(reported["pids"]) >= 3  # gcs, raylet, agents
    return process, reported, sorted(seen)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ending", "status"),
    [("success", "SUCCESS"), ("fail", "FAILURE"), ("cancel", None), ("kill", None)],
)
def test_no_ray_process_outlives_its_run(ending, status, tmp_path):
    process, reported, seen = start_run(ending, tmp_path)
    if ending == "cancel":
        process.send_signal(signal.SIGINT)  # what terminating a run does to its process
    elif ending == "kill":
        process.send_signal(signal.SIGKILL)
    try:
        output, _ = process.communicate(timeout=300 if ending != "cancel" else 60)
    except subprocess.TimeoutExpired:
        # A run interrupted while it waits on long Ray tasks may not exit on SIGINT (seen on
        # every CI run: the 600 s tasks hold it). It is then killed, as the run monitor would;
        # its Ray processes must still go.
        assert ending == "cancel", f"the {ending} run did not end within 5 minutes"
        process.kill()
        output, _ = process.communicate(timeout=60)
    if status is not None:
        assert f" {status}" in output, output
    assert wait_gone(seen) == [], (ending, reported, output[-2000:])
    assert process.returncode is not None


@pytest.mark.slow
def test_a_stale_cluster_file_never_makes_a_run_hang(tmp_path, monkeypatch):
    # Ray discovers clusters through $RAY_TMPDIR/ray/ray_current_cluster: point it at a dead one.
    stale = tmp_path / "ray"
    stale.mkdir()
    (stale / "ray_current_cluster").write_text("127.0.0.1:1\n")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    begun = time.monotonic()
    with ray_fanout.connected(RayFanout(local=True, num_cpus=1)) as resource:
        assert resource.task_map()(abs, [-1, -2]) == [1, 2]
        pids = [resource.head.process.pid, *resource.head.pids]
    assert wait_gone(pids) == []
    assert time.monotonic() - begun < 600
