"""The soak: production replayed day after day over a simulated calendar, with nothing done by hand.

``python -m tvq_assets.soak --days 14`` (``make soak``) builds a workplace of its own (a
``DAGSTER_HOME`` with the project's ``dagster.yaml``, a lake, an MLflow store and a catalog of
three sleeves), then for every simulated day:

1. sets ``TVQ_NOW`` to 06:00 UTC of the next morning (production runs after the day closed);
2. lets the sources reveal that day: the synthetic sleeves grow by a day on their own (their
   market ends at ``now``); the real files of the mixed-venue sleeve are replayed, each cut at the
   simulated date (its lines copied byte for byte), with the day's scripted edits;
3. runs exactly what ``tvq production`` runs (``cli.flow``: each sleeve's bars, then its newest
   run, then the meta-portfolio, through the run queue), in this process, or in a child process
   that is killed (``SIGKILL``) in the middle of a step on the kill day, after which the day is run
   again and the dead run must not block it;
4. compares every sleeve's and the meta-portfolio's outcome with the day's expected one, which the
   soak derives from its own scenario list, not from the platform.

Scenarios inside the span (day offsets from ``--start``; weekends, holidays and the DST switch come
from the calendar itself): the first run on an empty lake; a source revision of a recent close; a
listing (a symbol whose file appears mid-span); a bar delivered a day late; a ``kill -9`` of a run
mid-step; an outage day with no run (a gap); a delisting (a file that stops); a toxic print under
``toxic_policy: fail`` (that sleeve fails naming the rule while the print is inside its window;
the meta-portfolio holds its last decision while that is recent enough, then fails naming it) and
one under ``quarantine`` (the run succeeds with the symbol excluded).

``--exchange`` adds a fourth sleeve whose source is the exchange kind, pointed at a replay of
Binance's API on 127.0.0.1 (``tvq_resources.exchange_replay``) serving real kline files; the
replay's clock is each day's ``TVQ_NOW``, so each morning reveals the day just closed. The span
must lie inside the files (default start 2022-09-01); the synthetic market is then moved before it.

At the end: no run is left STARTED or QUEUED; MLflow has exactly one run per Dagster run of a
partition, with the right status; every registered decision names the champion of the verdict
stored that day and the ``champion`` alias names the newest; ``lake verify`` is clean. It prints a
table (date, sleeve, partition, outcome, champion, turnover, seconds) and one line::

    soak: <days> days, <runs> runs, <unexpected> unexpected, <stuck> stuck, mlflow <t>/<r>,
      lake verify <ok|problems>   (on one line)

and exits 1 on any unexpected outcome or failed end check.
"""

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tvq_resources.exchange_replay import ReplayExchange, markets_from

ROOT = Path(__file__).resolve().parents[1]
SHARED_REAL = ROOT.parent / "shared" / "data" / "real" / "tradfi_yfinance_testdata"
# The CI span: two weekends, Good Friday (New York and London closed), Easter Monday (London
# closed, New York open), London's switch to summer time (2024-03-31).
DEFAULT_START = "2024-03-25"
DEFAULT_DAYS = 14
# A year for `make soak DAYS=365` ends inside the real files (they stop on 2024-08-21).
YEAR_START = "2023-08-20"

# The exchange sleeve (`--exchange`): a replay of Binance's API serving real spot kline files
# (2021-01-01 .. 2022-09-30; a LUNA collapse, delistings, stablecoins, leveraged tokens).
SHARED_KLINES = ROOT.parent / "shared" / "data" / "real" / "crypto_binance_klines_yodumini"
# A 14-day span from here ends on 2022-09-14, inside the files.
EXCHANGE_START = "2022-09-01"
# LUNAUSDT's collapse, halt (no candle 2022-05-14 .. 2022-05-30) and reused symbol (+17,739,900%
# on 2022-05-31) are inside the returns window (160 days) of every run until 2022-11-06, past the
# files' end: each run must exclude the symbol for one of these defects (the halt's missing
# returns, `non_null_after_genesis`, is the rule the runs name), never trade it.
EXCHANGE_TOXIC_SYMBOL = "LUNAUSDT"
EXCHANGE_TOXIC_WINDOW = (pd.Timestamp("2022-05-31"), pd.Timestamp("2022-11-06"))
EXCHANGE_TOXIC_RULES = ("non_null_after_genesis", "toxic_return")
# The synthetic market of the usual spans starts on this date; its values are offsets from its
# start, so the usual spans keep it (their results stay the same). An exchange span, 2022, moves
# it (and the first run partition) to this many days before the span.
SYNTHETIC_START = "2023-01-01"
FIRST_RUN = "2023-06-01"
EXCHANGE_SYNTHETIC_HISTORY_DAYS = 500
EXCHANGE_FIRST_RUN_DAYS = 90

# The mixed-venue sleeve: US names (New York) and London names, real Yahoo files.
US_FILES = ("CALM-1d-no-bad-divs.csv", "EWG-1d-no-bad-divs.csv", "SAND-1d-bad-div.csv")
LONDON_FILES = (
    "KMR-L-1d-no-bad-divs.csv",
    "HSBK-IL-1d-no-bad-divs.csv",
    "ABDP-L-1d-bad-div.csv",
    "ADIG-L-1d-bad-div.csv",
    "PSH-L-1d-bad-div.csv",
    "REL-L-1d-bad-div.csv",
    "RGL-L-1d-bad-div.csv",
    "TEM-L-1d-bad-div.csv",
)

RUNNING_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


