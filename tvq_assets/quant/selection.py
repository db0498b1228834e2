"""Cluster-aware selection with hierarchical threshold relaxation (HTR, DOMAIN §6).

Vetoes read the feature table (never the scores); scores only rank symbols that survive. There
are two kinds:

- **Safety vetoes** (``SAFETY_RULES``) hold in every stage, rescue and fill included: ``stalled``,
  ``quarantined`` and ``friction`` (illiquid: the square-root-law cost of trading $1M,
  ``volatility * sqrt(1e6 / dollar_volume)``, exceeds ``max_friction_ratio * |momentum|``; a zero
  or missing dollar volume is illiquid too, and so is an unknown friction: NaN volatility or
  momentum). Nothing ever puts weight into a coin trading $4 a day.
- **Feature vetoes** (``FEATURE_RULES``: entropy, efficiency, kurtosis, volatility) bind in stages
  1-2 and are overridden by stages 3-4.

Boundaries: every threshold rule is a strict inequality, so a value exactly at its threshold
passes: vetoed when ``entropy > max_entropy``, ``efficiency < min_efficiency``, ``kurtosis >
max_kurtosis``, ``volatility > max_volatility``, ``friction / |momentum| > max_friction_ratio``.

HTR stages, each a small function from one immutable :class:`_State` to the next, folded in order
while the selection holds fewer than ``min_winners`` (stage 1 always runs):

1. ``strict`` — per cluster the best ``top_n`` non-vetoed symbols by score.
2. ``relaxed`` — entropy and efficiency thresholds relaxed (x1.2, x0.8); recruit again per cluster.
3. ``cluster_rescue`` — the best member of every cluster still without a winner, overriding the
   feature vetoes.
4. ``global_fill`` — the best remaining symbols by score until ``min_winners``, overriding the
   feature vetoes.

When the safety vetoes leave fewer than ``min_winners`` admissible symbols, fewer are selected and
a ``shortfall`` warning carries the counts. Throughout: one symbol per economic identity (the
better score wins), never more than ``max_winners``, ties broken by score descending then symbol
ascending. Every decision is a row of the audit table, stated as codes and numbers; sentences
are rendered at the asset edge (``tvq_assets.messages``).
"""

import functools
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

STAGES = ("strict", "relaxed", "cluster_rescue", "global_fill")

FEATURE_COLUMNS = ("momentum", "volatility", "entropy", "efficiency", "kurtosis", "dollar_volume")
FEATURE_RULES = ("entropy", "efficiency", "kurtosis", "volatility")
SAFETY_RULES = ("stalled", "quarantined", "friction")

AUDIT_COLUMNS = (
    "symbol",
    "stage",
    "rule",
    "value",
    "threshold",
    "decision",
    "code",
    "cluster",
    "score",
    "argument",
)
WINNER_COLUMNS = ("score", "direction", "cluster", "stage", "stage_name")

ENTROPY_RELAXATION = 1.2
EFFICIENCY_RELAXATION = 0.8

# Square-root market-impact proxy: the cost of trading $1M scales as vol * sqrt($1M / ADV).
FRICTION_NOTIONAL = 1e6

_PERPETUAL_SUFFIX = re.compile(r"(?:[-_.]?PERP|[-_]SWAP|\.P)$")
_QUOTE_SUFFIX = re.compile(r"[-_/]?(?:FDUSD|USDT|USDC|BUSD|TUSD|USD)$")


class Code(StrEnum):
    """What an audit row says; ``tvq_assets.messages`` turns each into a sentence.

    ``value``, ``threshold``, ``cluster``, ``score`` and ``argument`` carry the numbers and names
    the sentence needs; the meaning of each per code is in ``tvq_assets.messages``.
    """

    EXCLUDED_UPSTREAM = "excluded_upstream"  # argument: the upstream reason
    MISSING_INPUT = "missing_input"  # argument: the inputs it is absent from, comma-separated
    MISSING_SCORE = "missing_score"
    ABOVE_MAX = "above_max"  # value > threshold
    BELOW_MIN = "below_min"  # value < threshold
    UNDEFINED = "undefined"  # value is NaN, which vetoes
    NO_DOLLAR_VOLUME = "no_dollar_volume"  # friction rule: zero or missing dollar volume
    STALLED = "stalled"
    QUARANTINED = "quarantined"
    WINNER_IN_CLUSTER = "winner_in_cluster"  # value: rank in cluster, threshold: top_n
    CLUSTER_RESCUE = "cluster_rescue"  # argument: feature vetoes overridden (rule=value,...)
    GLOBAL_FILL = "global_fill"  # value: fill rank, threshold: min_winners; argument as above
    CLUSTER_FULL = "cluster_full"  # value: rank in cluster, threshold: top_n
    SELECTION_FULL = "selection_full"  # threshold: max_winners
    DUPLICATE_IDENTITY = "duplicate_identity"  # argument: the symbol holding the identity


