"""Engine timings per stage at 100 and 1000 crypto symbols (second section of ``make bench``).

Every stage is called exactly as its asset calls it, on the synthetic market (seed 7, three years
of daily bars ending 2026-11-27) with the default crypto sleeve's policy. Cheap stages report the
best of ``--repeats`` runs (wall-clock seconds); a stage whose first run takes longer than
``--cheap`` seconds is run once. ``--profile`` prints the cProfile top functions of the
1000-symbol backtest. Timings depend on the machine's load: repeat when they look noisy.

Usage: ``python -m benchmarks.bench_engine [--sizes 100 1000] [--repeats 3] [--profile]``
"""

import argparse
import cProfile
import os
import platform
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from tvq_assets.catalog import CALENDAR_DEFAULTS, CALENDARS, Policy, Sleeve
from tvq_assets.quant import clusters, optimise, policy, quality
from tvq_assets.settings import policy_settings
from tvq_checks import contracts
from tvq_resources.synthetic import generate_market

SEED = 7
END = "2026-11-27"
OPTIMISER_SYMBOLS = 1000
OPTIMISER_CLUSTERS = 20
OPTIMISER_CAP = 0.05
OPTIMISER_CLUSTER_CAP = 0.08
# Per-period variance units. The 1000-symbol minimum-variance book has a daily variance of about
# 2.5e-5; 1e-7 per unit of turnover cuts the rebalance by a third without freezing the book.
OPTIMISER_TURNOVER_PENALTY = 1e-7
OPTIMISER_SHIFT_BARS = 10
BACKTEST = "backtest (+ metrics, verdict)"


@dataclass(frozen=True)
class Timing:
    seconds: float
    runs: int


def timed(function: Callable[[], Any], *, repeats: int, cheap: float) -> tuple[Any, Timing]:
    """Best wall time of up to ``repeats`` runs; a first run slower than ``cheap`` s runs once."""
    started = time.perf_counter()
    result = function()
    best = time.perf_counter() - started
    runs = 1
    while runs < repeats and best < cheap:
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
        runs += 1
    return result, Timing(best, runs)


def crypto_sleeve() -> Sleeve:
    """The default crypto sleeve: Policy defaults with the crypto calendar's overrides."""
    return Sleeve(
        name="crypto",
        source={"kind": "synthetic", "seed": SEED},
        calendar="crypto",
        periods_per_year=CALENDARS["crypto"],
        toxic_policy="fail",
        policy=Policy(**CALENDAR_DEFAULTS["crypto"]),
    )


