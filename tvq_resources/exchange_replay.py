"""A replay of Binance's public market-data API on 127.0.0.1, serving real kline files.

``ReplayExchange`` speaks the endpoints ccxt's ``binance`` calls for public daily candles, in
Binance's own shapes: ``/api/v3/exchangeInfo`` and ``/fapi/v1/exchangeInfo`` (the market lists),
``/api/v3/klines`` and ``/fapi/v1/klines`` (``symbol``, ``interval``, ``startTime``, ``endTime``,
``limit``; default 500, at most 1000 or the replay's smaller ``page_limit``), ``ticker/24hr``
(the universe rule) and ``time``. Errors are Binance's: HTTP 400 with ``{"code": -1121, "msg":
"Invalid symbol."}`` for a market it does not serve, 429 with ``Retry-After``, 5xx.

Candles come from folders of real files (``../shared/data/real``): one file per market, named
``<BASE><QUOTE>`` plus a suffix (``BTCUSDT.csv``, ``BTCUSDT_1d.csv``), with an epoch-millisecond
column ``open_time`` or ``timestamp``. Cells are served as the file holds them (strings, as
Binance sends numbers), so the bars equal the files' read as a csv source. Like the exchange, the
replay serves one candle per open time: a file's repeated day is served once, its last row (the
file readers keep the same one). Files without a quote-volume column are served with an empty
quote volume (the real API always has one). Only candles opened at or before the replay's clock
``now`` exist; the day holding ``now`` is the open candle, served as the file has it.

The 24h ticker of a market is its candle of the day before ``now`` (the exchange's rolling
window, at a day's resolution). Every request is logged with its Binance request weight, so a
test or the benchmark can measure the weight sent per minute. Scripted faults (``fail``) answer
matching requests with a status, a ``Retry-After``, or a delay (a timeout for the client);
``revise`` changes a served candle, ``delist`` makes a market answer ``-1121``.
"""

import csv
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd

DAY_MS = 86_400_000
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
# Binance's request weights (IP) of the endpoints served, and its documented budgets per minute
# (spot 6000, USDT-M futures 2400; the `rateLimits` of exchangeInfo).
WEIGHTS = {"exchangeInfo": 20, "klines": 2, "ticker/24hr": 80, "time": 1}
FUTURES_WEIGHTS = {"exchangeInfo": 1, "klines": 5, "ticker/24hr": 40, "time": 1}
WEIGHT_PER_MINUTE = {"spot": 6000, "swap": 2400}
TIME_COLUMNS = ("open_time", "timestamp")
QUOTE_VOLUME_COLUMNS = ("quote_asset_volume", "quote_volume")
# The fields of a Binance kline row, by position (the names the bars give them).
KLINE_FIELDS = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume")


@dataclass
class Fault:
    """Answer the next ``times`` matching requests with ``status`` (and ``retry_after``
    seconds), or after ``delay`` seconds (then normally)."""

    endpoint: str  # "klines", "exchangeInfo", "ticker/24hr"
    symbol: str | None = None  # None: any market
    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    times: int = 1
    served: int = 0


@dataclass
class Logged:
    at: float  # time.monotonic() of the request's arrival
    path: str
    params: Mapping[str, str]
    weight: int
    host: str
    port: int  # the client's port: one per connection (a ccxt client keeps its connection)
    status: int | None = None  # None until answered


@dataclass
class Market:
    symbol: str  # the exchange id, e.g. BTCUSDT
    base: str
    quote: str
    rows: dict[int, list[str]] = field(default_factory=dict)  # open ms -> Binance kline row
    status: str = "TRADING"
    delisted: bool = False


