"""The meta-portfolio: capital across sleeves from their as-promoted out-of-sample returns.

A sleeve's champion is judged by the tournament on its own calendar; the meta-portfolio treats
each sleeve's as-promoted stream (``quant.promoted``: the policy the promotion rule crowned at
each window, held in turn, net of the sleeve's own costs; not today's champion over past dates,
which would be hindsight) as one asset and allocates across sleeves with the same profile engine
as inside a sleeve (:func:`tvq_assets.quant.optimise.allocate`).

Conventions:

- **Calendar join** (:func:`join_calendars`): the meta calendar is the *common dates*, the dates
  on which every sleeve has a return. A sleeve's return on a date that is not common (a crypto
  Saturday, Sunday or a weekday venue's holiday) is compounded, ``Π(1 + r) − 1``, onto the next
  common date, never dropped: Friday → Monday carries crypto's Saturday, Sunday and Monday. The
  first common date carries only its own return (its interval would start before the join);
  returns after the last common date are *pending* (they join the next common date of a later
  run) and are reported, not used. The join reads dates ≤ the as-of date only, so a run as of D
  is unchanged by anything after D.
- **Periods per year** of the joined stream: the smallest ``periods_per_year`` of the sleeves
  joined (252 as soon as a weekday sleeve takes part, 365 for crypto sleeves alone): there is
  one joined row per common date, and common dates follow the sparsest calendar.
- **Sleeve weights** (:func:`sleeve_weights`): the profile's weights over the last ``lookback``
  common dates, then the per-sleeve floors and caps by bounded proportional scaling
  ``w_i = clip(s·v_i, floor_i, cap_i)`` with the one ``s`` that makes ``Σ w = 1``
  (:func:`bounded_weights`). Bounds that admit no fully invested portfolio raise
  :class:`MetaInfeasible` naming them.
- **Firm-wide holdings** (:func:`firm_holdings`): sleeve weight × the sleeve's portfolio, one row
  per (sleeve, symbol); a sleeve whose portfolio is cash keeps its weight as a ``CASH`` row so
  the table still sums to 1 and says where the capital is.
- **Which decision of a sleeve** (:func:`latest_decision`): the sleeve's latest successful
  decision at or before the as-of date D: the newest run date d ≤ D whose ``backtest`` and
  ``portfolio`` were stored by a run and whose latest run did not fail (or is not still running)
  since. A weekday sleeve's Friday decision holds through the weekend; the day after a failed
  run, the previous decision holds (it is what the sleeve still holds). Its age is counted in
  calendar days and in the sleeve's own *sessions* after d up to D (``crypto``: every day;
  ``weekday``: Monday to Friday, a venue holiday counting as a session without a run). A
  decision more than ``max_decision_age`` sessions old is not usable: the sleeve is *missing*
  and the ``missing`` rule applies. Every newer date passed over is recorded with its reason
  (``no run`` on a session, ``run failed``, ``run in progress``).
- **Walk-forward** (:func:`walk_forward`): rolling windows on the joined stream that decide on
  the same ``lookback`` rows as the as-of decision, then hold for ``test`` rows every ``step``
  rows; weights decided on the training rows only, held with drift through the test
  rows; a rebalance costs ``Σ_i c_i·|w_i − w_i⁻|`` with ``c_i`` each sleeve's own per-side cost
  rate (trading a sleeve's share trades its book; every dollar bought or sold pays its rate).
  The baseline is the equal weight of the sleeves on the same windows with the same costs.

Pure numpy/pandas: no Dagster, MLflow or Ray.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tvq_assets.quant import metrics as performance
from tvq_assets.quant import optimise
from tvq_resources.records import lake_record

MISSING_RULES: tuple[str, ...] = ("fail", "allocate_present")
CASH = "CASH"  # the symbol of a sleeve's capital when its portfolio holds nothing
META = "meta"
BASELINE = "baseline_equal_sleeves"
_BOUND_TOLERANCE = 1e-9


# The days of the week a calendar has sessions on (Monday = 0): a decision's age is counted in
# the sleeve's own sessions. Venue holidays are not known here: a holiday counts as a weekday
# session without a run (``max_decision_age`` leaves room for it).
SESSION_WEEKDAYS: Mapping[str, frozenset[int]] = {
    "crypto": frozenset(range(7)),
    "weekday": frozenset(range(5)),
}
# What a sleeve's run of one date left behind (see :func:`latest_decision`).
STORED = "stored"  # backtest and portfolio stored, and no later run of the date failed
NO_RUN = "no run"  # a session of the sleeve without any run of the date
RUN_FAILED = "run failed"  # the latest run of the date failed: any older value is not used
RUN_IN_PROGRESS = "run in progress"  # not settled yet: its value (old or new) is not used


class MetaInfeasible(ValueError):
    """Per-sleeve floors and caps admit no fully invested portfolio of the sleeves present."""


class MissingSleeve(ValueError):
    """A sleeve of the meta-portfolio has no run for the date and the rule says ``fail``."""


@dataclass(frozen=True)
class MetaSettings:
    """Every parameter of the meta-portfolio; built only from the catalog's ``meta`` section
    (``tvq_assets.meta.meta_settings``), so it has no defaults of its own.

    lookback, test, step: rows of the joined (common-date) calendar. max_decision_age: the
    oldest usable decision, in sessions of the sleeve's own calendar (``calendars``: per
    sleeve, ``crypto`` or ``weekday``; see :func:`latest_decision`). caps, floors: per
    sleeve, fractions of capital. cost_rates: per sleeve, cost per unit of notional traded, each
    side (bought or sold).
    periods_per_year: per sleeve; the joined stream uses the smallest of those joined.
    ridge: the max_sharpe covariance ridge.
    """

    profile: str
    lookback: int
    test: int
    step: int
    missing: str
    max_decision_age: int
    calendars: Mapping[str, str]
    caps: Mapping[str, float]
    floors: Mapping[str, float]
    cost_rates: Mapping[str, float]
    periods_per_year: Mapping[str, int]
    ridge: float

    def __post_init__(self) -> None:
        if self.profile not in optimise.PROFILES:
            raise ValueError(f"meta profile {self.profile!r} is not one of {optimise.PROFILES}")
        if self.missing not in MISSING_RULES:
            raise ValueError(f"meta missing rule {self.missing!r} is not one of {MISSING_RULES}")
        if self.max_decision_age < 0:
            raise ValueError(f"meta max_decision_age {self.max_decision_age} is negative")
        for sleeve, calendar in self.calendars.items():
            if calendar not in SESSION_WEEKDAYS:
                raise ValueError(
                    f"sleeve {sleeve!r}: calendar {calendar!r} is not one of "
                    f"{sorted(SESSION_WEEKDAYS)}"
                )

    def joined_periods_per_year(self, sleeves: Sequence[str]) -> int:
        """Periods per year of the joined stream of ``sleeves`` (see the module docstring)."""
        return min(int(self.periods_per_year[s]) for s in sleeves)


# --------------------------------------------------------------------------------------------
# Which decision of each sleeve
# --------------------------------------------------------------------------------------------
def is_session(day: pd.Timestamp, calendar: str) -> bool:
    """True when ``day`` is a session of ``calendar`` (see :data:`SESSION_WEEKDAYS`)."""
    return pd.Timestamp(day).dayofweek in SESSION_WEEKDAYS[calendar]


def sessions_after(day: pd.Timestamp, as_of: pd.Timestamp, calendar: str) -> int:
    """Sessions of ``calendar`` in ``(day, as_of]``: how many sessions a decision of ``day``
    has missed by ``as_of`` (0 for Friday's decision of a weekday sleeve on Sunday)."""
    days = pd.date_range(pd.Timestamp(day) + pd.Timedelta(days=1), pd.Timestamp(as_of), freq="D")
    return int(np.isin(days.dayofweek, sorted(SESSION_WEEKDAYS[calendar])).sum())


def decision_window_start(as_of: pd.Timestamp, calendar: str, max_age: int) -> pd.Timestamp:
    """The oldest date whose decision is at most ``max_age`` sessions old at ``as_of``: the
    ``(max_age + 1)``-th session of ``calendar`` on or before ``as_of``."""
    day, found = pd.Timestamp(as_of).normalize(), 0
    while True:
        found += is_session(day, calendar)
        if found == max_age + 1:
            return day
        day -= pd.Timedelta(days=1)


@dataclass(frozen=True)
class Decision:
    """A sleeve's latest successful decision at or before the meta-portfolio's date ``as_of``.

    date: the run date of the decision used (None: no stored decision known at or before
    ``as_of``). age_days: calendar days from ``date`` to ``as_of``; age_sessions: the sleeve's
    sessions in ``(date, as_of]``. skipped: the newer dates passed over, newest first, each with
    why (:data:`NO_RUN`, :data:`RUN_FAILED`, :data:`RUN_IN_PROGRESS`). usable: the decision is
    at most ``max_age`` sessions old.
    """

    sleeve: str
    as_of: pd.Timestamp
    calendar: str
    max_age: int
    date: pd.Timestamp | None
    skipped: tuple[tuple[pd.Timestamp, str], ...]

    @property
    def age_days(self) -> int | None:
        return None if self.date is None else int((self.as_of - self.date).days)

    @property
    def age_sessions(self) -> int | None:
        return None if self.date is None else sessions_after(self.date, self.as_of, self.calendar)

    @property
    def usable(self) -> bool:
        return self.date is not None and self.age_sessions <= self.max_age

    def skipped_text(self, limit: int = 5) -> str:
        """``2026-12-07 run failed, 2026-12-04 no run`` (the newest ``limit``), or ``""``."""
        shown = [f"{day:%Y-%m-%d} {why}" for day, why in self.skipped[:limit]]
        more = len(self.skipped) - limit
        return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")

    def describe(self) -> str:
        """``decision of 2026-12-04 (Friday, 2 days, 0 sessions old)``, with what was skipped."""
        return describe_decision(
            self.date, self.age_days, self.age_sessions, self.skipped_text(), as_of=self.as_of
        )


def describe_decision(
    date: pd.Timestamp | None,
    age_days: int | None,
    age_sessions: int | None,
    skipped: str,
    *,
    as_of: pd.Timestamp,
) -> str:
    """``decision of 2026-12-04 (Friday, 2 days, 0 sessions old); skipped 2026-12-07 run
    failed``, or ``no stored decision at or before 2026-12-06`` (see :class:`Decision`)."""
    if date is None or pd.isna(date):
        found = f"no stored decision at or before {pd.Timestamp(as_of):%Y-%m-%d}"
    else:
        days, sessions = int(age_days), int(age_sessions)
        found = (
            f"decision of {pd.Timestamp(date):%Y-%m-%d} ({pd.Timestamp(date):%A}, {days} day"
            f"{'' if days == 1 else 's'}, {sessions} session{'' if sessions == 1 else 's'} old)"
        )
    return found + (f"; skipped {skipped}" if skipped else "")


def latest_decision(
    sleeve: str,
    runs: Mapping[pd.Timestamp, str],
    *,
    calendar: str,
    as_of: pd.Timestamp,
    max_age: int,
) -> Decision:
    """The sleeve's latest successful decision at or before ``as_of``.

    ``runs``: what the sleeve's runs left per run date: :data:`STORED`, or why that date holds
    no usable decision (:data:`RUN_FAILED`, :data:`RUN_IN_PROGRESS`, or another reason). A date
    absent from ``runs`` had no run. Dates after ``as_of`` are never read. It should cover at
    least the dates from :func:`decision_window_start` to ``as_of``: sessions before that start
    without an entry are not reported as skipped (they are too old to matter).
    """
    as_of = pd.Timestamp(as_of).normalize()
    known = {pd.Timestamp(day).normalize(): why for day, why in runs.items()}
    known = {day: why for day, why in known.items() if day <= as_of}
    stored = [day for day, why in known.items() if why == STORED]
    date = max(stored) if stored else None
    looked_from = decision_window_start(as_of, calendar, max_age)
    first = date + pd.Timedelta(days=1) if date is not None else looked_from
    skipped = []
    for day in pd.date_range(first, as_of, freq="D")[::-1]:
        if day in known:
            skipped.append((day, known[day]))
        elif day >= looked_from and is_session(day, calendar):
            skipped.append((day, NO_RUN))
    if date is None:  # runs older than the window that left nothing usable, for the record
        skipped += [(day, known[day]) for day in sorted(known, reverse=True) if day < first]
    return Decision(sleeve, as_of, calendar, max_age, date, tuple(skipped))


def latest_decisions(
    runs: Mapping[str, Mapping[pd.Timestamp, str]],
    settings: MetaSettings,
    *,
    sleeves: Sequence[str],
    as_of: pd.Timestamp,
) -> dict[str, Decision]:
    """:func:`latest_decision` of every sleeve of ``sleeves`` (``runs``: per sleeve; a sleeve
    absent from it never ran), each on its own calendar."""
    return {
        s: latest_decision(
            s,
            runs.get(s, {}),
            calendar=settings.calendars[s],
            as_of=as_of,
            max_age=settings.max_decision_age,
        )
        for s in sleeves
    }


# --------------------------------------------------------------------------------------------
# The calendar join
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Joined:
    """Sleeve returns on the common dates (dates × sleeves), how many own-calendar returns each
    common row compounds (same shape), and the pending returns after the last common date."""

    returns: pd.DataFrame
    compounded: pd.DataFrame
    pending: pd.Series  # sleeve -> count of own-calendar returns after the last common date


def join_calendars(streams: Mapping[str, pd.Series], *, as_of: pd.Timestamp) -> Joined:
    """Join each sleeve's return stream (own calendar, NaN = not traded) on the common dates.

    Only dates ≤ ``as_of`` are read. See the module docstring for the rule.
    """
    as_of = pd.Timestamp(as_of)
    names = list(streams)
    clean = {}
    for name in names:
        series = pd.Series(streams[name], dtype=float).dropna()
        series.index = pd.DatetimeIndex(series.index)
        clean[name] = series[series.index <= as_of].sort_index()
    if not names:
        empty = pd.DataFrame(index=pd.DatetimeIndex([], name="date"))
        return Joined(empty, empty.copy(), pd.Series(dtype=int))
    common = clean[names[0]].index
    for name in names[1:]:
        common = common.intersection(clean[name].index)
    common = common.sort_values().rename("date")
    columns, counts, pending = {}, {}, {}
    for name in names:
        series = clean[name]
        if len(common) == 0:
            columns[name] = pd.Series(dtype=float)
            counts[name] = pd.Series(dtype=int)
            pending[name] = len(series)
            continue
        # Each own-calendar date goes to the first common date on or after it.
        slot = common.searchsorted(series.index, side="left")
        inside = (slot < len(common)) & (series.index >= common[0])
        pending[name] = int((slot >= len(common)).sum())
        growth = np.log1p(series.to_numpy()[inside])
        target = common[slot[inside]]
        summed = pd.Series(growth, index=target).groupby(level=0).sum()
        columns[name] = np.expm1(summed).reindex(common)
        counts[name] = pd.Series(1, index=target).groupby(level=0).sum().reindex(common)
    returns = pd.DataFrame(columns, index=common)
    compounded = pd.DataFrame(counts, index=common).fillna(0).astype(int)
    return Joined(returns, compounded, pd.Series(pending, dtype=int))


# --------------------------------------------------------------------------------------------
# Sleeve weights
# --------------------------------------------------------------------------------------------
def check_bounds(
    sleeves: Sequence[str], caps: Mapping[str, float], floors: Mapping[str, float]
) -> None:
    """Raise :class:`MetaInfeasible` when the floors and caps of ``sleeves`` admit no fully
    invested portfolio (a floor above its cap, Σ floors > 1, or Σ caps < 1)."""
    problems = [
        f"sleeve {s!r}: floor {floors[s]:.4g} > cap {caps[s]:.4g}"
        for s in sleeves
        if floors[s] > caps[s] + _BOUND_TOLERANCE
    ]
    floor_sum = sum(floors[s] for s in sleeves)
    cap_sum = sum(caps[s] for s in sleeves)
    if floor_sum > 1 + _BOUND_TOLERANCE:
        problems.append(f"floors of {list(sleeves)} sum to {floor_sum:.4g} > 1")
    if cap_sum < 1 - _BOUND_TOLERANCE:
        problems.append(f"caps of {list(sleeves)} sum to {cap_sum:.4g} < 1")
    if problems:
        raise MetaInfeasible(
            "meta-portfolio bounds admit no fully invested portfolio (rule: floor <= cap, "
            "sum of floors <= 1 <= sum of caps over the sleeves present): " + "; ".join(problems)
        )


def bounded_weights(
    raw: pd.Series, caps: Mapping[str, float], floors: Mapping[str, float]
) -> pd.Series:
    """``w_i = clip(s·raw_i, floor_i, cap_i)`` with ``Σ w = 1``: the profile's proportions where
    no bound binds. ``s`` is found exactly: ``Σ w(s)`` is piecewise linear and non-decreasing in
    ``s``, with breakpoints where a sleeve reaches its floor or its cap."""
    sleeves = list(raw.index)
    check_bounds(sleeves, caps, floors)
    v = np.clip(raw.to_numpy(dtype=float), 0.0, None)
    lo = np.array([floors[s] for s in sleeves], dtype=float)
    hi = np.array([caps[s] for s in sleeves], dtype=float)
    if not (v > 0).any():
        v = np.ones_like(v)  # nothing to be proportional to: the floors first, then equally
    with np.errstate(divide="ignore", invalid="ignore"):
        breaks = np.concatenate([lo / v, hi / v])
    breaks = np.unique(np.concatenate([[0.0], breaks[np.isfinite(breaks)]]))

    def total(s: float) -> float:
        return float(np.clip(s * v, lo, hi).sum())

    sums = np.array([total(s) for s in breaks])
    k = int(np.searchsorted(sums, 1.0, side="left"))
    if k == 0:
        s = breaks[0]
    elif k >= len(breaks):
        s = breaks[-1]
    else:
        a, b = breaks[k - 1], breaks[k]
        fa, fb = sums[k - 1], sums[k]
        s = b if fb == fa else a + (1.0 - fa) * (b - a) / (fb - fa)
    weights = np.clip(s * v, lo, hi)
    if v.sum() > 0 and abs(weights.sum() - 1.0) > 1e-9:
        # Sleeves with raw weight 0 sit at their floor whatever s is: the rest goes to them in
        # proportion to their room under their cap (only reached when the positive ones are all
        # capped).
        room = (hi - weights) * (v == 0)
        if room.sum() > 0:
            weights = weights + room / room.sum() * (1.0 - weights.sum())
    return pd.Series(weights / weights.sum(), index=raw.index, name="weight")


@dataclass(frozen=True)
class SleeveWeights:
    weights: pd.Series  # sleeve -> weight, summing to 1
    raw: pd.Series  # the profile's weights before floors and caps
    allocation: optimise.Allocation | None  # None for a single sleeve


def sleeve_weights(returns: pd.DataFrame, settings: MetaSettings) -> SleeveWeights:
    """The profile's weights of the sleeves (columns of ``returns``, rows the training dates),
    then the per-sleeve floors and caps (:func:`bounded_weights`)."""
    sleeves = list(returns.columns)
    check_bounds(sleeves, settings.caps, settings.floors)
    if len(sleeves) == 1:
        one = pd.Series([1.0], index=returns.columns, name="weight")
        return SleeveWeights(one, one.copy(), None)
    allocation = optimise.allocate(
        settings.profile,
        returns,
        constraints=optimise.Constraints(
            cap=1.0,  # per-sleeve caps are applied after, sleeve by sleeve
            cluster_cap=None,
            turnover_penalty=0.0,
            ridge=settings.ridge,
            infeasible_cap="fail",
        ),
    )
    raw = allocation.weights.reindex(returns.columns).fillna(0.0)
    return SleeveWeights(bounded_weights(raw, settings.caps, settings.floors), raw, allocation)


def equal_sleeve_weights(sleeves: Sequence[str], settings: MetaSettings) -> SleeveWeights:
    """Equal weights of ``sleeves`` within their floors and caps: the split before any common
    out-of-sample history exists."""
    check_bounds(list(sleeves), settings.caps, settings.floors)
    raw = pd.Series(1.0 / len(sleeves), index=pd.Index(sleeves), name="weight")
    return SleeveWeights(bounded_weights(raw, settings.caps, settings.floors), raw, None)


def firm_holdings(weights: pd.Series, portfolios: Mapping[str, pd.Series]) -> pd.DataFrame:
    """One row per (sleeve, symbol): ``weight`` = sleeve weight × the symbol's weight in the
    sleeve's portfolio, plus the sleeve's weight and the symbol's weight inside the sleeve."""
    frames = []
    for sleeve, share in weights.items():
        inside = pd.Series(portfolios[sleeve], dtype=float)
        inside = inside[inside > 0]
        if inside.empty:
            inside = pd.Series([1.0], index=[CASH])
        frames.append(
            pd.DataFrame(
                {
                    "sleeve": str(sleeve),
                    "symbol": inside.index.astype(str),
                    "sleeve_weight": float(share),
                    "weight_in_sleeve": inside.to_numpy(dtype=float),
                    "weight": float(share) * inside.to_numpy(dtype=float),
                }
            )
        )
    columns = ["sleeve", "symbol", "sleeve_weight", "weight_in_sleeve", "weight"]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values(["weight", "sleeve", "symbol"], ascending=[False, True, True])[
        columns
    ].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Walk-forward
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetaBacktest:
    returns: pd.DataFrame  # out-of-sample dates × {meta, baseline}
    turnover: pd.DataFrame  # rebalance dates × {meta, baseline}
    targets: pd.DataFrame  # rebalance dates × sleeves: the meta target weights
    metrics: pd.DataFrame  # metrics_table of ``returns``


def _hold(
    targets: Sequence[np.ndarray],
    values: np.ndarray,
    windows: Sequence[tuple[int, int]],
    costs: np.ndarray,
) -> tuple[np.ndarray, list[int], list[float]]:
    """Net returns per row of the test slices and the one-sided turnover per rebalance."""
    weights = np.zeros(values.shape[1])
    net = np.full(values.shape[0], np.nan)
    starts, turnovers = [], []
    for target, (start, stop) in zip(targets, windows, strict=True):
        trade = np.abs(target - weights)
        growth = np.cumprod(1.0 + values[start:stop], axis=0)
        value = growth @ target
        previous = np.concatenate(([1.0], value[:-1]))
        gross = value / previous - 1.0
        gross[0] -= float(costs @ trade)
        net[start:stop] = gross
        weights = target * growth[-1] / value[-1] if value[-1] > 0 else np.zeros_like(target)
        starts.append(start)
        turnovers.append(0.5 * float(trade.sum()))
    return net, starts, turnovers


def walk_forward(joined: pd.DataFrame, settings: MetaSettings) -> MetaBacktest:
    """The meta-portfolio and the equal-weight-of-sleeves baseline, walk-forward on the joined
    stream (see the module docstring); metrics with the joined periods per year."""
    sleeves = list(joined.columns)
    n = len(joined)
    starts = list(range(0, max(n - settings.lookback, 0), settings.step))
    windows = [
        (s + settings.lookback, min(s + settings.lookback + settings.test, n)) for s in starts
    ]
    # Overlapping test slices: the next rebalance truncates the previous holding.
    windows = [
        (a, min(b, windows[k + 1][0]) if k + 1 < len(windows) else b)
        for k, (a, b) in enumerate(windows)
    ]
    values = joined.to_numpy(dtype=float)
    costs = np.array([settings.cost_rates[s] for s in sleeves], dtype=float)
    meta_targets = [
        sleeve_weights(joined.iloc[s : s + settings.lookback], settings).weights.to_numpy()
        for s in starts
    ]
    equal = [np.full(len(sleeves), 1.0 / len(sleeves)) for _ in starts]
    columns, turnover = {}, {}
    for name, targets in ((META, meta_targets), (BASELINE, equal)):
        net, rebalanced, traded = _hold(targets, values, windows, costs)
        columns[name] = net
        turnover[name] = pd.Series(traded, index=joined.index[rebalanced], dtype=float)
    returns = pd.DataFrame(columns, index=joined.index).dropna(how="all")
    turnover_table = pd.DataFrame(turnover)
    targets = pd.DataFrame(
        meta_targets, index=joined.index[[a for a, _ in windows]], columns=sleeves
    ).rename_axis("rebalance")
    table = performance.metrics_table(
        returns,
        periods_per_year=settings.joined_periods_per_year(sleeves) if sleeves else 252,
        turnover=turnover_table,
    )
    return MetaBacktest(returns, turnover_table, targets, table)


def present_sleeves(
    decisions: Mapping[str, Decision], *, rule: str, where: str
) -> tuple[list[str], dict[str, str]]:
    """(sleeves to allocate, {missing sleeve: why}): a sleeve is missing when it has no usable
    decision (:attr:`Decision.usable`). Raises :class:`MissingSleeve` under ``fail`` (or when
    none is left) naming each missing sleeve, what was found of it and the rule."""
    chosen = [s for s, d in decisions.items() if d.usable]
    unusable = {s: d for s, d in decisions.items() if not d.usable}
    missing = {
        s: f"no usable decision within max_decision_age = {d.max_age} session(s): {d.describe()} "
        f"(missing_sleeve = {rule})"
        for s, d in unusable.items()
    }
    if missing and (rule == "fail" or not chosen):
        [bound] = {d.max_age for d in unusable.values()}
        found = "; ".join(f"{s}: {d.describe()}" for s, d in unusable.items())
        raise MissingSleeve(
            f"{where}: sleeve(s) {list(missing)} have no usable decision within "
            f"meta.max_decision_age = {bound} of their own sessions ({found}; rule missing_sleeve "
            f"= {rule!r}" + (": nothing left to allocate" if not chosen else "") + "). Run them "
            "for a recent date (`tvq demo --sleeve NAME`, or a backfill)"
            + (", or set meta.missing_sleeve: allocate_present" if chosen else "")
        )
    return chosen, missing


# --------------------------------------------------------------------------------------------
# One run of the meta-portfolio
# --------------------------------------------------------------------------------------------
@lake_record  # a lake value: stored data names this type, never imports it
@dataclass(frozen=True)
class MetaRecord:
    """What the ``meta_portfolio`` asset stores.

    sleeves: one row per sleeve of the meta-portfolio (present or not): ``weight`` (0 when
        missing), ``raw_weight`` (the profile's, before floors and caps), ``cap``, ``floor``,
        ``champion``, ``present`` and ``missing_reason``; the sleeve's decision used
        (:func:`latest_decision`): ``decision_date`` (NaT when none is known),
        ``decision_age_days``, ``decision_age_sessions`` and ``skipped`` (the newer dates passed
        over, with why).
    holdings: firm-wide (sleeve, symbol) weights (:func:`firm_holdings`).
    joined: the sleeves' champion returns on the common dates (:func:`join_calendars`).
    returns, turnover, targets, metrics: the meta walk-forward (:func:`walk_forward`).
    """

    sleeves: pd.DataFrame
    holdings: pd.DataFrame
    joined: pd.DataFrame
    returns: pd.DataFrame
    turnover: pd.DataFrame
    targets: pd.DataFrame
    metrics: pd.DataFrame

    @property
    def missing(self) -> dict[str, str]:
        rows = self.sleeves[~self.sleeves["present"]]
        return {str(s): str(r) for s, r in rows["missing_reason"].items()}


def decide(
    streams: Mapping[str, pd.Series],
    portfolios: Mapping[str, pd.Series],
    champions: Mapping[str, str],
    settings: MetaSettings,
    *,
    decisions: Mapping[str, Decision],
    as_of: pd.Timestamp,
    where: str = "meta_portfolio",
) -> MetaRecord:
    """The meta-portfolio as of ``as_of`` across the sleeves of ``decisions`` (each sleeve's
    :func:`latest_decision`, in the meta-portfolio's order). ``streams`` (the sleeves'
    as-promoted out-of-sample returns), ``portfolios`` (weight by symbol) and ``champions``: of
    each sleeve with a usable decision, read from that decision's run.

    Sleeves without a usable decision follow ``settings.missing`` (:func:`present_sleeves`).
    With fewer than two joined dates to estimate the weights of several sleeves on, they are
    split equally within their floors and caps (:func:`equal_sleeve_weights`).
    """
    as_of = pd.Timestamp(as_of)
    sleeves = list(decisions)
    chosen, missing = present_sleeves(decisions, rule=settings.missing, where=where)
    unread = [s for s in chosen if s not in streams or s not in portfolios]
    if unread:
        raise ValueError(f"{where}: no returns or portfolio given for usable sleeve(s) {unread}")
    joined = join_calendars({s: streams[s] for s in chosen}, as_of=as_of)
    window = joined.returns.tail(settings.lookback)
    if len(chosen) > 1 and len(window) < 2:
        # Young sleeves (an as-promoted record starts a window after their first decision) have
        # no common out-of-sample dates yet: nothing to estimate a profile on, so the capital is
        # split equally within the floors and caps, and the record says so (``weighting``).
        decided = equal_sleeve_weights(chosen, settings)
        weighting = f"equal: {len(window)} common date(s), the profile needs 2"
    else:
        decided = sleeve_weights(window, settings)
        weighting = settings.profile
    backtest = walk_forward(joined.returns, settings)
    table = pd.DataFrame(
        {
            "weight": decided.weights.reindex(sleeves).fillna(0.0),
            "raw_weight": decided.raw.reindex(sleeves).fillna(0.0),
            "cap": [float(settings.caps[s]) for s in sleeves],
            "floor": [float(settings.floors[s]) for s in sleeves],
            "champion": [str(champions.get(s, "")) if s in chosen else "" for s in sleeves],
            "present": [s in chosen for s in sleeves],
            "missing_reason": [missing.get(s, "") for s in sleeves],
            "decision_date": pd.to_datetime([decisions[s].date for s in sleeves]),
            "decision_age_days": pd.array([decisions[s].age_days for s in sleeves], "Int64"),
            "decision_age_sessions": pd.array(
                [decisions[s].age_sessions for s in sleeves], "Int64"
            ),
            "skipped": [decisions[s].skipped_text(limit=10) for s in sleeves],
            "compounded_rows": [
                int(joined.compounded[s].tail(settings.lookback).sum()) if s in chosen else 0
                for s in sleeves
            ],
            "pending_rows": [int(joined.pending.get(s, 0)) for s in sleeves],
            "weighting": weighting,
        },
        index=pd.Index(sleeves, name="sleeve"),
    )
    holdings = firm_holdings(decided.weights, {s: portfolios[s] for s in chosen})
    return MetaRecord(
        sleeves=table,
        holdings=holdings,
        joined=joined.returns,
        returns=backtest.returns,
        turnover=backtest.turnover,
        targets=backtest.targets,
        metrics=backtest.metrics,
    )
