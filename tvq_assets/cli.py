"""``tvq``: run the graph from the command line and summarise what it produced.

``tvq demo`` refreshes every sleeve's bars and materialises the newest run partition of every sleeve
as runs of the workspace's code location, submitted to the run queue (they appear on the job pages
of ``make dev`` and its sensors see them), then prints a short summary per sleeve. ``tvq
production`` does the same in production mode. ``tvq backfill`` requests a backfill of a range
of run partitions of one sleeve from Dagster's backfill machinery (executed by the daemon of
``make dev``, or by the command itself when no daemon runs) and shows them finish. ``tvq lake
verify|clean|quarantine`` checks the Parquet lake, removes what killed writes left behind, and
sets a damaged value aside and recomputes it.
"""

import argparse
import atexit
import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import MutableMapping
from typing import NoReturn

import dagster as dg
import pandas as pd

from tvq_assets.instance_settings import instance_settings_problem
from tvq_resources import library_output, links
from tvq_resources.services import REPOSITORY_HOME

# The run's full event log is in the UI; the terminal shows warnings, errors and the summary.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

# Where the runs are shown: `make dev` serves the UI here (the Makefile exports TVQ_UI_URL from its
# HOST and PORT); the links the runs store in MLflow are built the same way.
UI = links.dagster_ui()