class WarningCode(StrEnum):
    SHORTFALL = "shortfall"  # fewer than min_winners after the safety vetoes
    EMPTY_UNIVERSE = "empty_universe"
    RESCUED = "rescued"  # some winners came from cluster rescue or global fill


@dataclass(frozen=True)
class SelectionWarning:
    """A warning as a code with its numbers, e.g. ``shortfall`` with ``winners=3``."""

    code: WarningCode
    numbers: Mapping[str, int]


@dataclass(frozen=True, kw_only=True)
class SelectionPolicy:
    """Veto thresholds and recruitment sizes of :func:`select`, without defaults of its own.

    Build it from the sleeve's catalog policy with :meth:`of` (``catalog.Policy`` is the one home
    of every default and documents each value). Units: entropy is normalised permutation entropy
    in [0, 1]; efficiency is Kaufman's ``|Σr| / Σ|r|``; kurtosis is excess kurtosis; volatility is
    annualised (2.5 = 250%); ``max_friction_ratio`` multiplies ``|momentum|`` (annualised).
    ``top_n`` winners per cluster in stages 1-2; ``max_winners`` overall; ``min_winners`` is the
    HTR target.
    """

    max_entropy: float
    min_efficiency: float
    max_kurtosis: float
    max_volatility: float
    max_friction_ratio: float
    top_n: int
    max_winners: int
    min_winners: int

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {self.top_n}")
        if not 0 <= self.min_winners <= self.max_winners:
            raise ValueError(
                f"need 0 <= min_winners <= max_winners, got {self.min_winners} and "
                f"{self.max_winners}"
            )

    @classmethod
    def of(cls, policy: Any) -> "SelectionPolicy":
        """The fields of this class read by name from a sleeve policy (``catalog.Policy``)."""
        return cls(**{f.name: getattr(policy, f.name) for f in fields(cls)})


def stage_thresholds(policy: SelectionPolicy, stage: int) -> tuple[float, float]:
    """``(max_entropy, min_efficiency)`` in force at ``stage``: relaxed from stage 2 on."""
    if stage >= 2:
        return (
            policy.max_entropy * ENTROPY_RELAXATION,
            policy.min_efficiency * EFFICIENCY_RELAXATION,
        )
    return policy.max_entropy, policy.min_efficiency


@dataclass(frozen=True)
class Selection:
    """Outcome of :func:`select`.

    ``winners``: index ``symbol``; columns ``score``, ``direction`` ("long" if momentum >= 0 else
    "short", informational), ``cluster``, ``stage`` (1-4), ``stage_name``; sorted by score
    descending then symbol. ``audit``: one row per decision with columns ``symbol``, ``stage``
    (0 = eligibility before HTR, then 1-4), ``rule``, ``value``, ``threshold``, ``decision``
    (excluded, vetoed, admitted, duplicate, not_recruited), ``code`` (a :class:`Code`),
    ``cluster``, ``score`` and ``argument``. ``stage_reached``: the last HTR stage that ran (1-4).
    ``warnings``: codes with their numbers. ``policy``: the policy applied.
    """

    winners: pd.DataFrame
    audit: pd.DataFrame
    stage_reached: int
    warnings: tuple[SelectionWarning, ...]
    policy: SelectionPolicy


# Pure and called for every symbol of every tournament window: remembered per symbol.
@functools.cache
def economic_identity(symbol: str) -> str:
    """The traded asset behind a listing: ``BINANCE:BTCUSDT``, ``BTCUSDC``, ``BTC-PERP`` -> ``BTC``.

    Drops an ``EXCHANGE:`` prefix, then a perpetual marker (``PERP``, ``-SWAP``, ``.P``), then one
    stable quote suffix (FDUSD, USDT, USDC, BUSD, TUSD, USD, optionally after ``-``, ``_`` or
    ``/``). Matching is case-insensitive and the original case is kept. A suffix is only removed
    if something remains, so ``USDT`` itself and plain tickers such as ``AAPL`` are unchanged.
    """
    listing = symbol.rsplit(":", 1)[-1].strip()
    base = listing.upper()
    for pattern in (_PERPETUAL_SUFFIX, _QUOTE_SUFFIX):
        stripped = pattern.sub("", base)
        if stripped:
            base = stripped
    return listing[: len(base)]


