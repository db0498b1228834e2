"""Daily candles from an exchange's public API through ccxt (no credentials).

A sleeve's ``exchange`` source names a ccxt exchange, a market type (``spot`` or ``swap``), a
quote currency and either a list of base assets or a universe rule (the ``top`` N markets of the
quote currency by 24-hour quote volume, decided at the refresh from the exchange's own market
list and tickers). :func:`fetch_daily_bars` returns long bars in the file readers' shape
(``files.BAR_COLUMNS``, plus ``quote_volume`` when the API reports it), keyed by the exchange's
own market id (``BTCUSDT``: the name its exports carry, so a sleeve moves from files to the
exchange without renaming a symbol).

Exactness: candles are paged with ``since``/``limit`` up to the last closed UTC day at
``clock.now()``; the candle of the day still open is never requested (``until``) nor delivered.
Politeness: ccxt's rate limiter stays on, shared by the worker threads (each worker's client
waits ``workers`` times ccxt's own interval, plus a margin, so together they stay under the
exchange's documented request weight per minute); timeouts, 5xx, 418 and 429 are retried with
exponential backoff, ``Retry-After`` honoured and every worker paused for it. A market the
exchange does not list or refuses as an invalid symbol (Binance ``-1121``) is reported as a
``LoadError`` and the others load; any other failure raises :class:`ExchangeRequestError`
naming exchange, symbol, request and cause, so the refresh stores nothing. ``ccxt`` (about
1.5 s to import) is imported on first use.
"""

import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from tvq_resources import files

MARKET_TYPES = ("spot", "swap")
TIMEFRAME = "1d"
DAY_MS = 86_400_000
# Candles asked for per request: Binance's maximum for spot klines (ccxt's own `maxLimit`); a
# server that pages shorter is followed page by page all the same.
PAGE_LIMIT = 1000
# The longest ``Retry-After`` the source waits for inside one refresh: a longer ban (Binance's
# 418 after repeated 429s) fails the refresh with the wait named, rather than hold a job for hours.
MAX_RETRY_AFTER_SECONDS = 120.0
MAX_BACKOFF_SECONDS = 60.0
# ccxt's intervals are the exchange's budget exactly (binance: 6000 weight a minute); the source
# waits this much longer, so that the switch from the market-list client to the workers (one
# request's weight that neither throttle sees) never tips a minute over.
RATE_MARGIN = 1.1


class ExchangeRequestError(RuntimeError):
    """A request the exchange did not answer usefully after the retries: the refresh stores
    nothing. The message names the exchange, the symbol, the request and the cause."""

    def __init__(self, *, exchange: str, symbol: str, request: str, cause: str, attempts: int):
        self.exchange, self.symbol, self.request, self.cause = exchange, symbol, request, cause
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(
            f"{exchange}: {symbol}: {request} failed{tries}: {cause}; nothing was stored "
            "(check the exchange's status or the source's `url`, then refresh again)"
        )


@dataclass(frozen=True)
class ExchangeSpec:
    """One exchange source as the catalog declares it (see ``market_data.SourceConfig``)."""

    exchange: str
    market: str = "spot"
    quote: str = "USDT"
    bases: tuple[str, ...] = ()
    top: int | None = None
    start: str | None = None  # ISO date of the first candle of a first load (None: listing)
    url: str | None = None  # scheme://host[:port] replacing the exchange's API hosts
    timeout: float = 10.0  # seconds per request
    retries: int = 5  # further attempts of a request after a retryable failure
    backoff: float = 1.0  # seconds before the first retry; doubles each attempt
    workers: int = 4  # threads fetching symbols side by side, sharing the rate limit

    @property
    def name(self) -> str:
        return f"{self.exchange} {self.market}"


@dataclass(frozen=True)
class Fetched:
    """Bars (``files.BAR_COLUMNS`` + ``quote_volume``), the markets that could not be loaded
    and what the source did (requests, retries, the universe), for the bars' metadata."""

    bars: pd.DataFrame
    errors: tuple[files.LoadError, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)


def exchange_ids() -> tuple[str, ...]:
    """The exchanges ccxt supports (its ids, e.g. ``binance``)."""
    import ccxt

    return tuple(ccxt.exchanges)


