"""Partitions: ``sleeve`` (static, from the catalog) × ``run`` (daily as-of date).

Multi-partition keys join the dimension values in alphabetical order of the dimension names:
``2026-11-20|crypto`` is run 2026-11-20 of sleeve ``crypto``.
"""

import dagster as dg
import pandas as pd

from tvq_assets.catalog import Catalog, Sleeve, load_catalog

catalog: Catalog = load_catalog()

sleeve = dg.StaticPartitionsDefinition(list(catalog.sleeves))
# The newest run is the last complete UTC day: today's bars are unfinished and never stored.
run = dg.DailyPartitionsDefinition(
    start_date=catalog.first_run.strftime("%Y-%m-%d"), end_offset=0, timezone="UTC"
)
sleeve_run = dg.MultiPartitionsDefinition({"run": run, "sleeve": sleeve})


def sleeve_of(context: dg.AssetExecutionContext) -> Sleeve:
    """The catalog entry of a sleeve-partitioned (or sleeve × run) asset's partition."""
    key = str(context.partition_key)
    return catalog.sleeve(key.split("|")[-1])


def sleeve_and_date(context: dg.AssetExecutionContext) -> tuple[Sleeve, pd.Timestamp]:
    """Decode a sleeve × run partition into the sleeve and its as-of date (tz-naive UTC date)."""
    key = str(context.partition_key)
    if key.count("|") != 1:
        raise ValueError(
            f"expected a sleeve × run partition key like 2026-11-20|crypto, got {key!r}"
        )
    as_of, sleeve_name = key.split("|")
    return catalog.sleeve(sleeve_name), pd.Timestamp(as_of)