def use_repository_home(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Point ``DAGSTER_HOME`` (of ``environ``, default this process's environment, which the
    code servers and run workers inherit) at this checkout's ``dagster_home`` when it is unset or
    empty, as make does, and return the line that says so; an exported ``DAGSTER_HOME`` wins."""
    env = os.environ if environ is None else environ
    if env.get("DAGSTER_HOME"):
        return None
    env["DAGSTER_HOME"] = str(REPOSITORY_HOME)
    return f"tvq: DAGSTER_HOME is not set; using this repository's instance {REPOSITORY_HOME}"


# The commands that launch runs through the instance.
LAUNCHING_COMMANDS = ("demo", "production", "backfill")


def flow(sleeves: list[str] | None, as_of: str | None) -> int:
    """Each sleeve's bars, then its run partition, as runs of the code location through the
    queue: the sleeves' runs go side by side as far as the queue's limits allow; a summary per
    sleeve as soon as its daily run has finished."""
    from tvq_assets import launch
    from tvq_assets.definitions import defs
    from tvq_assets.jobs import DAILY_LAUNCHED_BY
    from tvq_assets.partitions import catalog, newest_run_date, run_key
    from tvq_assets.tracking import replay

    instance = dg.DagsterInstance.get()
    lake = defs.resources["lake"]
    newest = newest_run_date()
    names = sleeves or list(catalog.sleeves)
    status = 0
    with launch.Launcher(
        instance, exit_when_storage_lost=True, on_dead=tracking_of_dead_runs(instance)
    ) as launcher:
        if launch.daemon_dequeues(instance):
            print(f"the daemon of `make dev` runs these runs (queue: {UI}/runs)", flush=True)
        started = time.perf_counter()
        # The daily run follows here, not from `run_daily_after_bars` (which would also start one
        # when a daemon is running): only this command knows the as-of date it was asked for.
        tags = {DAILY_LAUNCHED_BY: "tvq"}
        sleeve_of = {launcher.submit("refresh_bars", name, tags): name for name in names}
        runs: dict[str, list[str]] = {name: [] for name in names}
        keys: dict[str, str] = {}
        pending = set(sleeve_of)

        def finished(done: dg.DagsterRun) -> None:
            nonlocal status
            name = sleeve_of[done.run_id]
            runs[name].append(done.run_id)
            print(f"-- {done.job_name} [{done.tags['dagster/partition']}] {done.status.value}")
            if done.job_name == "refresh_bars" and done.is_success:
                keys[name] = run_key(as_of or _last_session(lake, name, newest), name)
                daily = launcher.submit("daily", keys[name])
                sleeve_of[daily] = name
                pending.add(daily)
                return
            key = keys.get(name, run_key(as_of or newest, name))
            seconds = time.perf_counter() - started
            ok, fresh = _report(instance, lake, name, key, runs[name], seconds)
            status |= 0 if ok else 1
            if "returns" in fresh:  # a tracked run: its MLflow run, finished or failed
                print(replay.summary(defs.resources["mlflow"], key))
            sys.stdout.flush()

        launcher.wait(pending, finished)
        # The sleeves may have run different dates (a weekday sleeve its last session, a fixed
        # export its last bar): the meta-portfolio is of the newest, from each sleeve's latest
        # decision at or before it. A failed sleeve keeps the exit status 1 even when the
        # meta-portfolio succeeds on that sleeve's previous decision.
        meta_as_of = as_of or meta_date(keys, catalog.meta_sleeves, newest)
        status |= demo_meta(instance, launcher, meta_as_of, names)
    print(
        f"\n{len(names)} sleeve(s) in {time.perf_counter() - started:.0f}s"
        f"{'' if status == 0 else ', SOME FAILED (see FAILED above)'}. "
        f"Runs: {UI}/runs (`make dev`); MLflow: `make mlflow-ui`"
    )
    count, log = library_output.written()
    if count:
        print(f"{count} library message(s) (MLflow, warnings) in {log}; `tvq --verbose` shows them")
    return status


def tracking_of_dead_runs(instance: dg.DagsterInstance):
    """Marks the MLflow runs of a run the launcher found dead (its process killed) FAILED, as the
    daemon's ``mlflow_on_failure`` sensor does when a daemon runs; a tracking error is a warning,
    never the command's failure."""
    from tvq_assets.definitions import defs
    from tvq_assets.tracking import status

    def finalise(run: dg.DagsterRun) -> None:
        try:
            status.finalise(defs.resources["mlflow"], instance, run.run_id)
        except Exception as error:
            print(f"MLflow: could not mark the runs of {run.run_id[:8]} failed: {error}")

    return finalise


def _report(
    instance, lake, name: str, key: str, run_ids: list[str], seconds: float
) -> tuple[bool, set[str]]:
    """The sleeve's summary from its runs' events in the instance: runs, checks, failures and
    what they produced."""
    from tvq_assets.launch import events

    kinds = dg.DagsterEventType
    runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
    ok = all(r.is_success for r in runs) and any(r.job_name == "daily" for r in runs)
    print(f"\n== {name}  (run partition {key})")
    print(
        f"   runs:    {', '.join(r.run_id[:8] for r in runs)}  "
        f"({'success' if ok else 'FAILED'}, {seconds:.1f}s)  {UI}/runs/{runs[-1].run_id}"
    )
    evaluations = [
        e.event_specific_data
        for r in runs
        for e in events(instance, r.run_id, kinds.ASSET_CHECK_EVALUATION)
    ]
    failed_checks = [
        f"{e.asset_key.to_user_string()}.{e.check_name} ({e.severity.value}): {e.description}"
        for e in evaluations
        if not e.passed
    ]
    print(
        f"   checks:  {len(evaluations) - len(failed_checks)} passed, {len(failed_checks)} failed"
    )
    for line in failed_checks:
        print(f"            - {line}")
    for line in _failures(instance, runs):
        print(f"   FAILED:  {line}")
    fresh = {
        e.asset_key.to_user_string()
        for r in runs
        for e in events(instance, r.run_id, kinds.ASSET_MATERIALIZATION)
    }
    _summarise(lake, name, key, fresh)
    return ok, fresh


def meta_date(run_keys: dict[str, str], meta_sleeves, newest: str) -> str:
    """The date of the demo's meta-portfolio: the newest run date the demo gave a sleeve of the
    meta-portfolio (``run_keys``: sleeve -> its sleeve × run key), else ``newest``. A weekday
    sleeve run at Friday's session and a crypto sleeve at Sunday give Sunday; a sleeve over a
    fixed export run at its last bar gives that date, where its decision is fresh."""
    from tvq_assets.partitions import split_run_key

    dates = [split_run_key(key)[0] for name, key in run_keys.items() if name in meta_sleeves]
    return f"{max(dates):%Y-%m-%d}" if dates else newest


def demo_meta(instance: dg.DagsterInstance, launcher, as_of: str, ran: list[str]) -> int:
    """Materialise the meta-portfolio of ``as_of`` after the sleeves and print it: the sleeve
    weights, each sleeve's decision used (its date and age), the largest firm-wide holdings,
    and its walk-forward against the equal weight of the sleeves. Skipped (exit 0) when the
    demo did not run every sleeve it needs."""
    from tvq_assets.definitions import defs
    from tvq_assets.partitions import catalog

    needed = list(catalog.meta_sleeves)
    print(f"\n== meta-portfolio  (run partition {as_of}; sleeves {', '.join(needed)})")
    left_out = [s for s in needed if s not in ran]
    if left_out:
        print(f"   not run: this demo did not run sleeve(s) {left_out}")
        return 0
    from tvq_assets.launch import events

    started = time.perf_counter()
    finished: list[dg.DagsterRun] = []
    launcher.wait({launcher.submit("meta_portfolio_job", as_of)}, finished.append)
    [run] = finished
    evaluations = [
        e.event_specific_data
        for e in events(instance, run.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    failures = [
        f"{e.asset_key.to_user_string()}.{e.check_name} ({e.severity.value}): {e.description}"
        for e in evaluations
        if not e.passed
    ]
    state = "success" if run.is_success else "FAILED"
    seconds = time.perf_counter() - started
    print(f"   run:     {run.run_id[:8]}  ({state}, {seconds:.1f}s)  {UI}/runs/{run.run_id}")
    print(f"   checks:  {len(evaluations) - len(failures)} passed, {len(failures)} failed")
    for failure in [*failures, *_failures(instance, [run])]:
        print(f"            - {failure}")
    if not run.is_success:
        return 1
    print_meta(defs.resources["lake"].read(["meta_portfolio"], as_of), as_of)
    return 0


def print_meta(record, as_of: str) -> None:
    """The stored meta-portfolio of ``as_of``: per sleeve its weight and the decision used
    (date, age in days and in the sleeve's sessions, newer runs passed over), the largest
    firm-wide holdings and the walk-forward against the equal weight of the sleeves."""
    from tvq_assets.partitions import catalog
    from tvq_assets.quant import meta as engine

    print(
        f"   profile: {catalog.meta.profile}, lookback {catalog.meta.lookback} common dates; "
        f"decisions at most {catalog.meta.max_decision_age} sessions old"
    )
    for name, row in record.sleeves.iterrows():
        decision = engine.describe_decision(
            row["decision_date"],
            row["decision_age_days"],
            row["decision_age_sessions"],
            row["skipped"],
            as_of=pd.Timestamp(as_of),
        )
        if row["present"]:
            print(
                f"     {name:<14} weight {row['weight']:6.1%}  (profile {row['raw_weight']:6.1%}, "
                f"floor {row['floor']:.0%}, cap {row['cap']:.0%})  {row['champion']}, {decision}"
            )
        else:
            print(f"     {name:<14} MISSING: {row['missing_reason']}")
    top = record.holdings.head(10)
    shown = ", ".join(f"{r.sleeve}:{r.symbol} {r.weight:.1%}" for r in top.itertuples())
    print(f"   top firm-wide holdings ({len(record.holdings)} in all): {shown}")
    if len(record.returns):
        from tvq_assets import summary

        print("   walk-forward:")
        for policy in (engine.META, engine.BASELINE):
            row = record.metrics.loc[policy]
            measured = summary.policy_span(record.returns, record.metrics, policy)
            print(
                summary.metrics_line(
                    policy, row["sharpe"], row["max_drawdown"], row["cagr"], measured
                )
            )
        note = summary.trails_baseline_note(
            record.metrics,
            engine.META,
            engine.BASELINE,
            what="the meta-portfolio",
            against="the equal weight of its sleeves",
        )
        if note:
            print(note)


def _last_session(lake, sleeve_name: str, newest: str) -> str:
    """The newest run partition, or the sleeve's last stored session when its data (e.g. a
    fixed export) ends earlier: a run after it would find every symbol stale."""
    if not lake.exists(["bars"], sleeve_name):
        return newest
    bars = lake.read(["bars"], sleeve_name).bars
    if bars.empty:
        return newest
    return min(pd.Timestamp(newest), bars["date"].max()).strftime("%Y-%m-%d")


def _failures(instance, runs: list[dg.DagsterRun]) -> list[str]:
    """One line per failed step (the step and the first line of its error), or the run's own
    failure when no step failed (e.g. its process died)."""
    from tvq_assets.launch import events

    lines = []
    for run in runs:
        steps = events(instance, run.run_id, dg.DagsterEventType.STEP_FAILURE)
        for event in steps:
            error = event.step_failure_data.error
            cause = error.cause if error and error.cause else error
            message = (cause.message if cause else event.message or "").strip()
            lines.append(f"{event.step_key}: {message.splitlines()[0] if message else '?'}")
        if run.status == dg.DagsterRunStatus.FAILURE and not steps:
            [*_, failure] = events(instance, run.run_id, dg.DagsterEventType.RUN_FAILURE) or [None]
            message = (failure.message if failure else "") or "no failure event recorded"
            lines.append(f"run {run.run_id[:8]} ({run.job_name}): {message.splitlines()[0]}")
        elif run.status == dg.DagsterRunStatus.CANCELED:
            lines.append(f"run {run.run_id[:8]} ({run.job_name}) was canceled")
    return lines


def _summarise(lake, sleeve_name: str, key: str, fresh: set[str]) -> None:
    """What this run produced. A value stored by an earlier run is never shown as today's: when
    a stage did not materialise now, the summary says so and stops there."""
    champion = None
    if "backtest" in fresh:
        with contextlib.suppress(Exception):  # the selection line then names no champion
            champion = lake.read(["backtest"], key).champion
    for asset in ("bars", "returns", "selection", "backtest", "portfolio"):
        if asset not in fresh:
            print(
                f"   {asset}: not produced by this run; nothing downstream is shown "
                f"(older values stay in {lake.root_path})"
            )
            return
        try:
            _summarise_asset(lake, asset, sleeve_name if asset == "bars" else key, champion)
        except Exception as error:  # the summary only shows what is stored: never stop the flow
            print(f"   {asset}: its summary failed ({type(error).__name__}: {error})")
    print(f"   files:   {lake.root_path}")


def _summarise_asset(lake, asset: str, partition: str, champion: str | None = None) -> None:
    from tvq_assets import summary
    from tvq_assets.partitions import previous_stored_run

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
            f"   {summary.selection_label(champion)}: {len(winners)} (HTR stage "
            f"{int(winners['stage'].max())}): {', '.join(winners.index[:25])}"
        )
    elif asset == "portfolio":
        stored = lake.read(["portfolio"], partition)
        weights = stored.weights["weight"]
        # The champion runs its own scorer on the latest window, so its holdings may include
        # symbols outside `selection` (which is the Log-MPS choice on the full window).
        owner = f"{champion}'s winners" if champion else "winners"
        print(f"   today's portfolio ({owner}, {int((weights > 0).sum())} names): ", end="")
        print(summary.holdings(weights))
        # No stored previous run: the book was built from cash (its trades start at zero).
        from_cash = previous_stored_run(lake, "portfolio", partition) is None
        print(summary.turnover(stored.turnover, from_cash))
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
            measured = summary.policy_span(bundle.returns, bundle.metrics, policy)
            print(
                summary.metrics_line(
                    policy, row["sharpe"], row["max_drawdown"], row["cagr"], measured
                )
            )
        days = verdict.get("as_promoted_days", float("nan")) if bundle.has_as_promoted else 0
        if not days > 0:  # NaN too: the first window crowns nobody, so a young record is empty
            print(f"     {'as promoted':<28} no record yet (the first window crowns nobody)")
        else:
            # The selection process's own record (who the rule crowned at each window, held in
            # turn), next to the hindsight record of today's champion over every past date.
            switches = int(verdict["as_promoted_switches"])
            stream = bundle.as_promoted
            measured = (
                f"{summary.span(stream.index, stream['window'].nunique())}, "
                f"{switches} switch{'' if switches == 1 else 'es'}; "
                f"PSR {verdict['as_promoted_psr']:.2f}, "
                f"DSR {verdict['as_promoted_deflated_sharpe']:.2f}"
            )
            print(
                summary.metrics_line(
                    "as promoted",
                    verdict["as_promoted_sharpe"],
                    verdict["as_promoted_max_drawdown"],
                    verdict["as_promoted_cagr"],
                    measured,
                )
            )
        for note in (
            summary.deflated_sharpe_note(verdict),
            summary.trails_baseline_note(
                bundle.metrics,
                verdict["champion"],
                "baseline_universe",
                what="the champion",
                against="the equal weight of the universe",
            ),
        ):
            if note:
                print(note)


def production(sleeves: list[str] | None) -> int:
    """The production flow from the command line: each sleeve's bars, then its newest run, as
    runs of the code location through the queue, on the services production mode names."""
    from tvq_resources.mode import ProductionUnavailable, check_production

    try:
        check_production({**os.environ, "TV_ORCH_MODE": "production"})
    except ProductionUnavailable as error:
        print(error, file=sys.stderr)
        return 2
    # Read when the definitions are imported (below, in `flow`): the resources of these runs. A
    # daemon that is already running (`make dev`) executes them with its own code server's mode.
    os.environ["TV_ORCH_MODE"] = "production"
    return flow(sleeves, None)


def backfill(sleeve_name: str, start: str, end: str, wait: bool) -> int:
    """Request a backfill of the range's run partitions of one sleeve from Dagster's backfill
    machinery (as the UI does). A running daemon (``make dev``) executes it; without one, this
    command does the daemon's passes itself and executes the runs here, one at a time. A line per
    partition as its run finishes, then a table."""
    from tvq_assets import launch
    from tvq_assets.partitions import run_key

    try:
        dates = pd.date_range(start, end, freq="D")
    except ValueError as error:
        print(f"tvq backfill: START and END are dates (YYYY-MM-DD): {error}", file=sys.stderr)
        return 2
    keys = [run_key(d, sleeve_name) for d in dates]
    instance = dg.DagsterInstance.get()
    with launch.Launcher(
        instance, exit_when_storage_lost=True, on_dead=tracking_of_dead_runs(instance)
    ) as launcher:
        problem = _backfill_problem(launcher.partition_keys("daily"), sleeve_name, keys)
        if problem:
            print(f"tvq backfill {sleeve_name} {start} {end}: {problem}", file=sys.stderr)
            return 2
        backfill_id = launcher.backfill("daily", keys)
        running = launch.daemons_running(instance)
        daemon = {launch.BACKFILLS, launch.QUEUE} <= running
        page = f"{UI}/runs/b/{backfill_id}"
        print(f"backfill {backfill_id}: {len(keys)} run partitions of {sleeve_name}, {page}")
        if not wait:
            print(
                "the daemon of `make dev` executes it"
                if daemon
                else "no daemon is running: nothing executes it until one runs (`make dev`); "
                "without --no-wait, tvq backfill executes it itself"
            )
            return 0
        print(
            "the daemon of `make dev` executes it"
            if daemon
            else "no daemon is running: this command executes it, one run at a time",
            flush=True,
        )
        return watch_backfill(launcher, backfill_id, keys)


def _backfill_problem(known: list[str], sleeve_name: str, keys: list[str]) -> str | None:
    """What is wrong with the backfill's partition keys (None: nothing)."""
    sleeves = sorted({key.split("|")[1] for key in known})
    if sleeve_name not in sleeves:
        return f"no sleeve {sleeve_name!r} in the catalog (sleeves: {', '.join(sleeves)})"
    if not keys:
        return "START is after END: no date to backfill"
    dates = sorted(key.split("|")[0] for key in known if key.endswith(f"|{sleeve_name}"))
    outside = [key.split("|")[0] for key in keys if key not in set(known)]
    if outside:
        return (
            f"{len(outside)} date(s) are not run partitions ({', '.join(outside[:3])}"
            f"{', ...' if len(outside) > 3 else ''}); the run partitions of {sleeve_name} are "
            f"{dates[0]} .. {dates[-1]}"
        )
    return None


def watch_backfill(launcher, backfill_id: str, keys: list[str], poll_seconds: float = 2.0) -> int:
    """Until the backfill is over: the daemon's passes when no daemon runs, a line per run as it
    finishes, then the table of every partition and its result (exit 1 if one did not succeed).
    A partition's outcome is its newest run: a retry (the daemon's, of a run whose process died)
    replaces the run it retries, which is reported as "retry follows"."""
    from tvq_assets import launch

    started = time.perf_counter()
    shown: set[str] = set()
    done: set[str] = set()
    while True:
        launcher.step(backfills=True)
        runs = launcher.backfill_runs(backfill_id)  # newest first
        newest: dict[str, dg.DagsterRun] = {}
        for run in runs:
            newest.setdefault(run.tags.get("dagster/partition", "?"), run)
        # A failed run that the daemon's retry will re-execute is not the partition's outcome.
        retries = launch.RETRIES in launcher.daemons
        retried = {
            run.run_id
            for run in runs
            if retries
            and run.status == dg.DagsterRunStatus.FAILURE
            and run.tags.get("dagster/will_retry") == "true"
        }
        for run in reversed(runs):  # oldest first
            key = run.tags.get("dagster/partition", "?")
            if not run.is_finished or run.run_id in shown:
                continue
            shown.add(run.run_id)
            if run.run_id not in retried:
                done.add(key)
            print(
                f"[{len(done):>3}/{len(keys)}] {key}  {run.status.value}  {UI}/runs/{run.run_id}  "
                f"({time.perf_counter() - started:.0f}s)"
                f"{'  retry follows' if run.run_id in retried else ''}",
                flush=True,
            )
        unfinished = [r for r in newest.values() if not r.is_finished or r.run_id in retried]
        if not unfinished and (len(newest) == len(keys) or launcher.backfill_over(backfill_id)):
            break
        launcher.explain_waits(r.run_id for r in runs if r.status == dg.DagsterRunStatus.QUEUED)
        time.sleep(poll_seconds)
    if launch.BACKFILLS not in launcher.daemons:
        launcher.step(backfills=True)  # the backfill's own pass marks it completed
    width = max(len(k) for k in keys)
    print(f"\n{'partition':<{width}}  result")
    for key in keys:
        print(f"{key:<{width}}  {newest[key].status.value if key in newest else 'NOT RUN'}")
    succeeded = [k for k in keys if k in newest and newest[k].is_success]
    record = launcher.instance.get_backfill(backfill_id)
    state = record.status.value if record is not None else "?"
    error = record.error.message.strip().splitlines()[0] if record and record.error else ""
    print(
        f"\n{len(succeeded)} succeeded, {len(keys) - len(succeeded)} failed "
        f"(backfill {backfill_id}: {state}{f': {error}' if error else ''})"
    )
    return 0 if len(succeeded) == len(keys) else 1


def lake_command(
    action: str,
    asset: str | None,
    partition: str | None,
    recompute: bool,
    older_than_days: float | None = None,
) -> int:
    """``verify``: list damaged values and leftovers of killed writes (exit 1 if a value is
    damaged), and survey the window cache; ``clean``: remove the leftovers (and the cache's
    unreadable entries); ``prune-cache``: remove window-cache entries older than
    ``older_than_days`` (all without it); ``quarantine``: move one value to ``.corrupt/`` and
    recompute it (its sleeve's bars, or that asset alone for a sleeve × run partition)."""
    from tvq_assets.definitions import defs
    from tvq_resources.window_cache import lake_window_cache

    lake = defs.resources["lake"]
    cache = lake_window_cache(lake)
    if action == "prune-cache":
        removed = cache.prune(older_than_days)
        age = "" if older_than_days is None else f" older than {older_than_days:g} days"
        print(f"window cache {cache.root}: removed {removed.describe()}{age}")
        print(f"window cache now: {cache.survey().describe()}")
        return 0
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
        # A bad cache entry is a miss (recomputed and rewritten on use), never an input.
        print(f"window cache {cache.root}: {cache.survey().describe()}")
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
        pruned = cache.prune(older_than_days=float("inf"))
        print(f"window cache {cache.root}: removed {pruned.describe()}")
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
    for line in _failures(instance, [instance.get_run_by_id(result.run_id)]):
        print(f"FAILED: {line}")
    print(f"recomputed {asset}[{partition}]: {'success' if result.success else 'FAILED'}")
    return 0 if result.success else 1


def track(sleeve_name: str, start: str, end: str) -> int:
    """Record in MLflow what the lake holds for a date range of one sleeve, without recomputing:
    missing MLflow runs or stages of them (e.g. after the tracking server was down)."""
    from tvq_assets.definitions import ASSETS, defs
    from tvq_assets.tracking import replay

    tracker = defs.resources["mlflow"]
    recorded = replay.replay(
        tracker,
        dg.DagsterInstance.get(),
        defs.resources["lake"],
        sleeve_name,
        start,
        end,
        assets=ASSETS,
    )
    for partition, stages in recorded:
        print(f"{partition}: {', '.join(stages) or 'already complete'}")
    print(f"{len(recorded)} partition(s) of {sleeve_name} in MLflow at {tracker.shown_uri}")
    return 0


def diff(sleeve_name: str, run_a: str, run_b: str, stages: list[str] | None) -> int:
    """Print what changed between two stored run partitions of a sleeve, stage by stage."""
    from tvq_assets.definitions import defs
    from tvq_assets.tracking import diff as stage_diff

    lake = defs.resources["lake"]
    comparison = stage_diff.compare(
        lake, sleeve_name, run_a, run_b, tuple(stages or stage_diff.STAGES)
    )
    print(f"{sleeve_name}: {run_a} -> {run_b}\n")
    print(stage_diff.render(comparison))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tvq", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="libraries' log lines and warnings on the terminal too (also: TVQ_VERBOSE=1); "
        f"by default they go to $DAGSTER_HOME/{library_output.LOG_FILE}",
    )
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
    run_backfill.add_argument(
        "--no-wait", action="store_true", help="submit only; do not show the runs finish"
    )
    run_lake = commands.add_parser("lake", help="verify, clean or repair the Parquet lake")
    run_lake.add_argument("action", choices=["verify", "clean", "quarantine", "prune-cache"])
    run_lake.add_argument("asset", nargs="?", help="quarantine: the asset, e.g. bars")
    run_lake.add_argument("partition", nargs="?", help="quarantine: e.g. crypto, 2026-11-20|crypto")
    run_lake.add_argument(
        "--no-recompute", action="store_true", help="quarantine only; recompute later"
    )
    run_lake.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="prune-cache: only entries written more than DAYS days ago (default: every entry)",
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
    if arguments.verbose:
        os.environ[library_output.VERBOSE] = "1"
    library_output.quiet_libraries()
    if arguments.command == "demo":
        return flow(arguments.sleeve, arguments.as_of)
    if arguments.command == "production":
        return production(arguments.sleeve)
    if arguments.command == "lake":
        return lake_command(
            arguments.action,
            arguments.asset,
            arguments.partition,
            not arguments.no_recompute,
            arguments.older_than,
        )
    if arguments.command == "track":
        return track(arguments.sleeve, arguments.start, arguments.end)
    if arguments.command == "diff":
        return diff(arguments.sleeve, arguments.run_a, arguments.run_b, arguments.stage)
    return backfill(arguments.sleeve, arguments.start, arguments.end, not arguments.no_wait)


def run() -> NoReturn:
    """The ``tvq`` entry point: :func:`main`, then :func:`finish` with its exit status."""
    note = use_repository_home()
    if note:
        print(note, file=sys.stderr)
    problem = instance_settings_problem(os.environ["DAGSTER_HOME"])
    if problem and sys.argv[1:2] and sys.argv[1] in LAUNCHING_COMMANDS:
        print(f"tvq: {problem}", file=sys.stderr)
        finish(2)
    try:
        status = main()
    except SystemExit as stop:  # argparse's usage errors and --help
        status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except KeyboardInterrupt:
        status = 130
    except BaseException:
        traceback.print_exc()
        status = 1
    finish(status)


def finish(status: int) -> NoReturn:
    """End the process with ``status`` after Python's exit handlers, skipping C++ static teardown.

    Every command has committed its work (runs, lake files, MLflow runs) and closed the instance
    before this point. What is skipped is the destruction of native thread pools: Arrow's tears
    down at exit racing a still-joinable worker now and then ("terminate called without an active
    exception", apache/arrow#34314), which turned a finished ``tvq demo`` into exit -6.
    """
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