# ----------------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------------
def venues_open(start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    """The days both venues of the mixed sleeve (New York and London) hold a session."""
    import exchange_calendars as xc

    first, last = start - pd.Timedelta(days=7), end + pd.Timedelta(days=7)
    new_york = xc.get_calendar("XNYS", start=first, end=last).sessions
    london = xc.get_calendar("XLON", start=first, end=last).sessions
    both = new_york.intersection(london)
    return both[(both >= start) & (both <= end)]


# Days after the start at which each scenario happens (at the first suitable day from there).
SHORT_SPAN = {
    "revision": 2,  # the venue sleeve's file revises a close two sessions back
    "listing": 3,  # a venue symbol's file appears, its history starting that day
    "kill": 6,  # the day's production is killed mid-step, then run again
    "late_bar": 7,  # a venue symbol's newest bar arrives a day late
    "gap": 9,  # an outage: no production that day
    "delisting": 10,  # a venue symbol's file stops growing
    "toxic": 11,  # a toxic print: crypto (policy fail) and tradfi (quarantine)
    "postgres_restart": 4,  # production mode: Postgres stopped and started before the day
    "mlflow_restart": 5,  # production mode: the MLflow server stopped and started
}
# A long span spreads them, and places the toxic print early enough to leave crypto's window
# (its lookback is 160 days) before the end: the sleeve must recover by itself.
LONG_SPAN = {
    "revision": 30,
    "listing": 45,
    "kill": 60,
    "late_bar": 75,
    "gap": 90,
    "delisting": 105,
    "toxic": 120,
    "postgres_restart": 50,
    "mlflow_restart": 80,
}
RESTARTS = ("postgres_restart", "mlflow_restart")
# The services a caller's environment may name; a soak runs on its workplace's own (or, in
# production mode, on the services it starts itself).
CALLERS_SERVICES = ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "TVQ_POSTGRES_URL")


@dataclass(frozen=True)
class Scenarios:
    """What happens on which day: each scenario at the first day on or after ``start + offset``
    that suits it (a source scenario on a day both venues trade; the others on any day)."""

    start: pd.Timestamp
    days: int
    offsets: dict[str, int] = field(default_factory=lambda: dict(SHORT_SPAN))
    production: bool = False  # the service restarts happen only on real services
    listed_symbol: str = "RGL-L"
    late_symbol: str = "CALM"
    delisted_symbol: str = "TEM-L"
    revised_symbol: str = "EWG"
    # Scenarios about the venue sleeve's files: placed on a day both of its venues trade.
    on_sessions: tuple[str, ...] = ("revision", "listing", "late_bar", "delisting", "toxic")

    @property
    def end(self) -> pd.Timestamp:
        return self.start + pd.Timedelta(days=self.days - 1)

    @property
    def dates(self) -> dict[str, pd.Timestamp]:
        """Each scenario's day inside the span (a scenario that falls after it is left out)."""
        sessions = venues_open(self.start, self.end + pd.Timedelta(days=60))
        every_day = pd.date_range(self.start, self.end + pd.Timedelta(days=60))
        placed: dict[str, pd.Timestamp] = {}
        for name, offset in self.offsets.items():
            if name in RESTARTS and not self.production:
                continue
            suitable = sessions if name in self.on_sessions else every_day
            # A restart happens before the day's runs and expects nothing of them, so it may share
            # a day; the other scenarios get a day each, so that every outcome has one cause.
            taken = [] if name in RESTARTS else [d for n, d in placed.items() if n not in RESTARTS]
            free = suitable[
                (suitable >= self.start + pd.Timedelta(days=offset)) & ~suitable.isin(taken)
            ]
            if len(free) and free[0] <= self.end:
                placed[name] = free[0]
        return placed

    def on(self, name: str, day: pd.Timestamp) -> bool:
        return self.dates.get(name) == day

    def day_of(self, name: str) -> pd.Timestamp | None:
        return self.dates.get(name)

    def described(self) -> list[str]:
        return [f"{name} {day:%Y-%m-%d %a}" for name, day in self.dates.items()]


# ----------------------------------------------------------------------------------------------
# The workplace: environment, catalog, replayed files
# ----------------------------------------------------------------------------------------------
def soak_catalog(
    workdir: Path,
    scenarios: Scenarios,
    venues_dir: Path | None,
    exchange: dict | None = None,
) -> dict:
    """Three small sleeves (two synthetic, one of real files replayed) and their meta-portfolio;
    with ``exchange`` (``{"url": ..., "bases": [...]}``, the replay's) a fourth sleeve whose bars
    come from the exchange's API, and the synthetic market moved before the span."""
    toxic_date = scenarios.day_of("toxic")
    synthetic_start, first_run = SYNTHETIC_START, FIRST_RUN
    if exchange is not None:
        synthetic_start = (
            f"{scenarios.start - pd.Timedelta(days=EXCHANGE_SYNTHETIC_HISTORY_DAYS):%F}"
        )
        first_run = f"{scenarios.start - pd.Timedelta(days=EXCHANGE_FIRST_RUN_DAYS):%F}"
    small = {
        "lookback": 160,
        "train": 100,
        "test": 20,
        "min_history": 60,
        "feature_lookback": 60,
        "cluster_lookbacks": [60, 120],
        "min_winners": 4,
        "max_winners": 10,
        "infeasible_cap": "raise",
    }
    faults = (
        [] if toxic_date is None else [{"kind": "toxic_spike", "date": f"{toxic_date:%Y-%m-%d}"}]
    )
    sleeves: dict = {
        "crypto": {
            "source": {
                "kind": "synthetic",
                "seed": 7,
                "symbols": 24,
                "clusters": 4,
                "start": synthetic_start,
                "faults": faults,
            },
            "calendar": "crypto",
            "toxic_policy": "fail",
            "policy": {**small, "step": 10},
        },
        "tradfi": {
            "source": {
                "kind": "synthetic",
                "seed": 11,
                "symbols": 24,
                "clusters": 4,
                "start": synthetic_start,
                "faults": faults,
            },
            "calendar": "weekday",
            "toxic_policy": "quarantine",
            "policy": small,
        },
    }
    if venues_dir is not None:
        sleeves["venues"] = {
            "source": {"kind": "csv", "path": str(venues_dir), "pattern": "{symbol}.csv"},
            "calendar": "weekday",
            "venues": {"*-L": "XLON", "*-IL": "XLON", "*": "XNYS"},
            "toxic_policy": "quarantine",
            "policy": {**small, "min_universe": 3},
        }
    if exchange is not None:
        sleeves["exchange"] = {
            "source": {
                "kind": "exchange",
                "exchange": "binance",
                "market": "spot",
                "quote": "USDT",
                "bases": list(exchange["bases"]),
                "url": exchange["url"],
            },
            "calendar": "crypto",
            # The real files hold a LUNA collapse and a reused symbol (+17,739,900% in a day):
            # inside every 2022 window; the sleeve trades without it.
            "toxic_policy": "quarantine",
            "policy": small,
        }
    return {
        "first_run": first_run,
        "sleeves": sleeves,
        "meta": {"sleeves": list(sleeves), "missing_sleeve": "fail"},
    }


