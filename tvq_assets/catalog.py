"""The sleeve catalog: which sleeves exist, where their data comes from, and their policies.

The catalog is a small YAML file (``tvq_assets/sleeves.yaml`` by default, or the file named by
``TVQ_SLEEVES``). It defines the static ``sleeve`` partition dimension, so it is read when the code
location loads, and it is validated then as a whole: every key is known (a typo gets a "did you
mean"), every value has its field's type and range, and the rules between fields hold. A broken
catalog fails the load (and ``dg check defs``) with one message per problem naming the file, the
sleeve, the field, the value and the rule, instead of failing assets later.
"""

import dataclasses
import datetime
import difflib
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from tvq_assets.quant.bars import BarPolicy
from tvq_assets.quant.clusters import CLUSTER_METHODS
from tvq_assets.quant.meta import MISSING_RULES
from tvq_assets.quant.optimise import INFEASIBLE_CAP_POLICIES, PROFILES

DEFAULT_CATALOG = Path(__file__).with_name("sleeves.yaml")
CALENDARS = {"crypto": 365, "weekday": 252}
TOXIC_POLICIES = ("fail", "quarantine")
SOURCE_KINDS = ("synthetic", "csv", "parquet", "exchange")
# Source keys that only make sense for one kind; every other field of `SourceConfig` applies to
# every kind (so a key added there is accepted, and type-checked, without a change here).
KIND_ONLY_SOURCE_KEYS: Mapping[str, frozenset[str]] = {
    # `start` is every kind's: the market's first day, or the oldest bar a file source reads.
    "synthetic": frozenset({"seed", "symbols", "clusters", "end", "faults"}),
    "csv": frozenset({"path", "pattern"}),
    "parquet": frozenset({"path", "pattern"}),
    "exchange": frozenset(
        {
            "exchange",
            "market",
            "quote",
            "bases",
            "top",
            "url",
            "timeout",
            "retries",
            "backoff",
            "workers",
        }
    ),
}
SLEEVE_KEYS = ("source", "calendar", "venues", "periods_per_year", "toxic_policy", "policy")
TOP_LEVEL_KEYS = ("first_run", "sleeves", "meta")
DEFAULT_FIRST_RUN = "2025-01-01"


