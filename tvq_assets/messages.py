"""Sentences for the engine's codes, rendered at the asset edge for metadata and stored tables.

The engine (``tvq_assets.quant``) states its decisions as codes with numbers; this module is the
one place that words them. No Dagster import: the assets and the checks' glue both use it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd

from tvq_assets.quant.selection import (
    SAFETY_RULES,
    STAGES,
    Code,
    Selection,
    SelectionPolicy,
    SelectionWarning,
    WarningCode,
    economic_identity,
    stage_thresholds,
)

_COMPARATORS = {Code.ABOVE_MAX: ">", Code.BELOW_MIN: "<"}
_LABELS = {"friction": "friction/|momentum|"}
_SAFETY = "safety veto, never admitted at any stage"


def _number(value: float) -> str:
    return f"{value:.4g}"


def _overridden(argument: str) -> str:
    return argument.replace(",", ", ") if argument else "none"


def _stage(stage: int) -> str:
    return f"stage {stage} ({STAGES[stage - 1]})"


def _veto(row) -> str:
    label = _LABELS.get(row.rule, row.rule)
    if row.code == Code.UNDEFINED:
        text = f"{label} is NaN (veto)"
    else:
        text = f"{label} {_number(row.value)} {_COMPARATORS[Code(row.code)]} {row.threshold:.4g}"
    return f"{text}: illiquid, {_SAFETY}" if row.rule in SAFETY_RULES else text


def _winner_in_cluster(policy: SelectionPolicy) -> Callable[[object], str]:
    def render(row) -> str:
        if row.stage == 1:
            passing = "strict thresholds"
        else:
            entropy, efficiency = stage_thresholds(policy, row.stage)
            passing = (
                f"relaxed thresholds (entropy <= {entropy:.4g}, efficiency >= {efficiency:.4g})"
            )
        return (
            f"{_stage(row.stage)}: winner {int(row.value)} of {int(row.threshold)} in cluster "
            f"{int(row.cluster)} among symbols passing {passing}, score {_number(row.score)}"
        )

    return render


def _renderers(policy: SelectionPolicy) -> dict[str, Callable[[object], str]]:
    return {
        Code.EXCLUDED_UPSTREAM: lambda row: str(row.argument),
        Code.MISSING_INPUT: lambda row: "absent from " + str(row.argument).replace(",", ", "),
        Code.MISSING_SCORE: lambda row: "score is not a finite number",
        Code.ABOVE_MAX: _veto,
        Code.BELOW_MIN: _veto,
        Code.UNDEFINED: _veto,
        Code.NO_DOLLAR_VOLUME: lambda row: (
            f"no dollar volume (zero or missing): illiquid, {_SAFETY}"
        ),
        Code.STALLED: lambda row: f"stalled: {_SAFETY}",
        Code.QUARANTINED: lambda row: f"quarantined: {_SAFETY}",
        Code.WINNER_IN_CLUSTER: _winner_in_cluster(policy),
        Code.CLUSTER_RESCUE: lambda row: (
            f"{_stage(3)}: best member of cluster {int(row.cluster)}, which had no winner, score "
            f"{_number(row.score)}; feature vetoes overridden: {_overridden(row.argument)}"
        ),
        Code.GLOBAL_FILL: lambda row: (
            f"{_stage(4)}: fill {int(row.value)} from the remaining symbols by score "
            f"({_number(row.score)}) to reach min_winners={int(row.threshold)}; feature vetoes "
            f"overridden: {_overridden(row.argument)}"
        ),
        Code.CLUSTER_FULL: lambda row: (
            f"cluster {int(row.cluster)} already has its top_n={int(row.threshold)} winners"
        ),
        Code.SELECTION_FULL: lambda row: (
            f"the selection is full at max_winners={int(row.threshold)}"
        ),
        Code.DUPLICATE_IDENTITY: lambda row: (
            f"{economic_identity(row.symbol)} is already held by {row.argument}"
        ),
    }


def audit_details(audit: pd.DataFrame, policy: SelectionPolicy) -> pd.Series:
    """One sentence per audit row, from its code and numbers (index aligned with ``audit``)."""
    renderers = _renderers(policy)
    return pd.Series(
        [renderers[row.code](row) for row in audit.itertuples(index=False)],
        index=audit.index,
        dtype=object,
    )


def selection_warning(warning: SelectionWarning) -> str:
    numbers = warning.numbers
    if warning.code == WarningCode.EMPTY_UNIVERSE:
        return (
            f"selection: the eligible universe is empty (min_winners={numbers['min_winners']}); "
            "no winners were selected"
        )
    if warning.code == WarningCode.SHORTFALL:
        return (
            f"selection: only {numbers['winners']} winners for "
            f"min_winners={numbers['min_winners']}: the eligible universe has "
            f"{numbers['universe']} symbols, {numbers['vetoed_for_safety']} of them vetoed for "
            f"safety ({numbers['stalled']} stalled, {numbers['friction']} illiquid, "
            f"{numbers['quarantined']} quarantined), leaving {numbers['admissible']} admissible "
            f"symbols with {numbers['identities']} distinct economic identities, all selected"
        )
    if warning.code == WarningCode.RESCUED:
        stage = numbers["stage_reached"]
        return (
            f"selection: HTR reached {_stage(stage)}; {numbers['rescued']} of "
            f"{numbers['winners']} winners were admitted by cluster rescue or global fill"
        )
    raise ValueError(f"no sentence for the selection warning code {warning.code!r}")


def selection_warnings(warnings: Iterable[SelectionWarning]) -> tuple[str, ...]:
    return tuple(selection_warning(warning) for warning in warnings)


@dataclass(frozen=True)
class RenderedSelection:
    """A selection as stored and shown: ``winners`` gain ``reason``, ``audit`` gains ``detail``."""

    winners: pd.DataFrame
    audit: pd.DataFrame
    warnings: tuple[str, ...]


def render_selection(selection: Selection) -> RenderedSelection:
    """The winners with the sentence of their admission, the audit with a sentence per row."""
    audit = selection.audit.assign(detail=audit_details(selection.audit, selection.policy))
    admitted = audit[audit["decision"] == "admitted"].set_index("symbol")["detail"]
    winners = selection.winners.assign(
        reason=admitted.reindex(selection.winners.index).astype(object)
    )
    return RenderedSelection(
        winners=winners, audit=audit, warnings=selection_warnings(selection.warnings)
    )