def session_date(field_text: str) -> pd.Timestamp | None:
    """The session date of a file's first field: a date (``2024-03-28`` or a local timestamp with
    its offset, whose date is the session) or epoch seconds/milliseconds (a UTC day)."""
    text = field_text.strip().strip('"')
    if not text:
        return None
    if text[:4].isdigit() and len(text) >= 10 and text[4] == "-":
        return pd.Timestamp(text[:10])
    try:
        value = float(text)
    except ValueError:
        return None
    return pd.Timestamp(int(value / 1000 if value > 1e11 else value), unit="s").normalize()


@dataclass
class Replay:
    """Real files revealed up to a simulated date, line for line, with the scripted edits."""

    source: Path
    target: Path
    scenarios: Scenarios
    files: tuple[str, ...]
    revised: dict[str, pd.Timestamp] = field(default_factory=dict)

    def reveal(self, as_of: pd.Timestamp) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        s = self.scenarios
        for name in self.files:
            symbol = name.split("-1d-")[0]
            listing, delisting = s.day_of("listing"), s.day_of("delisting")
            if symbol == s.listed_symbol and listing is not None and as_of < listing:
                continue  # not listed yet
            header, *lines = (self.source / name).read_text().splitlines(keepends=True)
            kept = []
            for line in lines:
                date = session_date(line.split(",", 1)[0])
                if date is None or date > as_of:
                    continue
                if symbol == s.listed_symbol and listing is not None and date < listing:
                    continue  # a listing has no history before its first day
                if symbol == s.delisted_symbol and delisting is not None and date > delisting:
                    continue  # delisted: the file stops growing
                if symbol == s.late_symbol and s.on("late_bar", as_of) and date == as_of:
                    continue  # today's bar arrives tomorrow
                if symbol == s.revised_symbol and self.revised.get(symbol) == date:
                    line = _revise_close(header, line)
                kept.append(line)
            if s.on("revision", as_of) and symbol == s.revised_symbol:
                dates = [session_date(line.split(",", 1)[0]) for line in kept]
                if len(dates) >= 3:
                    self.revised[symbol] = dates[-3] if dates[-1] >= dates[0] else dates[2]
                    at = dates.index(self.revised[symbol])
                    kept[at] = _revise_close(header, kept[at])
            _write_atomically(self.target / f"{symbol}.csv", header + "".join(kept))


def _revise_close(header: str, line: str) -> str:
    """The same line with its close 1% higher (and its high raised to stay consistent)."""
    columns = [c.strip().lower() for c in header.split(",")]
    values = line.rstrip("\n").split(",")
    close, high = columns.index("close"), columns.index("high")
    revised = float(values[close]) * 1.01
    values[close] = repr(revised)
    values[high] = repr(max(float(values[high]), revised))
    return ",".join(values) + "\n"


def _write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text)
    scratch.replace(path)


# ----------------------------------------------------------------------------------------------
# Expected outcomes (the soak's own model, from its scenarios)
# ----------------------------------------------------------------------------------------------
def partition_date(calendar: str, as_of: pd.Timestamp, last_bar: pd.Timestamp | None):
    """The run date production picks for a sleeve: the as-of date, or the sleeve's last session
    when its data ends earlier (a weekday sleeve on a weekend or a holiday)."""
    if last_bar is None:
        return as_of
    return min(as_of, last_bar)


def expected_sleeve(name: str, run_date: pd.Timestamp, scenarios: Scenarios, catalog) -> str:
    """``success`` or ``fail:<rule>`` for a sleeve's run of ``run_date``."""
    sleeve = catalog.sleeve(name)
    printed = scenarios.day_of("toxic")
    if sleeve.toxic_policy == "fail" and printed is not None:
        # The print's return is inside the returns window of `lookback` sessions ending at the
        # run date (crypto: every day is a session).
        window_start = run_date - pd.Timedelta(days=sleeve.policy.lookback - 1)
        if window_start <= printed <= run_date:
            return "fail:toxic"
    return "success"


# ----------------------------------------------------------------------------------------------
# One day
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    date: pd.Timestamp
    sleeve: str
    partition: str
    outcome: str
    expected: str
    champion: str = ""
    turnover: str = ""
    seconds: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        if self.expected.startswith("fail"):
            rule = self.expected.partition(":")[2]
            return self.outcome.startswith("fail") and rule in self.outcome.lower()
        return self.outcome == self.expected


def _runs_since(instance, since: float) -> list:
    import dagster as dg

    created = datetime.datetime.fromtimestamp(since, tz=datetime.UTC)
    return list(reversed(instance.get_runs(dg.RunsFilter(created_after=created))))