def bench_sleeve(
    n_symbols: int, *, repeats: int, cheap: float, profile: bool
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Timings of every stage for one sleeve size, and a few facts about the run."""
    sleeve = crypto_sleeve()
    catalog_policy = sleeve.policy
    settings = policy_settings(sleeve)
    as_of = pd.Timestamp(END)
    times: dict[str, Timing] = {}

    def stage(name: str, function: Callable[[], Any], *, once: bool = False) -> Any:
        result, times[name] = timed(function, repeats=1 if once else repeats, cheap=cheap)
        return result

    bars = stage(
        "source (synthetic)", lambda: generate_market(seed=SEED, n_symbols=n_symbols, end=END)
    )
    stage(
        "bar contract (full)",
        lambda: contracts.bar_violations(
            bars,
            calendar=sleeve.calendar,
            stall_bars=catalog_policy.stall_bars,
            volume_spike_window=catalog_policy.volume_spike_window,
            volume_spike_sigma=catalog_policy.volume_spike_sigma,
        ),
    )
    window = stage(
        "returns window",
        lambda: policy.point_in_time(bars, as_of=as_of, settings=settings, quarantine=False),
    )
    returns, volume = window.returns, window.dollar_volume
    stage(
        "returns contract",
        lambda: contracts.returns_violations(
            returns, toxic_threshold=catalog_policy.toxic_threshold
        ),
    )

    def features_asset() -> pd.DataFrame:
        table = policy.features(returns, volume, settings)
        spikes = quality.volume_spikes(
            bars,
            sigma=catalog_policy.volume_spike_sigma,
            window=catalog_policy.volume_spike_window,
            as_of=as_of,
        )
        table["volume_spike"] = table.index.isin(spikes["symbol"])
        return table

    features = stage("features (+ stall/spike rules)", features_asset)
    universe_returns, universe_volume = returns[features.index], volume[features.index]
    champion = stage(
        "inference log_mps",
        lambda: policy.score("log_mps", features, universe_returns, universe_volume, settings),
    )
    stage(
        "inference rank_ic",
        lambda: policy.score("rank_ic", features, universe_returns, universe_volume, settings),
    )
    labels = stage("clusters", lambda: policy.cluster(universe_returns, settings))
    selection = stage(
        "selection",
        lambda: policy.select_winners(
            features, champion["score"], labels, window.excluded, settings
        ),
    )
    winners = selection.winners

    def weights_asset() -> dict[str, optimise.Allocation]:
        return {
            profile: policy.allocate(profile, winners, returns, settings, previous=None)
            for profile in optimise.PROFILES
        }

    allocations = stage("weights (5 profiles)", weights_asset)

    def walk_forward() -> policy.TournamentOutcome:
        return policy.tournament(window, settings, incumbent=None)

    if profile and n_symbols >= 1000:
        profiler = cProfile.Profile()
        profiler.enable()
    outcome = stage(BACKTEST, walk_forward, once=True)
    result = outcome.result
    if profile and n_symbols >= 1000:
        profiler.disable()
        print(f"\ncProfile of the {n_symbols}-symbol backtest (cumulative, top 30):")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)

    facts = {
        "rows": len(bars),
        "universe": returns.shape[1],
        "window": returns.shape[0],
        "winners": len(winners),
        "clusters": int(labels.nunique()),
        "windows": len(result.windows),
        "policies": result.returns.shape[1],
        "solvers": sorted({a.solver or a.status for a in allocations.values()}),
    }
    return times, facts


def bench_optimiser(*, repeats: int, cheap: float) -> tuple[Timing, Timing, dict[str, Any]]:
    """min_variance at 1000 symbols over three years: 5% cap, 20 cluster caps, turnover term."""
    bars = generate_market(seed=SEED, n_symbols=OPTIMISER_SYMBOLS, end=END)
    close = bars.pivot(index="date", columns="symbol", values="close")
    returns = close.pct_change(fill_method=None).iloc[1:]
    labels = clusters.cluster_symbols(
        returns.tail(252), threshold=1e-9, max_clusters=OPTIMISER_CLUSTERS
    )
    policy = replace(crypto_sleeve().policy, cap=OPTIMISER_CAP, cluster_cap=OPTIMISER_CLUSTER_CAP)
    base = optimise.Constraints.of(policy, clusters=labels)
    held, first = timed(
        lambda: optimise.allocate(
            "min_variance",
            returns.iloc[:-OPTIMISER_SHIFT_BARS],
            constraints=base,
            solvers=("CLARABEL",),
        ),
        repeats=repeats,
        cheap=cheap,
    )
    constraints = optimise.Constraints.of(
        replace(policy, turnover_penalty=OPTIMISER_TURNOVER_PENALTY),
        clusters=labels,
        previous=held.weights,
    )
    allocation, second = timed(
        lambda: optimise.allocate(
            "min_variance", returns, constraints=constraints, solvers=("CLARABEL",)
        ),
        repeats=repeats,
        cheap=cheap,
    )
    weights = allocation.weights
    facts = {
        "symbols": returns.shape[1],
        "rows": returns.shape[0],
        "clusters": int(labels.nunique()),
        "status": allocation.status,
        "solver_seconds": round(allocation.seconds, 3),
        "held": int((weights > 0).sum()),
        "turnover": round(
            0.5 * float((weights - held.weights.reindex(weights.index).fillna(0.0)).abs().sum()),
            4,
        ),
    }
    return first, second, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cheap", type=float, default=5.0, help="repeat stages faster than this")
    parser.add_argument("--profile", action="store_true", help="cProfile the 1000-symbol backtest")
    arguments = parser.parse_args()

    print(
        f"tvq engine bench: python {platform.python_version()}, numpy {np.__version__}, "
        f"pandas {pd.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    )
    started = time.perf_counter()
    results = {}
    for size in arguments.sizes:
        results[size] = bench_sleeve(
            size, repeats=arguments.repeats, cheap=arguments.cheap, profile=arguments.profile
        )
    first, second, optimiser_facts = bench_optimiser(
        repeats=arguments.repeats, cheap=arguments.cheap
    )

    stages = list(results[arguments.sizes[0]][0])
    header = f"{'stage':<34}" + "".join(f"{f'{s} symbols s':>16}" for s in arguments.sizes)
    print("\n" + header + "\n" + "-" * len(header))
    for name in stages:
        cells = []
        for size in arguments.sizes:
            timing = results[size][0][name]
            marker = "" if timing.runs > 1 else "*"
            cells.append(f"{timing.seconds:>15.3f}{marker or ' '}")
        print(f"{name:<34}" + "".join(cells))
    totals = [sum(t.seconds for t in results[size][0].values()) for size in arguments.sizes]
    print("-" * len(header))
    print(f"{'total':<34}" + "".join(f"{total:>15.3f} " for total in totals))
    alpha = ("features", "inference", "clusters", "selection")
    for size in arguments.sizes:
        times = results[size][0]
        layer = sum(t.seconds for n, t in times.items() if n.startswith(alpha))
        synthesis = times["weights (5 profiles)"].seconds + times[BACKTEST].seconds
        print(
            f"{size} symbols: alpha layer {layer:.2f} s, weights + backtest {synthesis:.2f} s; "
            f"{results[size][1]}"
        )
    print(
        f"\noptimiser alone, min_variance CLARABEL at {optimiser_facts['symbols']} symbols x "
        f"{optimiser_facts['rows']} bars, cap {OPTIMISER_CAP:.0%}, {optimiser_facts['clusters']} "
        f"cluster caps of {OPTIMISER_CLUSTER_CAP:.0%}:"
    )
    print(f"  {'without turnover term':<32}{first.seconds:>10.3f} s")
    print(
        f"  {'with turnover term':<32}{second.seconds:>10.3f} s  "
        f"(lambda {OPTIMISER_TURNOVER_PENALTY:g}; {optimiser_facts})"
    )
    print(
        f"\n* = one run (slower than {arguments.cheap:g} s), otherwise best of up to "
        f"{arguments.repeats}. Bench wall time {time.perf_counter() - started:.1f} s."
    )


if __name__ == "__main__":
    main()
