"""Which Dagster executor runs one production ``daily`` fastest here (``make bench-executors``).

Three executors, each timed on ONE ``daily`` run of the newest run partition of a one-sleeve
synthetic catalog (``crypto``, seed 7, ``--symbols`` symbols, bars ending D = 2026-11-27 as in
``benchmarks.bench``; the run partition is D|crypto):

- ``inprocess``: the project's default (``tvq_assets.definitions.executor()``), every step in the
  run's process;
- ``multiprocess``: a process per step, at most 2 at a time, forked from a forkserver that has
  imported ``tvq_assets.definitions`` once;
- ``ray``: dagster-ray's ``ray_executor``, every step submitted as a Ray Job (Ray Jobs API, i.e.
  the head's dashboard) to a private 2-CPU head on 127.0.0.1 started for this case and stopped by
  process id afterwards. A step job claims one CPU, so at most 2 steps run at a time there too.
  The head's start-up is reported apart: in production the head is a long-running service.

Each case has its own temporary workspace: ``DAGSTER_HOME`` (a SQLite instance with the
project's ``dagster_home/dagster.yaml``), lake (``TVQ_LAKE``), MLflow SQLite store
(``MLFLOW_TRACKING_URI``) and catalog (``TVQ_SLEEVES``). The bars are materialised first, in
process (``benchmarks.bench.case``: ``refresh_bars`` in a fresh subprocess), so that every case
starts from the same lake. Then a definitions module written into the workspace rebuilds the code
location (``tvq_assets.definitions.defs``: same assets, jobs and resources) with the executor
under test, and ``dagster job execute -f <module> -j daily`` runs it in a fresh subprocess: the
wall seconds are those of that subprocess (Python start, code location load and the run), the run
seconds those the instance recorded from the run's start to its end. The run's status is read
from the instance; a run that is not SUCCESS is reported with its first error, never hidden.

Timings depend on the load of the machine: compare ratios taken in one run.

Usage: ``python -m benchmarks.bench_executors [--symbols 100]
[--executors inprocess multiprocess ray] [--keep DIR] [--timeout 1800]``.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bench import DAY, case

ROOT = Path(__file__).resolve().parents[1]
SLEEVE = "crypto"
EXECUTORS = ("inprocess", "multiprocess", "ray")
# Two cores: two step processes at a time, for the multiprocess and the Ray executor alike.
CONCURRENT = 2
# What a step process needs to find the instance, the lake, the catalog and the MLflow store. The
# multiprocess executor's children inherit the run's environment; a Ray Job does not (it starts
# under the head's raylet), so the Ray executor forwards these from the run's process. PATH too:
# a run launched by the `dagster` command hands its steps the bare entry point `dagster api
# execute_step`, which the Ray Job's shell must find in this environment's bin directory.
STEP_ENVIRONMENT = (
    "PATH",
    "DAGSTER_HOME",
    "TVQ_LAKE",
    "TVQ_SLEEVES",
    "MLFLOW_TRACKING_URI",
    "TV_ORCH_MODE",
    "PYTHONPATH",
)
# Variables that would point the run's Ray Jobs client at another cluster than the private head
# (Ray's JobSubmissionClient prefers them to the configured address).
FOREIGN_RAY = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")

LOCATION = '''"""The tvq code location with the {name} executor (benchmarks.bench_executors)."""

import dagster as dg
{imports}
from tvq_assets import definitions

# One Definitions object at module scope: the project's is reached through its module.
defs = dg.Definitions(
    assets=definitions.defs.assets,
    asset_checks=definitions.defs.asset_checks,
    jobs=definitions.defs.jobs,
    schedules=definitions.defs.schedules,
    sensors=definitions.defs.sensors,
    resources=definitions.defs.resources,
    loggers=definitions.defs.loggers,
    executor={executor},
)
'''


def location_source(name: str, dashboard: str | None = None) -> str:
    """The definitions module of one case: the project's code location but for its executor."""
    if name == "inprocess":
        imports, executor = "", "definitions.defs.executor"  # definitions.executor()
    elif name == "multiprocess":
        config = {
            "max_concurrent": CONCURRENT,
            "start_method": {"forkserver": {"preload_modules": ["tvq_assets.definitions"]}},
        }
        imports, executor = "", f"dg.multiprocess_executor.configured({config!r})"
    elif name == "ray":
        config = {
            "ray": {
                "address": dashboard,
                "env_vars": list(STEP_ENVIRONMENT),
                "num_cpus": 1,
            }
        }
        imports = "from dagster_ray import ray_executor\n"
        executor = f"ray_executor.configured({config!r})"
    else:
        raise ValueError(f"unknown executor {name!r}: expected one of {', '.join(EXECUTORS)}")
    return LOCATION.format(name=name, imports=imports, executor=executor)