def _failure_text(instance, run) -> str:
    """The failing checks' and steps' text of a run (what names the rule)."""
    import dagster as dg

    from tvq_assets.launch import events

    texts = [
        f"{e.event_specific_data.check_name}: {e.event_specific_data.description or ''}"
        for e in events(instance, run.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        if not e.event_specific_data.passed
    ]
    for e in events(instance, run.run_id, dg.DagsterEventType.STEP_FAILURE):
        error = e.step_failure_data.error
        texts.append((error.cause.message if error and error.cause else error.message) or "")
    for e in events(instance, run.run_id, dg.DagsterEventType.RUN_FAILURE):
        texts.append(e.message or "")
    return " | ".join(t.strip().splitlines()[0] for t in texts if t.strip())


def _outcome(instance, run) -> str:
    if run is None:
        return "not run"
    if run.is_success:
        return "success"
    return f"fail: {_failure_text(instance, run)[:300]}"


def kill_mid_step(env: dict[str, str], instance, log: Path, timeout: float = 600.0) -> str | None:
    """Start the day's production in a child process and SIGKILL it once a `daily` run is inside
    a step after `returns`. Returns the killed run's id (None if no step was reached in time)."""
    import dagster as dg

    from tvq_assets.launch import events

    started = time.time()
    with log.open("a") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "tvq_assets.cli", "demo"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while time.time() - started < timeout and child.poll() is None:
            for run in _runs_since(instance, started):
                if run.job_name != "daily" or run.status != dg.DagsterRunStatus.STARTED:
                    continue
                steps = [
                    e.step_key for e in events(instance, run.run_id, dg.DagsterEventType.STEP_START)
                ]
                if any(step not in ("returns",) for step in steps):
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                    return run.run_id
            time.sleep(0.2)
        return None
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


# ----------------------------------------------------------------------------------------------
# End checks
# ----------------------------------------------------------------------------------------------
def mlflow_check(tracker, runs: list) -> tuple[int, int, list[str]]:
    """(tracked, expected, problems): one top-level MLflow run per Dagster run of a partition,
    FINISHED for a success and FAILED otherwise."""
    from mlflow.entities import ViewType

    client = tracker.client
    experiments = [
        e.experiment_id
        for e in client.search_experiments(view_type=ViewType.ALL)
        if e.name.startswith("tvq-")
    ]
    by_dagster_run: dict[str, list] = {}
    page = None
    while experiments:
        found = client.search_runs(experiments, max_results=1000, page_token=page)
        for mlflow_run in found:
            tags = mlflow_run.data.tags
            if "mlflow.parentRunId" in tags:
                continue
            by_dagster_run.setdefault(tags.get("dagster.run_id", "?"), []).append(mlflow_run)
        page = found.token
        if not page:
            break
    problems, tracked = [], 0
    for run in runs:
        mine = by_dagster_run.get(run.run_id, [])
        want = "FINISHED" if run.is_success else "FAILED"
        if len(mine) != 1:
            problems.append(
                f"{run.job_name}[{run.tags.get('dagster/partition')}] run {run.run_id[:8]}: "
                f"{len(mine)} MLflow runs"
            )
            continue
        if mine[0].info.status != want:
            problems.append(
                f"{run.job_name}[{run.tags.get('dagster/partition')}] run {run.run_id[:8]} is "
                f"{run.status.value}, its MLflow run {mine[0].info.status} (want {want})"
            )
            continue
        tracked += 1
    return tracked, len(runs), problems


def registry_check(tracker, lake, successes: dict[str, list[str]]) -> list[str]:
    """Every decision recorded in the registry names the champion of the verdict stored for its
    partition, and the `champion` alias names the newest one."""
    from tvq_assets.tracking import registry

    problems = []
    for sleeve_name, partitions in successes.items():
        if not partitions:
            continue
        name = registry.model_name(sleeve_name)
        versions = tracker.model_versions(name)
        decisions: dict[str, dict] = {}
        for version in versions:
            for tag, value in version.tags.items():
                if tag.startswith("decision."):
                    decisions.setdefault(tag.removeprefix("decision."), json.loads(value))
        newest = max(partitions)
        for partition in partitions:
            day = partition.split("|")[0]
            verdict = lake.read(["backtest"], partition).verdict.iloc[0]
            decision = decisions.get(day)
            if decision is None:
                problems.append(f"{name}: no decision recorded for {day}")
            elif decision["champion"] != verdict["champion"]:
                problems.append(
                    f"{name}: decision of {day} names {decision['champion']}, the verdict "
                    f"{verdict['champion']}"
                )
        champion = tracker.client.get_model_version_by_alias(name, registry.CHAMPION)
        verdict = lake.read(["backtest"], newest).verdict.iloc[0]
        if champion.tags.get("tvq.policy") != verdict["champion"]:
            problems.append(
                f"{name}@champion is {champion.tags.get('tvq.policy')}, the newest verdict "
                f"({newest}) {verdict['champion']}"
            )
    return problems


# ----------------------------------------------------------------------------------------------
# Evidence: each scenario must have shown its effect (a soak that saw nothing proves nothing)
# ----------------------------------------------------------------------------------------------
def _excluded(lake, partition: str) -> dict[str, str]:
    """{symbol: rule} of a stored returns window's exclusions."""
    excluded = lake.read(["returns"], partition).excluded
    return dict(zip(excluded["symbol"], excluded["rule"], strict=True))


def venue_evidence(
    lake, scenarios: Scenarios, day: pd.Timestamp, partition: str, now: pd.Timestamp
) -> list[str]:
    """What the venue sleeve's successful run of ``partition`` must show on ``day``."""
    s = scenarios
    run_date = pd.Timestamp(partition.split("|")[0])
    excluded = _excluded(lake, partition)
    problems = []
    if s.on("revision", day):
        revisions = lake.read(["bars"], "venues").revisions
        seen = revisions[
            (revisions["symbol"] == s.revised_symbol)
            & (pd.to_datetime(revisions["seen_at"]) == now.tz_localize(None))
        ]
        if seen.empty:
            problems.append(f"revision: no revision of {s.revised_symbol} recorded on {day:%F}")
    if (
        s.on("listing", day)
        and s.listed_symbol in lake.read(["bars"], "venues").bars["symbol"].unique()
        and excluded.get(s.listed_symbol) != "min_history"
    ):
        problems.append(
            f"listing: {s.listed_symbol} is {excluded.get(s.listed_symbol, 'eligible')}, "
            "not min_history, on its first day"
        )
    if s.on("late_bar", day) and excluded.get(s.late_symbol) != "no_bar_on_last_day":
        problems.append(
            f"late bar: {s.late_symbol} is {excluded.get(s.late_symbol, 'eligible')} on "
            f"{run_date:%F}, not no_bar_on_last_day"
        )
    late = s.day_of("late_bar")
    if late is not None and run_date > late and excluded.get(s.late_symbol) == "no_bar_on_last_day":
        problems.append(f"late bar: {s.late_symbol} still excluded on {run_date:%F}")
    delisted = s.day_of("delisting")
    if delisted is not None and run_date > delisted and s.delisted_symbol not in excluded:
        problems.append(f"delisting: {s.delisted_symbol} still eligible on {run_date:%F}")
    open_both = venues_open(run_date, run_date)
    if run_date.dayofweek < 5 and not len(open_both):
        # One venue closed for a holiday: its symbols keep their last session.
        closed_lagging = sorted(
            symbol
            for symbol, rule in excluded.items()
            if rule == "no_bar_on_last_day"
            and symbol not in (s.late_symbol, s.delisted_symbol, s.listed_symbol)
        )
        if closed_lagging:
            problems.append(
                f"holiday {run_date:%F}: {closed_lagging} dropped as no_bar_on_last_day"
            )
    return [f"venues {day:%F}: {p}" for p in problems]


def exchange_evidence(lake, day: pd.Timestamp, partition: str) -> list[str]:
    """The exchange sleeve's run of ``day`` stored the day the replay revealed, and nothing of
    the day still open; LUNA's halt and reused symbol (real, inside every window of the files'
    last months) are quarantined, not traded."""
    problems = []
    newest = pd.Timestamp(lake.read(["bars"], "exchange").bars["date"].max())
    if newest.tz is not None:
        newest = newest.tz_convert("UTC").tz_localize(None)
    if newest.normalize() != day:
        problems.append(f"the stored bars end on {newest:%F}, not on the day revealed")
    rule = _excluded(lake, partition).get(EXCHANGE_TOXIC_SYMBOL)
    if (
        EXCHANGE_TOXIC_WINDOW[0] <= day <= EXCHANGE_TOXIC_WINDOW[1]
        and rule not in EXCHANGE_TOXIC_RULES
    ):
        problems.append(
            f"{EXCHANGE_TOXIC_SYMBOL} is {rule or 'eligible'}, not one of {EXCHANGE_TOXIC_RULES}"
        )
    return [f"exchange {day:%F}: {p}" for p in problems]


def state_evidence(lake, partition: str, previous: str | None) -> list[str]:
    """What every successful sleeve run must show: it carried the state of ``previous``, the
    sleeve's newest successful run of the soak before it (Friday's on a weekday sleeve's Monday,
    the last good one after a failed day or an outage; None on its first run or after a failure
    longer than a week): its trades start from that run's book and its tournament defends that
    run's champion; with none, a book from cash and no incumbent."""
    trades = lake.read(["portfolio"], partition).trades
    verdict = lake.read(["backtest"], partition).verdict.iloc[0]
    if previous is None:
        book, incumbent = pd.Series(dtype=float), ""
    else:
        book = lake.read(["portfolio"], previous).weights["weight"]
        incumbent = lake.read(["backtest"], previous).champion
    problems = []
    held = book.reindex(trades.index).fillna(0.0)
    if not np.allclose(trades["previous"].to_numpy(float), held.to_numpy(float), atol=1e-12):
        problems.append(
            f"state: {partition}'s trades do not start from the book of "
            f"{previous or 'cash (no run stored in the week before)'}"
        )
    if str(verdict["incumbent"] or "") != incumbent:
        problems.append(
            f"state: {partition} defended {verdict['incumbent'] or 'no incumbent'}, the newest "
            f"run before it ({previous or 'none'}) crowned {incumbent or 'nobody'}"
        )
    return problems


def quarantine_evidence(lake, scenarios: Scenarios, day: pd.Timestamp, partition: str) -> list:
    """The quarantine sleeve's run on the toxic day lists the toxic symbol."""
    if not scenarios.on("toxic", day):
        return []
    rules = set(_excluded(lake, partition).values())
    if "toxic_return" not in rules:
        return [f"tradfi {day:%F}: the toxic print was not quarantined (exclusions {rules})"]
    return []


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------
class DayLog:
    """The stream a day's output goes to: the current day's log file. Libraries that keep the
    stream they first saw (Ray's log handler) keep this one, and so follow the days."""

    def __init__(self) -> None:
        self.target = sys.__stderr__

    @contextlib.contextmanager
    def writing_to(self, target) -> Iterator[None]:
        self.target = target
        try:
            yield
        finally:
            self.target = sys.__stderr__

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # Ray redirects its workers' output to the stream's descriptor
        return self.target.fileno()


@dataclass
class Soak:
    workdir: Path
    scenarios: Scenarios
    venues_source: Path | None
    print_line: Callable[[str], None] = print
    rows: list[Row] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    day_timeout: float = 900.0
    production: bool = False
    day_log: DayLog = field(default_factory=DayLog)
    # `--exchange`: the folder of kline files the replay of Binance's API serves
    klines_source: Path | None = None
    exchange: ReplayExchange | None = None

    def environment(self) -> dict[str, str]:
        """The whole environment of the soak's process and of everything it starts: the caller's
        services never reach it (its store, lake and cluster are its workplace's own)."""
        env = {k: v for k, v in os.environ.items() if k not in CALLERS_SERVICES}
        env.update(
            DAGSTER_HOME=str(self.workdir / "home"),
            TVQ_SLEEVES=str(self.workdir / "sleeves.yaml"),
            TV_ORCH_MODE="local",
            PYTHONPATH=os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        )
        env.update(self.service_exports)  # production: the services' variables win
        return env

    service_exports: dict[str, str] = field(default_factory=dict)

    def services(self):
        """Postgres, an MLflow server and a Ray head of this soak's own, on free ports."""
        from tvq_resources import services

        return services.Services.resolve(
            self.workdir / "services",
            ports={name: services._free_port() for name in services.DEFAULT_PORTS},
            production_home=self.workdir / "home",
        )

    def prepare(self) -> None:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        instance = "production/dagster.yaml" if self.production else "dagster.yaml"
        shutil.copy(ROOT / "dagster_home" / instance, home / "dagster.yaml")
        if self.production:
            running = self.services()
            with contextlib.redirect_stdout(sys.stderr):
                running.start()
            self.running_services = running
            self.service_exports = running.exports()
        venues_dir = self.workdir / "sources" / "venues" if self.venues_source else None
        exchange = None
        if self.exchange is not None:
            bases = sorted(market.base for market in self.exchange.markets.values())
            exchange = {"url": self.exchange.url, "bases": bases}
        catalog = soak_catalog(self.workdir, self.scenarios, venues_dir, exchange)
        (self.workdir / "sleeves.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
        self.replay = (
            Replay(self.venues_source, venues_dir, self.scenarios, US_FILES + LONDON_FILES)
            if self.venues_source
            else None
        )
        if self.replay is not None:
            self.replay.reveal(self.scenarios.start - pd.Timedelta(days=1))
        # Replaced, not updated: a caller's MLFLOW_TRACKING_URI left in this process would track
        # its runs (and move its registry's aliases) in the caller's store.
        environment = self.environment()
        os.environ.clear()
        os.environ.update(environment)

    def run(self) -> int:
        try:
            with contextlib.ExitStack() as stack:
                if self.klines_source is not None:
                    # The API knows nothing of the span until the first day is revealed.
                    self.exchange = stack.enter_context(
                        ReplayExchange(markets_from(self.klines_source), now=self.scenarios.start)
                    )
                return self._run()
        finally:
            if self.production and hasattr(self, "running_services"):
                with contextlib.redirect_stdout(sys.stderr):
                    self.running_services.stop()

    def _run(self) -> int:
        self.prepare()
        # The catalog and the instance are read when the definitions load: after `prepare`.
        import dagster as dg

        from tvq_assets import cli
        from tvq_assets.definitions import defs
        from tvq_assets.partitions import catalog

        instance = dg.DagsterInstance.get()
        lake = defs.resources["lake"]
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        s = self.scenarios
        self.print_line(
            f"soak: {s.days} days from {s.start:%Y-%m-%d}; sleeves {', '.join(catalog.sleeves)}; "
            f"scenarios: {'; '.join(s.described())}; workplace {self.workdir}"
        )
        self.print_line(
            f"{'date':<14} {'sleeve':<8} {'partition':<11} {'outcome':<44} {'champion':<26} "
            f"{'turnover':>8} {'s':>5}"
        )
        all_runs: list = []
        killed: list[str] = []
        started_soak = time.perf_counter()
        for offset in range(s.days):
            day = s.start + pd.Timedelta(days=offset)
            now = day + pd.Timedelta(days=1, hours=6)
            os.environ["TVQ_NOW"] = f"{now:%Y-%m-%dT%H:%M:%SZ}"
            if self.replay is not None:
                self.replay.reveal(day)
            if self.exchange is not None:
                # The exchange's clock is production's: the day closed, the next one open.
                self.exchange.now = now
            log = logs / f"{day:%Y-%m-%d}.log"
            if s.on("gap", day):
                for name in catalog.sleeves:
                    self._add(Row(day, name, "-", "outage", "outage", note="no production run"))
                continue
            since = time.time()
            restarted = []
            for name in RESTARTS:
                if s.on(name, day):
                    service = name.removesuffix("_restart")
                    with contextlib.redirect_stdout(log.open("a")):
                        self.running_services.restart(service)
                    restarted.append(service)
            note = f"{' and '.join(restarted)} restarted before the day" if restarted else ""
            if s.on("kill", day):
                run_id = kill_mid_step(
                    self.environment() | {"TVQ_NOW": os.environ["TVQ_NOW"]}, instance, log
                )
                if run_id is None:
                    note = "kill: no step reached"
                else:
                    killed.append(run_id)
                    note = f"killed run {run_id[:8]} mid-step, then ran again"
            day_started = time.perf_counter()
            watchdog = self._watchdog(instance, day, since)
            with (
                log.open("a") as out,
                self.day_log.writing_to(out),
                contextlib.redirect_stdout(self.day_log),
                contextlib.redirect_stderr(self.day_log),
            ):
                try:
                    cli.flow(None, None)
                except Exception as error:  # an unexpected crash of the flow is an outcome too
                    print(f"flow raised {type(error).__name__}: {error}")
                finally:
                    watchdog.cancel()
            seconds = time.perf_counter() - day_started
            runs = _runs_since(instance, since)
            all_runs.extend(r for r in runs if r.run_id not in killed)
            self._record_day(instance, lake, catalog, day, now, runs, seconds, note, killed)
        stuck = [r for r in instance.get_runs() if r.status.value in RUNNING_STATUSES]
        decided = [r for r in instance.get_runs() if r.job_name in ("daily", "meta_portfolio_job")]
        tracker = defs.resources["mlflow"]
        tracked, expected_tracked, mlflow_problems = mlflow_check(tracker, decided)
        successes = {
            name: sorted(
                {
                    r.tags["dagster/partition"]
                    for r in decided
                    if r.job_name == "daily"
                    and r.is_success
                    and r.tags.get("dagster/partition", "").endswith(f"|{name}")
                }
            )
            for name in catalog.sleeves
        }
        registry_problems = registry_check(tracker, lake, successes)
        lake_problems = [str(p) for p in lake.verify()]
        unexpected_rows = [r for r in self.rows if not r.ok]
        unexpected = [self._line(r) for r in unexpected_rows] + self.evidence
        killed_left = [
            f"{run_id[:8]} {instance.get_run_by_id(run_id).status.value}"
            for run_id in killed
            if instance.get_run_by_id(run_id).status.value != "FAILURE"
        ]
        if s.day_of("kill") is not None and not killed:
            killed_left.append("the kill day reached no step to kill")
        for title, problems in (
            ("unexpected outcomes", [self._line(r) for r in unexpected_rows]),
            ("evidence missing (a scenario without its effect, state not carried)", self.evidence),
            ("runs left running", [f"{r.job_name} {r.run_id[:8]} {r.status.value}" for r in stuck]),
            ("killed runs not marked failed", killed_left),
            ("MLflow", mlflow_problems),
            ("registry", registry_problems),
            ("lake verify", lake_problems),
        ):
            if problems:
                self.print_line(f"\n{title}:")
                for problem in problems:
                    self.print_line(f"  {problem}")
        verdict = "ok" if not lake_problems else f"{len(lake_problems)} problems"
        self.print_line(
            f"\nsoak: {s.days} days, {len(all_runs)} runs, {len(unexpected)} unexpected, "
            f"{len(stuck)} stuck, mlflow {tracked}/{expected_tracked}, lake verify {verdict}"
            f" (registry {'ok' if not registry_problems else len(registry_problems)}; "
            f"{time.perf_counter() - started_soak:.0f}s)"
        )
        failed = unexpected or stuck or killed_left or mlflow_problems or registry_problems
        return 1 if failed or lake_problems else 0

    def _watchdog(self, instance, day: pd.Timestamp, since: float) -> threading.Timer:
        """Ends the soak (exit 1) when a day's production has not finished in time: a run left
        STARTED or QUEUED blocks the flow, and CI must hear about it, not wait."""

        def stuck() -> None:
            left = [
                f"{r.job_name}[{r.tags.get('dagster/partition')}] {r.run_id[:8]} {r.status.value}"
                for r in instance.get_runs()
                if r.status.value in RUNNING_STATUSES
            ]
            say = sys.__stdout__.write  # stdout is the day's log while the flow runs
            say(
                f"\nsoak: STUCK: the production of {day:%Y-%m-%d} did not finish within "
                f"{self.day_timeout:.0f}s; runs not finished: {left or 'none'}\n"
            )
            say(
                f"soak: {len({r.date for r in self.rows})} days, ? runs, "
                f"{sum(not r.ok for r in self.rows) + 1} unexpected, {len(left)} stuck, "
                "mlflow ?/?, lake verify not run\n"
            )
            sys.__stdout__.flush()
            os._exit(1)

        timer = threading.Timer(self.day_timeout, stuck)
        timer.daemon = True
        timer.start()
        return timer

    def _record_day(self, instance, lake, catalog, day, now, runs, seconds, note, killed) -> None:
        newest_daily: dict[str, object] = {}
        meta_run = None
        for run in runs:  # oldest first: the newest run of a partition wins
            if run.run_id in killed:
                continue
            if run.job_name == "daily":
                newest_daily[run.tags["dagster/partition"].split("|")[1]] = run
            elif run.job_name == "meta_portfolio_job":
                meta_run = run
        for name in catalog.sleeves:
            run = newest_daily.get(name)
            partition = run.tags["dagster/partition"] if run is not None else "-"
            run_date = pd.Timestamp(partition.split("|")[0]) if run is not None else day
            row = Row(
                day,
                name,
                partition.split("|")[0],
                _outcome(instance, run),
                expected_sleeve(name, run_date, self.scenarios, catalog),
                seconds=seconds,
                note=note,
            )
            if run is not None and run.is_success:
                verdict = lake.read(["backtest"], partition).verdict.iloc[0]
                row.champion = str(verdict["champion"])
                row.turnover = f"{lake.read(['portfolio'], partition).turnover:.1%}"
                self.evidence += state_evidence(
                    lake, partition, self._previous_success(name, run_date)
                )
                if name == "venues":
                    self.evidence += venue_evidence(lake, self.scenarios, day, partition, now)
                elif name == "tradfi":
                    self.evidence += quarantine_evidence(lake, self.scenarios, day, partition)
                elif name == "exchange":
                    self.evidence += exchange_evidence(lake, day, partition)
            self._add(row)
        self._add(
            Row(
                day,
                "meta",
                f"{day:%Y-%m-%d}",
                _outcome(instance, meta_run),
                self._expected_meta(day, catalog),
                seconds=seconds,
            )
        )

    def _previous_success(self, sleeve: str, run_date: pd.Timestamp) -> str | None:
        """The partition of ``sleeve``'s newest successful run of the soak dated before
        ``run_date`` within the week a run looks back (after a longer failure, e.g. a toxic
        print held in a `fail` sleeve's window for months, it starts afresh), or None."""
        from tvq_assets.partitions import PREVIOUS_RUN_DAYS, run_key

        earlier = [
            pd.Timestamp(row.partition)
            for row in self.rows
            if row.sleeve == sleeve
            and row.outcome == "success"  # a run with an outcome has a partition
            and pd.Timestamp(row.partition) < run_date
        ]
        if not earlier or (run_date - max(earlier)).days > PREVIOUS_RUN_DAYS:
            return None
        return run_key(max(earlier), sleeve)

    def _expected_meta(self, day: pd.Timestamp, catalog) -> str:
        """The meta-portfolio succeeds while every sleeve has a successful decision recent
        enough (its own sessions), and fails naming the sleeve otherwise."""
        age_limit = getattr(catalog.meta, "max_decision_age", None)
        for name in catalog.meta_sleeves:
            mine = [r for r in self.rows if r.sleeve == name and r.outcome == "success"]
            if not mine:
                return "fail:missing"
            if age_limit is None:
                continue
            last = max(pd.Timestamp(r.partition) for r in mine)
            calendar = catalog.sleeve(name).calendar
            frequency = "D" if calendar == "crypto" else "B"
            sessions = len(pd.date_range(last, day, freq=frequency)) - 1
            if sessions > age_limit:
                return "fail:missing"
        return "success"

    def _add(self, row: Row) -> None:
        self.rows.append(row)
        self.print_line(self._line(row))

    @staticmethod
    def _line(row: Row) -> str:
        outcome = row.outcome if len(row.outcome) <= 44 else row.outcome[:41] + "..."
        flag = "" if row.ok else f"  UNEXPECTED (expected {row.expected})"
        note = f"  [{row.note}]" if row.note else ""
        return (
            f"{row.date:%Y-%m-%d %a} {row.sleeve:<8} {row.partition:<11} {outcome:<44} "
            f"{row.champion:<26} {row.turnover:>8} {row.seconds:5.0f}{flag}{note}"
        )


def real_folder(explicit: Path | None) -> Path | None:
    """The folder the mixed-venue sleeve replays: ``--real``, else shared/ beside the checkout."""
    for candidate in (explicit, SHARED_REAL):
        if candidate is not None and all((candidate / f).exists() for f in US_FILES):
            return candidate
    return None


def exchange_span_problem(folder: Path, start: pd.Timestamp, days: int) -> str:
    """Why the exchange sleeve cannot be soaked over these days from ``folder`` ("" if it can):
    no kline files there, or a span that leaves the files (the replay would serve no new day)."""
    markets = markets_from(folder) if folder.is_dir() else {}
    if not markets:
        return (
            f"no kline files (<BASE>USDT.csv with an open_time column) in {folder}; the real "
            "ones are ../shared/data/real/crypto_binance_klines_yodumini beside the checkout"
        )
    opened = [day for market in markets.values() for day in market.rows]
    first = pd.Timestamp(min(opened), unit="ms")
    last = pd.Timestamp(max(opened), unit="ms")
    end = start + pd.Timedelta(days=days - 1)
    if start <= first or end > last:
        return (
            f"the span {start:%F} .. {end:%F} is not inside the kline files of {folder} "
            f"({first:%F} .. {last:%F}); choose --start and --days inside them (e.g. --start "
            f"{EXCHANGE_START} --days 14)"
        )
    return ""


@contextlib.contextmanager
def _workdir(path: Path | None, keep: bool) -> Iterator[Path]:
    if path is not None:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        yield path
        return
    scratch = Path(tempfile.mkdtemp(prefix="tvq-soak-"))
    try:
        yield scratch
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    parser.add_argument(
        "--start",
        help=f"first simulated day (default {DEFAULT_START}; {YEAR_START} with --days > 60)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the workplace here (emptied first)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workplace")
    parser.add_argument(
        "--production",
        action="store_true",
        help="run on real services of the soak's own (Postgres, MLflow server, Ray head), with a "
        "Postgres and an MLflow restart inside the span",
    )
    parser.add_argument(
        "--day-timeout",
        type=float,
        default=900.0,
        help="seconds one day's production may take before the soak stops as stuck (900)",
    )
    parser.add_argument("--real", type=Path, help="the folder of real Yahoo files to replay")
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME=DAYS",
        help=f"only these scenarios, each DAYS after the start (names: {', '.join(SHORT_SPAN)})",
    )
    parser.add_argument(
        "--exchange",
        nargs="?",
        type=Path,
        const=SHARED_KLINES,
        metavar="FOLDER",
        help="add a sleeve `exchange` whose bars come from a replay of Binance's API on "
        "127.0.0.1, serving the kline files of FOLDER one simulated day at a time (default "
        f"{SHARED_KLINES}); the default start becomes {EXCHANGE_START}",
    )
    arguments = parser.parse_args(argv)
    if arguments.exchange is not None:
        start = arguments.start or EXCHANGE_START
        problem = exchange_span_problem(arguments.exchange, pd.Timestamp(start), arguments.days)
        if problem:
            parser.error(f"--exchange: {problem}")
    else:
        start = arguments.start or (YEAR_START if arguments.days > 60 else DEFAULT_START)
    offsets = LONG_SPAN if arguments.days > 60 else SHORT_SPAN
    if arguments.scenario:
        offsets = {}
        for item in arguments.scenario:
            name, _, days = item.partition("=")
            if name not in SHORT_SPAN or not days.isdigit():
                parser.error(
                    f"--scenario {item!r}: expected NAME=DAYS, NAME one of {list(SHORT_SPAN)}"
                )
            offsets[name] = int(days)
    scenarios = Scenarios(
        pd.Timestamp(start), arguments.days, dict(offsets), production=arguments.production
    )
    venues = real_folder(arguments.real)
    if venues is None:
        print("soak: no real Yahoo files found (../shared/data/real); the venue sleeve is left out")
    with _workdir(arguments.workdir, arguments.keep) as workdir:
        return Soak(
            workdir,
            scenarios,
            venues,
            day_timeout=arguments.day_timeout,
            production=arguments.production,
            klines_source=arguments.exchange,
        ).run()


if __name__ == "__main__":
    from tvq_assets.cli import finish

    finish(main())
