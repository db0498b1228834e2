"""The exchange source against a replay of Binance's public API on 127.0.0.1.

The replay (``tvq_resources/exchange_replay.py``) serves the real Binance kline files of
``../shared/data/real`` (and the perpetuals shipped in the repository) as the exchange would, with
scripted faults. Every test runs under a guard that refuses any connection or name lookup that is
not the loopback address: nothing reaches the internet.
"""

import ipaddress
import socket
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import evaluations, resources_for
from tests.real.folders import REAL, SHIPPED, needs_real
from tvq_assets import bar_store, catalog, data
from tvq_assets.quant import bars as bar_lake
from tvq_checks import contracts
from tvq_resources import exchange, files
from tvq_resources.exchange_replay import ReplayExchange, markets_from
from tvq_resources.lake import ParquetLake
from tvq_resources.market_data import MarketData, SourceConfig

SLEEVE = "live"
YODUMINI = REAL / "crypto_binance_klines_yodumini"
# Real series with their defects: a duplicated month (JUV), the LUNA collapse, gap and reuse, a
# pair ending early with a partial last bar (TUSD), a listing inside the window (BTCST).
SPOT = ("BTCUSDT", "JUVUSDT", "LUNAUSDT", "TUSDUSDT", "BTCSTUSDT")
NOW = "2022-09-30T12:00:00Z"  # the files' last day: its candle is the open one


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LeftLoopback(ConnectionRefusedError):
    """A connection or lookup outside 127.0.0.1 (the guard refused it)."""


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse (and record) every connection and name lookup that is not the loopback."""
    refused: list[str] = []
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(host):
            refused.append(host)
            raise LeftLoopback(f"connection to {host} refused: tests stay on 127.0.0.1")
        return connect(sock, address)

    def guarded_lookup(host, *args, **kwargs):
        if host is not None and not _loopback(str(host)):
            refused.append(str(host))
            raise LeftLoopback(f"lookup of {host} refused: tests stay on 127.0.0.1")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    yield refused
    assert not refused, f"a request tried to leave 127.0.0.1: {refused}"


@pytest.fixture
def refused_ok(loopback_only):
    """For the tests that provoke the guard: what it refused, cleared before its own check."""
    yield loopback_only
    loopback_only.clear()


def spot_replay(*, now: str = NOW, page_limit: int = 1000, only=SPOT) -> ReplayExchange:
    return ReplayExchange(markets_from(YODUMINI, only=only), now=now, page_limit=page_limit)


def source(replay: ReplayExchange, **options) -> SourceConfig:
    settings = {
        "kind": "exchange",
        "exchange": "binance",
        "bases": [s.removesuffix("USDT") for s in SPOT],
        "url": replay.url,
        "start": "2021-01-01",
        "backoff": 0.05,
        "timeout": 2.0,
        **options,
    }
    return SourceConfig(**settings)


def fetch(replay: ReplayExchange, monkeypatch, *, now: str = NOW, since=None, known=(), **options):
    monkeypatch.setenv("TVQ_NOW", now)
    market = MarketData(sources={SLEEVE: source(replay, **options)})
    return market.fetch(SLEEVE, since=since, known=known)


def csv_batch(folder, symbols, *, before: str):
    """The same files read as a csv source, without the candles of ``before`` and later."""
    market = MarketData(sources={SLEEVE: SourceConfig(kind="csv", path=str(folder))})
    batch = market.fetch(SLEEVE)
    bars = batch.bars[batch.bars["symbol"].isin(symbols)]
    bars = bars[bars["date"] < pd.Timestamp(before)]
    return bars.reset_index(drop=True)


@needs_real
def test_the_bars_served_by_the_exchange_equal_the_same_files_read_as_a_csv_source(monkeypatch):
    # A page limit of 100 candles: every series (638 days) takes seven pages.
    with spot_replay(page_limit=100) as replay:
        batch = fetch(replay, monkeypatch)
        klines = replay.requests("klines")
    expected = csv_batch(YODUMINI, SPOT, before="2022-09-30")
    expected = expected[expected["date"] >= pd.Timestamp("2021-01-01")].reset_index(drop=True)
    pd.testing.assert_frame_equal(batch.bars[list(files.BAR_COLUMNS)], expected)
    assert batch.errors == ()
    # Paged: each market was asked page after page, each page from the day after the last one.
    btc = [r for r in klines if r.params["symbol"] == "BTCUSDT"]
    assert len(btc) == 7
    assert all(int(r.params["limit"]) == 1000 for r in btc)
    starts = [pd.Timestamp(int(r.params["startTime"]), unit="ms") for r in btc]
    assert starts[0] == pd.Timestamp("2021-01-01")
    assert starts[1] == pd.Timestamp("2021-01-01") + pd.Timedelta(days=100)


@needs_real
def test_the_quote_volume_is_kept_as_the_api_reports_it(monkeypatch):
    with spot_replay(only=("BTCUSDT",)) as replay:
        batch = fetch(replay, monkeypatch, bases=["BTC"])
    first = batch.bars.iloc[0]
    # BTCUSDT 2021-01-01 in the file: volume 54182.925011 BTC, quote volume 1582526989.1618724.
    assert first["volume"] == 54182.925011
    assert first["quote_volume"] == 1582526989.1618724


@needs_real
def test_the_open_candle_of_today_is_neither_asked_for_nor_delivered(monkeypatch):
    with spot_replay(only=("BTCUSDT",)) as replay:
        batch = fetch(replay, monkeypatch, bases=["BTC"])
        asked = replay.requests("klines")
    today = pd.Timestamp("2022-09-30")
    assert batch.bars["date"].max() == today - pd.Timedelta(days=1)
    assert all(int(r.params["endTime"]) < today.value // 1_000_000 for r in asked)


@needs_real
def test_an_open_candle_served_anyway_is_dropped_and_counted(monkeypatch):
    with spot_replay(only=("BTCUSDT",)) as replay:
        original = replay._klines

        def without_end(params):
            return original({k: v for k, v in params.items() if k != "endTime"})

        replay._klines = without_end
        batch = fetch(replay, monkeypatch, bases=["BTC"])
    assert batch.bars["date"].max() == pd.Timestamp("2022-09-29")
    assert batch.metadata["exchange_open_candles_dropped"] == 1


@needs_real
def test_a_429_is_retried_after_the_retry_after_the_exchange_asked_for(monkeypatch):
    with spot_replay(only=("BTCUSDT",)) as replay:
        replay.fail("klines", symbol="BTCUSDT", status=429, retry_after=1)
        started = time.monotonic()
        batch = fetch(replay, monkeypatch, bases=["BTC"])
        took = time.monotonic() - started
        asked = replay.requests("klines")
    assert [r.status for r in asked] == [429, 200]
    assert asked[1].at - asked[0].at >= 1.0  # Retry-After: 1 (the backoff alone is 0.05 s)
    assert took >= 1.0
    assert len(batch.bars) == 637 and batch.metadata["exchange_retries"] == 1


@needs_real
def test_a_500_then_success_is_retried_with_backoff(monkeypatch):
    with spot_replay(only=("BTCUSDT",)) as replay:
        replay.fail("klines", status=500)
        replay.fail("exchangeInfo", status=503)
        batch = fetch(replay, monkeypatch, bases=["BTC"], backoff=0.3)
        asked = replay.requests("klines")
    assert [r.status for r in asked] == [500, 200]
    assert asked[1].at - asked[0].at >= 0.3
    assert len(batch.bars) == 637 and batch.metadata["exchange_retries"] == 2


@needs_real
def test_a_timeout_is_retried(monkeypatch):
    with spot_replay(only=("BTCUSDT",)) as replay:
        # The client gives up after 2 s on a request the server holds for 6 s; the retry is
        # answered at once (2 s leaves room for a loaded machine: it must not time out too).
        replay.fail("klines", delay=6.0)
        batch = fetch(replay, monkeypatch, bases=["BTC"], timeout=2.0)
        asked = replay.requests("klines")
    assert len(asked) == 2
    assert len(batch.bars) == 637 and batch.metadata["exchange_retries"] == 1


@needs_real
def test_a_failure_that_outlasts_the_retries_names_exchange_symbol_request_and_cause(
    monkeypatch,
):
    with spot_replay(only=("BTCUSDT",)) as replay:
        replay.fail("klines", symbol="BTCUSDT", status=502, times=10)
        with pytest.raises(exchange.ExchangeRequestError) as raised:
            fetch(replay, monkeypatch, bases=["BTC"], retries=2)
        asked = replay.requests("klines")
    message = str(raised.value)
    assert len(asked) == 3
    assert "binance spot" in message and "BTCUSDT" in message
    assert "/api/v3/klines?" in message and "startTime=1609459200000" in message
    assert "HTTP 502" in message and "after 3 attempts" in message
    assert "nothing was stored" in message


@needs_real
def test_a_ban_longer_than_a_refresh_waits_fails_at_once_naming_the_wait(monkeypatch):
    with spot_replay(only=("BTCUSDT",)) as replay:
        replay.fail("klines", status=418, retry_after=7200)
        with pytest.raises(exchange.ExchangeRequestError, match="wait 7200 s"):
            fetch(replay, monkeypatch, bases=["BTC"])
        assert len(replay.requests("klines")) == 1


@needs_real
def test_a_delisted_symbol_is_recorded_and_the_others_load(monkeypatch):
    with spot_replay(only=("BTCUSDT", "LUNAUSDT")) as replay:
        replay.delist("LUNAUSDT")
        batch = fetch(replay, monkeypatch, bases=["BTC", "LUNA", "DOESNOTEXIST"])
    assert set(batch.bars["symbol"]) == {"BTCUSDT"}
    reasons = {error.file: error.reason for error in batch.errors}
    assert "-1121" in reasons["binance spot LUNAUSDT"]
    assert "Invalid symbol." in reasons["binance spot LUNAUSDT"]
    assert "lists no spot market DOESNOTEXIST/USDT" in reasons["binance spot DOESNOTEXIST"]


@needs_real
def test_the_universe_takes_the_most_liquid_markets_at_the_refresh(monkeypatch):
    with spot_replay(only=None) as replay:
        day = pd.Timestamp(NOW).tz_convert(None).normalize() - pd.Timedelta(days=1)
        opened = day.value // 1_000_000
        volume = {
            m.symbol: float(m.rows[opened][7]) for m in replay.markets.values() if opened in m.rows
        }
        batch = fetch(replay, monkeypatch, bases=[], top=3)
    expected = sorted(volume, key=lambda s: -volume[s])[:3]
    assert sorted(set(batch.bars["symbol"])) == sorted(expected)
    assert batch.metadata["universe_symbols"] == ", ".join(expected)
    assert batch.metadata["universe"].startswith("top 3 of 45 binance spot USDT markets")
    assert "2022-09-30 12:00 UTC" in batch.metadata["universe"]


def test_the_perpetual_swap_market_is_served_from_the_futures_api(monkeypatch):
    folder = SHIPPED / "crypto_binance_perp_gravestone"
    markets = markets_from(folder, only=("BTCUSDT", "ETHUSDT"))
    with ReplayExchange(markets, now="2026-03-19T08:00Z", kind="swap") as replay:
        monkeypatch.setenv("TVQ_NOW", "2026-03-19T08:00Z")
        spec = SourceConfig(
            kind="exchange", exchange="binance", market="swap", bases=["BTC", "ETH"], url=replay.url
        )
        batch = MarketData(sources={SLEEVE: spec}).fetch(SLEEVE)
        paths = {r.path for r in replay.requests()}
    assert paths == {"/fapi/v1/exchangeInfo", "/fapi/v1/klines"}
    expected = csv_batch(folder, ("BTCUSDT", "ETHUSDT"), before="2026-03-19")
    pd.testing.assert_frame_equal(batch.bars[list(files.BAR_COLUMNS)], expected)


@needs_real
def test_the_workers_together_stay_within_the_rate_limit_of_one_client(monkeypatch):
    with spot_replay(only=None, page_limit=100) as replay:
        batch = fetch(replay, monkeypatch, bases=[], top=12, workers=4)
        klines = replay.requests("klines")
    # ccxt's binance: spot klines cost 0.4 x rateLimit 50 ms (weight 2 of Binance's 6000 a
    # minute): one client sends one every 20 ms at most. Four workers share that budget, so each
    # waits four times as long (and the margin) between its own requests: 88 ms.
    assert batch.bars["symbol"].nunique() == 12 and len(klines) >= 80
    by_worker: dict[int, list[float]] = {}
    for request in klines:
        by_worker.setdefault(request.port, []).append(request.at)
    assert len(by_worker) == 4
    interval = 0.050 * 0.4 * 4 * exchange.RATE_MARGIN
    for times in by_worker.values():  # arrival times jitter: the mean gap is the client's pace
        mean_gap = (times[-1] - times[0]) / (len(times) - 1)
        assert mean_gap >= 0.95 * interval, f"{mean_gap * 1000:.0f} ms between two requests"
    everyone = sorted(r.at for r in klines)
    assert (len(everyone) - 1) / (everyone[-1] - everyone[0]) <= 50  # klines a second


def test_without_the_url_override_the_guard_refuses_the_real_exchange(monkeypatch, refused_ok):
    monkeypatch.setenv("TVQ_NOW", NOW)
    spec = SourceConfig(kind="exchange", exchange="binance", bases=["BTC"], retries=0)
    with pytest.raises(exchange.ExchangeRequestError, match=r"api\.binance\.com"):
        MarketData(sources={SLEEVE: spec}).fetch(SLEEVE)
    assert refused_ok == ["api.binance.com"]


def test_the_guard_refuses_a_connection_outside_the_loopback(refused_ok):
    with pytest.raises(LeftLoopback):
        socket.create_connection(("93.184.215.14", 443), timeout=1)
    assert refused_ok == ["93.184.215.14"]


# -- through the bar store: incremental refreshes, revisions, a failed refresh ------------------


def refresh(lake: ParquetLake, replay: ReplayExchange, monkeypatch, *, now: str, full=False):
    """What the bars asset does, without Dagster: prepare, check the new rows, commit."""
    monkeypatch.setenv("TVQ_NOW", now)
    replay.now = pd.Timestamp(now)
    market = MarketData(sources={SLEEVE: source(replay)})
    with lake.writer(["bars"], SLEEVE):
        plan, batch = bar_store.prepare(
            lake,
            SLEEVE,
            fetch=lambda since, known=(): market.fetch(SLEEVE, since=since, known=known),
            calendar="crypto",
            bar_policy=bar_lake.BarPolicy(),
            volume_spike_window=21,
            now=pd.Timestamp(now),
            full=full,
            incremental=market.incremental(SLEEVE),
        )
        errors, _ = contracts.bar_violations(plan.frame, calendar="crypto", rows=plan.rows)
        assert errors.empty, errors
        bar_store.commit(lake, plan)
    return plan, batch


def history(lake: ParquetLake) -> bar_lake.BarHistory:
    return lake.read(["bars"], SLEEVE)


@needs_real
def test_refreshing_day_by_day_stores_what_one_full_load_stores(tmp_path, monkeypatch):
    days = [f"{d:%Y-%m-%d}T00:20:00Z" for d in pd.date_range("2022-09-20", "2022-09-30")]
    daily = ParquetLake(root=str(tmp_path / "daily"))
    with spot_replay() as replay:
        for day in days:
            asked = len(replay.log)
            plan, _ = refresh(daily, replay, monkeypatch, now=day)
        first_asks = {}
        for r in replay.log[asked:]:
            if r.path.endswith("/klines"):
                started = pd.Timestamp(int(r.params["startTime"]), unit="ms")
                first_asks.setdefault(r.params["symbol"], started)
        once = ParquetLake(root=str(tmp_path / "once"))
        refresh(once, replay, monkeypatch, now=days[-1])
    # The last refresh asked every market from the stored last date minus the revision margin.
    last_stored = pd.Timestamp("2022-09-28")
    margin = pd.Timedelta(days=bar_lake.REVISION_DAYS)
    assert plan.since == last_stored - margin
    assert first_asks == dict.fromkeys(SPOT, last_stored - margin + pd.Timedelta(days=1))
    left, right = history(daily), history(once)
    pd.testing.assert_frame_equal(left.bars, right.bars)
    pd.testing.assert_frame_equal(
        left.defects.reset_index(drop=True), right.defects.reset_index(drop=True)
    )
    assert left.revisions.empty and right.revisions.empty


@needs_real
def test_a_candle_revised_inside_the_margin_is_recorded_as_a_revision(tmp_path, monkeypatch):
    lake = ParquetLake(root=str(tmp_path))
    with spot_replay(only=("BTCUSDT",)) as replay:
        refresh(lake, replay, monkeypatch, now="2022-09-25T01:00:00Z")
        stored = history(lake).bars.set_index("date").loc["2022-09-21", "close"]
        replay.revise("BTCUSDT", "2022-09-21", close="19000.5")
        refresh(lake, replay, monkeypatch, now="2022-09-26T01:00:00Z")
    revisions = history(lake).revisions
    assert len(revisions) == 1
    row = revisions.iloc[0]
    assert (row["symbol"], row["date"], row["column"]) == (
        "BTCUSDT",
        pd.Timestamp("2022-09-21"),
        "close",
    )
    assert (row["old"], row["new"]) == (stored, 19000.5)
    assert history(lake).bars.set_index("date").loc["2022-09-21", "close"] == 19000.5


def file_quote_volumes(folder: Path, symbols) -> pd.DataFrame:
    """(symbol, date, quote_volume) of kline files, read straight from their own column (a
    repeated day: its last row, as the exchange serves one candle a day)."""
    parts = []
    for symbol in symbols:
        raw = pd.read_csv(
            folder / f"{symbol}.csv",
            usecols=["open_time", "quote_asset_volume"],
            float_precision="round_trip",  # the exact decimal of the file, as float() reads it
        )
        parts.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "date": pd.to_datetime(raw["open_time"], unit="ms").astype("datetime64[ns]"),
                    "quote_volume": raw["quote_asset_volume"].astype(float),
                }
            ).drop_duplicates(["symbol", "date"], keep="last")
        )
    return pd.concat(parts, ignore_index=True)


@needs_real
def test_the_stored_bars_keep_the_quote_volume_of_the_files_row_for_row(tmp_path, monkeypatch):
    lake = ParquetLake(root=str(tmp_path))
    with spot_replay() as replay:
        refresh(lake, replay, monkeypatch, now="2022-09-25T01:00:00Z")  # a first load
        for day in ("2022-09-26", "2022-09-27", "2022-09-30"):  # incremental, then a gap
            refresh(lake, replay, monkeypatch, now=f"{day}T01:00:00Z")
    stored = history(lake).bars
    assert len(bar_store.state(lake, SLEEVE).segments) > 1  # read across segments
    expected = file_quote_volumes(YODUMINI, SPOT)
    joined = stored.merge(expected, on=["symbol", "date"], how="left", suffixes=("", "_file"))
    assert len(joined) == len(stored) > 2000
    assert joined["quote_volume_file"].notna().all()  # every stored bar has its file row
    bad = joined[joined["quote_volume"] != joined["quote_volume_file"]]
    assert bad.empty, bad.to_string()
    # the delivery's quote volume went through the store unchanged: no revision recorded
    assert history(lake).revisions.empty


@needs_real
def test_a_revised_quote_volume_alone_is_recorded_as_a_revision(tmp_path, monkeypatch):
    lake = ParquetLake(root=str(tmp_path))
    with spot_replay(only=("BTCUSDT",)) as replay:
        monkeypatch.setattr("tests.resources.test_exchange.SPOT", ("BTCUSDT",))
        refresh(lake, replay, monkeypatch, now="2022-09-25T01:00:00Z")
        before = history(lake).bars.set_index("date").loc["2022-09-21"]
        replay.revise("BTCUSDT", "2022-09-21", quote_volume="123456789.5")
        plan, _ = refresh(lake, replay, monkeypatch, now="2022-09-26T01:00:00Z")
    revisions = history(lake).revisions
    assert revisions[["symbol", "date", "column"]].values.tolist() == [
        ["BTCUSDT", pd.Timestamp("2022-09-21"), "quote_volume"]
    ]
    assert (revisions.iloc[0]["old"], revisions.iloc[0]["new"]) == (
        before["quote_volume"],
        123456789.5,
    )
    after = history(lake).bars.set_index("date").loc["2022-09-21"]
    assert after["quote_volume"] == 123456789.5
    assert after[list(bar_lake.VALUE_COLUMNS)].equals(before[list(bar_lake.VALUE_COLUMNS)])
    assert plan.update.revised == 1


@needs_real
def test_a_symbol_new_to_the_store_comes_with_its_whole_history(tmp_path, monkeypatch):
    lake = ParquetLake(root=str(tmp_path))
    with spot_replay(only=SPOT) as replay:
        monkeypatch.setattr(
            "tests.resources.test_exchange.SPOT", ("BTCUSDT",), raising=True
        )  # the first refresh knows one market
        refresh(lake, replay, monkeypatch, now="2022-09-25T01:00:00Z")
        monkeypatch.setattr("tests.resources.test_exchange.SPOT", ("BTCUSDT", "JUVUSDT"))
        plan, _ = refresh(lake, replay, monkeypatch, now="2022-09-26T01:00:00Z")
    bars = history(lake).bars
    juv = bars[bars["symbol"] == "JUVUSDT"]
    assert juv["date"].min() == pd.Timestamp("2021-01-01")
    assert juv["date"].max() == pd.Timestamp("2022-09-25")
    assert plan.since is not None  # BTC was still read incrementally


@needs_real
def test_a_failed_refresh_stores_nothing(tmp_path, monkeypatch):
    lake = ParquetLake(root=str(tmp_path))
    with spot_replay(only=("BTCUSDT", "JUVUSDT")) as replay:
        monkeypatch.setattr("tests.resources.test_exchange.SPOT", ("BTCUSDT", "JUVUSDT"))
        refresh(lake, replay, monkeypatch, now="2022-09-25T01:00:00Z")
        before = bar_store.state(lake, SLEEVE)
        replay.fail("klines", symbol="JUVUSDT", status=500, times=100)
        with pytest.raises(exchange.ExchangeRequestError, match="JUVUSDT"):
            refresh(lake, replay, monkeypatch, now="2022-09-26T01:00:00Z")
    after = bar_store.state(lake, SLEEVE)
    assert after.sequence == before.sequence
    assert history(lake).bars["date"].max() == pd.Timestamp("2022-09-24")


# -- the catalog and the bars asset -------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "tvq_assets" / "examples" / "binance_spot_live.yaml"


def parse_source(source: dict):
    return catalog.parse_catalog({"sleeves": {"live": {"source": source}}}, origin="test.yaml")


def test_the_example_catalog_declares_an_exchange_sleeve_and_the_shipped_one_stays_offline():
    example = catalog.load_catalog(EXAMPLE)
    live = example.sleeves["binance_spot_live"]
    assert live.source["kind"] == "exchange" and live.source["top"] == 50
    shipped = catalog.load_catalog(catalog.DEFAULT_CATALOG)
    assert all(s.source["kind"] != "exchange" for s in shipped.sleeves.values())


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"kind": "exchange", "exchange": "binanse", "bases": ["BTC"]},
            "source.exchange = 'binanse' is not a ccxt exchange id (did you mean 'binance'?)",
        ),
        (
            {"kind": "exchange", "exchange": "binance"},
            "either `bases` (a list of base assets) or `top`",
        ),
        (
            {"kind": "exchange", "exchange": "binance", "bases": ["BTC"], "top": 5},
            "not both and not neither",
        ),
        ({"kind": "exchange", "bases": ["BTC"]}, "needs `exchange` (a ccxt id"),
        (
            {"kind": "exchange", "exchange": "binance", "top": 5, "market": "futures"},
            "source.market = 'futures': not an allowed value",
        ),
        (
            {"kind": "exchange", "exchange": "binance", "top": 5, "url": "api.binance.com"},
            "is not http(s)://host[:port]",
        ),
        (
            {"kind": "exchange", "exchange": "binance", "top": 5, "symbols": 10},
            "source.symbols applies to synthetic sources, not to a exchange source",
        ),
        (
            {"kind": "csv", "path": "tvq_resources/fixtures", "top": 5},
            "source.top applies to exchange sources, not to a csv source",
        ),
    ],
)
def test_a_nonsense_exchange_source_is_refused_at_load_naming_the_field(source, message):
    with pytest.raises(catalog.CatalogError) as raised:
        parse_source(source)
    assert message in str(raised.value)


@needs_real
def test_the_bars_asset_refreshes_from_the_exchange_and_records_what_it_did(
    instance, lake_root, monkeypatch
):
    with spot_replay(only=("BTCUSDT", "JUVUSDT", "LUNAUSDT")) as replay:
        replay.delist("LUNAUSDT")
        live = source(replay, bases=["BTC", "JUV", "LUNA"])
        resources = resources_for(lake_root, crypto=live)
        results = []
        for now in ("2022-09-28T00:30:00Z", "2022-09-29T00:30:00Z"):
            monkeypatch.setenv("TVQ_NOW", now)
            replay.now = pd.Timestamp(now)
            results.append(
                dg.materialize(
                    [data.bars], partition_key="crypto", resources=resources, instance=instance
                )
            )
    first, second = (r.asset_materializations_for_node("bars")[0].metadata for r in results)
    assert first["read_since"].value == "everything"
    assert second["read_since"].value == "2022-09-20"  # the stored 09-27 minus 7 days
    assert second["source_exchange"].value == "binance spot"
    # the market list and one page each for BTC, JUV and LUNA (refused)
    assert second["source_exchange_requests"].value == 4
    readable = evaluations(results[1])[data.SOURCE_READABLE]
    assert not readable.passed and "LUNAUSDT" in readable.description
    bars = ParquetLake(root=lake_root).read(["bars"], "crypto").bars
    assert set(bars["symbol"]) == {"BTCUSDT", "JUVUSDT"}
    assert bars["date"].max() == pd.Timestamp("2022-09-28")
