"""The backtest tournament serial vs on Ray, at 100 and 1000 crypto symbols, in one process.

``python -m benchmarks.bench_ray [--sizes 100 1000] [--address HOST:PORT]``

Without ``--address`` a private local head is started (and its start-up timed); with it, the
tournament runs on that cluster. Serial and Ray run back to back on the same window, so their
ratio is meaningful on a shared machine even when absolute times are not; the outcomes are
checked equal.
"""

import argparse
import time

import pandas as pd
import yaml

from benchmarks.bench import DAY, SEED, START, _catalog
from tests.resources.test_ray_fanout import assert_same_outcome
from tvq_assets.catalog import parse_catalog
from tvq_assets.quant import policy
from tvq_assets.settings import policy_settings
from tvq_resources import ray_fanout
from tvq_resources.ray_fanout import RayFanout
from tvq_resources.synthetic import generate_market


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--address", default=None)
    parser.add_argument("--num-cpus", type=int, default=None)
    arguments = parser.parse_args()
    # The sleeve of `make bench` (its policy; the source is generated here at each size).
    sleeve = parse_catalog(yaml.safe_load(_catalog(100, DAY))).sleeves["crypto"]
    settings = policy_settings(sleeve)
    resource = (
        RayFanout(address=arguments.address)
        if arguments.address
        else RayFanout(local=True, num_cpus=arguments.num_cpus)
    )
    begun = time.perf_counter()
    with ray_fanout.connected(resource) as ready:
        connected = time.perf_counter() - begun
        if ready.head is not None:
            print(
                f"ray start-up: head {ready.head.seconds:.1f} s ({ready.head.attempts} attempt(s)),"
                f" head + driver connect {connected:.1f} s"
            )
        else:
            print(f"ray connect to {arguments.address}: {connected:.1f} s")
        for size in arguments.sizes:
            bars = generate_market(
                seed=SEED, n_symbols=size, n_clusters=8, start=START, end=DAY, calendar="crypto"
            )
            window = policy.point_in_time(
                bars, as_of=pd.Timestamp(DAY), settings=settings, quarantine=False
            )
            started = time.perf_counter()
            serial = policy.tournament(window, settings, incumbent=None)
            serial_seconds = time.perf_counter() - started
            fanout = ready.task_map()
            started = time.perf_counter()
            on_ray = policy.tournament(window, settings, incumbent=None, map_tasks=fanout)
            ray_seconds = time.perf_counter() - started
            assert_same_outcome(on_ray, serial)
            print(
                f"{size} symbols: serial {serial_seconds:.1f} s, ray {ray_seconds:.1f} s "
                f"({fanout.tasks} tasks in {fanout.calls} map calls), "
                f"ray/serial {ray_seconds / serial_seconds:.2f}; outcomes identical",
                flush=True,
            )


if __name__ == "__main__":
    main()
