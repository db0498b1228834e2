"""Cluster-aware selection with hierarchical threshold relaxation (HTR, DOMAIN §6).

Vetoes read the feature table (never the scores); scores only rank symbols that survive. HTR
guarantees ``min_winners`` when the universe allows it:

1. ``strict`` — per cluster the best ``top_n`` non-vetoed symbols by score.
2. ``relaxed`` — entropy and efficiency thresholds relaxed (×1.2, ×0.8); recruit again per cluster.
3. ``cluster_rescue`` — the best member of every cluster still without a winner, overriding the
   feature vetoes.
4. ``global_fill`` — the best remaining symbols by score until ``min_winners``.

A stage runs only while the selection holds fewer than ``min_winners``. Throughout: stalled and
quarantined symbols are never admitted (hard vetoes), one symbol per economic identity (the better
score wins), never more than ``max_winners``, ties broken by score descending then symbol
ascending. Every decision is a row of the audit table.
"""

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

STAGES = ("strict", "relaxed", "cluster_rescue", "global_fill")

FEATURE_COLUMNS = ("momentum", "volatility", "entropy", "efficiency", "kurtosis", "dollar_volume")
SOFT_RULES = ("entropy", "efficiency", "kurtosis", "volatility", "friction")
HARD_RULES = ("stalled", "quarantined")

AUDIT_COLUMNS = ("symbol", "stage", "rule", "value", "threshold", "decision", "detail")
WINNER_COLUMNS = ("score", "direction", "cluster", "stage", "stage_name", "reason")

ENTROPY_RELAXATION = 1.2
EFFICIENCY_RELAXATION = 0.8

# Square-root market-impact proxy: the cost of trading $1M scales as vol * sqrt($1M / ADV).
FRICTION_NOTIONAL = 1e6

_PERPETUAL_SUFFIX = re.compile(r"(?:[-_.]?PERP|[-_]SWAP|\.P)$")
_QUOTE_SUFFIX = re.compile(r"[-_/]?(?:FDUSD|USDT|USDC|BUSD|TUSD|USD)$")


@dataclass(frozen=True)
class SelectionPolicy:
    """Veto thresholds and recruitment sizes of :func:`select`.

    - ``max_entropy``: veto above this normalised permutation entropy (order 5, in [0, 1]). Daily
      returns are close to noise, so the useful band is narrow: 0.98 vetoes only the most
      noise-like series when the estimate of iid noise sits around 0.95-0.99 (windows of several
      hundred bars, or a bias-corrected estimate). The plain plug-in estimate on 120 bars is biased
      low (116 windows over 120 patterns: iid noise gives 0.88, 95th percentile 0.90), so with
      such features 0.98 is inactive and about 0.90 is the comparable choice.
    - ``min_efficiency``: veto below this Kaufman efficiency ratio ``|Σr| / Σ|r|``; iid noise over
      120 bars averages about 1/sqrt(120) = 0.09, so 0.02 vetoes only series with no net drift.
    - ``max_kurtosis``: veto above this excess kurtosis.
    - ``max_volatility``: veto above this annualised volatility (2.5 = 250%).
    - ``max_friction_ratio``: veto when ``friction = volatility * sqrt(1e6 / dollar_volume)`` (the
      square-root-law cost of trading $1M against the median daily dollar volume, in annualised
      return units like momentum) exceeds this multiple of ``|momentum|``: the expected edge must
      at least pay for the impact. The audit records the ratio ``friction / |momentum|``.
    - ``top_n`` winners per cluster in stages 1-2; ``max_winners`` overall; ``min_winners`` is the
      HTR target.
    """

    max_entropy: float = 0.98
    min_efficiency: float = 0.02
    max_kurtosis: float = 20.0
    max_volatility: float = 2.5
    max_friction_ratio: float = 1.0
    top_n: int = 2
    max_winners: int = 25
    min_winners: int = 15

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise ValueError(f"top_n must be at least 1, got {self.top_n}")
        if not 0 <= self.min_winners <= self.max_winners:
            raise ValueError(
                f"need 0 <= min_winners <= max_winners, got {self.min_winners} and "
                f"{self.max_winners}"
            )


