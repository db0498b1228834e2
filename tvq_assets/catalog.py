"""The sleeve catalog: which sleeves exist, where their data comes from, and their policies.

The catalog is a small YAML file (``tvq_assets/sleeves.yaml`` by default, or the file named by
``TVQ_SLEEVES``). It defines the static ``sleeve`` partition dimension, so it is read when the code
location loads; a broken catalog fails the load with a message naming the sleeve and the field.
"""

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tvq_assets.quant.bars import BarPolicy
from tvq_assets.quant.optimise import INFEASIBLE_CAP_POLICIES

DEFAULT_CATALOG = Path(__file__).with_name("sleeves.yaml")
CALENDARS = {"crypto": 365, "weekday": 252}
TOXIC_POLICIES = ("fail", "quarantine")
SOURCE_KINDS = ("synthetic", "csv", "parquet")


@dataclass(frozen=True)
class Policy:
    """Every tunable of one sleeve, with the defaults of the domain specification.

    Units: bars are rows of the sleeve's calendar; returns are simple returns; volatilities are
    annualised fractions (2.5 = 250%); costs are in basis points of traded notional.
    """

    # returns (L0/L1)
    lookback: int = 500  # bars in the returns window ending at the as-of date
    toxic_threshold: float = 5.0  # a daily simple return above this (+500%) is toxic
    stale_days: int = 5  # no bar within this many calendar days of the as-of date: dropped
    min_history: int = 90  # fewer returns inside the window: ineligible
    # bar quality (WARN rules)
    volume_spike_sigma: float = 10.0  # last bar's volume z-score above this is a spike
    volume_spike_window: int = 21  # trailing bars the z-score is measured over (at least)
    stall_bars: int = 3  # this many identical last closes is a stall
    max_zero_share: float = 0.25  # more zero-return days than this over the feature window: stall
    min_universe: int = 4  # fewer eligible symbols fails `returns` (4: what a 25% cap can invest)
    # bar defects (see tvq_assets/quant/bars.py): action per rule overriding DEFAULT_ACTIONS
    # (repair | drop | quarantine), and the relative OHLC miss that is always repaired
    bar_actions: Mapping[str, str] = field(default_factory=dict)
    ohlc_tolerance: float = BarPolicy.ohlc_tolerance
    # features (L2)
    feature_lookback: int = 120
    liquidity_baseline: float = 10e6  # median daily dollar volume that counts as fully liquid
    # clusters and selection (L3/L4)
    cluster_lookbacks: tuple[int, ...] = (60, 120, 200)
    cluster_threshold: float = 0.7
    max_clusters: int = 25
    # Permutation entropy (order 5) of i.i.d. noise over the 120-bar feature window averages 0.88
    # (95th percentile 0.90): 0.90 vetoes the most noise-like symbols; 0.98 would never bind.
    max_entropy: float = 0.90
    min_efficiency: float = 0.02
    max_kurtosis: float = 20.0
    max_volatility: float = 2.5
    max_friction_ratio: float = 1.0
    top_n: int = 2
    min_winners: int = 15
    max_winners: int = 25
    # allocation
    cap: float = 0.25  # maximum weight per symbol
    cluster_cap: float | None = None  # maximum total weight per cluster (None: no cluster cap)
    turnover_penalty: float = 0.0  # λ of the L1 turnover term, in the profile objective's units
    ridge: float = 0.1  # max_sharpe covariance ridge, a fraction of the average variance
    # When cap (or cluster_cap) admits no fully invested portfolio of the winners (cap < 1/n):
    # "fail" stops the run naming the configured and the minimum feasible cap; "raise" proceeds
    # with the minimum feasible cap and a WARN naming both. A risk limit never changes silently.
    infeasible_cap: str = "fail"
    # walk-forward backtest
    train: int = 252
    test: int = 20
    step: int = 20
    slippage_bps: float = 10.0
    commission_bps: float = 4.0

    @property
    def bar_policy(self) -> BarPolicy:
        """The bar-defect policy of the sleeve."""
        return BarPolicy.of(self.bar_actions, self.ohlc_tolerance)

    @property
    def cost_rate(self) -> float:
        """Cost per unit of one-sided turnover, as a fraction."""
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
class Sleeve:
    name: str
    source: Mapping[str, Any]
    calendar: str
    periods_per_year: int
    toxic_policy: str
    policy: Policy = field(default_factory=Policy)


