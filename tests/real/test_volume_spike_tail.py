"""The volume-spike rule reads only the bar store's tail: on every real folder its findings equal
those over the whole store, for every symbol, on several as-of dates and windows (gaps,
listings, delistings, holidays and duplicates included)."""

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import resources_for
from tests.real.folders import params, source
from tvq_assets import bar_store
from tvq_assets.definitions import SLEEVE_ASSETS
from tvq_assets.quant import quality
from tvq_resources.lake import ParquetLake


@pytest.mark.parametrize("folder", params())
def test_the_spikes_from_the_stores_tail_are_those_of_the_whole_store(folder, tmp_path):
    name = "crypto" if folder.calendar == "crypto" else "tradfi"
    resources = resources_for(str(tmp_path), **{name: source(folder)})
    with dg.DagsterInstance.ephemeral() as instance:
        dg.materialize(
            [SLEEVE_ASSETS[0]], partition_key=name, resources=resources, instance=instance
        )
    lake = ParquetLake(root=str(tmp_path))
    whole = lake.read(["bars"], name).bars
    symbols = pd.Index(whole["symbol"].unique())
    dates = pd.DatetimeIndex(sorted(whole["date"].unique()))
    # The folder's as-of date, and a third of the way in and the last date when it has bars (a
    # folder of layouts the reader refuses stores none).
    as_of_dates = [pd.Timestamp(folder.as_of), *dates[[len(dates) // 3, -1] if len(dates) else []]]
    for as_of in as_of_dates:
        for window in (2, 21, 90):
            expected = quality.volume_spikes(whole, sigma=-float("inf"), window=window, as_of=as_of)
            tail = bar_store.read_tail(
                lake, name, since=as_of, context=window + 1, symbols=symbols
            ).bars
            found = quality.volume_spikes(tail, sigma=-float("inf"), window=window, as_of=as_of)
            pd.testing.assert_frame_equal(
                found.set_index("symbol").sort_index(),
                expected.set_index("symbol").sort_index(),
                obj=f"{folder.name} as of {as_of:%Y-%m-%d}, window {window}",
            )
