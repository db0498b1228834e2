"""``tvq``: run the graph from the command line and summarise what it produced.

``tvq demo`` refreshes every sleeve's bars and materialises the newest run partition of every sleeve
through the real jobs of the code location (the runs appear in ``dagster dev``), then prints a short
summary per sleeve. ``tvq production`` does the same as production does, a process per step.
``tvq backfill`` submits a range of run partitions of one sleeve to Dagster's
backfill machinery (the daemon of ``make dev`` executes them).
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
    from tvq_assets.partitions import catalog, run

    instance = dg.DagsterInstance.get()
    lake = defs.resources["lake"]
    as_of = as_of or run.get_last_partition_key()
    status = 0
    for name in sleeves or list(catalog.sleeves):
        started = time.perf_counter()
        key = f"{as_of}|{name}"
        print(f"\n== {name}  (run partition {key})")
        results = [
            defs.resolve_job_def("refresh_bars").execute_in_process(
                partition_key=name, instance=instance, raise_on_error=False, run_config=QUIET
            )
        ]
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
        _summarise(lake, name, key)
        print(tracking.summary(defs.resources["mlflow"], key))
    return status


def _summarise(lake, sleeve_name: str, key: str) -> None:
    if lake.exists(["bars"], sleeve_name):
        bars = lake.read(["bars"], sleeve_name)
        print(
            f"   bars:    {bars['symbol'].nunique()} symbols, {len(bars)} rows, "
            f"{bars['date'].min():%Y-%m-%d} .. {bars['date'].max():%Y-%m-%d}"
        )
    if lake.exists(["returns"], key):
        bundle = lake.read(["returns"], key)
        frame: pd.DataFrame = bundle["returns"]
        print(
            f"   returns: {frame.shape[1]} symbols x {frame.shape[0]} days, "
            f"{frame.index.min():%Y-%m-%d} .. {frame.index.max():%Y-%m-%d}; "
            f"{len(bundle['excluded'])} excluded"
        )
    if lake.exists(["selection"], key):
        winners = lake.read(["selection"], key)["winners"]
        print(
            f"   winners: {len(winners)} (HTR stage {int(winners['stage'].max())}): "
            f"{', '.join(winners.index[:25])}"
        )
    if lake.exists(["backtest"], key):
        bundle = lake.read(["backtest"], key)
        verdict = bundle["verdict"].iloc[0]
        shown = bundle["metrics"].loc[
            [verdict["champion"], "baseline_universe", "baseline_winners"]
        ]
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
        weights = bundle["champion_weights"]["weight"].sort_values(ascending=False)
        held = ", ".join(f"{s} {w:.1%}" for s, w in weights.items() if w > 0)
        # The champion runs its own scorer on the latest training window, so its holdings may
        # include symbols outside `selection` (which is the Log-MPS choice on the full window).
        print(f"   champion's portfolio today: {held}")
    print(f"   files:   {lake.root_path}")


def production(sleeves: list[str] | None) -> int:
    """The production flow from the command line: each sleeve's bars, then its newest run, each
    as a real job run in production mode (a process per step), recorded in ``DAGSTER_HOME``."""
    from tvq_assets.partitions import catalog, run

    newest = run.get_last_partition_key()
    environment = {**os.environ, "TV_ORCH_MODE": "production"}
    base = ["dagster", "job", "execute", "-m", "tvq_assets.definitions"]
    for name in sleeves or list(catalog.sleeves):
        for job, partition in (("refresh_bars", name), ("daily", f"{newest}|{name}")):
            print(f"== {job} [{partition}]", flush=True)
            tags = json.dumps({"dagster/partition": partition})
            status = subprocess.call([*base, "-j", job, "--tags", tags], env=environment)
            if status:
                print(f"{job} [{partition}] failed; see the run in `make dev`", file=sys.stderr)
                return status
    return 0


def backfill(sleeve_name: str, start: str, end: str) -> int:
    dates = pd.date_range(start, end, freq="D")
    keys = ",".join(f"{d:%Y-%m-%d}|{sleeve_name}" for d in dates)
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
    if arguments.command == "track":
        return track(arguments.sleeve, arguments.start, arguments.end)
    if arguments.command == "diff":
        return diff(arguments.sleeve, arguments.run_a, arguments.run_b, arguments.stage)
    return backfill(arguments.sleeve, arguments.start, arguments.end)


if __name__ == "__main__":
    sys.exit(main())