# --- audit rows -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Rows:
    """A block of audit rows as column arrays (one block per rule and decision)."""

    columns: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["symbol"])


def _rows(
    symbols: np.ndarray,
    *,
    stage: int,
    rule: str,
    decision: str,
    code: Code | np.ndarray,
    value: np.ndarray | float = math.nan,
    threshold: float = math.nan,
    cluster: np.ndarray | float = math.nan,
    score: np.ndarray | float = math.nan,
    argument: np.ndarray | str = "",
) -> _Rows:
    size = len(symbols)

    def column(values, dtype) -> np.ndarray:
        if isinstance(values, np.ndarray):
            return values.astype(dtype, copy=False)
        return np.full(size, values, dtype=dtype)

    return _Rows(
        {
            "symbol": np.asarray(symbols, dtype=object),
            "stage": np.full(size, stage, dtype=np.int64),
            "rule": np.full(size, rule, dtype=object),
            "value": column(value, np.float64),
            "threshold": np.full(size, threshold, dtype=np.float64),
            "decision": np.full(size, decision, dtype=object),
            "code": column(code if isinstance(code, np.ndarray) else str(code), object),
            "cluster": column(cluster, np.float64),
            "score": column(score, np.float64),
            "argument": column(argument, object),
        }
    )


def _audit_frame(blocks: tuple[_Rows, ...]) -> pd.DataFrame:
    blocks = tuple(block for block in blocks if len(block))
    if not blocks:
        empty = _rows(np.array([], dtype=object), stage=0, rule="", decision="", code=Code.STALLED)
        blocks = (empty,)
    return pd.DataFrame(
        {
            column: np.concatenate([block.columns[column] for block in blocks])
            for column in AUDIT_COLUMNS
        }
    )


# --- the ranked universe ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Ranked:
    """Eligible symbols in ranking order (score desc, symbol asc) as aligned numpy arrays."""

    symbols: np.ndarray
    score: np.ndarray
    cluster: np.ndarray  # the cluster labels
    cluster_code: np.ndarray  # 0..K-1
    identity: np.ndarray  # economic identity codes 0..I-1
    identity_count: int
    momentum: np.ndarray
    values: Mapping[str, np.ndarray]  # rule -> the value it reads (friction: friction/|momentum|)
    safety: Mapping[str, np.ndarray]  # safety rule -> vetoed
    no_dollar_volume: np.ndarray
    blocked: np.ndarray  # any safety veto
    policy: SelectionPolicy

    @property
    def size(self) -> int:
        return self.symbols.size

    @property
    def cluster_count(self) -> int:
        return int(self.cluster_code.max()) + 1 if self.size else 0