# What each catalog key outside `Policy` and `MetaPolicy` means, for the documentation site's
# reference (`docs/hooks.py`): defaults and ranges come from the code that validates the key, the
# meaning and unit from here. A key added to the catalog without its entry fails tests/test_docs.py.
TOP_LEVEL_KEY_DOCS: Mapping[str, str] = {
    "first_run": f"The first run partition date (ISO date; default {DEFAULT_FIRST_RUN}).",
    "sleeves": "Sleeve name (a plain identifier) to sleeve entry; at least one.",
    "meta": "The meta-portfolio across sleeves (`MetaPolicy`); optional.",
}
SLEEVE_KEY_DOCS: Mapping[str, str] = {
    "source": "Where the bars come from: `{kind: synthetic | csv | parquet | exchange, ...}`; "
    "required (no "
    "default source: a sleeve that forgot its data must not trade a synthetic market).",
    "calendar": "`crypto` (every day, 365 periods a year; the default) or `weekday` (Monday to "
    "Friday, 252).",
    "venues": "Weekday sleeves only: one exchange calendar code for every symbol (`XNYS`), or "
    'symbol patterns to codes, first match wins (`{"*.L": XLON, "*": XNYS}`); unknown codes '
    "are refused with their close matches.",
    "periods_per_year": "Annualisation, 1 to 366 (default: the calendar's, or the sessions a "
    "year of the declared venues' union: XNYS 252, XNYS with XLON 257).",
    "toxic_policy": "`fail` (default: stop the run at the returns contract) or `quarantine` "
    "(exclude the symbol from every window holding the toxic return).",
    "policy": "The sleeve's `Policy` parameters (below); calendar defaults first, then these.",
}
# SourceConfig's fields (tvq_resources/market_data.py): unit and meaning.
SOURCE_KEY_DOCS: Mapping[str, tuple[str, str]] = {
    "kind": (
        "",
        "`synthetic` (the embedded market), `csv` or `parquet` (a folder of files), `exchange` "
        "(an exchange's public API through ccxt).",
    ),
    "start": (
        "ISO date",
        "The first date of the history (synthetic: the market's first day, default 2023-11-01; "
        "csv/parquet: older bars are not read; none keeps all of them; exchange: the first "
        "candle of a first load, none from the listing).",
    ),
    "seed": ("", "Synthetic: the market's random seed."),
    "symbols": ("symbols", "Synthetic: the number of symbols."),
    "clusters": (
        "clusters",
        "Synthetic: the number of clusters (at most the symbols that are not stablecoins or "
        "twins).",
    ),
    "end": ("ISO date", "Synthetic: the last day (none: today, UTC); not before `start`."),
    "faults": (
        "list of {kind, symbol, date}",
        "Synthetic: injected data faults, `kind` one of toxic_spike, stall, volume_spike, gap, "
        "weekend_padding (weekday calendars), nan_after_genesis; symbol and date chosen when "
        "left out.",
    ),
    "path": (
        "folder",
        "csv/parquet: the folder of the files (absolute, or relative to the catalog file, else "
        "to the repository); it must exist and be readable when the catalog loads.",
    ),
    "pattern": (
        "file name pattern",
        "csv/parquet: holds `{symbol}` and optionally `{exchange}`, no path separator (default "
        "`{symbol}.csv`, parquet `{exchange}_{symbol}_1d.parquet`); matched case-insensitively.",
    ),
    "volume": (
        "",
        "The unit of the files' volume column: `base` (coins, shares) or `quote` (currency); "
        "quote volume is divided by the close so close × volume is the traded value either way.",
    ),
    "exchange": ("ccxt id", "Exchange: the exchange, as ccxt names it (`binance`)."),
    "market": ("", "Exchange: `spot` or `swap` (perpetual futures settled in `quote`)."),
    "quote": ("currency", "Exchange: the quote currency of the markets (default USDT)."),
    "bases": (
        "list of base assets",
        "Exchange: the markets `BASE/quote` to load (`[BTC, ETH]`); stored under the exchange's "
        "own id (`BTCUSDT`). Either `bases` or `top`.",
    ),
    "top": (
        "markets",
        "Exchange: the N active markets of `quote` with the largest 24h quote volume, decided at "
        "each refresh and recorded in the bars' metadata. Either `bases` or `top`.",
    ),
    "url": (
        "URL",
        "Exchange: `scheme://host[:port]` replacing the hosts of the API (a mirror or a proxy; "
        "paths kept); none: the exchange's own.",
    ),
    "timeout": ("seconds", "Exchange: the wait for one response before a retry (default 10)."),
    "retries": (
        "attempts",
        "Exchange: further attempts after a timeout, 5xx, 418 or 429 (default 5); "
        "`Retry-After` is honoured.",
    ),
    "backoff": ("seconds", "Exchange: the wait before the first retry, doubling (default 1)."),
    "workers": (
        "threads",
        "Exchange: markets fetched side by side (default 4), within ccxt's rate limit.",
    ),
}


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    doc: str = "",
    unit: str = "",
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    **limits: float,
) -> Any:
    """A catalog field's default, its allowed range (``ge``, ``gt``, ``le``, ``lt``) and what it
    means: ``doc`` (the meaning and its rule) and ``unit``. The catalog validates with the range;
    the documentation site's reference (``docs/hooks.py``) prints all three, so the reference is
    this declaration itself.

    For a tuple field the range applies to each element; ``None`` is allowed only when the
    annotation allows it.
    """
    unknown = set(limits) - {"ge", "gt", "le", "lt"}
    if unknown:
        raise TypeError(f"unknown range limits {sorted(unknown)}")
    metadata = {"range": limits, "doc": doc, "unit": unit}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Policy:
    """Every tunable of one sleeve, with the defaults of the domain specification.

    Units: bars are rows of the sleeve's calendar; returns are simple returns; volatilities are
    annualised fractions (2.5 = 250%); costs are in basis points of traded notional. Each field's
    type is its annotation and its allowed range is declared with :func:`bounded`; the catalog
    checks both (and :data:`CROSS_FIELD_RULES`) when it loads, so a new field needs no extra code.
    """

    # returns (L0/L1)
    lookback: int = bounded(
        500, ge=2, unit="bars", doc="Rows of the returns window ending at the as-of date."
    )
    toxic_threshold: float = bounded(
        5.0,
        gt=0,
        unit="simple return",
        doc="A daily simple return above this is toxic (5.0 = +500%).",
    )
    stale_days: int = bounded(
        5,
        ge=0,
        unit="calendar days",
        doc="A symbol with no bar within this many days before the as-of date is stale: dropped.",
    )
    min_history: int = bounded(
        90, ge=1, unit="bars", doc="Fewer returns inside the window: the symbol is ineligible."
    )
    # bar quality (WARN rules)
    volume_spike_sigma: float = bounded(
        10.0,
        gt=0,
        unit="z-score",
        doc="A last bar whose volume z-score is strictly above this is a volume spike.",
    )
    volume_spike_window: int = bounded(
        21, ge=2, unit="bars", doc="Trailing bars the volume z-score is measured over."
    )
    stall_bars: int = bounded(
        3, ge=2, unit="bars", doc="This many identical last closes is a stall."
    )
    max_zero_share: float = bounded(
        0.25,
        gt=0,
        le=1,
        unit="fraction",
        doc="More zero-return days than this share of the feature window is a stall.",
    )
    # 4: the fewest names a 25% cap can fully invest
    min_universe: int = bounded(
        4,
        ge=1,
        unit="symbols",
        doc="Fewer eligible symbols fails `returns` (a tournament window holds cash).",
    )
    # bar defects (see tvq_assets/quant/bars.py)
    bar_actions: Mapping[str, str] = bounded(
        default_factory=dict,
        unit="rule: action",
        doc="Action per bar-defect rule (`repair`, `drop` or `quarantine`) overriding "
        "`DEFAULT_ACTIONS` of `tvq_assets/quant/bars.py`.",
    )
    ohlc_tolerance: float = bounded(
        0.01,
        ge=0,
        lt=1,
        unit="fraction",
        doc="Relative OHLC miss that is always repaired (beyond it, `ohlc_inconsistent` drops).",
    )
    # features (L2)
    feature_lookback: int = bounded(
        120, ge=2, unit="bars", doc="Rows of the window the features are computed on."
    )
    liquidity_baseline: float = bounded(
        10e6,
        gt=0,
        unit="currency per day",
        doc="Median daily dollar volume at which a symbol counts as fully liquid "
        "(crypto 10M, weekday 500M).",
    )
    # clusters and selection (L3/L4)
    cluster_lookbacks: tuple[int, ...] = bounded(
        (60, 120, 200),
        ge=2,
        unit="bars",
        doc="Correlation lookbacks averaged into the cluster distance (each at most `lookback`).",
    )
    cluster_threshold: float = bounded(
        0.7,
        gt=0,
        le=2,
        unit="correlation distance",
        doc="Ward tree cut height, on the scale of the correlation distance sqrt((1 - rho) / 2), "
        "which lies in [0, 1] (Ward's merge heights may exceed 1).",
    )
    max_clusters: int = bounded(25, ge=1, unit="clusters", doc="At most this many clusters.")
    cluster_method: Literal[CLUSTER_METHODS] = bounded(  # type: ignore[valid-type]
        "auto",
        doc="How the Ward tree is built: `exact` (the full N×N pairwise-complete distance; "
        "memory grows with N²), `vector` (linear memory and time in N: standardised return "
        "vectors grouped into micro-clusters, then Ward; an approximation, see "
        "`tvq_assets/quant/clusters.py`), or `auto` (exact up to `cluster_exact_max` symbols, "
        "vector above).",
    )
    # 2000: every sleeve of today (real folders, synthetic up to 1000 symbols) keeps the exact
    # decisions; exact at 3000 symbols already takes ~5x the vector method's time and 2x its memory.
    cluster_exact_max: int = bounded(
        2000,
        ge=1,
        unit="symbols",
        doc="With `cluster_method: auto`, a window of more symbols than this is clustered by the "
        "vector method.",
    )
    max_entropy: float = bounded(
        0.90,
        gt=0,
        le=1,
        unit="normalised entropy",
        doc="Veto above this permutation entropy (order 5). I.i.d. noise over the 120-bar "
        "feature window averages 0.88 (95th percentile 0.90): 0.90 vetoes the most noise-like "
        "symbols; 0.98 would never bind.",
    )
    min_efficiency: float = bounded(
        0.02, ge=0, le=1, unit="ratio", doc="Veto below this Kaufman efficiency ratio."
    )
    max_kurtosis: float = bounded(20.0, gt=0, unit="excess kurtosis", doc="Veto above this.")
    max_volatility: float = bounded(
        2.5, gt=0, unit="annualised fraction", doc="Veto above this volatility (2.5 = 250%)."
    )
    max_friction_ratio: float = bounded(
        1.0,
        gt=0,
        unit="ratio",
        doc="Illiquidity veto: `volatility * sqrt(1e6 / dollar_volume)` above this times "
        "`|momentum|` (or no dollar volume) vetoes the symbol in every selection stage.",
    )
    top_n: int = bounded(
        2, ge=1, unit="symbols", doc="Best non-vetoed symbols recruited per cluster."
    )
    min_winners: int = bounded(
        15,
        ge=0,
        unit="symbols",
        doc="Selection relaxes its thresholds (HTR) until this many winners, safety vetoes "
        "holding; at most `max_winners`.",
    )
    max_winners: int = bounded(25, ge=1, unit="symbols", doc="At most this many winners.")
    # allocation
    cap: float = bounded(0.25, gt=0, le=1, unit="fraction", doc="Largest weight of one symbol.")
    cluster_cap: float | None = bounded(
        None, gt=0, le=1, unit="fraction", doc="Largest weight of one cluster (none: no cap)."
    )
    turnover_penalty: float = bounded(
        0.0,
        ge=0,
        unit="objective units per unit traded",
        doc="λ of the penalty `λ·‖w − w_prev‖₁` against the previous weights, in the units of "
        "the profile's objective (compare with `cost_rate`, not its half).",
    )
    ridge: float = bounded(
        0.1,
        ge=0,
        unit="fraction of mean variance",
        doc="`max_sharpe` covariance ridge.",
    )
    # A risk limit never changes silently.
    infeasible_cap: Literal[INFEASIBLE_CAP_POLICIES] = bounded(  # type: ignore[valid-type]
        "fail",
        doc="When `cap` (or `cluster_cap`) admits no fully invested portfolio of the winners "
        "(cap < 1/n): `fail` stops the run naming the configured and the minimum feasible cap; "
        "`raise` proceeds with the minimum feasible cap and a WARN naming both.",
    )
    # walk-forward backtest
    train: int = bounded(252, ge=2, unit="bars", doc="Walk-forward: training rows per window.")
    test: int = bounded(20, ge=1, unit="bars", doc="Walk-forward: out-of-sample rows per window.")
    step: int = bounded(
        20, ge=1, unit="bars", doc="Walk-forward: rows between decisions (crypto 10, weekday 20)."
    )
    # Per side: a rebalance from A to B pays on both legs.
    slippage_bps: float = bounded(
        10.0,
        ge=0,
        unit="bps per side",
        doc="Slippage on every dollar bought or sold (crypto 10, weekday 5).",
    )
    commission_bps: float = bounded(
        4.0,
        ge=0,
        unit="bps per side",
        doc="Commission on every dollar bought or sold (crypto 4, weekday 1).",
    )
    # promotion rule (the tournament's challenger against the incumbent champion)
    promotion_confidence: float = bounded(
        0.95,
        gt=0,
        lt=1,
        unit="probability",
        doc="The challenger's probabilistic Sharpe ratio against the incumbent's Sharpe must "
        "reach this.",
    )
    drawdown_tolerance: float = bounded(
        1.1,
        ge=1,
        unit="multiple",
        doc="The challenger's max drawdown may be at most this × the incumbent's.",
    )
    min_deflated_sharpe: float = bounded(
        0.5,
        ge=0,
        le=1,
        unit="probability",
        doc="Deflated Sharpe ratio for the number of policies tried: 0.5 asks that the "
        "challenger beat the best that luck alone would give more likely than not (0.95 is the "
        "strict reading).",
    )

    @property
    def bar_policy(self) -> BarPolicy:
        """The bar-defect policy of the sleeve."""
        return BarPolicy.of(self.bar_actions, self.ohlc_tolerance)

    @property
    def cost_rate(self) -> float:
        """Cost per unit of notional traded, each side, as a fraction: a rebalance costs
        ``cost_rate · Σ|Δw|`` (twice the one-sided turnover ``½·Σ|Δw|``)."""
        return (self.slippage_bps + self.commission_bps) / 1e4


