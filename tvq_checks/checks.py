"""Asset checks built from the contracts: specs, results and the blocking failure message.

Checks run inside the checked asset's step (``check_specs``) and are scoped to the partition being
materialised, so the UI shows one evaluation per sleeve × run partition. A failed ERROR check is
blocking: nothing downstream runs. The glue knows nothing of the rules; it turns a violation table
(``contracts.violations``) into a check result with a count and a table of the first failures.
"""

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg
import pandas as pd
import pandera.pandas as pa
from dagster_pandera import pandera_schema_to_dagster_type

from tvq_assets.quant import display

FIRST_FAILURES = 20


def column_schema(schema: pa.DataFrameSchema) -> dg.TableSchema:
    """The UI's column table for a Pandera schema (via dagster-pandera)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return pandera_schema_to_dagster_type(schema).metadata["schema"].schema


def spec(
    asset: str,
    name: str,
    *,
    description: str,
    blocking: bool,
    partitions_def: dg.PartitionsDefinition,
) -> dg.AssetCheckSpec:
    with warnings.catch_warnings():
        # Partition-scoped checks are a preview feature in Dagster 1.13; they are what makes a
        # check's history per partition (an unpartitioned check would cover every partition).
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name,
            asset=asset,
            description=description,
            blocking=blocking,
            partitions_def=partitions_def,
        )


def result(
    name: str,
    failures: pd.DataFrame,
    *,
    severity: dg.AssetCheckSeverity,
    metadata: Mapping[str, object] | None = None,
    passed: bool | None = None,
) -> dg.AssetCheckResult:
    """A check result from a violation table (symbol, date, value, rule, message).

    ``passed`` defaults to "no violations"; a caller may pass it explicitly when a violation was
    handled (quarantined) and is reported but does not fail the check.
    """
    passed = failures.empty if passed is None else passed
    counts = failures["rule"].value_counts().sort_index() if not failures.empty else pd.Series()
    description = (
        "all rules hold"
        if failures.empty
        else f"{len(failures)} violation(s); first: {failures['message'].iloc[0]}"
    )
    return dg.AssetCheckResult(
        check_name=name,
        passed=passed,
        severity=severity,
        description=description,
        metadata={
            "failures": len(failures),
            "by_rule": dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()}),
            "first_failures": dg.MetadataValue.md(markdown(failures.head(FIRST_FAILURES))),
            **(metadata or {}),
        },
    )


def markdown(table: pd.DataFrame) -> str:
    """A small table as markdown (dates as days, floats to ``display.DIGITS`` significant
    digits: the table is read, not computed on)."""
    if table.empty:
        return "_none_"
    shown = table.copy()
    for column in shown.columns:
        if pd.api.types.is_datetime64_any_dtype(shown[column]):
            shown[column] = shown[column].dt.strftime("%Y-%m-%d")
        elif pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(display.significant)
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "---|" * len(shown.columns)
    rows = ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in shown.values]
    return "\n".join([header, rule, *rows])


def blocking_failure(
    asset: str, partition: str, failures: pd.DataFrame, *, suffix: str = ""
) -> dg.Failure:
    """The run-stopping error of a failed blocking check, naming asset, partition and rows."""
    lines = [f"{asset}[{partition}]: {message}{suffix}" for message in failures["message"].head(5)]
    more = len(failures) - len(lines)
    if more > 0:
        lines.append(f"... and {more} more (see the check's first_failures table)")
    return dg.Failure(
        description="\n".join(lines),
        metadata={"first_failures": dg.MetadataValue.md(markdown(failures.head(FIRST_FAILURES)))},
    )


def specs_for(
    asset: str, checks: Sequence[tuple[str, str, bool]], partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetCheckSpec]:
    """Specs from (name, description, blocking) triples."""
    return [
        spec(asset, name, description=description, blocking=blocking, partitions_def=partitions_def)
        for name, description, blocking in checks
    ]


@dataclass(frozen=True)
class Evaluation:
    """One check's outcome: its violation table and how severe a violation is. ``handled``:
    violations the policy dealt with (quarantined): listed in the check after the failures, but
    they neither fail it nor block."""

    name: str
    failures: pd.DataFrame
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
    metadata: Mapping[str, object] | None = None
    handled: pd.DataFrame | None = None

    @property
    def blocks(self) -> bool:
        return self.severity == dg.AssetCheckSeverity.ERROR and not self.failures.empty


def emit(
    asset: str,
    partition: str,
    value: object,
    *,
    metadata: Mapping[str, object],
    evaluations: Sequence[Evaluation],
    failure_suffix: str = "",
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Yield the asset's value and its check results; stop the run if an ERROR check failed.

    A value that breaks an ERROR contract is not stored: the lake only ever holds values that
    passed, so neither a trader nor a later run (previous weights, the incumbent champion) can
    pick up a rejected one. The failed check, with its table of violations, is still recorded
    for the partition. Assets using this declare ``output_required=False``.
    """
    blocking = [e.failures for e in evaluations if e.blocks]
    if not blocking:
        yield dg.Output(value, metadata=dict(metadata))
    for evaluation in evaluations:
        shown = evaluation.failures
        if evaluation.handled is not None:
            shown = pd.concat([shown, evaluation.handled], ignore_index=True)
        yield result(
            evaluation.name,
            shown,
            severity=evaluation.severity,
            metadata=evaluation.metadata,
            passed=evaluation.failures.empty,
        )
    if blocking:
        raise blocking_failure(
            asset, partition, pd.concat(blocking, ignore_index=True), suffix=failure_suffix
        )