# --- the Ray head ---------------------------------------------------------------------------


def dashboard_url(gcs_address: str, timeout: float) -> str:
    """The HTTP address of the head's dashboard (the Ray Jobs API), as Ray's own job client finds
    it: the address the dashboard registered in the GCS. Waits until the Jobs API answers."""
    # A head on 127.0.0.1: Ray replaces a loopback address by the machine's unless multi-node
    # clustering is off (as tvq_resources.ray_fanout does for its drivers).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray._private.ray_constants as constants
    from ray.dashboard.utils import ray_address_to_api_server_url

    constants.ENABLE_RAY_CLUSTER = False
    url = ray_address_to_api_server_url(gcs_address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=10) as answer:
                answer.read()
            return url
        except OSError as error:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"the Ray dashboard at {url} did not answer within {timeout:.0f} s: {error}"
                ) from error
            time.sleep(1.0)


# --- one case -------------------------------------------------------------------------------


@dataclass
class Outcome:
    executor: str
    status: str  # a DagsterRunStatus name, TIMEOUT, NO RUN, or SETUP FAILED
    wall: float | None = None  # the `dagster job execute` subprocess
    run: float | None = None  # the run's start to end, as the instance recorded it
    error: str = ""
    steps: int = 0
    step_seconds: float = 0.0  # the steps' own start to end, added up


def prepare(workspace: Path, symbols: int) -> dict[str, str]:
    """The bars of D in the workspace's lake (in process), and the environment of its runs."""
    case(workspace, "refresh_bars", symbols, DAY)
    home = workspace / "home"
    # The project's instance configuration (benchmarks.bench.case writes a minimal one).
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TVQ_LAKE": str(workspace / "lake"),
        "TVQ_SLEEVES": str(workspace / f"sleeves-{DAY}.yaml"),
        # The store the bars refresh used (MlflowTracker's default under DAGSTER_HOME), named.
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "TV_ORCH_MODE": "local",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    for name in FOREIGN_RAY:
        environment.pop(name, None)
    return environment


def run_daily(
    name: str, workspace: Path, environment: dict[str, str], partition: str, timeout: float, **kw
) -> Outcome:
    """One ``daily`` run through a code location with executor ``name``, in a fresh process."""
    location = workspace / f"definitions_{name}.py"
    location.write_text(location_source(name, **kw))
    command = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "execute",
        "-f",
        str(location),
        "-j",
        "daily",
        "--tags",
        json.dumps({"dagster/partition": partition}),
    ]
    log = workspace / f"daily-{name}.log"
    print(f"  daily {partition} with the {name} executor ...", end="", flush=True)
    with log.open("w") as out:
        # Its own session, so that a timed-out run is stopped with every step process it started.
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started = time.perf_counter()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            print(" TIMEOUT")
            return Outcome(name, "TIMEOUT", error=f"no end within {timeout:.0f} s; log {log}")
        wall = time.perf_counter() - started
    outcome = inspect_run(name, Path(environment["DAGSTER_HOME"]), log)
    outcome.wall = wall
    print(f" {outcome.status}, {wall:.1f} s wall")
    return outcome