def fetch_daily_bars(
    spec: ExchangeSpec,
    *,
    now: pd.Timestamp,
    since: pd.Timestamp | None = None,
    known: Sequence[str] = (),
) -> Fetched:
    """Daily bars of the spec's markets, closed at ``now``: for the symbols in ``known`` (the
    stored ones) the days after ``since``; for the others (and for all when ``since`` is None)
    every day from ``spec.start``. Raises :class:`ExchangeRequestError` when a request fails
    for good."""
    session = _Session(spec)
    today = _utc_day(now)
    last_open_ms = _ms(today) - DAY_MS  # the newest closed candle opened then
    first_ms = _ms(pd.Timestamp(spec.start)) if spec.start else 0
    resume_ms = None if since is None else _ms(_utc_day(since)) + DAY_MS
    markets, errors, universe = session.markets_to_fetch(now)
    known_set = set(known)

    def one(market: Mapping[str, Any]) -> tuple[str, pd.DataFrame | files.LoadError]:
        start_ms = first_ms
        if resume_ms is not None and market["id"] in known_set:
            start_ms = max(first_ms, resume_ms)
        try:
            return market["id"], session.candles(market, start_ms=start_ms, last_ms=last_open_ms)
        except _Refused as refused:
            return market["id"], files.LoadError(session.where(market), None, str(refused))

    blocks: list[pd.DataFrame] = []
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, spec.workers), thread_name_prefix="exchange"
    ) as pool:
        futures = [pool.submit(one, market) for market in markets]
        try:
            for future in futures:
                _, outcome = future.result()
                if isinstance(outcome, files.LoadError):
                    errors.append(outcome)
                else:
                    blocks.append(outcome)
        except BaseException:
            for pending in futures:
                pending.cancel()
            session.stop()
            raise
    bars = _assemble(blocks)
    metadata = {
        "exchange": spec.name,
        "exchange_url": spec.url or "the exchange's own",
        "exchange_markets": len(markets),
        "exchange_requests": session.requests,
        "exchange_retries": session.retries,
        "exchange_open_candles_dropped": session.open_candles,
        **universe,
    }
    return Fetched(bars=bars, errors=tuple(errors), metadata=metadata)


class _Refused(Exception):
    """The exchange refused a market as unknown (delisted, renamed): a LoadError, not a failure."""


