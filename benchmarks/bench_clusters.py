"""Clustering exact vs vector: time, peak memory and agreement (``tvq_assets/quant/clusters.py``).

Each (method, size) case runs in a FRESH subprocess. The window is the last ``lookback`` (500)
rows of simple returns of the synthetic market (seed 7, 8 sectors, ending 2026-11-27), every
symbol kept, NaN before a listing and after a delisting. The clustering's memory is its
tracemalloc peak (a second run); the process peak includes building the market. Clustering uses
the default policy (lookbacks 60/120/200, cut 0.7, at most 25 clusters). Agreement is the
adjusted Rand index between the two methods' partitions and against the market's planted
sectors; ``--real`` adds the agreement on every real-data folder (``../shared/data/real``) at
its as-of date. Timings depend on the load of the machine: compare ratios taken in one run.

Usage: ``python -m benchmarks.bench_clusters [--sizes 1000 3000 10000] [--exact-max 3000]
[--real]``
"""

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

import pandas as pd

SEED = 7
END = "2026-11-27"
MARKER = "BENCH_CLUSTERS "


def window(symbols: int) -> pd.DataFrame:
    from tvq_assets.catalog import Policy
    from tvq_resources.synthetic import generate_market

    bars = generate_market(seed=SEED, n_symbols=symbols, end=END)
    close = bars.pivot(index="date", columns="symbol", values="close")
    return close.pct_change(fill_method=None).iloc[1:].tail(Policy().lookback)


def labels(returns: pd.DataFrame, method: str) -> pd.Series:
    from tvq_assets.catalog import Policy
    from tvq_assets.quant.clusters import cluster_symbols

    policy = Policy()
    return cluster_symbols(
        returns,
        lookbacks=policy.cluster_lookbacks,
        threshold=policy.cluster_threshold,
        max_clusters=policy.max_clusters,
        method=method,
    )


def run_case(symbols: int, method: str) -> dict:
    """One case in this process: the window, then the timed clustering."""
    returns = window(symbols)
    started = time.perf_counter()
    result = labels(returns, method)
    seconds = time.perf_counter() - started
    # A second run under tracemalloc: the clustering's own peak of NumPy/Python allocations
    # (ru_maxrss is dominated by building the synthetic market).
    tracemalloc.start()
    labels(returns, method)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "symbols": symbols,
        "method": method,
        "seconds": seconds,
        "process_peak_mb": peak / 1024,
        "clustering_peak_mb": traced / 1e6,
        "labels": result.to_dict(),
    }


def case(symbols: int, method: str) -> dict:
    spec = json.dumps({"symbols": symbols, "method": method})
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_clusters", "--case", spec],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode or not lines:
        raise RuntimeError(f"case {method} at {symbols} symbols failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len(MARKER) :])


def agreement(a: pd.Series, b: pd.Series) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a.to_numpy(), b.reindex(a.index).to_numpy()))


def synthetic(sizes: list[int], exact_max: int) -> None:
    from tvq_resources.synthetic import planted_clusters

    print(
        f"{'symbols':>8} {'method':<7} {'seconds':>8} {'clust. MB':>9} {'proc. MB':>8} "
        f"{'clusters':>8} {'ARI planted':>11} {'ARI exact':>9}"
    )
    for symbols in sizes:
        planted = planted_clusters(seed=SEED, n_symbols=symbols)
        results = {}
        for method in ("exact", "vector"):
            if method == "exact" and symbols > exact_max:
                continue
            results[method] = outcome = case(symbols, method)
            found = pd.Series(outcome["labels"])
            versus = (
                f"{agreement(pd.Series(results['exact']['labels']), found):>9.3f}"
                if method == "vector" and "exact" in results
                else f"{'-':>9}"
            )
            print(
                f"{symbols:>8} {method:<7} {outcome['seconds']:>8.2f} "
                f"{outcome['clustering_peak_mb']:>9.0f} {outcome['process_peak_mb']:>8.0f} "
                f"{found.nunique():>8} "
                f"{agreement(planted.loc[found.index], found):>11.3f} {versus}",
                flush=True,
            )


def real() -> None:
    from tests.real.folders import FOLDERS, cleaned
    from tests.settings import settings_for
    from tvq_assets.quant.policy import point_in_time

    print(f"\n{'folder':<40} {'symbols':>7} {'clusters exact/vector':>21} {'ARI':>6} {'same':>5}")
    for folder in FOLDERS:
        if not folder.root.is_dir():
            print(f"{folder.name:<40} (not found)")
            continue
        _, result = cleaned(folder)
        chosen = point_in_time(
            result.bars,
            as_of=pd.Timestamp(folder.as_of),
            settings=settings_for(folder.calendar),
            quarantine=True,
        )
        returns = chosen.returns
        if returns.shape[1] < 2:
            print(f"{folder.name:<40} {returns.shape[1]:>7} (fewer than two symbols)")
            continue
        exact, vector = labels(returns, "exact"), labels(returns, "vector")
        print(
            f"{folder.name:<40} {returns.shape[1]:>7} "
            f"{f'{exact.nunique()}/{vector.nunique()}':>21} {agreement(exact, vector):>6.3f} "
            f"{exact.equals(vector)!s:>5}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument(
        "--exact-max",
        type=int,
        default=3000,
        help="largest size the exact method is run at (its memory grows with N²)",
    )
    parser.add_argument("--real", action="store_true", help="also compare on the real folders")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.case:
        spec = json.loads(options.case)
        print(MARKER + json.dumps(run_case(spec["symbols"], spec["method"])))
        return
    synthetic(options.sizes, options.exact_max)
    if options.real:
        real()


if __name__ == "__main__":
    main()