def _last_by_symbol(frame: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
    """``frame`` indexed by symbol text, keeping the last row of a repeated symbol."""
    if frame.index.inferred_type not in ("string", "empty"):
        frame = frame.set_axis(frame.index.astype(str))
    if frame.index.has_duplicates:
        frame = frame[~frame.index.duplicated(keep="last")]
    return frame


def _eligibility(
    features: pd.DataFrame, scores: pd.Series, clusters: pd.Series, excluded: Mapping[str, str]
) -> tuple[pd.Index, list[_Rows]]:
    """Symbols present in all three inputs with a finite score and not excluded upstream."""
    in_features = pd.Index(features.index.astype(str))
    in_scores = pd.Index(scores.index.astype(str))
    in_clusters = pd.Index(clusters.dropna().index.astype(str))
    upstream = pd.Index(sorted(excluded), dtype=object)
    everything = in_features.union(in_scores).union(in_clusters)
    rows = [
        _rows(
            upstream.to_numpy(),
            stage=0,
            rule="upstream",
            decision="excluded",
            code=Code.EXCLUDED_UPSTREAM,
            argument=np.array([str(excluded[symbol]) for symbol in upstream], dtype=object),
        )
    ]
    missing = everything.difference(upstream)
    absent = {
        name: ~missing.isin(present)
        for name, present in (
            ("features", in_features),
            ("scores", in_scores),
            ("clusters", in_clusters),
        )
    }
    any_absent = np.logical_or.reduce(list(absent.values())) if len(missing) else np.zeros(0, bool)
    inputs = np.array(
        [
            ",".join(name for name, mask in absent.items() if mask[i])
            for i in np.flatnonzero(any_absent)
        ],
        dtype=object,
    )
    rows.append(
        _rows(
            missing[any_absent].to_numpy(),
            stage=0,
            rule="missing_input",
            decision="excluded",
            code=Code.MISSING_INPUT,
            argument=inputs,
        )
    )
    common = in_features.intersection(in_scores).intersection(in_clusters).difference(upstream)
    score_values = pd.Series(scores.to_numpy(dtype=np.float64), index=in_scores)
    score_values = score_values[~score_values.index.duplicated(keep="last")]
    no_score = common[~np.isfinite(score_values.reindex(common).to_numpy())]
    rows.append(
        _rows(
            no_score.to_numpy(),
            stage=0,
            rule="missing_score",
            decision="excluded",
            code=Code.MISSING_SCORE,
        )
    )
    return common.difference(no_score).sort_values(), rows


def _ranked(
    features: pd.DataFrame,
    scores: pd.Series,
    clusters: pd.Series,
    universe: pd.Index,
    *,
    stalled: Collection[str],
    quarantined: Collection[str],
    policy: SelectionPolicy,
) -> _Ranked:
    score = _last_by_symbol(scores).reindex(universe).to_numpy(dtype=np.float64)
    symbols = universe.to_numpy(dtype=object)
    # universe is sorted by symbol, so a stable sort on -score breaks ties by symbol ascending
    order = np.argsort(-score, kind="stable")
    symbols, score = symbols[order], score[order]
    columns = [column for column in FEATURE_COLUMNS if column in features.columns]
    table = _last_by_symbol(features[columns]).reindex(symbols)
    block = table.to_numpy(dtype=np.float64, na_value=np.nan)
    cluster = _last_by_symbol(clusters.dropna()).reindex(symbols).to_numpy(dtype=np.int64)
    cluster_code = np.unique(cluster, return_inverse=True)[1].astype(np.int64)
    identity = np.unique(
        np.array([economic_identity(symbol) for symbol in symbols], dtype=object).astype(str),
        return_inverse=True,
    )[1].astype(np.int64)

    def feature(column: str) -> np.ndarray:
        if column not in columns:
            return np.full(symbols.size, np.nan)
        return block[:, columns.index(column)]

    momentum, volatility, dollar_volume = (
        feature("momentum"),
        feature("volatility"),
        feature("dollar_volume"),
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        friction = volatility * np.sqrt(FRICTION_NOTIONAL / np.clip(dollar_volume, 0.0, None))
        friction_ratio = friction / np.abs(momentum)
    no_dollar_volume = ~(dollar_volume > 0)
    listed = pd.Index(symbols)
    safety = {
        "stalled": listed.isin(list(map(str, stalled))),
        "quarantined": listed.isin(list(map(str, quarantined))),
        # NaN (unknown volatility or momentum) and infinite friction fail the comparison: illiquid
        "friction": no_dollar_volume | ~(friction_ratio <= policy.max_friction_ratio),
    }
    return _Ranked(
        symbols=symbols,
        score=score,
        cluster=cluster,
        cluster_code=cluster_code,
        identity=identity,
        identity_count=int(identity.max()) + 1 if identity.size else 0,
        momentum=momentum,
        values={
            "entropy": feature("entropy"),
            "efficiency": feature("efficiency"),
            "kurtosis": feature("kurtosis"),
            "volatility": volatility,
            "friction": friction_ratio,
        },
        safety=safety,
        no_dollar_volume=no_dollar_volume,
        blocked=np.logical_or.reduce(list(safety.values())),
        policy=policy,
    )


def _feature_vetoes(ranked: _Ranked, stage: int) -> dict[str, np.ndarray]:
    """Feature veto per rule at ``stage``'s thresholds.

    NaN entropy and NaN kurtosis are not vetoes (undefined on short or flat windows, which the
    efficiency and history rules already catch); NaN volatility and NaN efficiency are (unknown
    risk; no movement at all).
    """
    max_entropy, min_efficiency = stage_thresholds(ranked.policy, stage)
    values = ranked.values
    return {
        "entropy": values["entropy"] > max_entropy,
        "efficiency": ~(values["efficiency"] >= min_efficiency),
        "kurtosis": values["kurtosis"] > ranked.policy.max_kurtosis,
        "volatility": ~(values["volatility"] <= ranked.policy.max_volatility),
    }


def _thresholds(policy: SelectionPolicy, stage: int) -> dict[str, float]:
    max_entropy, min_efficiency = stage_thresholds(policy, stage)
    return {
        "entropy": max_entropy,
        "efficiency": min_efficiency,
        "kurtosis": policy.max_kurtosis,
        "volatility": policy.max_volatility,
        "friction": policy.max_friction_ratio,
    }


def _comparison_codes(rule: str, values: np.ndarray) -> np.ndarray:
    breach = Code.BELOW_MIN if rule == "efficiency" else Code.ABOVE_MAX
    return np.where(np.isnan(values), str(Code.UNDEFINED), str(breach)).astype(object)


def _safety_rows(ranked: _Ranked, stage: int) -> list[_Rows]:
    rows = []
    for rule in ("stalled", "quarantined"):
        hit = ranked.safety[rule]
        rows.append(
            _rows(
                ranked.symbols[hit],
                stage=stage,
                rule=rule,
                decision="vetoed",
                code=Code(rule),
                cluster=ranked.cluster[hit],
                score=ranked.score[hit],
            )
        )
    hit = ranked.safety["friction"]
    value = ranked.values["friction"][hit]
    code = np.where(
        ranked.no_dollar_volume[hit],
        str(Code.NO_DOLLAR_VOLUME),
        _comparison_codes("friction", value),
    ).astype(object)
    rows.append(
        _rows(
            ranked.symbols[hit],
            stage=stage,
            rule="friction",
            decision="vetoed",
            code=code,
            value=value,
            threshold=ranked.policy.max_friction_ratio,
            cluster=ranked.cluster[hit],
            score=ranked.score[hit],
        )
    )
    return rows


def _feature_veto_rows(
    ranked: _Ranked, vetoes: Mapping[str, np.ndarray], open_: np.ndarray, stage: int
) -> list[_Rows]:
    thresholds = _thresholds(ranked.policy, stage)
    rows = []
    for rule in FEATURE_RULES:
        hit = vetoes[rule] & open_
        value = ranked.values[rule][hit]
        rows.append(
            _rows(
                ranked.symbols[hit],
                stage=stage,
                rule=rule,
                decision="vetoed",
                code=_comparison_codes(rule, value),
                value=value,
                threshold=thresholds[rule],
                cluster=ranked.cluster[hit],
                score=ranked.score[hit],
            )
        )
    return rows


def _overrides(ranked: _Ranked, positions: np.ndarray, stage: int) -> np.ndarray:
    """Per admitted symbol, the feature vetoes a rescue or fill overrides: ``entropy=0.99,...``."""
    vetoes = _feature_vetoes(ranked, stage)
    return np.array(
        [
            ",".join(
                f"{rule}={ranked.values[rule][position]:.4g}"
                for rule in FEATURE_RULES
                if vetoes[rule][position]
            )
            for position in positions
        ],
        dtype=object,
    )


# --- recruitment ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Recruitment:
    admitted: np.ndarray  # table positions, in ranking order
    admitted_rank: np.ndarray  # 1-based rank within the cluster among de-duplicated candidates
    no_slot: np.ndarray
    no_slot_rank: np.ndarray
    duplicates: np.ndarray
    holders: np.ndarray  # for each duplicate, the position holding its economic identity
    over_capacity: np.ndarray


def _cumcount(codes: np.ndarray) -> np.ndarray:
    """0-based position of each element among the earlier elements with the same code."""
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if codes.size else order
    lengths = np.diff(np.r_[starts, codes.size])
    result = np.empty(codes.size, dtype=np.int64)
    result[order] = np.arange(codes.size) - np.repeat(starts, lengths)
    return result


def _recruit(
    pool: np.ndarray,
    ranked: _Ranked,
    *,
    slots: np.ndarray | None,
    holder: np.ndarray,
    capacity: int,
) -> _Recruitment:
    """Greedy recruitment in ranking order, computed cluster-wise without a loop over symbols.

    ``pool``: candidate positions in ranking order. A symbol is taken when its cluster still has
    a free slot (``slots``: free slots per cluster code, None = unlimited), its identity is not
    held (``holder``: identity -> position or -1) and no better-ranked taken symbol shares it; the
    first ``capacity`` taken are admitted. This equals walking the ranking one symbol at a time:
    taking duplicates out frees their cluster slots, and the pass repeats until no taken symbol
    is a duplicate (each pass removes at least one symbol).
    """
    identity = ranked.identity
    is_held = holder[identity[pool]] >= 0
    duplicates = [pool[is_held]]
    holders = [holder[identity[pool[is_held]]]]
    candidates = pool[~is_held]
    while True:
        if slots is None:
            position = np.arange(candidates.size)
            within = np.ones(candidates.size, dtype=bool)
        else:
            position = _cumcount(ranked.cluster_code[candidates])
            within = position < slots[ranked.cluster_code[candidates]]
        taken = candidates[within]
        unique, first = np.unique(identity[taken], return_index=True)
        if first.size == taken.size:
            break
        repeated = np.ones(taken.size, dtype=bool)
        repeated[first] = False
        leads = taken[first]
        duplicates.append(taken[repeated])
        holders.append(leads[np.searchsorted(unique, identity[taken[repeated]])])
        candidates = candidates[~np.isin(candidates, taken[repeated])]
    capacity = max(capacity, 0)
    duplicates_, holders_ = np.concatenate(duplicates), np.concatenate(holders)
    over_capacity = taken[capacity:]
    # A duplicate whose holder missed the capacity cut ranks below it, so it missed the cut too.
    lost = np.isin(holders_, over_capacity)
    if lost.any():
        over_capacity = np.sort(np.concatenate([over_capacity, duplicates_[lost]]))
        duplicates_, holders_ = duplicates_[~lost], holders_[~lost]
    return _Recruitment(
        admitted=taken[:capacity],
        admitted_rank=position[within][:capacity] + 1,
        no_slot=candidates[~within],
        no_slot_rank=position[~within] + 1,
        duplicates=duplicates_,
        holders=holders_,
        over_capacity=over_capacity,
    )


# --- the stages, folded over an immutable state -----------------------------------------------


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class _State:
    """The selection so far: winners (table positions in admission order) and audit rows."""

    winners: np.ndarray
    stages: np.ndarray
    holder: np.ndarray  # identity code -> position of the winner holding it, or -1
    settled: np.ndarray  # bool per position: recorded as a duplicate, never reconsidered
    rows: tuple[_Rows, ...]
    stage_reached: int

    @classmethod
    def start(cls, ranked: _Ranked, rows: list[_Rows]) -> "_State":
        return cls(
            winners=_frozen(np.zeros(0, dtype=np.int64)),
            stages=_frozen(np.zeros(0, dtype=np.int64)),
            holder=_frozen(np.full(ranked.identity_count, -1, dtype=np.int64)),
            settled=_frozen(np.zeros(ranked.size, dtype=bool)),
            rows=tuple(rows),
            stage_reached=0,
        )

    def open(self, ranked: _Ranked) -> np.ndarray:
        """Symbols a stage may still consider: no safety veto, not a winner, not a duplicate."""
        taken = self.settled.copy()
        taken[self.winners] = True
        return ~ranked.blocked & ~taken

    def after(
        self, stage: int, ranked: _Ranked, outcome: _Recruitment, rows: list[_Rows]
    ) -> "_State":
        holder = self.holder.copy()
        holder[ranked.identity[outcome.admitted]] = outcome.admitted
        settled = self.settled.copy()
        settled[outcome.duplicates] = True
        rows = [
            *rows,
            _rows(
                ranked.symbols[outcome.duplicates],
                stage=stage,
                rule="economic_identity",
                decision="duplicate",
                code=Code.DUPLICATE_IDENTITY,
                value=ranked.score[outcome.duplicates],
                cluster=ranked.cluster[outcome.duplicates],
                score=ranked.score[outcome.duplicates],
                argument=ranked.symbols[outcome.holders],
            ),
            _rows(
                ranked.symbols[outcome.over_capacity],
                stage=stage,
                rule="max_winners",
                decision="not_recruited",
                code=Code.SELECTION_FULL,
                value=ranked.score[outcome.over_capacity],
                threshold=float(ranked.policy.max_winners),
                cluster=ranked.cluster[outcome.over_capacity],
                score=ranked.score[outcome.over_capacity],
            ),
        ]
        return replace(
            self,
            winners=_frozen(np.concatenate([self.winners, outcome.admitted])),
            stages=_frozen(
                np.concatenate([self.stages, np.full(outcome.admitted.size, stage, np.int64)])
            ),
            holder=_frozen(holder),
            settled=_frozen(settled),
            rows=(*self.rows, *rows),
            stage_reached=stage,
        )


def _by_cluster(stage: int, ranked: _Ranked, state: _State) -> _State:
    """Stages 1-2: the best ``top_n`` per cluster among symbols passing the stage's thresholds."""
    policy = ranked.policy
    open_ = state.open(ranked)
    vetoes = _feature_vetoes(ranked, stage)
    rows = [*_safety_rows(ranked, stage), *_feature_veto_rows(ranked, vetoes, open_, stage)]
    pool = np.flatnonzero(open_ & ~np.logical_or.reduce(list(vetoes.values())))
    already = np.bincount(ranked.cluster_code[state.winners], minlength=ranked.cluster_count)
    outcome = _recruit(
        pool,
        ranked,
        slots=np.clip(policy.top_n - already, 0, None),
        holder=state.holder,
        capacity=policy.max_winners - state.winners.size,
    )
    admitted, no_slot = outcome.admitted, outcome.no_slot
    rows += [
        _rows(
            ranked.symbols[admitted],
            stage=stage,
            rule="top_n",
            decision="admitted",
            code=Code.WINNER_IN_CLUSTER,
            value=outcome.admitted_rank + already[ranked.cluster_code[admitted]],
            threshold=float(policy.top_n),
            cluster=ranked.cluster[admitted],
            score=ranked.score[admitted],
        ),
        _rows(
            ranked.symbols[no_slot],
            stage=stage,
            rule="top_n",
            decision="not_recruited",
            code=Code.CLUSTER_FULL,
            value=outcome.no_slot_rank + already[ranked.cluster_code[no_slot]],
            threshold=float(policy.top_n),
            cluster=ranked.cluster[no_slot],
            score=ranked.score[no_slot],
        ),
    ]
    return state.after(stage, ranked, outcome, rows)


def _strict(ranked: _Ranked, state: _State) -> _State:
    return _by_cluster(1, ranked, state)


def _relaxed(ranked: _Ranked, state: _State) -> _State:
    return _by_cluster(2, ranked, state)


def _cluster_rescue(ranked: _Ranked, state: _State) -> _State:
    """Stage 3: the best member of each cluster without a winner, feature vetoes overridden."""
    has_winner = np.zeros(ranked.cluster_count, dtype=bool)
    has_winner[ranked.cluster_code[state.winners]] = True
    pool = np.flatnonzero(state.open(ranked) & ~has_winner[ranked.cluster_code])
    outcome = _recruit(
        pool,
        ranked,
        slots=np.ones(ranked.cluster_count, dtype=np.int64),
        holder=state.holder,
        capacity=ranked.policy.max_winners - state.winners.size,
    )
    admitted = outcome.admitted
    rows = [
        *_safety_rows(ranked, 3),
        _rows(
            ranked.symbols[admitted],
            stage=3,
            rule="cluster_rescue",
            decision="admitted",
            code=Code.CLUSTER_RESCUE,
            value=ranked.score[admitted],
            cluster=ranked.cluster[admitted],
            score=ranked.score[admitted],
            argument=_overrides(ranked, admitted, 3),
        ),
    ]
    return state.after(3, ranked, outcome, rows)


def _global_fill(ranked: _Ranked, state: _State) -> _State:
    """Stage 4: the best remaining symbols by score until ``min_winners``, feature vetoes
    overridden; the safety vetoes still hold, so the fill may end short of ``min_winners``."""
    policy = ranked.policy
    needed = min(policy.max_winners, policy.min_winners) - state.winners.size
    outcome = _recruit(
        np.flatnonzero(state.open(ranked)), ranked, slots=None, holder=state.holder, capacity=needed
    )
    # Symbols beyond the fill are simply not needed: they are not capacity casualties.
    outcome = replace(outcome, over_capacity=np.zeros(0, dtype=np.int64))
    admitted = outcome.admitted
    rows = [
        *_safety_rows(ranked, 4),
        _rows(
            ranked.symbols[admitted],
            stage=4,
            rule="global_fill",
            decision="admitted",
            code=Code.GLOBAL_FILL,
            value=np.arange(1, admitted.size + 1, dtype=np.float64),
            threshold=float(policy.min_winners),
            cluster=ranked.cluster[admitted],
            score=ranked.score[admitted],
            argument=_overrides(ranked, admitted, 4),
        ),
    ]
    return state.after(4, ranked, outcome, rows)


_STAGE_STEPS: tuple[Callable[[_Ranked, _State], _State], ...] = (
    _strict,
    _relaxed,
    _cluster_rescue,
    _global_fill,
)


def _next_stage(ranked: _Ranked) -> Callable[[_State, Callable[[_Ranked, _State], _State]], _State]:
    def fold(state: _State, stage: Callable[[_Ranked, _State], _State]) -> _State:
        if state.stage_reached >= 1 and state.winners.size >= ranked.policy.min_winners:
            return state
        return stage(ranked, state)

    return fold


def select(
    features: pd.DataFrame,
    scores: pd.Series,
    clusters: pd.Series,
    *,
    policy: SelectionPolicy,
    stalled: Collection[str] = (),
    quarantined: Collection[str] = (),
    excluded: Mapping[str, str] | None = None,
) -> Selection:
    """Select winners by cluster with hierarchical threshold relaxation (see module docstring).

    The eligible universe is ``features ∩ scores ∩ clusters`` minus ``excluded`` (symbol -> reason,
    decided upstream) and symbols without a finite score, all listed in the audit at stage 0.
    ``stalled``, ``quarantined`` and illiquid symbols (the friction rule) are vetoed at every stage
    that runs and never admitted. Feature vetoes bind in stages 1-2 and are overridden in stages
    3-4, whose admissions name what was overridden. When fewer than ``min_winners`` symbols are
    admissible all of them are selected (one per economic identity) and a ``shortfall`` warning
    gives the counts; the size of the universe never raises.
    """
    excluded = dict(excluded or {})
    universe, rows = _eligibility(features, scores, clusters, excluded)
    missing_columns = [c for c in FEATURE_COLUMNS if c not in features.columns]
    if len(universe) and missing_columns:
        raise ValueError(f"features lack the columns {missing_columns} that the vetoes read")
    ranked = _ranked(
        features,
        scores,
        clusters,
        universe,
        stalled=stalled,
        quarantined=quarantined,
        policy=policy,
    )
    state = functools.reduce(_next_stage(ranked), _STAGE_STEPS, _State.start(ranked, rows))
    winners = _winner_frame(ranked, state)
    return Selection(
        winners=winners,
        audit=_audit_frame(state.rows),
        stage_reached=state.stage_reached,
        warnings=_warnings(ranked, state, universe_size=len(universe)),
        policy=policy,
    )


def _winner_frame(ranked: _Ranked, state: _State) -> pd.DataFrame:
    """Winners in ranking order (score desc, symbol asc)."""
    order = np.argsort(state.winners, kind="stable")
    chosen, stages = state.winners[order], state.stages[order]
    frame = pd.DataFrame(
        {
            "score": ranked.score[chosen],
            # NaN momentum counts as long: the direction is informational and sleeves are long-only.
            "direction": np.where(ranked.momentum[chosen] < 0, "short", "long").astype(object),
            "cluster": ranked.cluster[chosen].astype(np.int64),
            "stage": stages.astype(np.int64),
            "stage_name": np.array([STAGES[stage - 1] for stage in stages], dtype=object),
        },
        index=pd.Index(ranked.symbols[chosen], name="symbol", dtype=object),
    )
    return frame


def _warnings(
    ranked: _Ranked, state: _State, *, universe_size: int
) -> tuple[SelectionWarning, ...]:
    policy = ranked.policy
    warnings = []
    if state.winners.size < policy.min_winners:
        if universe_size == 0:
            warnings.append(
                SelectionWarning(WarningCode.EMPTY_UNIVERSE, {"min_winners": policy.min_winners})
            )
        else:
            admissible = ~ranked.blocked
            warnings.append(
                SelectionWarning(
                    WarningCode.SHORTFALL,
                    {
                        "winners": int(state.winners.size),
                        "min_winners": policy.min_winners,
                        "universe": universe_size,
                        "vetoed_for_safety": int(ranked.blocked.sum()),
                        **{rule: int(ranked.safety[rule].sum()) for rule in SAFETY_RULES},
                        "admissible": int(admissible.sum()),
                        "identities": int(np.unique(ranked.identity[admissible]).size),
                    },
                )
            )
    rescued = int((state.stages >= 3).sum())
    if rescued:
        warnings.append(
            SelectionWarning(
                WarningCode.RESCUED,
                {
                    "stage_reached": state.stage_reached,
                    "rescued": rescued,
                    "winners": int(state.winners.size),
                },
            )
        )
    return tuple(warnings)