# Calendar-specific defaults (DOMAIN §4 liquidity baselines, §7 steps and costs).
CALENDAR_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "crypto": {"liquidity_baseline": 10e6, "step": 10, "slippage_bps": 10.0, "commission_bps": 4.0},
    "weekday": {
        "liquidity_baseline": 500e6,
        "step": 20,
        "slippage_bps": 5.0,
        "commission_bps": 1.0,
    },
}


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule between Policy fields: ``holds(policy)`` is False when the combination is broken."""

    fields: tuple[str, ...]
    rule: str
    holds: Callable[["Policy"], bool]


# Combinations that would otherwise fail (or silently do nothing) several assets later.
CROSS_FIELD_RULES: tuple[CrossFieldRule, ...] = (
    CrossFieldRule(
        ("min_winners", "max_winners"),
        "min_winners <= max_winners",
        lambda p: p.min_winners <= p.max_winners,
    ),
    CrossFieldRule(
        ("min_history", "lookback"),
        "min_history <= lookback (otherwise no symbol can have enough history)",
        lambda p: p.min_history <= p.lookback,
    ),
    CrossFieldRule(
        ("train", "test", "lookback"),
        "train + test <= lookback (the walk-forward needs one training and one test window "
        "inside the returns window)",
        lambda p: p.train + p.test <= p.lookback,
    ),
    CrossFieldRule(
        ("cluster_lookbacks", "lookback"),
        "every cluster lookback <= lookback",
        lambda p: max(p.cluster_lookbacks) <= p.lookback,
    ),
    CrossFieldRule(
        ("cluster_lookbacks",),
        "at least one cluster lookback",
        lambda p: len(p.cluster_lookbacks) > 0,
    ),
)


@dataclass(frozen=True)
class Sleeve:
    name: str
    source: Mapping[str, Any]
    calendar: str
    periods_per_year: int
    toxic_policy: str
    policy: Policy = field(default_factory=Policy)
    # A weekday sleeve's venues: (symbol pattern, exchange calendar code) pairs in catalog order,
    # the first pattern a symbol matches names its venue. Empty: venues inferred from the data.
    venues: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MetaLimit:
    """One sleeve's share of the meta-portfolio: at most ``cap``, at least ``floor``."""

    cap: float = bounded(
        1.0, gt=0, le=1, unit="fraction of capital", doc="The sleeve's largest share."
    )
    floor: float = bounded(
        0.0, ge=0, le=1, unit="fraction of capital", doc="The sleeve's smallest share."
    )