def read_klines(path: Path) -> dict[int, list[str]]:
    """A kline file as Binance rows keyed by open time (ms); a repeated day keeps its last row."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        names = {name.strip().lower(): name for name in reader.fieldnames or ()}
        stamp = next(names[c] for c in TIME_COLUMNS if c in names)
        quote = next((names[c] for c in QUOTE_VOLUME_COLUMNS if c in names), None)
        rows: dict[int, list[str]] = {}
        for record in reader:
            opened = int(float(record[stamp]))
            cells = [record[names[c]].strip() for c in ("open", "high", "low", "close", "volume")]
            quote_volume = record[quote].strip() if quote else ""
            trades = record.get(names.get("number_of_trades", names.get("trades", "")), "") or "0"
            rows[opened] = [
                opened,
                *cells,
                opened + DAY_MS - 1,
                quote_volume,
                int(float(trades)),
                "0",
                "0",
                "0",
            ]
    return dict(sorted(rows.items()))


def markets_from(
    folder: Path, *, quote: str = "USDT", suffix: str = ".csv", only: Iterable[str] | None = None
) -> dict[str, Market]:
    """The markets of a folder of ``<BASE><QUOTE><suffix>`` kline files (``only``: these ids)."""
    wanted = None if only is None else set(only)
    markets = {}
    for path in sorted(folder.glob(f"*{quote}{suffix}")):
        symbol = path.name[: -len(suffix)]
        if wanted is not None and symbol not in wanted:
            continue
        markets[symbol] = Market(symbol, symbol[: -len(quote)], quote, read_klines(path))
    return markets


class ReplayExchange:
    """The replay server (a context manager): ``url`` is its base, ``now`` its clock."""

    def __init__(
        self,
        markets: Mapping[str, Market],
        *,
        now: str | pd.Timestamp,
        kind: str = "spot",
        page_limit: int = MAX_LIMIT,
    ) -> None:
        self.markets = dict(markets)
        self.now = pd.Timestamp(now)
        self.kind = kind
        self.page_limit = page_limit
        self.faults: list[Fault] = []
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "ReplayExchange":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- scripting ------------------------------------------------------------------------------

    def fail(self, endpoint: str, **fault) -> Fault:
        scripted = Fault(endpoint, **fault)
        with self._lock:
            self.faults.append(scripted)
        return scripted

    def revise(self, symbol: str, day: str, **values: str) -> None:
        """Change a served candle (``close="123.4"``, ``quote_volume="5.5"``): the exchange's
        revision of a bar."""
        row = self.markets[symbol].rows[_ms(day)]
        for name, value in values.items():
            row[KLINE_FIELDS.index(name)] = value

    def delist(self, symbol: str) -> None:
        """The market stays in the list (status BREAK) but its klines answer ``-1121``."""
        self.markets[symbol].status = "BREAK"
        self.markets[symbol].delisted = True

    def requests(self, endpoint: str | None = None) -> list[Logged]:
        with self._lock:
            return [r for r in self.log if endpoint is None or r.path.endswith("/" + endpoint)]

    def peak_weight_per_minute(self, window: float = 60.0) -> float:
        """The largest request weight sent inside any ``window`` seconds, per minute."""
        return peak_weight_per_minute(self.requests(), window)

    # -- answers --------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return _ms(self.now)

    def _weights(self) -> Mapping[str, int]:
        return WEIGHTS if self.kind == "spot" else FUTURES_WEIGHTS

    def answer(self, path: str, params: Mapping[str, str]) -> tuple[int, object, dict]:
        prefix = "/api/v3/" if self.kind == "spot" else "/fapi/v1/"
        if not path.startswith(prefix):
            return 404, {"code": -1, "msg": f"no endpoint {path}"}, {}
        endpoint = path[len(prefix) :]
        fault = self._fault(endpoint, params.get("symbol"))
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                body = (
                    {"code": -1003, "msg": "Too many requests; current limit is exceeded."}
                    if fault.status in (418, 429)
                    else {"code": -1001, "msg": "Internal error; unable to process your request."}
                )
                return fault.status, body, headers
        if endpoint == "exchangeInfo":
            return 200, self._exchange_info(), {}
        if endpoint == "time":
            return 200, {"serverTime": self._now_ms()}, {}
        if endpoint == "klines":
            return self._klines(params)
        if endpoint == "ticker/24hr":
            return 200, self._tickers(), {}
        return 404, {"code": -1, "msg": f"no endpoint {path}"}, {}

    def _fault(self, endpoint: str, symbol: str | None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.served >= fault.times or fault.endpoint != endpoint:
                    continue
                if fault.symbol is not None and fault.symbol != symbol:
                    continue
                fault.served += 1
                return fault
        return None

    def _exchange_info(self) -> dict:
        limit = WEIGHT_PER_MINUTE[self.kind]
        symbols = []
        for market in self.markets.values():
            entry = {
                "symbol": market.symbol,
                "status": market.status,
                "baseAsset": market.base,
                "quoteAsset": market.quote,
                "baseAssetPrecision": 8,
                "quotePrecision": 8,
                "filters": [],
            }
            if self.kind == "spot":
                entry.update(permissions=["SPOT"], isSpotTradingAllowed=True)
            else:
                entry.update(contractType="PERPETUAL", marginAsset=market.quote)
            symbols.append(entry)
        return {
            "timezone": "UTC",
            "serverTime": self._now_ms(),
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": limit,
                }
            ],
            "exchangeFilters": [],
            "symbols": symbols,
        }

    def _klines(self, params: Mapping[str, str]) -> tuple[int, object, dict]:
        market = self.markets.get(params.get("symbol", ""))
        if market is None or market.delisted:
            return 400, {"code": -1121, "msg": "Invalid symbol."}, {}
        if params.get("interval") != "1d":
            return 400, {"code": -1120, "msg": "Invalid interval."}, {}
        try:
            limit = int(params.get("limit", DEFAULT_LIMIT))
            start = int(params["startTime"]) if "startTime" in params else None
            end = int(params["endTime"]) if "endTime" in params else None
        except ValueError:
            return 400, {"code": -1100, "msg": "Illegal characters found in a parameter."}, {}
        if not 1 <= limit <= MAX_LIMIT:
            return 400, {"code": -1130, "msg": "Invalid data sent for a parameter."}, {}
        limit = min(limit, self.page_limit)
        now = self._now_ms()
        opened = [t for t in market.rows if t <= now]
        if start is not None:
            opened = [t for t in opened if t >= start]
        if end is not None:
            opened = [t for t in opened if t <= end]
        # Binance: with a start, the oldest `limit` candles from it; without, the newest.
        chosen = opened[:limit] if start is not None else opened[-limit:]
        return 200, [market.rows[t] for t in chosen], {}

    def _tickers(self) -> list:
        day = (self._now_ms() // DAY_MS - 1) * DAY_MS
        tickers = []
        for market in self.markets.values():
            row = market.rows.get(day)
            if row is None or market.delisted:
                continue
            volume, close = float(row[5]), float(row[4])
            quote_volume = row[7] if row[7] != "" else f"{volume * close:.8f}"
            tickers.append(
                {
                    "symbol": market.symbol,
                    "lastPrice": row[4],
                    "openPrice": row[1],
                    "highPrice": row[2],
                    "lowPrice": row[3],
                    "volume": row[5],
                    "quoteVolume": quote_volume,
                    "openTime": day,
                    "closeTime": day + DAY_MS - 1,
                    "count": row[8],
                }
            )
        return tickers


def peak_weight_per_minute(log: Iterable[Logged], window: float = 60.0) -> float:
    """The largest request weight of ``log`` sent inside any ``window`` seconds, per minute."""
    entries = sorted((r.at, r.weight) for r in log)
    peak, total, first = 0, 0, 0
    for at, weight in entries:
        total += weight
        while entries[first][0] < at - window:
            total -= entries[first][1]
            first += 1
        peak = max(peak, total)
    return peak * 60.0 / window


def _handler(replay: ReplayExchange) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            split = urlsplit(self.path)
            params = {key: values[-1] for key, values in parse_qs(split.query).items()}
            endpoint = split.path.rsplit("/", 1)[-1]
            if split.path.endswith("ticker/24hr"):
                endpoint = "ticker/24hr"
            weight = replay._weights().get(endpoint, 1)
            if endpoint == "ticker/24hr" and "symbol" in params:
                weight = 2
            host, port = self.client_address[:2]
            logged = Logged(time.monotonic(), split.path, params, weight, host, port)
            with replay._lock:
                replay.log.append(logged)
                used = sum(r.weight for r in replay.log if r.at >= time.monotonic() - 60)
            status, body, headers = replay.answer(split.path, params)
            logged.status = status
            payload = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-MBX-USED-WEIGHT-1M", str(used))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a scripted timeout)

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler


def _ms(day: str | pd.Timestamp) -> int:
    stamp = pd.Timestamp(day)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return int(stamp.value // 1_000_000)