@dataclass(frozen=True)
class Selection:
    """Outcome of :func:`select`.

    ``winners``: index ``symbol``; columns ``score``, ``direction`` ("long" if momentum >= 0 else
    "short", informational), ``cluster``, ``stage`` (1-4), ``stage_name``, ``reason``; sorted by
    score descending then symbol. ``audit``: one row per decision with columns ``symbol``,
    ``stage`` (0 = eligibility before HTR, then 1-4), ``rule``, ``value``, ``threshold``,
    ``decision`` (excluded, vetoed, admitted, duplicate, not_recruited) and ``detail``.
    ``stage_reached``: the last HTR stage that ran (1-4). ``warnings``: human-readable sentences.
    """

    winners: pd.DataFrame
    audit: pd.DataFrame
    stage_reached: int
    warnings: tuple[str, ...]


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


def _empty_winners() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "score": pd.Series(dtype=np.float64),
            "direction": pd.Series(dtype=object),
            "cluster": pd.Series(dtype=np.int64),
            "stage": pd.Series(dtype=np.int64),
            "stage_name": pd.Series(dtype=object),
            "reason": pd.Series(dtype=object),
        }
    )
    frame.index = pd.Index([], dtype=object, name="symbol")
    return frame[list(WINNER_COLUMNS)]


def _audit_frame(rows: list[pd.DataFrame]) -> pd.DataFrame:
    rows = [frame for frame in rows if len(frame)]
    if not rows:
        audit = pd.DataFrame({column: pd.Series(dtype=object) for column in AUDIT_COLUMNS})
    else:
        audit = pd.concat(rows, ignore_index=True)
    return audit.astype(
        {
            "symbol": object,
            "stage": np.int64,
            "rule": object,
            "value": np.float64,
            "threshold": np.float64,
            "decision": object,
            "detail": object,
        }
    )[list(AUDIT_COLUMNS)]


def _rows(
    symbols: pd.Index | list[str],
    *,
    stage: int,
    rule: str,
    decision: str,
    detail: pd.Series | str,
    value: pd.Series | float = math.nan,
    threshold: float = math.nan,
) -> pd.DataFrame:
    """Audit rows for ``symbols`` sharing a stage, rule and decision (value/detail per symbol)."""
    index = pd.Index(symbols, dtype=object)
    if len(index) == 0:
        return pd.DataFrame(columns=list(AUDIT_COLUMNS))
    if isinstance(value, pd.Series):
        values = value.reindex(index).to_numpy(dtype=np.float64)
    else:
        values = np.full(len(index), value, dtype=np.float64)
    details = (
        detail.reindex(index).to_numpy(dtype=object) if isinstance(detail, pd.Series) else detail
    )
    return pd.DataFrame(
        {
            "symbol": index.to_numpy(dtype=object),
            "stage": stage,
            "rule": rule,
            "value": values,
            "threshold": threshold,
            "decision": decision,
            "detail": details,
        },
        index=range(len(index)),
    )