@dataclass(frozen=True)
class MetaPolicy:
    """The meta-portfolio across sleeves (the catalog's ``meta`` section), with its defaults.

    Units: rows of the joined calendar (the dates every sleeve of the meta-portfolio traded; see
    ``tvq_assets/quant/meta.py`` for the join); caps and floors are fractions of firm capital;
    ``max_decision_age`` is in sessions of each sleeve's own calendar (``weekday``: Monday to
    Friday; ``crypto``: every day).

    The meta-portfolio of date D uses each sleeve's latest successful decision at or before D
    (a weekday sleeve's Friday decision on a Sunday, yesterday's decision the day after a failed
    run). ``max_decision_age`` defaults to 3 sessions: a decision that old is still what the
    sleeve holds (a failed run trades nothing), and 3 covers a venue's two-day holiday (Easter,
    Christmas; holidays count as weekday sessions without a run) plus one failed run, while a
    sleeve broken for most of a week (4 sessions and more) is no longer allocated on a stale
    book without ``missing_sleeve`` deciding, loudly, what happens.
    """

    sleeves: tuple[str, ...] = bounded(
        (), unit="sleeve names", doc="Sleeves taking part; empty: every sleeve of the catalog."
    )
    profile: Literal[PROFILES] = bounded(  # type: ignore[valid-type]
        "risk_parity",
        doc="The risk profile across sleeves (the same engine as inside a sleeve).",
    )
    lookback: int = bounded(
        60,
        ge=2,
        unit="joined rows",
        doc="Common dates the sleeve weights are estimated on, as of the date and in every "
        "walk-forward window (60: about a quarter of weekday sessions).",
    )
    test: int = bounded(
        20, ge=1, unit="joined rows", doc="Walk-forward: common dates each decision is held."
    )
    step: int = bounded(
        20, ge=1, unit="joined rows", doc="Walk-forward: common dates between decisions."
    )
    ridge: float = bounded(
        0.1, ge=0, unit="fraction of mean variance", doc="`max_sharpe` covariance ridge."
    )
    max_decision_age: int = bounded(
        3,
        ge=0,
        unit="sessions of the sleeve",
        doc="The oldest usable decision of a sleeve, in its own sessions after the decision's "
        "date up to the meta-portfolio's date (0: the sleeve's latest session on or before it); "
        "3 covers a two-day venue holiday plus a failed run.",
    )
    missing_sleeve: Literal[MISSING_RULES] = bounded(  # type: ignore[valid-type]
        "fail",
        doc="A sleeve without a usable decision (none within `max_decision_age` sessions, or its "
        "runs since failed): `fail` stops the meta-portfolio naming it; `allocate_present` "
        "allocates across the others under a WARN naming it (recorded in the metadata and the "
        "check). Never silent.",
    )
    limits: Mapping[str, MetaLimit] = bounded(
        default_factory=dict,
        unit="sleeve: {cap, floor}",
        doc="Per-sleeve cap and floor (a sleeve not listed: floor 0, cap 1); floors must sum "
        "to at most 1 and caps to at least 1.",
    )

    def limit(self, sleeve: str) -> MetaLimit:
        return self.limits.get(sleeve, MetaLimit())


META_KEYS = tuple(f.name for f in dataclasses.fields(MetaPolicy))


