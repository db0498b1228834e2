"""The exchange source at 300 markets, against the Binance replay on 127.0.0.1.

The replay (``tvq_resources/exchange_replay.py``) serves the real Binance spot kline files of
``../shared/data/real`` (``crypto_binance_klines_yodumini`` and ``crypto_binance_spot_soneyjohnt``,
79 series), each repeated under numbered names (``BTC2USDT``, ``BTC3USDT``, ...) until the market
list holds ``--markets`` + 16 markets; the source's universe rule takes the ``--markets`` most
liquid (24h quote volume). Two refreshes go through the bar store as the ``bars`` asset does
(prepare, commit; no Dagster):

- the first load, from ``--start`` to the last closed day at D = 2022-06-05 06:00 UTC;
- the one-day refresh at D+1, which asks every market for the days from the stored last date
  minus the revision margin.

For each: seconds, requests, the request weight sent (Binance's weights: klines 2, exchangeInfo
20, ticker/24hr without a symbol 80) and the largest weight inside any 60 s and any 10 s (per
minute) against the documented budget of Binance spot, 6000 a minute (ccxt's ``binance``:
``rateLimit`` 50 ms per cost unit, klines cost 0.4 = weight 2). Nothing leaves 127.0.0.1.

Usage: ``python -m benchmarks.bench_exchange [--markets 300] [--workers 4] [--start 2019-01-01]``
"""

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parents[1]
REAL = REPOSITORY.parent / "shared" / "data" / "real"
BUDGET_PER_MINUTE = 6000
DAY = "2022-06-05T06:00:00Z"
NEXT_DAY = "2022-06-06T06:00:00Z"


def replay_markets(count: int):
    from tvq_resources.exchange_replay import markets_from

    series = {
        **markets_from(REAL / "crypto_binance_klines_yodumini"),
        **markets_from(REAL / "crypto_binance_spot_soneyjohnt", suffix="_1d.csv"),
    }
    markets = dict(series)
    copy_number = 2
    while len(markets) < count:
        for market in series.values():
            clone = copy.deepcopy(market)
            clone.base = f"{market.base}{copy_number}"
            clone.symbol = f"{clone.base}{clone.quote}"
            markets[clone.symbol] = clone
            if len(markets) >= count:
                break
        copy_number += 1
    return markets


def refresh(lake, replay, *, now: str, top: int, workers: int, start: str) -> dict:
    from tvq_assets import bar_store
    from tvq_assets.quant import bars as bar_lake
    from tvq_resources.exchange_replay import peak_weight_per_minute
    from tvq_resources.market_data import MarketData, SourceConfig

    os.environ["TVQ_NOW"] = now
    replay.now = pd.Timestamp(now)
    source = SourceConfig(
        kind="exchange", exchange="binance", top=top, url=replay.url, workers=workers, start=start
    )
    market = MarketData(sources={"live": source})
    asked = len(replay.log)
    started = time.perf_counter()
    with lake.writer(["bars"], "live"):
        plan, batch = bar_store.prepare(
            lake,
            "live",
            fetch=lambda since, known=(): market.fetch("live", since=since, known=known),
            calendar="crypto",
            bar_policy=bar_lake.BarPolicy(),
            volume_spike_window=21,
            now=pd.Timestamp(now),
            incremental=True,
        )
        bar_store.commit(lake, plan)
    seconds = time.perf_counter() - started
    log = replay.log[asked:]
    return {
        "seconds": seconds,
        "seconds_source": plan.seconds["source"],
        "requests": len(log),
        "weight": sum(r.weight for r in log),
        "peak_60s": peak_weight_per_minute(log, 60.0),
        "peak_10s": peak_weight_per_minute(log, 10.0),
        "rows": plan.rows_read,
        "symbols": batch.bars["symbol"].nunique(),
        "retries": batch.metadata.get("exchange_retries", 0),
        "read_since": "everything" if plan.since is None else f"{plan.since:%Y-%m-%d}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markets", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--start", default="2019-01-01")
    args = parser.parse_args(argv)
    if not REAL.is_dir():
        print(f"the real kline files are not at {REAL}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPOSITORY))
    from tvq_resources.exchange_replay import ReplayExchange
    from tvq_resources.lake import ParquetLake

    markets = replay_markets(args.markets + 16)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvq-bench-exchange-") as root:
        lake = ParquetLake(root=root)
        with ReplayExchange(markets, now=DAY) as replay:
            for name, now in (("first load", DAY), ("one-day refresh", NEXT_DAY)):
                figures = refresh(
                    lake, replay, now=now, top=args.markets, workers=args.workers, start=args.start
                )
                rows.append((name, figures))
            outside = [r.host for r in replay.log if r.host != "127.0.0.1"]
    print(
        f"exchange source: top {args.markets} of {len(markets)} replayed Binance spot markets, "
        f"{args.workers} workers, start {args.start}; budget {BUDGET_PER_MINUTE} weight/minute"
    )
    header = (
        f"{'case':<16} {'seconds':>8} {'source s':>8} {'requests':>8} {'weight':>7} "
        f"{'peak/min 60s':>12} {'peak/min 10s':>12} {'symbols':>7} {'rows':>8} {'since':>10}"
    )
    print(header)
    for name, f in rows:
        print(
            f"{name:<16} {f['seconds']:>8.1f} {f['seconds_source']:>8.1f} {f['requests']:>8} "
            f"{f['weight']:>7} {f['peak_60s']:>12.0f} {f['peak_10s']:>12.0f} {f['symbols']:>7} "
            f"{f['rows']:>8} {f['read_since']:>10}"
        )
    within = all(f["peak_60s"] <= BUDGET_PER_MINUTE for _, f in rows)
    print(f"within {BUDGET_PER_MINUTE} weight/minute: {'yes' if within else 'NO'}")
    print(f"requests outside 127.0.0.1: {len(outside)}")
    return 0 if within and not outside else 1


if __name__ == "__main__":
    raise SystemExit(main())