def _feature_vetoes(
    features: pd.DataFrame, *, max_entropy: float, min_efficiency: float, policy: SelectionPolicy
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Boolean veto matrix (symbol x rule), the value each rule read and its threshold.

    NaN handling: NaN entropy and NaN kurtosis are not vetoes (undefined on short or flat windows,
    which the efficiency and history rules already catch); NaN volatility and NaN efficiency are
    (unknown risk; no movement at all). Friction with NaN dollar volume is not a veto (missing
    volume data is not evidence of illiquidity, and the liquidity feature lowers the score);
    zero dollar volume gives infinite friction, and NaN momentum leaves no edge, so both veto.
    """
    momentum = features["momentum"].astype(np.float64)
    volatility = features["volatility"].astype(np.float64)
    dollar_volume = features["dollar_volume"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        friction = volatility * np.sqrt(FRICTION_NOTIONAL / dollar_volume.clip(lower=0.0))
        friction_ratio = friction / momentum.abs()
    values = pd.DataFrame(
        {
            "entropy": features["entropy"].astype(np.float64),
            "efficiency": features["efficiency"].astype(np.float64),
            "kurtosis": features["kurtosis"].astype(np.float64),
            "volatility": volatility,
            "friction": friction_ratio,
        },
        index=features.index,
    )
    thresholds = {
        "entropy": max_entropy,
        "efficiency": min_efficiency,
        "kurtosis": policy.max_kurtosis,
        "volatility": policy.max_volatility,
        "friction": policy.max_friction_ratio,
    }
    vetoes = pd.DataFrame(
        {
            "entropy": values["entropy"] > max_entropy,
            "efficiency": ~(values["efficiency"] >= min_efficiency),
            "kurtosis": values["kurtosis"] > policy.max_kurtosis,
            "volatility": ~(volatility <= policy.max_volatility),
            "friction": dollar_volume.notna() & ~(friction_ratio <= policy.max_friction_ratio),
        },
        index=features.index,
    )
    return vetoes, values, thresholds


_COMPARATORS = {
    "entropy": ">",
    "efficiency": "<",
    "kurtosis": ">",
    "volatility": ">",
    "friction": ">",
}
_FRICTION_TEXT = "friction/|momentum|"


def _veto_rows(
    vetoes: pd.DataFrame, values: pd.DataFrame, thresholds: dict[str, float], *, stage: int
) -> list[pd.DataFrame]:
    rows = []
    for rule in SOFT_RULES:
        hit = vetoes.index[vetoes[rule].to_numpy()]
        if len(hit) == 0:
            continue
        value = values[rule].reindex(hit)
        label = _FRICTION_TEXT if rule == "friction" else rule
        detail = label + " " + _fmt(value) + f" {_COMPARATORS[rule]} "
        detail = detail + f"{thresholds[rule]:.4g}"
        detail = detail.where(value.notna(), f"{label} is NaN (veto)")
        rows.append(
            _rows(
                hit,
                stage=stage,
                rule=rule,
                decision="vetoed",
                value=value,
                threshold=thresholds[rule],
                detail=detail,
            )
        )
    return rows


def _describe_overrides(vetoes: pd.DataFrame, values: pd.DataFrame) -> pd.Series:
    """Per symbol, the feature vetoes a rescue overrides, e.g. ``entropy=0.99, kurtosis=31``."""
    parts = pd.Series("", index=vetoes.index, dtype=object)
    for rule in SOFT_RULES:
        text = rule + "=" + _fmt(values[rule])
        parts = parts.where(~vetoes[rule], parts + np.where(parts == "", "", ", ") + text)
    return parts.where(parts != "", "none")


@dataclass(frozen=True)
class _Recruitment:
    admitted: pd.Index
    # 1-based rank within the cluster among the candidates left after de-duplication
    rank: pd.Series
    duplicates: pd.Series  # symbol -> the symbol holding its economic identity
    no_slot: pd.Index
    over_capacity: pd.Index


def _recruit(
    ranked: pd.DataFrame, *, slots: pd.Series | None, held: pd.Series, capacity: int
) -> _Recruitment:
    """Greedy recruitment in score order, computed cluster-wise without a loop over symbols.

    ``ranked`` (columns score, cluster, identity) is sorted by score desc then symbol asc.
    A symbol is taken when its cluster still has a free slot (``slots``: free slots per cluster,
    None = unlimited), its identity is not ``held`` (identity -> holder) and no better-ranked
    taken symbol shares it; the first ``capacity`` taken are admitted. This equals walking the
    ranking one symbol at a time: taking duplicates out frees their cluster slots, and the pass
    repeats until no taken symbol is a duplicate (each pass removes at least one symbol).
    """
    is_held = ranked["identity"].isin(held.index).to_numpy()
    duplicates = ranked.loc[is_held, "identity"].map(held)
    candidates = ranked[~is_held]
    while True:
        if slots is None:
            position = pd.Series(np.arange(len(candidates)), index=candidates.index)
            within = pd.Series(True, index=candidates.index)
        else:
            position = candidates.groupby("cluster", sort=False).cumcount()
            within = position < candidates["cluster"].map(slots).fillna(0)
        taken = candidates[within.to_numpy()]
        repeated = taken["identity"].duplicated(keep="first").to_numpy()
        if not repeated.any():
            break
        holders = pd.Series(taken.index[~repeated], index=taken["identity"].to_numpy()[~repeated])
        found = taken.loc[repeated, "identity"].map(holders)
        duplicates = pd.concat([duplicates, found])
        candidates = candidates.drop(index=found.index)
    capacity = max(capacity, 0)
    admitted = taken.index[:capacity]
    over_capacity = taken.index[capacity:]
    # A duplicate whose holder missed the capacity cut ranks below it, so it missed the cut too.
    lost = duplicates.isin(over_capacity).to_numpy()
    if lost.any():
        over_capacity = ranked.index[
            ranked.index.isin(over_capacity.append(duplicates.index[lost]))
        ]
        duplicates = duplicates[~lost]
    return _Recruitment(
        admitted=admitted,
        rank=position + 1,
        duplicates=duplicates,
        no_slot=candidates.index[~within.to_numpy()],
        over_capacity=over_capacity,
    )


def _eligibility(
    features: pd.DataFrame,
    scores: pd.Series,
    clusters: pd.Series,
    excluded: Mapping[str, str],
) -> tuple[pd.Index, list[pd.DataFrame]]:
    """Symbols present in all three inputs with a finite score and not excluded upstream."""
    in_features = pd.Index(features.index.astype(str))
    in_scores = pd.Index(scores.index.astype(str))
    in_clusters = pd.Index(clusters.dropna().index.astype(str))
    upstream = pd.Index(sorted(excluded), dtype=object)
    everything = in_features.union(in_scores).union(in_clusters)
    rows = [
        _rows(
            upstream,
            stage=0,
            rule="upstream",
            decision="excluded",
            detail=pd.Series({symbol: str(excluded[symbol]) for symbol in upstream}, dtype=object),
        )
    ]
    absent_from = pd.Series("", index=everything, dtype=object)
    for name, present in (
        ("features", in_features),
        ("scores", in_scores),
        ("clusters", in_clusters),
    ):
        absent = ~everything.isin(present)
        separator = np.where(absent_from == "", "", ", ")
        absent_from = absent_from.where(~absent, absent_from + separator + name)
    missing = everything[(absent_from != "").to_numpy()].difference(upstream)
    rows.append(
        _rows(
            missing,
            stage=0,
            rule="missing_input",
            decision="excluded",
            detail="absent from " + absent_from.reindex(missing),
        )
    )
    common = in_features.intersection(in_scores).intersection(in_clusters).difference(upstream)
    score_values = pd.Series(scores.to_numpy(dtype=np.float64), index=in_scores)
    score_values = score_values[~score_values.index.duplicated(keep="last")]
    no_score = common[~np.isfinite(score_values.reindex(common).to_numpy())]
    rows.append(
        _rows(
            no_score,
            stage=0,
            rule="missing_score",
            decision="excluded",
            detail="score is not a finite number",
        )
    )
    return common.difference(no_score).sort_values(), rows


def _last_by_symbol(frame: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
    frame = frame.copy()
    frame.index = frame.index.astype(str)
    return frame[~frame.index.duplicated(keep="last")]


def _ranked_table(
    features: pd.DataFrame, scores: pd.Series, clusters: pd.Series, universe: pd.Index
) -> pd.DataFrame:
    """One row per eligible symbol: score, cluster, identity and the vetoed features, ranked."""
    table = pd.DataFrame(
        {
            "score": _last_by_symbol(scores).reindex(universe).astype(np.float64),
            "cluster": _last_by_symbol(clusters.dropna()).reindex(universe).astype(np.int64),
            "identity": [economic_identity(symbol) for symbol in universe],
        },
        index=pd.Index(universe, name="symbol", dtype=object),
    )
    feature_table = _last_by_symbol(features).reindex(universe)
    for column in FEATURE_COLUMNS:
        table[column] = (
            feature_table[column].astype(np.float64) if column in feature_table else np.nan
        )
    table["symbol_key"] = table.index
    table = table.sort_values(["score", "symbol_key"], ascending=[False, True], kind="mergesort")
    return table.drop(columns="symbol_key")


def _fmt(values: pd.Series) -> pd.Series:
    """Numbers as short text; object dtype even when empty, so string concatenation works."""
    return values.map(lambda v: f"{v:.4g}").astype(object)


def _stage_by_cluster(
    stage: int,
    open_: pd.DataFrame,
    *,
    vetoed: pd.Series,
    winner_clusters: pd.Series,
    all_clusters: pd.Index,
    held: pd.Series,
    capacity: int,
    policy: SelectionPolicy,
    thresholds: dict[str, float],
) -> tuple[_Recruitment, pd.Series, list[pd.DataFrame]]:
    """Stages 1-2: the best ``top_n`` per cluster among symbols passing the stage's thresholds."""
    pool = open_[~vetoed.reindex(open_.index).to_numpy()]
    already = winner_clusters.value_counts().reindex(all_clusters).fillna(0).astype(np.int64)
    slots = (policy.top_n - already).clip(lower=0)
    outcome = _recruit(pool, slots=slots, held=held, capacity=capacity)
    admitted = outcome.admitted
    position = (outcome.rank.reindex(admitted) + pool.loc[admitted, "cluster"].map(already)).astype(
        np.float64
    )
    passing = (
        "strict thresholds"
        if stage == 1
        else f"relaxed thresholds (entropy <= {thresholds['entropy']:.4g}, "
        f"efficiency >= {thresholds['efficiency']:.4g})"
    )
    reasons = (
        f"stage {stage} ({STAGES[stage - 1]}): winner "
        + position.astype(int).astype(str)
        + f" of {policy.top_n} in cluster "
        + pool.loc[admitted, "cluster"].astype(str)
        + f" among symbols passing {passing}, score "
        + _fmt(pool.loc[admitted, "score"])
    )
    no_slot = outcome.no_slot
    rows = [
        _rows(
            admitted,
            stage=stage,
            rule="top_n",
            decision="admitted",
            value=position,
            threshold=float(policy.top_n),
            detail=reasons,
        ),
        _rows(
            no_slot,
            stage=stage,
            rule="top_n",
            decision="not_recruited",
            value=(outcome.rank.reindex(no_slot) + pool.loc[no_slot, "cluster"].map(already)),
            threshold=float(policy.top_n),
            detail="cluster "
            + pool.loc[no_slot, "cluster"].astype(str)
            + f" already has its top_n={policy.top_n} winners",
        ),
    ]
    return outcome, reasons, rows


def _stage_cluster_rescue(
    open_: pd.DataFrame,
    *,
    vetoes: pd.DataFrame,
    values: pd.DataFrame,
    winner_clusters: pd.Series,
    held: pd.Series,
    capacity: int,
) -> tuple[_Recruitment, pd.Series, list[pd.DataFrame]]:
    """Stage 3: the best member of each cluster without a winner, feature vetoes overridden."""
    pool = open_[~open_["cluster"].isin(set(winner_clusters)).to_numpy()]
    slots = pd.Series(1, index=pd.Index(pool["cluster"].unique()), dtype=np.int64)
    outcome = _recruit(pool, slots=slots, held=held, capacity=capacity)
    admitted = outcome.admitted
    reasons = (
        f"stage 3 ({STAGES[2]}): best member of cluster "
        + pool.loc[admitted, "cluster"].astype(str)
        + ", which had no winner, score "
        + _fmt(pool.loc[admitted, "score"])
        + "; feature vetoes overridden: "
        + _describe_overrides(vetoes.loc[admitted], values.loc[admitted])
    )
    rows = [
        _rows(
            admitted,
            stage=3,
            rule="cluster_rescue",
            decision="admitted",
            value=pool.loc[admitted, "score"],
            detail=reasons,
        )
    ]
    return outcome, reasons, rows


def _stage_global_fill(
    open_: pd.DataFrame,
    *,
    vetoes: pd.DataFrame,
    values: pd.DataFrame,
    held: pd.Series,
    needed: int,
    policy: SelectionPolicy,
) -> tuple[_Recruitment, pd.Series, list[pd.DataFrame]]:
    """Stage 4: the best remaining symbols by score until ``min_winners``, vetoes overridden."""
    outcome = _recruit(open_, slots=None, held=held, capacity=needed)
    admitted = outcome.admitted
    # Symbols beyond the fill are simply not needed: they are not capacity casualties.
    outcome = _Recruitment(
        admitted=admitted,
        rank=outcome.rank,
        duplicates=outcome.duplicates,
        no_slot=outcome.no_slot,
        over_capacity=pd.Index([], dtype=object),
    )
    fill_rank = pd.Series(np.arange(1, len(admitted) + 1, dtype=np.float64), index=admitted)
    reasons = (
        f"stage 4 ({STAGES[3]}): fill "
        + fill_rank.astype(int).astype(str)
        + f" of {needed} from the remaining symbols by score ("
        + _fmt(open_.loc[admitted, "score"])
        + f") to reach min_winners={policy.min_winners}; feature vetoes overridden: "
        + _describe_overrides(vetoes.loc[admitted], values.loc[admitted])
    )
    rows = [
        _rows(
            admitted,
            stage=4,
            rule="global_fill",
            decision="admitted",
            value=fill_rank,
            threshold=float(policy.min_winners),
            detail=reasons,
        )
    ]
    return outcome, reasons, rows


def select(
    features: pd.DataFrame,
    scores: pd.Series,
    clusters: pd.Series,
    *,
    policy: SelectionPolicy = SelectionPolicy(),
    stalled: Collection[str] = (),
    quarantined: Collection[str] = (),
    excluded: Mapping[str, str] | None = None,
) -> Selection:
    """Select winners by cluster with hierarchical threshold relaxation (see module docstring).

    The eligible universe is ``features ∩ scores ∩ clusters`` minus ``excluded`` (symbol -> reason,
    decided upstream) and symbols without a finite score, all listed in the audit at stage 0.
    ``stalled`` and ``quarantined`` symbols are vetoed at every stage that runs and never
    admitted, not even by cluster rescue or global fill. Feature vetoes (thresholds in
    :class:`SelectionPolicy`, NaN handling in ``_feature_vetoes``) bind in stages 1-2 and are
    overridden in stages 3-4, where the admission's detail names what was overridden. When fewer
    than ``min_winners`` symbols are admissible all of them are selected (one per economic
    identity) and a warning gives the counts; the size of the universe never raises.
    """
    excluded = dict(excluded or {})
    universe, audit_rows = _eligibility(features, scores, clusters, excluded)
    missing_columns = [c for c in FEATURE_COLUMNS if c not in features.columns]
    if len(universe) and missing_columns:
        raise ValueError(f"features lack the columns {missing_columns} that the vetoes read")
    table = _ranked_table(features, scores, clusters, universe)
    hard = pd.DataFrame(
        {
            "stalled": table.index.isin(list(map(str, stalled))),
            "quarantined": table.index.isin(list(map(str, quarantined))),
        },
        index=table.index,
    )
    blocked = hard.any(axis=1).to_numpy()
    all_clusters = pd.Index(table["cluster"].unique())

    winner_stage: dict[str, int] = {}
    winner_reason: dict[str, str] = {}
    held = pd.Series(dtype=object)  # economic identity -> winning symbol
    settled: set[str] = set()  # duplicates already recorded
    stage_reached = 0
    for stage in range(1, len(STAGES) + 1):
        if stage > 1 and len(winner_stage) >= policy.min_winners:
            break
        stage_reached = stage
        for rule in HARD_RULES:
            audit_rows.append(
                _rows(
                    hard.index[hard[rule].to_numpy()],
                    stage=stage,
                    rule=rule,
                    decision="vetoed",
                    detail=f"{rule}: hard veto, never admitted at any stage",
                )
            )
        relaxed = stage >= 2
        vetoes, values, thresholds = _feature_vetoes(
            table,
            max_entropy=policy.max_entropy * (ENTROPY_RELAXATION if relaxed else 1.0),
            min_efficiency=policy.min_efficiency * (EFFICIENCY_RELAXATION if relaxed else 1.0),
            policy=policy,
        )
        taken = table.index.isin(list(winner_stage)) | table.index.isin(list(settled))
        open_ = table[~blocked & ~taken]
        winner_clusters = table.loc[list(winner_stage), "cluster"]
        capacity = policy.max_winners - len(winner_stage)
        if stage <= 2:
            audit_rows.extend(
                _veto_rows(
                    vetoes.loc[open_.index], values.loc[open_.index], thresholds, stage=stage
                )
            )
            outcome, reasons, rows = _stage_by_cluster(
                stage,
                open_,
                vetoed=vetoes.any(axis=1),
                winner_clusters=winner_clusters,
                all_clusters=all_clusters,
                held=held,
                capacity=capacity,
                policy=policy,
                thresholds=thresholds,
            )
        elif stage == 3:
            outcome, reasons, rows = _stage_cluster_rescue(
                open_,
                vetoes=vetoes,
                values=values,
                winner_clusters=winner_clusters,
                held=held,
                capacity=capacity,
            )
        else:
            outcome, reasons, rows = _stage_global_fill(
                open_,
                vetoes=vetoes,
                values=values,
                held=held,
                needed=min(capacity, policy.min_winners - len(winner_stage)),
                policy=policy,
            )
        audit_rows.extend(rows)
        audit_rows.append(_duplicate_rows(stage, outcome.duplicates, table))
        audit_rows.append(
            _rows(
                outcome.over_capacity,
                stage=stage,
                rule="max_winners",
                decision="not_recruited",
                value=table.loc[outcome.over_capacity, "score"],
                threshold=float(policy.max_winners),
                detail=f"the selection is full at max_winners={policy.max_winners}",
            )
        )
        settled.update(outcome.duplicates.index)
        for symbol in outcome.admitted:
            winner_stage[symbol] = stage
            winner_reason[symbol] = reasons[symbol]
        admitted_identity = table.loc[outcome.admitted, "identity"].to_numpy()
        held = pd.concat([held, pd.Series(list(outcome.admitted), index=admitted_identity)])

    winners = _winner_frame(table, winner_stage, winner_reason)
    warnings = _warnings(
        universe=universe, table=table, blocked=blocked, winners=winners, policy=policy
    )
    if stage_reached >= 3 and (winners["stage"] >= 3).any():
        warnings += (
            f"selection: HTR reached stage {stage_reached} ({STAGES[stage_reached - 1]}); "
            f"{int((winners['stage'] >= 3).sum())} of {len(winners)} winners were admitted by "
            "cluster rescue or global fill",
        )
    return Selection(
        winners=winners,
        audit=_audit_frame(audit_rows),
        stage_reached=stage_reached,
        warnings=warnings,
    )


def _duplicate_rows(stage: int, duplicates: pd.Series, table: pd.DataFrame) -> pd.DataFrame:
    symbols = duplicates.index
    holders = duplicates.to_numpy(dtype=object)
    detail = pd.Series(
        [
            f"{identity} is already held by {holder} (score {score:.4g})"
            for identity, holder, score in zip(
                table["identity"].reindex(symbols),
                holders,
                table["score"].reindex(holders),
                strict=True,
            )
        ],
        index=symbols,
        dtype=object,
    )
    return _rows(
        symbols,
        stage=stage,
        rule="economic_identity",
        decision="duplicate",
        value=table["score"].reindex(symbols),
        detail=detail,
    )


def _winner_frame(
    table: pd.DataFrame, winner_stage: dict[str, int], winner_reason: dict[str, str]
) -> pd.DataFrame:
    """Winners in ranking order (score desc, symbol asc)."""
    if not winner_stage:
        return _empty_winners()
    chosen = table[table.index.isin(list(winner_stage))]
    stages = np.array([winner_stage[symbol] for symbol in chosen.index], dtype=np.int64)
    frame = pd.DataFrame(
        {
            "score": chosen["score"].to_numpy(dtype=np.float64),
            # NaN momentum counts as long: the direction is informational and sleeves are long-only.
            "direction": np.where(chosen["momentum"].to_numpy() < 0, "short", "long").astype(
                object
            ),
            "cluster": chosen["cluster"].to_numpy(dtype=np.int64),
            "stage": stages,
            "stage_name": [STAGES[stage - 1] for stage in stages],
            "reason": [winner_reason[symbol] for symbol in chosen.index],
        },
        index=pd.Index(chosen.index, name="symbol", dtype=object),
    )
    return frame[list(WINNER_COLUMNS)]


def _warnings(
    *,
    universe: pd.Index,
    table: pd.DataFrame,
    blocked: np.ndarray,
    winners: pd.DataFrame,
    policy: SelectionPolicy,
) -> tuple[str, ...]:
    if len(winners) >= policy.min_winners:
        return ()
    admissible = table[~blocked]
    if len(universe) == 0:
        return (
            f"selection: the eligible universe is empty (min_winners={policy.min_winners}); "
            "no winners were selected",
        )
    return (
        f"selection: only {len(winners)} winners for min_winners={policy.min_winners}: the "
        f"eligible universe has {len(universe)} symbols, {int(blocked.sum())} of them stalled or "
        f"quarantined, leaving {len(admissible)} admissible symbols with "
        f"{admissible['identity'].nunique()} distinct economic identities, all selected",
    )
