"""Stage-level diffs between two stored run partitions of a sleeve (``tvq diff``).

A comparison reads two stored values of a stage and says what changed: symbols added and removed,
weight changes above a threshold, one-sided turnover, champion and metric changes. The same
functions describe, in a materialisation's metadata, what changed since the sleeve's previous run.

The comparison of asset ``X`` is the function ``diff_X(before, after)`` of this module (or of the
module that defines the asset, for :func:`changes_since_previous`); an asset without one has no
diff. The stages compared by default are those, in the order they are defined here.
"""

import sys
from collections.abc import Callable
from types import ModuleType

import dagster as dg
import pandas as pd

from tvq_assets.partitions import PREVIOUS_RUN_DAYS, previous_stored_run, run_key
from tvq_assets.tracking.values import tables_of
from tvq_checks.checks import markdown
from tvq_resources.lake import ParquetLake

WEIGHT_THRESHOLD = 0.005  # a weight change smaller than half a percent is noise, not a decision
Diff = Callable[[object, object], dict[str, object]]


def symbol_changes(before: pd.Index, after: pd.Index) -> pd.DataFrame:
    """One row per symbol that entered or left: symbol, change (added | removed)."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    return pd.DataFrame(
        {"symbol": added + removed, "change": ["added"] * len(added) + ["removed"] * len(removed)}
    )


def weight_changes(
    before: pd.Series, after: pd.Series, *, threshold: float = WEIGHT_THRESHOLD
) -> tuple[pd.DataFrame, float]:
    """Symbols whose weight moved by more than ``threshold`` (absolute, a fraction of the book),
    largest move first, and the one-sided turnover ``Σ|Δw| / 2`` over the union of symbols."""
    symbols = before.index.union(after.index)
    old = before.reindex(symbols).fillna(0.0)
    new = after.reindex(symbols).fillna(0.0)
    delta = new - old
    moved = delta.abs() > threshold
    table = pd.DataFrame({"before": old[moved], "after": new[moved], "change": delta[moved]})
    table = table.reindex(delta[moved].abs().sort_values(ascending=False).index)
    return table.rename_axis("symbol").reset_index(), float(delta.abs().sum() / 2)


def diff_selection(before: object, after: object) -> dict[str, object]:
    old, new = tables_of(before)["winners"], tables_of(after)["winners"]
    changes = symbol_changes(old.index, new.index)
    return {
        "symbols": changes,
        "summary": pd.DataFrame(
            [
                {
                    "winners_before": len(old),
                    "winners_after": len(new),
                    "added": int((changes["change"] == "added").sum()),
                    "removed": int((changes["change"] == "removed").sum()),
                    "stage_before": int(old["stage"].max()) if len(old) else 0,
                    "stage_after": int(new["stage"].max()) if len(new) else 0,
                }
            ]
        ),
    }


def diff_weights(
    before: object, after: object, *, threshold: float = WEIGHT_THRESHOLD
) -> dict[str, object]:
    old, new = tables_of(before)["weights"], tables_of(after)["weights"]
    rows, moves = [], []
    for profile in new.columns.union(old.columns):
        table, turnover = weight_changes(
            old.get(profile, pd.Series(dtype=float)),
            new.get(profile, pd.Series(dtype=float)),
            threshold=threshold,
        )
        rows.append({"profile": profile, "turnover": turnover, "moved": len(table)})
        moves.append(table.assign(profile=profile))
    return {
        "summary": pd.DataFrame(rows),
        "moves": pd.concat(moves, ignore_index=True) if moves else pd.DataFrame(),
    }


def diff_backtest(before: object, after: object) -> dict[str, object]:
    old, new = tables_of(before), tables_of(after)
    champions = (str(old["verdict"]["champion"].iloc[0]), str(new["verdict"]["champion"].iloc[0]))
    metrics = ("sharpe", "max_drawdown", "cagr", "avg_turnover")
    rows = [
        {
            "metric": m,
            "champion_before": float(old["metrics"].loc[champions[0], m]),
            "champion_after": float(new["metrics"].loc[champions[1], m]),
        }
        for m in metrics
    ]
    return {
        "champion": pd.DataFrame([{"before": champions[0], "after": champions[1]}]),
        "metrics": pd.DataFrame(rows),
    }


def diff_portfolio(
    before: object, after: object, *, threshold: float = WEIGHT_THRESHOLD
) -> dict[str, object]:
    old, new = tables_of(before)["weights"]["weight"], tables_of(after)["weights"]["weight"]
    moves, turnover = weight_changes(old, new, threshold=threshold)
    return {
        "symbols": symbol_changes(old[old > 0].index, new[new > 0].index),
        "moves": moves,
        "summary": pd.DataFrame([{"turnover": turnover, "moved": len(moves)}]),
    }


def diffs_of(module: ModuleType) -> dict[str, Diff]:
    """The ``diff_<asset>`` functions a module defines, by asset name."""
    return {
        name.removeprefix("diff_"): function
        for name, function in vars(module).items()
        if name.startswith("diff_") and callable(function)
    }


DIFFS = diffs_of(sys.modules[__name__])
STAGES = tuple(DIFFS)


def comparison_of(stage: str, home: ModuleType | None = None) -> Diff | None:
    """The comparison of ``stage``: beside its asset (``home``) if defined there, else here."""
    return {**DIFFS, **(diffs_of(home) if home is not None else {})}.get(stage)


def compare(
    lake: ParquetLake, sleeve: str, run_a: str, run_b: str, stages=STAGES
) -> dict[str, dict[str, object]]:
    """Per stage, the comparison of run ``run_a`` (before) with ``run_b`` (after) of a sleeve."""
    found = {}
    for stage in stages:
        keys = (run_key(run_a, sleeve), run_key(run_b, sleeve))
        missing = [k for k in keys if not lake.exists([stage], k)]
        if missing:
            raise FileNotFoundError(f"{stage}: nothing stored for {', '.join(missing)}")
        found[stage] = DIFFS[stage](lake.read([stage], keys[0]), lake.read([stage], keys[1]))
    return found


def render(comparison: dict[str, dict[str, object]]) -> str:
    """The comparison as plain-text tables for the terminal."""
    lines = []
    for stage, parts in comparison.items():
        lines.append(f"== {stage}")
        for name, table in parts.items():
            lines.append(f"-- {name}")
            if isinstance(table, pd.DataFrame) and table.empty:
                lines.append("   (no change)")
            else:
                lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        lines.append("")
    return "\n".join(lines)


def changes_since_previous(
    lake: ParquetLake,
    stage: str,
    partition: str,
    value: object,
    *,
    home: ModuleType | None = None,
) -> dict[str, object]:
    """Metadata for a materialisation: what changed since the sleeve's previous run (the partition
    the previous-run input loads: the newest stored in the week before), tables as markdown,
    headline numbers as numbers; empty for stages without a diff (``home``: the module of the
    asset)."""
    compare_stage = comparison_of(stage, home)
    if compare_stage is None:
        return {}
    previous = previous_stored_run(lake, stage, partition)
    if previous is None:
        return {"compared_with": f"none (no run stored in the {PREVIOUS_RUN_DAYS} days before)"}
    parts = compare_stage(lake.read([stage], previous), value)
    found: dict[str, object] = {"compared_with": previous}
    for name, table in parts.items():
        found[f"changes_{name}"] = dg.MetadataValue.md(markdown(table))
    if stage == "selection":
        summary = parts["summary"].iloc[0]
        found.update(symbols_added=int(summary["added"]), symbols_removed=int(summary["removed"]))
    if stage == "weights":
        for _, row in parts["summary"].iterrows():
            found[f"turnover_{row['profile']}"] = round(float(row["turnover"]), 6)
    return found