def inspect_run(name: str, home: Path, log: Path) -> Outcome:
    """Status, duration and first error of the workspace's ``daily`` run, from the instance."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name="daily"))
        if not records:
            # The run never started (e.g. the code location did not load): the last line of the
            # log is the exception.
            lines = log.read_text().strip().splitlines()
            return Outcome(name, "NO RUN", error=f"{lines[-1] if lines else 'empty log'} ({log})")
        [record] = records
        run = record.dagster_run
        outcome = Outcome(name, run.status.name)
        if record.start_time and record.end_time:
            outcome.run = record.end_time - record.start_time
        stats = instance.get_run_step_stats(run.run_id)
        outcome.steps = len(stats)
        outcome.step_seconds = sum(
            stat.end_time - stat.start_time for stat in stats if stat.start_time and stat.end_time
        )
        if run.status != dg.DagsterRunStatus.SUCCESS:
            outcome.error = first_error(instance, run.run_id) or f"see {log}"
    return outcome


def first_error(instance, run_id: str) -> str:
    """The first failure of the run: a step's error (with its root cause), else the run's."""
    import dagster as dg

    failures = (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE)
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.event_type not in failures:
            continue
        error = getattr(event.event_specific_data, "error", None)
        where = f"step {event.step_key}: " if event.step_key else "run: "
        if error is None:
            return where + (event.message or "failed, no error recorded")
        root = error
        while root.cause is not None:
            root = root.cause
        text = f"{error.cls_name}: {error.message.strip()}"
        if root is not error:
            text += f" (root cause {root.cls_name}: {root.message.strip()})"
        return where + text
    return ""


def run_case(name: str, root: Path, symbols: int, partition: str, timeout: float, keep: bool):
    """Prepare the workspace, then the timed run; for ``ray`` around a private head."""
    workspace = root / name
    try:
        environment = prepare(workspace, symbols)
    except Exception as error:  # reported in the table; the other cases go on
        print(f"  preparing the {name} case failed: {error}")
        return Outcome(name, "SETUP FAILED", error=str(error).strip().splitlines()[0]), None
    if name != "ray":
        return run_daily(name, workspace, environment, partition, timeout), None

    from tvq_resources.ray_fanout import LocalHead

    print("  starting a private Ray head with its dashboard ...", end="", flush=True)
    try:
        head = LocalHead.start(num_cpus=CONCURRENT, timeout=600, dashboard=True)
    except Exception as error:
        print(" FAILED")
        return Outcome(name, "SETUP FAILED", error=f"Ray head: {error}"), None
    print(f" {head.seconds:.1f} s ({head.attempts} attempt(s)), GCS {head.address}")
    try:
        begun = time.perf_counter()
        url = dashboard_url(head.address, timeout=300)
        waited = time.perf_counter() - begun
        print(f"  Ray Jobs API at {url} answered after {waited:.1f} s more")
        startup = {"head": head.seconds, "dashboard": waited, "attempts": head.attempts}
        return run_daily(name, workspace, environment, partition, timeout, dashboard=url), startup
    except Exception as error:
        print(f"  the Ray case failed: {error}")
        return Outcome(name, "SETUP FAILED", error=f"{type(error).__name__}: {error}"), None
    finally:
        head.stop(remove=not keep)
        if keep:
            print(f"  Ray logs kept under {head.temp_dir}")


# --- the table ------------------------------------------------------------------------------


def report(outcomes: list[Outcome], startup: dict | None, symbols: int, partition: str) -> None:
    base = next((o for o in outcomes if o.executor == "inprocess" and o.status == "SUCCESS"), None)
    header = (
        f"{'executor':<14}{'wall s':>9}{'run s':>9}{'x in-process':>14}{'steps':>7}"
        f"{'step s':>9}  status"
    )
    print(f"\none daily run of {partition}, {symbols} symbols")
    print(header + "\n" + "-" * len(header))
    for outcome in outcomes:
        wall = f"{outcome.wall:.1f}" if outcome.wall is not None else "-"
        run = f"{outcome.run:.1f}" if outcome.run is not None else "-"
        ratio = (
            f"{outcome.wall / base.wall:.2f}"
            if base and outcome.wall is not None and outcome.status == "SUCCESS"
            else "-"
        )
        steps, spent = outcome.steps, f"{outcome.step_seconds:.1f}"
        print(
            f"{outcome.executor:<14}{wall:>9}{run:>9}{ratio:>14}{steps:>7}{spent:>9}  "
            f"{outcome.status}"
        )
    print("-" * len(header))
    print(
        "wall s: the `dagster job execute` process (start, code location load, run); run s: the "
        "run's start to end in the instance; steps: steps the instance recorded; step s: their "
        "own seconds added up (a step process's start-up before the step starts is not in them)"
    )
    if startup:
        print(
            f"Ray head start-up (not in the table): {startup['head']:.1f} s "
            f"({startup['attempts']} attempt(s)), then {startup['dashboard']:.1f} s until the "
            "Jobs API answered"
        )
    for outcome in outcomes:
        if outcome.error:
            print(f"{outcome.executor} {outcome.status}: {outcome.error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--executors", nargs="+", choices=EXECUTORS, default=list(EXECUTORS))
    parser.add_argument("--keep", type=Path, help="keep the workspaces under this folder")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds one daily run may take"
    )
    arguments = parser.parse_args()

    from tvq_assets.partitions import run_key

    partition = run_key(DAY, SLEEVE)
    print(
        f"tvq executors bench: python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}; {arguments.symbols} symbols, run {partition}"
    )
    started = time.perf_counter()
    if arguments.keep:
        arguments.keep.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="tvq-bench-executors-", dir=arguments.keep))
    outcomes, startup = [], None
    try:
        for name in arguments.executors:
            print(f"{name}:")
            keep = arguments.keep is not None
            outcome, started_head = run_case(
                name, root, arguments.symbols, partition, arguments.timeout, keep
            )
            outcomes.append(outcome)
            startup = started_head or startup
        report(outcomes, startup, arguments.symbols, partition)
    finally:
        if arguments.keep is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"workspaces kept under {root}")
    print(f"\nbench wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
