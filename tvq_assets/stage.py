"""The skeleton every sleeve × run asset shares, written once.

An asset body decodes its partition (``partitions.run_of``: sleeve, as-of date, policy, clock),
calls the engine, and hands the value, what describes it and its check evaluations to
:func:`emit`, which adds what every sleeve × run asset records (as-of, parameters, seconds),
stores the value only if no blocking check failed, and reports each check.
"""

from collections.abc import Iterator, Mapping, Sequence

import dagster as dg
import pandas as pd

from tvq_assets.partitions import Run, previous_run_key
from tvq_checks import checks
from tvq_checks.checks import Evaluation


def emit(
    run: Run,
    asset: str,
    value: object,
    *,
    metadata: Mapping[str, object],
    evaluations: Sequence[Evaluation],
    failure_suffix: str = "",
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """``checks.emit`` of ``asset``'s value for the run, its metadata completed by
    ``Run.metadata``; ``failure_suffix`` ends each line of a blocking failure."""
    yield from checks.emit(
        asset,
        run.key,
        value,
        metadata=run.metadata(**metadata),
        evaluations=evaluations,
        failure_suffix=failure_suffix,
    )


def table(frame: pd.DataFrame) -> dg.MetadataValue:
    """A small table as markdown metadata (``checks.markdown``)."""
    return dg.MetadataValue.md(checks.markdown(frame))


def previous_run_note(run: Run, found: bool) -> str:
    """The ``previous_run`` metadata of an asset reading its own previous run partition."""
    previous = previous_run_key(run.key)
    return previous if found else f"none (first run or gap: {previous} not materialised)"