@dataclass(frozen=True)
class Catalog:
    first_run: pd.Timestamp
    sleeves: Mapping[str, Sleeve]

    def sleeve(self, name: str) -> Sleeve:
        if name not in self.sleeves:
            raise KeyError(f"unknown sleeve {name!r}; the catalog has {sorted(self.sleeves)}")
        return self.sleeves[name]


class CatalogError(ValueError):
    pass


def parse_catalog(document: Mapping[str, Any], *, origin: str = "catalog") -> Catalog:
    """Validate a catalog document (already parsed YAML) into typed sleeves."""
    unknown = set(document) - {"first_run", "sleeves"}
    if unknown:
        raise CatalogError(f"{origin}: unknown top-level keys {sorted(unknown)}")
    if not document.get("sleeves"):
        raise CatalogError(f"{origin}: no sleeves defined")
    sleeves = {
        str(name): _parse_sleeve(str(name), spec or {}, origin)
        for name, spec in document["sleeves"].items()
    }
    first_run = pd.Timestamp(str(document.get("first_run", "2025-01-01")))
    return Catalog(first_run=first_run, sleeves=sleeves)


def _parse_sleeve(name: str, spec: Mapping[str, Any], origin: str) -> Sleeve:
    where = f"{origin}: sleeve {name!r}"
    if not name.isidentifier():
        raise CatalogError(f"{where}: a sleeve name must be a plain identifier")
    unknown = set(spec) - {"source", "calendar", "periods_per_year", "toxic_policy", "policy"}
    if unknown:
        raise CatalogError(f"{where}: unknown keys {sorted(unknown)}")
    calendar = spec.get("calendar", "crypto")
    if calendar not in CALENDARS:
        raise CatalogError(f"{where}: calendar {calendar!r} is not one of {sorted(CALENDARS)}")
    toxic_policy = spec.get("toxic_policy", "fail")
    if toxic_policy not in TOXIC_POLICIES:
        raise CatalogError(f"{where}: toxic_policy {toxic_policy!r} is not one of {TOXIC_POLICIES}")
    source = dict(spec.get("source") or {"kind": "synthetic"})
    if source.get("kind", "synthetic") not in SOURCE_KINDS:
        raise CatalogError(
            f"{where}: source kind {source.get('kind')!r} is not one of {SOURCE_KINDS}"
        )
    if source.get("kind") in ("csv", "parquet") and not source.get("path"):
        raise CatalogError(f"{where}: a {source['kind']} source needs a `path`")
    source["calendar"] = calendar
    overrides = dict(spec.get("policy") or {})
    known = {f.name for f in dataclasses.fields(Policy)}
    if set(overrides) - known:
        raise CatalogError(f"{where}: unknown policy parameters {sorted(set(overrides) - known)}")
    if "cluster_lookbacks" in overrides:
        overrides["cluster_lookbacks"] = tuple(overrides["cluster_lookbacks"])
    policy = Policy(**{**CALENDAR_DEFAULTS[calendar], **overrides})
    if policy.infeasible_cap not in INFEASIBLE_CAP_POLICIES:
        raise CatalogError(
            f"{where}: policy infeasible_cap {policy.infeasible_cap!r} is not one of "
            f"{INFEASIBLE_CAP_POLICIES}"
        )
    try:
        BarPolicy.of(policy.bar_actions, policy.ohlc_tolerance)
    except ValueError as exc:
        raise CatalogError(f"{where}: policy.bar_actions: {exc}") from exc
    return Sleeve(
        name=name,
        source=source,
        calendar=calendar,
        periods_per_year=int(spec.get("periods_per_year", CALENDARS[calendar])),
        toxic_policy=toxic_policy,
        policy=policy,
    )


def catalog_path() -> Path:
    return Path(os.environ.get("TVQ_SLEEVES") or DEFAULT_CATALOG)


@cache
def load_catalog(path: Path | None = None) -> Catalog:
    path = path or catalog_path()
    return parse_catalog(yaml.safe_load(path.read_text()), origin=str(path))


def policy_parameters(sleeve: Sleeve) -> dict[str, Any]:
    """The sleeve's parameters as a flat mapping, for metadata and experiment tracking."""
    return {
        "calendar": sleeve.calendar,
        "periods_per_year": sleeve.periods_per_year,
        "toxic_policy": sleeve.toxic_policy,
        **dataclasses.asdict(sleeve.policy),
    }
