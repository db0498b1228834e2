"""The next day from the window cache: the D+1 tournament cold vs warm (D filled the cache).

``d_plus_one(n_symbols)`` builds the synthetic crypto sleeve of ``benchmarks/bench.py`` (seed 7,
three years to 2026-11-27, the default crypto policy), runs the tournament of D = 2026-11-26 into an
empty cache, then D+1 from that cache and D+1 cold, checks the warm run equals the cold one, and
returns the seconds and the reuse counts. Wall-clock seconds; the machine's load makes them noisy,
the ratio of the two D+1 runs (measured back to back) less so.

Usage: ``python -m benchmarks.bench_window_reuse [--sizes 1000]``
"""

import argparse
import tempfile
import time

import pandas as pd
import yaml

from benchmarks.bench import DAY, SEED, _catalog
from tvq_assets.catalog import parse_catalog
from tvq_assets.quant import policy
from tvq_assets.settings import policy_settings
from tvq_resources.synthetic import generate_market
from tvq_resources.window_cache import WindowCache


def d_plus_one(n_symbols: int, *, end: str = DAY) -> dict:
    """Seconds of the D (cold, filling the cache), D+1 warm and D+1 cold tournaments."""
    # The sleeve of `make bench` (its policy; the source is generated here at each size).
    settings = policy_settings(parse_catalog(yaml.safe_load(_catalog(100, DAY))).sleeves["crypto"])
    bars = generate_market(seed=SEED, n_symbols=n_symbols, end=end)
    tomorrow = pd.Timestamp(end)
    today = tomorrow - pd.Timedelta(days=1)
    windows = {
        day: policy.point_in_time(
            bars[bars["date"] <= day], as_of=day, settings=settings, quarantine=False
        )
        for day in (today, tomorrow)
    }
    figures: dict = {"symbols": n_symbols}
    with tempfile.TemporaryDirectory() as folder:
        store = WindowCache(folder)
        started = time.perf_counter()
        policy.tournament(windows[today], settings, incumbent=None, cache=store)
        figures["D cold s"] = time.perf_counter() - started
        started = time.perf_counter()
        warm = policy.tournament(windows[tomorrow], settings, incumbent=None, cache=store)
        figures["D+1 warm s"] = time.perf_counter() - started
        figures["reuse"] = warm.reuse
    started = time.perf_counter()
    cold = policy.tournament(windows[tomorrow], settings, incumbent=None)
    figures["D+1 cold s"] = time.perf_counter() - started
    pd.testing.assert_frame_equal(cold.result.returns, warm.result.returns, check_exact=True)
    pd.testing.assert_series_equal(cold.champion_weights, warm.champion_weights, check_exact=True)
    figures["speed-up"] = figures["D+1 cold s"] / figures["D+1 warm s"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000])
    arguments = parser.parse_args()
    for size in arguments.sizes:
        figures = d_plus_one(size)
        print(
            f"{size} symbols: D cold {figures['D cold s']:.2f} s, D+1 cold "
            f"{figures['D+1 cold s']:.2f} s, D+1 warm {figures['D+1 warm s']:.2f} s "
            f"({figures['speed-up']:.1f}x); {figures['reuse']}"
        )


if __name__ == "__main__":
    main()
