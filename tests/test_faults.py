"""The fault suite: each way the platform was seen to lose data, hang or fail unclearly, replayed.

Every test reproduces one fault an operator can cause (two refreshes at once, a killed run, a
broken catalog, a damaged or half-written lake file) and asserts the preserved data or the clear
error. Tests that start processes or a daemon are marked slow.
"""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import resources_for, stop
from tvq_assets import data
from tvq_resources import synthetic
from tvq_resources.lake import LakeReadError, ParquetLake
from tvq_resources.market_data import SourceConfig

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"


# 1. Lost update of the bar lake.


def _csv_sources(tmp_path: Path, groups: int, symbols: int) -> list[Path]:
    """Disjoint CSV directories of real-looking daily bars, ``symbols`` files each."""
    market = synthetic.generate_market(
        seed=3,
        n_symbols=groups * symbols,
        n_clusters=4,
        start="2024-01-01",
        end="2026-06-30",
        calendar="crypto",
    )
    names = sorted(market["symbol"].unique())
    folders = []
    for group in range(groups):
        folder = tmp_path / f"source{group}"
        folder.mkdir()
        for name in names[group * symbols : (group + 1) * symbols]:
            bars = market[market["symbol"] == name].drop(columns="symbol")
            bars.assign(date=bars["date"].dt.strftime("%Y-%m-%d")).to_csv(
                folder / f"{name}.csv", index=False
            )
        folders.append(folder)
    return folders


@pytest.mark.slow
def test_two_concurrent_refreshes_of_one_sleeve_keep_every_row(tmp_path, lake_root):
    folders = _csv_sources(tmp_path, groups=2, symbols=8)
    start = threading.Barrier(2)
    results = {}

    def refresh(folder: Path) -> None:
        source = SourceConfig(kind="csv", path=str(folder), calendar="crypto")
        with dg.DagsterInstance.ephemeral() as instance:
            start.wait()
            results[folder.name] = dg.materialize(
                [data.bars],
                partition_key="crypto",
                resources=resources_for(lake_root, crypto=source),
                instance=instance,
                raise_on_error=False,
            )

    threads = [threading.Thread(target=refresh, args=(f,)) for f in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.success for r in results.values())
    added = sum(
        r.asset_materializations_for_node("bars")[0].metadata["rows_added"].value
        for r in results.values()
    )
    stored = ParquetLake(root=lake_root).read(["bars"], "crypto")
    assert stored["symbol"].nunique() == 16
    assert len(stored) == added  # every row a run reported adding is in the lake
