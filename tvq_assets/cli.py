"""``tvq``: run the graph from the command line and summarise what it produced.

``tvq demo`` refreshes every sleeve's bars and materialises the newest run partition of every sleeve
through the real jobs of the code location (the runs appear in ``dagster dev``), then prints a short
summary per sleeve. ``tvq production`` does the same as production does, a process per step.
``tvq backfill`` submits a range of run partitions of one sleeve to Dagster's
backfill machinery (the daemon of ``make dev`` executes them). ``tvq lake verify|clean|quarantine``
checks the Parquet lake, removes what killed writes left behind, and sets a damaged value aside
and recomputes it.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd

# Queued runs must name the code location as the workspace (and so the daemon) knows it.
WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"

# The run's full event log is in the UI; the terminal shows warnings, errors and the summary.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _checks_line(result: dg.ExecuteInProcessResult) -> tuple[str, list[str]]:
    evaluations = result.get_asset_check_evaluations()
    failed = [
        f"{e.asset_key.to_user_string()}.{e.check_name} ({e.severity.value}): {e.description}"
        for e in evaluations
        if not e.passed
    ]
    return f"{len(evaluations) - len(failed)} passed, {len(failed)} failed", failed


def demo(sleeves: list[str] | None, as_of: str | None) -> int:
    from tvq_assets import tracking
    from tvq_assets.definitions import defs
    from tvq_assets.partitions import catalog, run, run_key

    instance = dg.DagsterInstance.get()
    lake = defs.resources["lake"]
    newest = run.get_last_partition_key()
    status = 0
    for name in sleeves or list(catalog.sleeves):
        started = time.perf_counter()
        results = [
            defs.resolve_job_def("refresh_bars").execute_in_process(
                partition_key=name, instance=instance, raise_on_error=False, run_config=QUIET
            )
        ]
        key = run_key(as_of or _last_session(lake, name, newest), name)
        print(f"\n== {name}  (run partition {key})")
        if results[0].success:
            results.append(
                defs.resolve_job_def("daily").execute_in_process(
                    partition_key=key, instance=instance, raise_on_error=False, run_config=QUIET
                )
            )
        failed_checks: list[str] = []
        passed = failed = 0
        for result in results:
            line, failures = _checks_line(result)
            failed_checks += failures
            passed += int(line.split()[0])
            failed += len(failures)
        ok = all(r.success for r in results)
        status |= 0 if ok else 1
        print(
            f"   runs:    {', '.join(r.run_id[:8] for r in results)}  "
            f"({'success' if ok else 'FAILED'}, {time.perf_counter() - started:.1f}s)"
        )
        print(f"   checks:  {passed} passed, {failed} failed")
        for line in failed_checks:
            print(f"            - {line}")
        for line in _failures(results):
            print(f"   FAILED:  {line}")
        fresh = {
            event.asset_key.to_user_string()
            for result in results
            for event in result.get_asset_materialization_events()
        }
        _summarise(lake, name, key, fresh)
        if "returns" in fresh:
            print(tracking.summary(defs.resources["mlflow"], key))
    return status


def _last_session(lake, sleeve_name: str, newest: str) -> str:
    """The newest run partition, or the sleeve's last stored session when its data (e.g. a
    fixed export) ends earlier: a run after it would find every symbol stale."""
    if not lake.exists(["bars"], sleeve_name):
        return newest
    bars = lake.read(["bars"], sleeve_name).bars
    if bars.empty:
        return newest
    return min(pd.Timestamp(newest), bars["date"].max()).strftime("%Y-%m-%d")


def _failures(results: list[dg.ExecuteInProcessResult]) -> list[str]:
    """One line per failed step: the step and the first line of its error."""
    lines = []
    for result in results:
        for event in result.get_step_failure_events():
            error = event.step_failure_data.error
            cause = error.cause if error and error.cause else error
            message = (cause.message if cause else event.message or "").strip()
            lines.append(f"{event.step_key}: {message.splitlines()[0] if message else '?'}")
    return lines


def _summarise(lake, sleeve_name: str, key: str, fresh: set[str]) -> None:
    """What this run produced. A value stored by an earlier run is never shown as today's: when
    a stage did not materialise now, the summary says so and stops there."""
    for asset in ("bars", "returns", "selection", "backtest", "portfolio"):
        if asset not in fresh:
            print(
                f"   {asset}: not produced by this run; nothing downstream is shown "
                f"(older values stay in {lake.root_path})"
            )
            return
        _summarise_asset(lake, asset, sleeve_name if asset == "bars" else key)
    print(f"   files:   {lake.root_path}")


def _summarise_asset(lake, asset: str, partition: str) -> None:
    if asset == "bars":
        bars = lake.read(["bars"], partition).bars
        print(
            f"   bars:    {bars['symbol'].nunique()} symbols, {len(bars)} rows, "
            f"{bars['date'].min():%Y-%m-%d} .. {bars['date'].max():%Y-%m-%d}"
        )
    elif asset == "returns":
        bundle = lake.read(["returns"], partition)
        frame: pd.DataFrame = bundle.returns
        print(
            f"   returns: {frame.shape[1]} symbols x {frame.shape[0]} days, "
            f"{frame.index.min():%Y-%m-%d} .. {frame.index.max():%Y-%m-%d}; "
            f"{len(bundle.excluded)} excluded"
        )
    elif asset == "selection":
        winners = lake.read(["selection"], partition).winners
        print(
            f"   winners: {len(winners)} (HTR stage {int(winners['stage'].max())}): "
            f"{', '.join(winners.index[:25])}"
        )
    elif asset == "portfolio":
        stored = lake.read(["portfolio"], partition)
        weights = stored.weights["weight"].sort_values(ascending=False)
        held = ", ".join(f"{s} {w:.1%}" for s, w in weights.items() if w > 0) or "cash"
        # The champion runs its own scorer on the latest window, so its holdings may include
        # symbols outside `selection` (which is the Log-MPS choice on the full window).
        print(f"   today's portfolio: {held}")
        print(f"     turnover {stored.turnover:.1%} against the previous run's portfolio")
    else:
        bundle = lake.read(["backtest"], partition)
        verdict = bundle.verdict.iloc[0]
        shown = bundle.metrics.loc[[verdict["champion"], "baseline_universe", "baseline_winners"]]
        if not verdict["incumbent"]:
            standing = "first verdict"
        elif verdict["replaced"]:
            standing = f"replaces {verdict['incumbent']}"
        else:
            standing = "incumbent kept"
        print(
            f"   champion: {verdict['champion']} ({standing}; "
            f"best out-of-sample: {verdict['challenger']})"
        )
        for policy, row in shown.iterrows():
            print(
                f"     {policy:<28} sharpe {row['sharpe']:6.2f}  "
                f"max drawdown {row['max_drawdown']:7.1%}  CAGR {row['cagr']:7.1%}"
            )


def production(sleeves: list[str] | None) -> int:
    """The production flow from the command line: each sleeve's bars, then its newest run, each
    as a real job run in production mode (a process per step), recorded in ``DAGSTER_HOME``."""
    from tvq_assets.partitions import catalog, run, run_key
    from tvq_resources.mode import ProductionUnavailable, check_production

    environment = {**os.environ, "TV_ORCH_MODE": "production"}
    try:
        check_production(environment)
    except ProductionUnavailable as error:
        print(error, file=sys.stderr)
        return 2
    newest = run.get_last_partition_key()
    base = ["dagster", "job", "execute", "-m", "tvq_assets.definitions"]
    for name in sleeves or list(catalog.sleeves):
        for job, partition in (("refresh_bars", name), ("daily", run_key(newest, name))):
            print(f"== {job} [{partition}]", flush=True)
            tags = json.dumps({"dagster/partition": partition})
            status = subprocess.call([*base, "-j", job, "--tags", tags], env=environment)
            if status:
                print(f"{job} [{partition}] failed; see the run in `make dev`", file=sys.stderr)
                return status
    return 0


def backfill(sleeve_name: str, start: str, end: str) -> int:
    from tvq_assets.partitions import run_key

    dates = pd.date_range(start, end, freq="D")
    keys = ",".join(run_key(d, sleeve_name) for d in dates)
    command = [
        "dagster",
        "job",
        "backfill",
        "-w",
        str(WORKSPACE),
        "-j",
        "daily",
        "--partitions",
        keys,
        "--noprompt",
    ]
    print(f"submitting {len(dates)} run partitions of {sleeve_name} to the backfill daemon")
    return subprocess.call(command)


def lake_command(action: str, asset: str | None, partition: str | None, recompute: bool) -> int:
    """``verify``: list damaged values and leftovers of killed writes (exit 1 if a value is
    damaged); ``clean``: remove the leftovers; ``quarantine``: move one value to ``.corrupt/`` and
    recompute it (its sleeve's bars, or that asset alone for a sleeve × run partition)."""
    from tvq_assets.definitions import defs

    lake = defs.resources["lake"]
    if action == "verify":
        problems = lake.verify()
        for problem in problems:
            print(problem)
        damaged = [p for p in problems if p.kind == "damaged"]
        leftovers = [p for p in problems if p.kind == "leftover"]
        print(
            f"{lake.root_path}: {len(damaged)} damaged value(s); {len(leftovers)} leftover(s) of "
            f"killed writes ({sum(p.size for p in leftovers) / 1e6:.1f} MB)"
        )
        if damaged:
            print("set a damaged value aside and recompute it: tvq lake quarantine ASSET PARTITION")
        elif leftovers:
            print("remove the leftovers: tvq lake clean")
        return 1 if damaged else 0
    if action == "clean":
        removed = lake.clean()
        print(
            f"removed {len(removed)} leftover(s) of killed writes "
            f"({sum(p.size for p in removed) / 1e6:.1f} MB) from {lake.root_path}"
        )
        return 0
    if asset is None or partition is None:
        print("tvq lake quarantine needs ASSET and PARTITION", file=sys.stderr)
        return 2
    target = lake.quarantine([asset], partition)
    print(f"{asset}[{partition}] moved to {target}")
    if not recompute:
        return 0
    instance = dg.DagsterInstance.get()
    if asset == "bars":
        job, selection = defs.resolve_job_def("refresh_bars"), None
    else:
        job, selection = defs.resolve_job_def("daily"), [dg.AssetKey(asset)]
    result = job.execute_in_process(
        partition_key=partition,
        asset_selection=selection,
        instance=instance,
        raise_on_error=False,
        run_config=QUIET,
    )
    for line in _failures([result]):
        print(f"FAILED: {line}")
    print(f"recomputed {asset}[{partition}]: {'success' if result.success else 'FAILED'}")
    return 0 if result.success else 1


def track(sleeve_name: str, start: str, end: str) -> int:
    """Record in MLflow what the lake holds for a date range of one sleeve, without recomputing:
    missing MLflow runs or stages of them (e.g. after the tracking server was down)."""
    from tvq_assets import tracking
    from tvq_assets.definitions import defs

    tracker = defs.resources["mlflow"]
    recorded = tracking.replay(
        tracker, dg.DagsterInstance.get(), defs.resources["lake"], sleeve_name, start, end
    )
    for partition, stages in recorded:
        print(f"{partition}: {', '.join(stages) or 'already complete'}")
    print(f"{len(recorded)} partition(s) of {sleeve_name} in MLflow at {tracker.uri}")
    return 0


def diff(sleeve_name: str, run_a: str, run_b: str, stages: list[str] | None) -> int:
    """Print what changed between two stored run partitions of a sleeve, stage by stage."""
    from tvq_assets import diff as stage_diff
    from tvq_assets.definitions import defs

    lake = defs.resources["lake"]
    comparison = stage_diff.compare(
        lake, sleeve_name, run_a, run_b, tuple(stages or stage_diff.STAGES)
    )
    print(f"{sleeve_name}: {run_a} -> {run_b}\n")
    print(stage_diff.render(comparison))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tvq", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="materialise the newest run of every sleeve")
    run_demo.add_argument("--sleeve", action="append", help="only this sleeve (repeatable)")
    run_demo.add_argument("--as-of", help="run partition date (default: the newest)")
    run_production = commands.add_parser(
        "production", help="refresh bars and run the newest partition, in production mode"
    )
    run_production.add_argument("--sleeve", action="append", help="only this sleeve (repeatable)")
    run_backfill = commands.add_parser("backfill", help="re-run a date range of one sleeve")
    run_backfill.add_argument("sleeve")
    run_backfill.add_argument("start")
    run_backfill.add_argument("end")
    run_lake = commands.add_parser("lake", help="verify, clean or repair the Parquet lake")
    run_lake.add_argument("action", choices=["verify", "clean", "quarantine"])
    run_lake.add_argument("asset", nargs="?", help="quarantine: the asset, e.g. bars")
    run_lake.add_argument("partition", nargs="?", help="quarantine: e.g. crypto, 2026-11-20|crypto")
    run_lake.add_argument(
        "--no-recompute", action="store_true", help="quarantine only; recompute later"
    )
    run_track = commands.add_parser(
        "track", help="record missing MLflow runs of a date range from the lake (no recompute)"
    )
    run_track.add_argument("sleeve")
    run_track.add_argument("start")
    run_track.add_argument("end")
    run_diff = commands.add_parser("diff", help="what changed between two stored run partitions")
    run_diff.add_argument("sleeve")
    run_diff.add_argument("run_a")
    run_diff.add_argument("run_b")
    run_diff.add_argument(
        "--stage", action="append", choices=["selection", "weights", "backtest"], help="repeatable"
    )
    arguments = parser.parse_args(argv)
    if arguments.command == "demo":
        return demo(arguments.sleeve, arguments.as_of)
    if arguments.command == "production":
        return production(arguments.sleeve)
    if arguments.command == "lake":
        return lake_command(
            arguments.action, arguments.asset, arguments.partition, not arguments.no_recompute
        )
    if arguments.command == "track":
        return track(arguments.sleeve, arguments.start, arguments.end)
    if arguments.command == "diff":
        return diff(arguments.sleeve, arguments.run_a, arguments.run_b, arguments.stage)
    return backfill(arguments.sleeve, arguments.start, arguments.end)


if __name__ == "__main__":
    sys.exit(main())
