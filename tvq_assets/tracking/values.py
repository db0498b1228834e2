"""What a stage records on its MLflow run, and the named tables of a stored value."""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

# Tables wider than this are data, not a report: the returns matrix goes in as a dataset.
MAX_CSV_COLUMNS = 50


@dataclass
class StageRecord:
    """What one stage logs: metrics, params, tags, CSV tables, PNG figures, dataset inputs, and
    nested child runs (name -> metrics) such as the tournament's policies."""

    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    datasets: dict[str, pd.DataFrame] = field(default_factory=dict)
    children: dict[str, dict[str, float]] = field(default_factory=dict)
    headline: dict[str, float] = field(default_factory=dict)  # numeric Dagster metadata too


def tables_of(value: object) -> dict[str, pd.DataFrame]:
    """The named tables of a stored value: one frame, a dict of frames, or a dataclass of them."""
    if isinstance(value, pd.DataFrame):
        return {"table": value}
    if isinstance(value, pd.Series):
        return {"table": value.to_frame()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {
            str(k): (v.to_frame() if isinstance(v, pd.Series) else v)
            for k, v in value.items()
            if isinstance(v, pd.DataFrame | pd.Series)
        }
    return {}


def csv_tables(stage: str, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {
        f"{stage}/{name}.csv": frame
        for name, frame in tables.items()
        if frame.shape[1] <= MAX_CSV_COLUMNS
    }