@dataclass(frozen=True)
class Catalog:
    first_run: pd.Timestamp
    sleeves: Mapping[str, Sleeve]
    meta: MetaPolicy = field(default_factory=MetaPolicy)

    @property
    def meta_sleeves(self) -> tuple[str, ...]:
        """The sleeves of the meta-portfolio, in catalog order."""
        chosen = self.meta.sleeves or tuple(self.sleeves)
        return tuple(name for name in self.sleeves if name in chosen)

    def sleeve(self, name: str) -> Sleeve:
        if name not in self.sleeves:
            raise KeyError(f"unknown sleeve {name!r}; the catalog has {sorted(self.sleeves)}")
        return self.sleeves[name]


class CatalogError(ValueError):
    """A catalog that cannot be used; ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def did_you_mean(name: object, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'pattern'?)`` for the closest choice, or the list of choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (expected one of {choices})"


def parse_catalog(document: Mapping[str, Any], *, origin: str = "catalog") -> Catalog:
    """Validate a catalog document (already parsed YAML) into typed sleeves.

    Every problem is collected and raised together as one :class:`CatalogError`.
    """
    if not isinstance(document, Mapping):
        raise CatalogError(f"{origin}: expected a mapping with `sleeves`, got {document!r}")
    problems = [
        f"{origin}: unknown top-level key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)}"
        for key in document
        if key not in TOP_LEVEL_KEYS
    ]
    first_run = _first_run(document.get("first_run", DEFAULT_FIRST_RUN), origin, problems)
    entries = document.get("sleeves")
    if not entries or not isinstance(entries, Mapping):
        problems.append(f"{origin}: no sleeves defined (`sleeves:` must map names to sleeves)")
        entries = {}
    sleeves = {}
    for name, spec in entries.items():
        sleeve = _parse_sleeve(str(name), spec, origin, problems)
        if sleeve is not None:
            sleeves[str(name)] = sleeve
    meta = _parse_meta(document.get("meta") or {}, list(entries), origin, problems)
    if problems:
        raise CatalogError(problems)
    return Catalog(first_run=first_run, sleeves=sleeves, meta=meta)


def _parse_meta(spec: Any, sleeve_names: list[str], origin: str, problems: list[str]) -> MetaPolicy:
    """The ``meta`` section: fields typed and ranged like a sleeve policy, sleeve names known,
    and the caps and floors of its sleeves admitting a fully invested portfolio."""
    where = f"{origin}: meta"
    if not isinstance(spec, Mapping):
        problems.append(f"{where} = {spec!r}: expected a mapping of meta-portfolio settings")
        return MetaPolicy()
    found = len(problems)
    fields = {f.name: f for f in dataclasses.fields(MetaPolicy)}
    hints = typing.get_type_hints(MetaPolicy)
    values: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in fields:
            problems.append(f"{where}: unknown key {key!r}{did_you_mean(key, META_KEYS)}")
        elif key == "limits":
            values[key] = _parse_meta_limits(value, sleeve_names, where, problems)
        else:
            checked, problem = _check_value(
                value, hints[key], fields[key].metadata.get("range", {})
            )
            if problem:
                problems.append(f"{where}.{key} = {value!r}: {problem}")
            else:
                values[key] = checked
    for name in values.get("sleeves", ()):
        if name not in sleeve_names:
            problems.append(
                f"{where}.sleeves: {name!r} is not a sleeve of the catalog"
                f"{did_you_mean(name, sleeve_names)}"
            )
    if len(problems) > found:
        return MetaPolicy()
    meta = MetaPolicy(**values)
    chosen = [n for n in sleeve_names if n in (meta.sleeves or sleeve_names)]
    for name in meta.limits:
        if name not in chosen:
            problems.append(f"{where}.limits.{name}: the sleeve is not in the meta-portfolio")
    limits = {name: meta.limit(name) for name in chosen}
    for name, limit in limits.items():
        if limit.floor > limit.cap:
            problems.append(
                f"{where}.limits.{name}: floor = {limit.floor} > cap = {limit.cap} breaks the "
                "rule floor <= cap"
            )
    floors = sum(limit.floor for limit in limits.values())
    caps = sum(limit.cap for limit in limits.values())
    if floors > 1 + 1e-9:
        problems.append(
            f"{where}.limits: floors sum to {floors:.4g}, breaking the rule sum of floors <= 1"
        )
    if caps < 1 - 1e-9:
        problems.append(
            f"{where}.limits: caps of {chosen} sum to {caps:.4g}, breaking the rule sum of caps "
            ">= 1 (no fully invested meta-portfolio)"
        )
    return meta


def _parse_meta_limits(
    spec: Any, sleeve_names: list[str], where: str, problems: list[str]
) -> dict[str, MetaLimit]:
    if not isinstance(spec, Mapping):
        problems.append(f"{where}.limits = {spec!r}: expected sleeve -> {{cap, floor}}")
        return {}
    fields = {f.name: f for f in dataclasses.fields(MetaLimit)}
    limits = {}
    for name, entry in spec.items():
        if name not in sleeve_names:
            problems.append(
                f"{where}.limits: {name!r} is not a sleeve of the catalog"
                f"{did_you_mean(name, sleeve_names)}"
            )
            continue
        if not isinstance(entry, Mapping):
            problems.append(f"{where}.limits.{name} = {entry!r}: expected {{cap, floor}}")
            continue
        values = {}
        for key, value in entry.items():
            if key not in fields:
                problems.append(
                    f"{where}.limits.{name}: unknown key {key!r}{did_you_mean(key, fields)}"
                )
                continue
            checked, problem = _check_value(value, float, fields[key].metadata["range"])
            if problem:
                problems.append(f"{where}.limits.{name}.{key} = {value!r}: {problem}")
            else:
                values[key] = checked
        limits[str(name)] = MetaLimit(**values)
    return limits


def _first_run(value: Any, origin: str, problems: list[str]) -> pd.Timestamp | None:
    if isinstance(value, datetime.datetime):
        value = value.date()
    if isinstance(value, datetime.date):
        return pd.Timestamp(value)
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return pd.Timestamp(datetime.date.fromisoformat(str(value)))
    except ValueError:
        problems.append(
            f"{origin}: first_run = {value!r}: not a date (rule: an ISO date, YYYY-MM-DD)"
        )
        return None


def _parse_sleeve(name: str, spec: Any, origin: str, problems: list[str]) -> Sleeve | None:
    where = f"{origin}: sleeve {name!r}"
    found = len(problems)
    if not name.isidentifier():
        problems.append(f"{where}: a sleeve name must be a plain identifier")
    if spec is None or spec == {}:
        problems.append(
            f"{where}: an empty entry (rule: a sleeve names its data, e.g. "
            "`source: {kind: synthetic}`)"
        )
        return None
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: expected a mapping of sleeve fields, got {spec!r}")
        return None
    problems += [
        f"{where}: unknown key {key!r}{did_you_mean(key, SLEEVE_KEYS)}"
        for key in spec
        if key not in SLEEVE_KEYS
    ]
    calendar = spec.get("calendar", "crypto")
    known_calendar = calendar in CALENDARS
    if not known_calendar:
        problems.append(
            f"{where}: calendar = {calendar!r} is not a calendar{did_you_mean(calendar, CALENDARS)}"
        )
        calendar = "crypto"  # carry on so the other fields are still checked
    toxic_policy = spec.get("toxic_policy", "fail")
    if toxic_policy not in TOXIC_POLICIES:
        problems.append(
            f"{where}: toxic_policy = {toxic_policy!r} is not a policy"
            f"{did_you_mean(toxic_policy, TOXIC_POLICIES)}"
        )
    venues = _parse_venues(
        spec.get("venues"), calendar if known_calendar else "weekday", where, problems
    )
    # A weekday sleeve's rows are the days any of its venues trades: with venues declared, that
    # union's sessions per year annualise it (New York with London: 257, not 252).
    default_periods = sessions_per_year(venues) if venues else CALENDARS[calendar]
    periods_per_year = spec.get("periods_per_year", default_periods)
    if isinstance(periods_per_year, bool) or not isinstance(periods_per_year, int):
        problems.append(
            f"{where}: periods_per_year = {periods_per_year!r}: expected a whole number"
        )
    elif not 1 <= periods_per_year <= 366:
        problems.append(
            f"{where}: periods_per_year = {periods_per_year!r} breaks the rule 1 <= value <= 366"
        )
    # No default source: a sleeve that forgot its data must not trade a synthetic market.
    if spec.get("source") in (None, {}):
        problems.append(
            f"{where}: source = {spec.get('source')!r}: the sleeve has no source (rule: "
            f"`source: {{kind: ...}}` with kind one of {list(SOURCE_KINDS)})"
        )
        source: dict[str, Any] = {}
    else:
        source = _parse_source(spec["source"], calendar, where, problems)
    source["calendar"] = calendar
    policy = _parse_policy(spec.get("policy") or {}, calendar, where, problems)
    if policy is not None:
        try:
            _ = policy.bar_policy  # validates bar_actions against the bar rules
        except ValueError as exc:
            problems.append(f"{where}: policy.bar_actions: {exc}")
    if len(problems) > found:
        return None
    return Sleeve(
        name=name,
        source=source,
        calendar=calendar,
        periods_per_year=periods_per_year,
        toxic_policy=toxic_policy,
        policy=policy,
        venues=venues,
    )


class UnknownVenue(CatalogError):
    """A ``venues`` code that is not an exchange calendar (raised by :func:`venue_code`)."""


def venue_code(code: Any) -> str:
    """``code`` as an exchange calendar name of ``exchange_calendars`` (an alias such as ``NYSE``
    gives its canonical ``XNYS``), or :class:`UnknownVenue` naming it and the close matches."""
    import exchange_calendars as xc  # ~0.6 s: only for a catalog that names a venue

    names = xc.get_calendar_names(include_aliases=True)
    if isinstance(code, str) and code in names:
        return xc.calendar_utils.global_calendar_dispatcher.resolve_alias(code)
    close = difflib.get_close_matches(str(code).upper(), names, n=4, cutoff=0.6)
    hint = (
        f"close matches: {', '.join(map(repr, close))}"
        if close
        else "no close match; the codes are exchange_calendars.get_calendar_names()"
    )
    raise UnknownVenue(f"{code!r} is not an exchange calendar ({hint})")


# The years whose sessions measure a venue set's periods per year: ten complete years, fixed so
# that the figure never depends on the day the catalog loads.
SESSIONS_REFERENCE = ("2014-01-01", "2023-12-31")


@cache
def sessions_per_year(venues: tuple[tuple[str, str], ...]) -> int:
    """The mean number of weekdays a year on which at least one of ``venues``' exchanges holds a
    session (over :data:`SESSIONS_REFERENCE`), rounded: the rows a year of a weekday sleeve
    mixing them. XNYS alone gives 252, XNYS with XLON 257."""
    import exchange_calendars as xc  # ~0.6 s: only for a catalog that names a venue

    first, last = SESSIONS_REFERENCE
    days = pd.DatetimeIndex([])
    for code in dict.fromkeys(code for _, code in venues):
        days = days.union(xc.get_calendar(code, start=first, end=last).sessions)
    days = days[days.dayofweek < 5]  # a weekday sleeve stores no weekend row (MOEX trades some)
    years = (pd.Timestamp(last) - pd.Timestamp(first)).days / 365.25
    return round(len(days) / years)


def _parse_venues(
    spec: Any, calendar: str, where: str, problems: list[str]
) -> tuple[tuple[str, str], ...]:
    """The sleeve's ``venues``: one exchange calendar code for every symbol (``venues: XNYS``),
    or symbol patterns to codes, first match wins (``venues: {"*.L": XLON, "*": XNYS}``)."""
    if spec is None:
        return ()
    if calendar != "weekday":
        problems.append(
            f"{where}: venues apply to a weekday sleeve only (calendar = {calendar!r} trades "
            "every day: no venue holiday)"
        )
        return ()
    if isinstance(spec, str):
        spec = {"*": spec}
    if not isinstance(spec, Mapping) or not spec:
        problems.append(
            f"{where}: venues = {spec!r}: expected an exchange calendar code (venues: XNYS) or "
            'a mapping of symbol patterns to codes (venues: {"*.L": XLON, "*": XNYS})'
        )
        return ()
    pairs: list[tuple[str, str]] = []
    patterns: list[str] = []
    for pattern, code in spec.items():
        if not isinstance(pattern, str) or not pattern.strip():
            problems.append(f"{where}: venues: pattern {pattern!r} must be a non-empty text")
            continue
        patterns.append(pattern)
        if "*" in patterns[:-1]:
            problems.append(
                f"{where}: venues[{pattern!r}] comes after the catch-all '*' and can never "
                "match (first match wins: put '*' last)"
            )
        try:
            pairs.append((pattern, venue_code(code)))
        except UnknownVenue as error:
            problems.append(f"{where}: venues[{pattern!r}] = {error}")
    return tuple(pairs)


def _parse_source(spec: Any, calendar: str, where: str, problems: list[str]) -> dict[str, Any]:
    """The source mapping, with keys checked per kind, values checked by ``SourceConfig`` (each
    field's range and rules are declared there) and a file source's folder checked on disk."""
    from pydantic import ValidationError

    from tvq_resources.market_data import SourceConfig

    if not isinstance(spec, Mapping):
        problems.append(f"{where}: source = {spec!r}: expected a mapping with a `kind`")
        return {}
    source = dict(spec)
    kind = source.setdefault("kind", "synthetic")
    if kind not in SOURCE_KINDS:
        problems.append(
            f"{where}: source.kind = {kind!r} is not a source kind"
            f"{did_you_mean(kind, SOURCE_KINDS)}"
        )
        return source
    if "calendar" in source:
        problems.append(f"{where}: source.calendar: set `calendar` on the sleeve, not its source")
    other_kinds = set().union(*KIND_ONLY_SOURCE_KEYS.values()) - KIND_ONLY_SOURCE_KEYS[kind]
    allowed = set(SourceConfig.model_fields) - other_kinds - {"calendar"}
    for key in source:
        if key in other_kinds:
            owners = sorted(k for k, keys in KIND_ONLY_SOURCE_KEYS.items() if key in keys)
            problems.append(
                f"{where}: source.{key} applies to {' and '.join(owners)} sources, "
                f"not to a {kind} source"
            )
        elif key not in allowed and key != "calendar":
            problems.append(
                f"{where}: unknown source key {key!r} for a {kind} source"
                f"{did_you_mean(key, allowed)}"
            )
    if kind in ("csv", "parquet") and not source.get("path"):
        problems.append(f"{where}: a {kind} source needs a `path` (source.path)")
    elif kind in ("csv", "parquet") and isinstance(source["path"], str):
        problem = _folder_problem(source["path"])
        if problem:
            problems.append(
                f"{where}: source.path = {_shown(source['path'])}: {problem} (rule: an existing, "
                f"readable folder of the sleeve's {kind} files)"
            )
    if kind == "exchange" and isinstance(source.get("exchange"), str):
        from tvq_resources.exchange import exchange_ids  # ccxt: only for an exchange sleeve

        ids = exchange_ids()
        if source["exchange"] not in ids:
            problems.append(
                f"{where}: source.exchange = {source['exchange']!r} is not a ccxt exchange id"
                f"{did_you_mean(source['exchange'], ids)}"
            )
    known = {k: v for k, v in source.items() if k in allowed}
    try:
        SourceConfig(**known, calendar=calendar)
    except ValidationError as error:
        for item in error.errors():
            if not item["loc"]:  # a rule between fields: its message names them
                problems.append(f"{where}: source: {_source_rule(item)}")
                continue
            location = ".".join(str(part) for part in item["loc"])
            problems.append(
                f"{where}: source.{location} = {_shown(item.get('input'))}: {_source_rule(item)}"
            )
    return source


def _source_rule(item: Mapping[str, Any]) -> str:
    """A pydantic error of ``SourceConfig`` in the catalog's words (``breaks the rule ...``)."""
    context = item.get("ctx") or {}
    bounds = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    for name, sign in bounds.items():
        if name in context:
            return f"breaks the rule value {sign} {context[name]}"
    if item["type"] == "value_error":
        return str(context.get("error", item["msg"]))
    if item["type"] == "string_too_short":
        return "an empty text (rule: leave the key out instead)"
    if item["type"] == "literal_error":
        return f"not an allowed value (rule: {context.get('expected', item['msg'])})"
    return str(item["msg"])


def _folder_problem(path: str) -> str:
    """ "" when ``path`` (as ``market_data.resolve_path`` reads it) is a readable folder, else
    what is wrong with it."""
    from tvq_resources.market_data import resolve_path

    try:
        folder = resolve_path(path)
        if not folder.exists():
            return f"no such folder ({_shown(str(folder))})"
        if not folder.is_dir():
            return f"not a folder ({_shown(str(folder))} is a file)"
        if not os.access(folder, os.R_OK | os.X_OK):
            return f"the folder {_shown(str(folder))} cannot be read (permissions)"
    except (OSError, ValueError) as error:  # too long for the OS, a NUL byte, ...
        reason = getattr(error, "strerror", None) or str(error)
        return f"not a usable path ({reason})"
    return ""


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut in the middle when longer than ``limit`` (a 5000-character path)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...{text[-limit // 4 :]} ({len(str(value))} characters)"


def _parse_policy(overrides: Any, calendar: str, where: str, problems: list[str]) -> Policy:
    if not isinstance(overrides, Mapping):
        problems.append(f"{where}: policy = {overrides!r}: expected a mapping of parameters")
        overrides = {}
    fields = {f.name: f for f in dataclasses.fields(Policy)}
    hints = typing.get_type_hints(Policy)
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields:
            problems.append(f"{where}: unknown policy parameter {key!r}{did_you_mean(key, fields)}")
            continue
        checked, problem = _check_value(value, hints[key], fields[key].metadata.get("range", {}))
        if problem:
            problems.append(f"{where}: policy.{key} = {value!r}: {problem}")
        else:
            values[key] = checked
    policy = Policy(**{**CALENDAR_DEFAULTS[calendar], **values})
    if len(values) == len(overrides):
        for rule in CROSS_FIELD_RULES:
            if not rule.holds(policy):
                shown = ", ".join(f"{name} = {getattr(policy, name)!r}" for name in rule.fields)
                problems.append(f"{where}: policy {shown} breaks the rule {rule.rule}")
    return policy


def _check_value(value: Any, annotation: Any, limits: Mapping[str, float]) -> tuple[Any, str]:
    """``(value as the annotation's type, "")`` or ``(None, what is wrong)``."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None, ""
        [annotation] = [a for a in arguments if a is not type(None)]
        return _check_value(value, annotation, limits)
    if origin is typing.Literal:
        if value in arguments:
            return value, ""
        return None, f"not an allowed value{did_you_mean(value, map(str, arguments))}"
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return None, "expected a list"
        if not value:
            return (
                None,
                "an empty list (rule: at least one element; leave the key out for the default)",
            )
        items = []
        for item in value:
            checked, problem = _check_value(item, arguments[0], limits)
            if problem:
                return None, f"element {item!r}: {problem}"
            items.append(checked)
        return tuple(items), ""
    if annotation is bool:
        return (value, "") if isinstance(value, bool) else (None, "expected true or false")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, "expected a whole number"
    elif annotation is float:
        if isinstance(value, bool):
            return None, "expected a number"
        try:
            # YAML 1.1 reads `10e6` (no dot) as a string: accept any decimal spelling of a number.
            value = float(value)
        except (TypeError, ValueError):
            return None, "expected a number"
        if not math.isfinite(value):
            return None, "expected a finite number"
    elif annotation is str and not isinstance(value, str):
        return None, "expected a string"
    return value, _range_problem(value, limits)


def _range_problem(value: Any, limits: Mapping[str, float]) -> str:
    """ "" when ``value`` is inside every limit, else the rule it breaks."""
    tests = {
        "ge": (">=", lambda v, b: v >= b),
        "gt": (">", lambda v, b: v > b),
        "le": ("<=", lambda v, b: v <= b),
        "lt": ("<", lambda v, b: v < b),
    }
    if all(tests[name][1](value, bound) for name, bound in limits.items()):
        return ""
    return "breaks the rule " + " and ".join(
        f"value {tests[name][0]} {bound}" for name, bound in limits.items()
    )


class _CatalogLoader(yaml.SafeLoader):
    """Safe YAML that keeps unquoted dates as text, so a bad date (``2025-02-30``) is reported by
    the catalog's own validation, naming its field, instead of failing inside the YAML parser.

    It also lists every mapping key given twice (``duplicates``, one line each): YAML keeps the
    last one silently, so a second ``crypto:`` sleeve would replace the first without a word."""

    def __init__(self, stream: str, origin: str = "catalog") -> None:
        super().__init__(stream)
        self.origin = origin
        self.duplicates: list[str] = []

    def construct_document(self, node: yaml.Node) -> Any:
        self.duplicates = list(_duplicate_keys(node, (), self.origin))
        return super().construct_document(node)


def _duplicate_keys(node: yaml.Node, path: tuple[str, ...], origin: str) -> typing.Iterator[str]:
    """One problem per key given twice in a mapping of ``node``'s tree, naming both lines."""
    if isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*path, str(position)), origin)
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
        line = key_node.start_mark.line + 1
        if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
            if key in first_line:
                where = ".".join(path) or "top level"
                yield (
                    f"{origin}:{line}: {where}: key {key!r} is given twice (first on line "
                    f"{first_line[key]}; YAML would silently keep only the last): remove one"
                )
            else:
                first_line[key] = line
        yield from _duplicate_keys(value_node, (*path, key or "?"), origin)


_CatalogLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def catalog_path() -> Path:
    return Path(os.environ.get("TVQ_SLEEVES") or DEFAULT_CATALOG)


@cache
def load_catalog(path: Path | None = None) -> Catalog:
    path = path or catalog_path()
    try:
        loader = _CatalogLoader(path.read_text(), origin=str(path))  # a SafeLoader
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except OSError as error:
        raise CatalogError(f"{path}: cannot read the sleeve catalog ({error})") from error
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: not valid YAML ({error})") from error
    try:
        catalog = parse_catalog(document, origin=str(path))
    except CatalogError as error:
        raise CatalogError(loader.duplicates + error.problems) from None
    if loader.duplicates:
        raise CatalogError(loader.duplicates)
    return catalog


def policy_parameters(sleeve: Sleeve) -> dict[str, Any]:
    """The sleeve's parameters as a flat mapping, for metadata and experiment tracking."""
    return {
        "calendar": sleeve.calendar,
        "periods_per_year": sleeve.periods_per_year,
        "toxic_policy": sleeve.toxic_policy,
        "venues": dict(sleeve.venues),
        **dataclasses.asdict(sleeve.policy),
    }