class _Session:
    """One fetch: a ccxt client per worker thread, the markets, the shared pause and counters."""

    def __init__(self, spec: ExchangeSpec) -> None:
        import ccxt

        if spec.exchange not in ccxt.exchanges:
            raise ValueError(f"{spec.exchange!r} is not a ccxt exchange id")
        self.spec = spec
        self._ccxt = ccxt
        self._local = threading.local()
        self._lock = threading.Lock()
        self._resume_at = 0.0  # monotonic time before which no worker sends a request
        self._stopped = threading.Event()
        self.requests = 0
        self.retries = 0
        self.open_candles = 0
        self.main = self._client(workers=1)
        self._markets_loaded = False

    # -- clients --------------------------------------------------------------------------------

    def _client(self, *, workers: int):
        spec = self.spec
        client = getattr(self._ccxt, spec.exchange)(
            {"enableRateLimit": True, "timeout": int(spec.timeout * 1000)}
        )
        # Workers share the exchange's budget: each waits `workers` times ccxt's interval, so
        # together they send no more weight per minute than one client would.
        client.rateLimit = client.rateLimit * workers * RATE_MARGIN
        client.enableLastJsonResponse = True  # the raw klines carry the quote volume
        client.enableLastResponseHeaders = True  # for Retry-After
        client.options["defaultType"] = spec.market
        fetch_markets = client.options.get("fetchMarkets")
        if isinstance(fetch_markets, dict) and "types" in fetch_markets:
            # Binance's family loads spot, linear and inverse lists by default: only ours.
            kind = "spot" if spec.market == "spot" else "linear"
            client.options["fetchMarkets"] = {**fetch_markets, "types": [kind]}
        if spec.url:
            client.urls["api"] = rebased(client.urls["api"], spec.url)
        answered = client.on_rest_response

        def on_rest_response(code, reason, *args, **kwargs):
            # ccxt's hook for every answer: its status, for the error message of a failure
            client.last_status = f"HTTP {code} {reason}".strip()
            return answered(code, reason, *args, **kwargs)

        client.on_rest_response = on_rest_response
        client.last_status = None
        return client

    def _worker(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._client(workers=max(1, self.spec.workers))
            client.set_markets(self.main.markets, self.main.currencies)
            self._local.client = client
        return client

    def stop(self) -> None:
        self._stopped.set()

    def where(self, market: Mapping[str, Any]) -> str:
        return f"{self.spec.name} {market['id']}"

    # -- markets --------------------------------------------------------------------------------

    def markets_to_fetch(self, now: pd.Timestamp) -> tuple[list, list[files.LoadError], dict]:
        """The markets of the spec (listed bases, or the universe rule at ``now``), the listed
        bases the exchange does not list, and the universe's description."""
        spec, client = self.spec, self.main
        self._call(client, "market list", "load the market list", client.load_markets)
        errors: list[files.LoadError] = []
        if spec.top is None:
            chosen = []
            for base in spec.bases:
                symbol = self._unified(base)
                market = client.markets.get(symbol)
                if market is None:
                    errors.append(
                        files.LoadError(
                            f"{spec.name} {base}",
                            None,
                            f"{spec.exchange} lists no {spec.market} market {symbol} (delisted, "
                            f"renamed, or another quote currency); remove {base} from `bases`",
                        )
                    )
                    continue
                chosen.append(market)
            return chosen, errors, {}
        candidates = [
            market
            for market in client.markets.values()
            if market.get("type") == spec.market
            and market.get("quote") == spec.quote
            and market.get("active") is not False
            and (spec.market == "spot" or market.get("linear"))
        ]
        tickers = self._call(
            client,
            "24h tickers",
            "fetch the 24h tickers",
            lambda: client.fetch_tickers(params={"type": spec.market}),
        )
        volume = {
            symbol: float(ticker.get("quoteVolume") or 0.0) for symbol, ticker in tickers.items()
        }
        ranked = sorted(candidates, key=lambda m: (-volume.get(m["symbol"], 0.0), m["id"]))
        chosen = ranked[: spec.top]
        universe = {
            "universe": (
                f"top {spec.top} of {len(candidates)} {spec.name} {spec.quote} markets by 24h "
                f"quote volume at {pd.Timestamp(now):%Y-%m-%d %H:%M} UTC"
            ),
            "universe_symbols": ", ".join(market["id"] for market in chosen),
        }
        return chosen, errors, universe

    def _unified(self, base: str) -> str:
        if "/" in base:
            return base
        quote = self.spec.quote
        return f"{base}/{quote}" if self.spec.market == "spot" else f"{base}/{quote}:{quote}"

    # -- candles --------------------------------------------------------------------------------

    def candles(self, market: Mapping[str, Any], *, start_ms: int, last_ms: int) -> pd.DataFrame:
        """One market's closed daily candles opened in [start_ms, last_ms], page after page."""
        client = self._worker()
        rows: dict[int, list[float]] = {}
        since = start_ms
        while since <= last_ms:
            if self._stopped.is_set():
                raise concurrent.futures.CancelledError()
            request = f"GET {TIMEFRAME} candles since {_iso(since)}"
            page = self._call(
                client,
                market["id"],
                request,
                lambda since=since: client.fetch_ohlcv(
                    market["symbol"], TIMEFRAME, since, PAGE_LIMIT, {"until": last_ms + DAY_MS - 1}
                ),
                refusable=True,
            )
            quote_volume = _quote_volumes(client.last_json_response, market)
            newest = None
            for stamp, o, h, low, c, v in page:
                if stamp > last_ms:  # the open candle (a server that ignores `until`)
                    with self._lock:
                        self.open_candles += 1
                    continue
                if stamp < since:
                    continue
                rows[stamp] = [o, h, low, c, v, quote_volume.get(stamp, np.nan)]
                newest = stamp if newest is None else max(newest, stamp)
            if newest is None:
                break
            since = newest + DAY_MS
        stamps = np.array(sorted(rows), dtype=np.int64)
        values = np.array([rows[s] for s in stamps], dtype=float).reshape(len(stamps), 6)
        frame = pd.DataFrame(
            {
                "symbol": files.validate_symbol(market["id"]),
                "date": (stamps // DAY_MS * DAY_MS)
                .astype("datetime64[ms]")
                .astype("datetime64[ns]"),
                "open": values[:, 0],
                "high": values[:, 1],
                "low": values[:, 2],
                "close": values[:, 3],
                "volume": values[:, 4],
                "quote_volume": values[:, 5],
            }
        )
        return frame

    # -- requests -------------------------------------------------------------------------------

    def _call(
        self,
        client,
        symbol: str,
        request: str,
        call: Callable[[], Any],
        *,
        refusable: bool = False,
    ):
        """``call()`` with retries on timeouts, 5xx, 418 and 429 (Retry-After honoured)."""
        ccxt = self._ccxt
        attempts = self.spec.retries + 1
        for attempt in range(attempts):
            self._wait_for_pause()
            client.last_response_headers = None
            client.last_request_url = None
            client.last_status = None
            with self._lock:
                self.requests += 1
            try:
                return call()
            except ccxt.BadSymbol as exc:
                if refusable:
                    raise _Refused(
                        f"{self.spec.exchange} refused {symbol} as an unknown symbol "
                        f"({_cause(exc)}); delisted or renamed: the other markets were loaded"
                    ) from exc
                raise self._failure(client, symbol, request, exc, attempt + 1) from exc
            except ccxt.OperationFailed as exc:  # timeouts, 5xx, 418/429, a malformed answer
                wait = min(self.spec.backoff * 2**attempt, MAX_BACKOFF_SECONDS)
                answered = not isinstance(exc, ccxt.RequestTimeout)
                retry_after = _retry_after(client.last_response_headers) if answered else None
                if retry_after is not None:
                    if retry_after > MAX_RETRY_AFTER_SECONDS:
                        raise self._failure(
                            client,
                            symbol,
                            request,
                            exc,
                            attempt + 1,
                            note=f"the exchange asked to wait {retry_after:.0f} s (Retry-After), "
                            f"more than the {MAX_RETRY_AFTER_SECONDS:.0f} s a refresh waits",
                        ) from exc
                    wait = max(wait, retry_after)
                    self._pause(retry_after)
                if attempt + 1 == attempts:
                    raise self._failure(client, symbol, request, exc, attempts) from exc
                with self._lock:
                    self.retries += 1
                time.sleep(wait)
            except ccxt.BaseError as exc:
                raise self._failure(client, symbol, request, exc, attempt + 1) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, client, symbol, request, exc, attempts, *, note: str = ""):
        url = client.last_request_url
        shown = f"{request} ({url})" if url else request
        status = f"{client.last_status}: " if client.last_status else ""
        cause = f"{status}{type(exc).__name__}: {_cause(exc)}" + (f"; {note}" if note else "")
        return ExchangeRequestError(
            exchange=self.spec.name, symbol=symbol, request=shown, cause=cause, attempts=attempts
        )

    def _pause(self, seconds: float) -> None:
        with self._lock:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    def _wait_for_pause(self) -> None:
        while True:
            with self._lock:
                delay = self._resume_at - time.monotonic()
            if delay <= 0:
                return
            time.sleep(delay)


def rebased(urls: Any, base: str) -> Any:
    """ccxt's ``urls['api']`` (a URL or a nested mapping of them) with every scheme and host
    replaced by ``base``'s, paths kept: ``https://api.binance.com/api/v3`` under
    ``http://127.0.0.1:8080`` is ``http://127.0.0.1:8080/api/v3``."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url {base!r} is not http(s)://host[:port]")
    prefix = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    if isinstance(urls, str):
        old = urlsplit(urls)
        if not old.scheme.startswith("http"):
            return urls
        return prefix + old.path + (f"?{old.query}" if old.query else "")
    if isinstance(urls, Mapping):
        return {key: rebased(value, base) for key, value in urls.items()}
    return urls


def _quote_volumes(raw: Any, market: Mapping[str, Any]) -> dict[int, float]:
    """Open time -> quote volume of Binance-shaped klines (field 7; for an inverse market that
    field is the base volume, so nothing is taken)."""
    if market.get("inverse") or not isinstance(raw, list):
        return {}
    found = {}
    for row in raw:
        if isinstance(row, list) and len(row) > 7:
            try:
                found[int(row[0])] = float(row[7]) if row[7] not in ("", None) else np.nan
            except (TypeError, ValueError):
                continue
    return found


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


def _cause(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _assemble(blocks: list[pd.DataFrame]) -> pd.DataFrame:
    columns = [*files.BAR_COLUMNS, "quote_volume"]
    if not blocks:
        empty = {name: np.empty(0, dtype="float64") for name in columns}
        empty["symbol"] = np.empty(0, dtype=object)
        empty["date"] = np.empty(0, dtype="datetime64[ns]")
        return pd.DataFrame(empty, columns=columns)
    frame = pd.concat(blocks, ignore_index=True)
    frame = frame.sort_values(["symbol", "date"], kind="stable", ignore_index=True)
    frame["symbol"] = frame["symbol"].astype(object)
    return frame[columns]


def _utc_day(moment: pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.normalize()


def _ms(day: pd.Timestamp) -> int:
    stamp = pd.Timestamp(day)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return int(stamp.value // 1_000_000)


def _iso(ms: int) -> str:
    return f"{pd.Timestamp(ms, unit='ms'):%Y-%m-%d}"
