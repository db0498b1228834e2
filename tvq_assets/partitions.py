"""Partitions: ``sleeve`` (static, from the catalog) × ``run`` (daily as-of date).

Multi-partition keys join the dimension values in alphabetical order of the dimension names:
``2026-11-20|crypto`` is run 2026-11-20 of sleeve ``crypto``.
"""

import math
import time
import warnings
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from tvq_assets.catalog import Catalog, Sleeve, load_catalog, policy_parameters
from tvq_assets.quant import bars as bar_rules
from tvq_assets.quant import display
from tvq_assets.quant.policy import PolicySettings
from tvq_assets.settings import policy_settings
from tvq_resources import clock
from tvq_resources.lake import PREVIOUS_RUN

catalog: Catalog = load_catalog()

sleeve = dg.StaticPartitionsDefinition(list(catalog.sleeves))
# The newest run is the last complete UTC day: today's bars are unfinished and never stored.
run = dg.DailyPartitionsDefinition(
    start_date=catalog.first_run.strftime("%Y-%m-%d"), end_offset=0, timezone="UTC"
)
sleeve_run = dg.MultiPartitionsDefinition({"run": run, "sleeve": sleeve})

# How far back a run looks for its own previous run (calendar days): a weekday sleeve's Monday
# finds Friday, a venue holiday or a failed day is stepped over, and state older than a week
# is not carried (the run starts afresh, as a first run, and says so).
PREVIOUS_RUN_DAYS = 7

with warnings.catch_warnings():
    # MultiPartitionMapping and allow_nonexistent_upstream_partitions are beta in Dagster 1.13.
    warnings.simplefilter("ignore", dg.BetaWarning)
    # The same sleeve's runs of the week before: the state a run carries is the newest of them
    # stored (see `previous_run`).
    PREVIOUS_RUN_MAPPING = dg.MultiPartitionMapping(
        {
            "run": dg.DimensionPartitionMapping(
                "run",
                dg.TimeWindowPartitionMapping(
                    start_offset=-PREVIOUS_RUN_DAYS,
                    end_offset=-1,
                    allow_nonexistent_upstream_partitions=True,
                ),
            ),
            "sleeve": dg.DimensionPartitionMapping("sleeve", dg.IdentityPartitionMapping()),
        }
    )


def newest_run_date() -> str:
    """The newest run partition (``YYYY-MM-DD``): the last complete UTC day at ``clock.now()``
    (``TVQ_NOW`` replays any day)."""
    return f"{bar_rules.last_complete_session(clock.now()):%Y-%m-%d}"


def previous_run(asset: str) -> dg.AssetIn:
    """A declared input on ``asset``'s own previous run: the newest partition of the same sleeve
    stored in the :data:`PREVIOUS_RUN_DAYS` days before the as-of date, loaded as a
    ``PreviousRun`` (its partition and value).

    Loads as None when none is stored (a first run, or a gap longer than that): the asset then
    decides without it and says so in its metadata.
    """
    return dg.AssetIn(
        key=asset, partition_mapping=PREVIOUS_RUN_MAPPING, metadata={PREVIOUS_RUN: True}
    )


def run_key(as_of: "str | pd.Timestamp", sleeve_name: str) -> str:
    """The sleeve × run partition key, ``2026-11-20|crypto``: the one place its format is made
    (Dagster joins the dimensions in alphabetical order of their names, run then sleeve)."""
    return str(
        dg.MultiPartitionKey({"run": f"{pd.Timestamp(as_of):%Y-%m-%d}", "sleeve": sleeve_name})
    )


def split_run_key(key: str) -> tuple[pd.Timestamp, str]:
    """The as-of date (tz-naive UTC day) and the sleeve name of a sleeve × run partition key."""
    parts = str(key).split("|")
    if len(parts) != 2:
        raise ValueError(
            f"expected a sleeve × run partition key like 2026-11-20|crypto, got {key!r}"
        )
    return pd.Timestamp(parts[0]), parts[1]


def is_run_key(key: "str | None") -> bool:
    """True for a sleeve × run key of a sleeve in the catalog (a bars key is the sleeve alone)."""
    return bool(key) and str(key).count("|") == 1 and split_run_key(key)[1] in catalog.sleeves


def previous_run_keys(key: str) -> list[str]:
    """The partition keys the previous-run input maps ``key`` to, oldest first: the same sleeve's
    :data:`PREVIOUS_RUN_DAYS` days before its as-of date."""
    as_of, sleeve_name = split_run_key(key)
    return [
        run_key(as_of - pd.Timedelta(days=back), sleeve_name)
        for back in range(PREVIOUS_RUN_DAYS, 0, -1)
    ]


def previous_stored_run(lake, asset: str, key: str) -> str | None:
    """The partition ``asset``'s previous-run input of ``key`` loads (``lake``: a ParquetLake),
    or None: the newest of :func:`previous_run_keys` stored."""
    return lake.newest_stored([asset], previous_run_keys(key))


def sleeve_of(context: dg.AssetExecutionContext) -> Sleeve:
    """The catalog entry of a sleeve-partitioned (or sleeve × run) asset's partition."""
    key = str(context.partition_key)
    return catalog.sleeve(split_run_key(key)[1] if "|" in key else key)


def sleeve_and_date(context: dg.AssetExecutionContext) -> tuple[Sleeve, pd.Timestamp]:
    """Decode a sleeve × run partition into the sleeve and its as-of date (tz-naive UTC date)."""
    as_of, sleeve_name = split_run_key(str(context.partition_key))
    return catalog.sleeve(sleeve_name), as_of


def shown(value: object) -> object:
    """A plain float rounded for display (4 significant digits); anything else as it is."""
    if isinstance(value, float) and math.isfinite(value):
        return float(display.significant(value))
    return value


@dataclass(frozen=True)
class Run:
    """One sleeve × run materialisation: its partition decoded, its policy, and its clock."""

    key: str
    sleeve: Sleeve
    as_of: pd.Timestamp
    settings: PolicySettings
    started: float = field(default_factory=time.perf_counter)

    def metadata(self, **values: object) -> dict[str, object]:
        """``values`` plus what every sleeve × run asset records: as-of, parameters, seconds.

        A plain float is shown to four significant digits (``display.significant``): the UI
        prints it as it is given. A value that charts need exact is passed as
        ``dg.MetadataValue.float`` and kept whole (the tracked describers' ``champion_*``)."""
        return {
            **{k: shown(v) for k, v in values.items()},
            "as_of": f"{self.as_of:%Y-%m-%d}",
            "parameters": dg.MetadataValue.json(
                {
                    k: list(v) if isinstance(v, tuple) else v
                    for k, v in policy_parameters(self.sleeve).items()
                }
            ),
            "seconds": round(time.perf_counter() - self.started, 3),
        }


def run_of(context: dg.AssetExecutionContext) -> Run:
    """Decode the partition of a sleeve × run asset and start its clock."""
    sleeve_entry, as_of = sleeve_and_date(context)
    return Run(str(context.partition_key), sleeve_entry, as_of, policy_settings(sleeve_entry))
