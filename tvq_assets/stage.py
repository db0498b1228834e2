"""The skeleton every sleeve × run asset shares, written once.

An asset body decodes its partition (``partitions.run_of``: sleeve, as-of date, policy, clock),
calls the engine, and hands the value, what describes it and its check evaluations to
:func:`emit`, which adds what every sleeve × run asset records (as-of, parameters, seconds),
stores the value only if no blocking check failed, and reports each check.
"""

from collections.abc import Iterator, Mapping, Sequence

import dagster as dg
import pandas as pd

from tvq_assets.partitions import PREVIOUS_RUN_DAYS, Run, split_run_key
from tvq_checks import checks
from tvq_checks.checks import Evaluation
from tvq_resources.lake import PreviousRun


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


def previous_run_note(run: Run, previous: PreviousRun | None) -> str:
    """The ``previous_run`` metadata of an asset reading its own previous run: the partition it
    loaded and how many days before the run's date, or why there is none."""
    if previous is None:
        return f"none (first run, or no run stored in the {PREVIOUS_RUN_DAYS} days before)"
    days = (run.as_of - split_run_key(previous.partition)[0]).days
    return f"{previous.partition} ({days} day{'' if days == 1 else 's'} before)"
