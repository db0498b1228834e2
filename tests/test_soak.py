"""The soak's own parts: the scenario calendar, the replay of real files, the expected outcomes.
The soak itself (production day after day) runs in the slow suite and in CI (`make soak`)."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tvq_assets import soak
from tvq_assets.catalog import parse_catalog

HEADER = "Date,Open,High,Low,Close,Adj Close,Volume\n"


def _line(day: str, close: float, offset: str = "-04:00") -> str:
    return f"{day} 00:00:00{offset},{close},{close + 1},{close - 1},{close},{close},1000\n"


def test_a_session_date_is_the_local_date_of_its_stamp_or_the_utc_day_of_an_epoch():
    assert soak.session_date("2024-03-28 00:00:00-04:00") == pd.Timestamp("2024-03-28")
    assert soak.session_date("2024-03-28 00:00:00+01:00") == pd.Timestamp("2024-03-28")
    assert soak.session_date("1711584000") == pd.Timestamp("2024-03-28")  # seconds
    assert soak.session_date("1711584000000") == pd.Timestamp("2024-03-28")  # milliseconds
    assert soak.session_date("") is None
    assert soak.session_date("Date") is None


def test_the_ci_span_holds_its_scenarios_on_days_that_suit_them():
    scenarios = soak.Scenarios(pd.Timestamp(soak.DEFAULT_START), soak.DEFAULT_DAYS)
    dates = scenarios.dates
    assert set(dates) == set(soak.SHORT_SPAN) - set(soak.RESTARTS), "restarts need services"
    production = soak.Scenarios(scenarios.start, scenarios.days, production=True).dates
    assert set(production) == set(soak.SHORT_SPAN)
    assert len(set(dates.values())) == len(dates), "two scenarios on one day"
    both_open = soak.venues_open(scenarios.start, scenarios.end)
    for name in scenarios.on_sessions:
        assert dates[name] in both_open, f"{name} on {dates[name]:%F}, a venue holiday"
    # Good Friday (both venues closed) and Easter Monday (London closed) are no such day.
    assert pd.Timestamp("2024-03-29") not in both_open
    assert pd.Timestamp("2024-04-01") not in both_open
    assert pd.Timestamp("2024-04-02") in both_open
    # The span has what the CI soak must contain: weekends, a holiday, a revision and a kill.
    days = pd.date_range(scenarios.start, scenarios.end)
    assert (days.dayofweek >= 5).sum() == 4
    assert {"revision", "kill"} <= set(dates)


def test_a_scenario_that_falls_after_the_span_is_left_out():
    scenarios = soak.Scenarios(pd.Timestamp("2024-03-25"), 5)
    assert set(scenarios.dates) == {"revision", "listing"}


def test_the_year_lets_the_toxic_print_leave_the_crypto_window_before_it_ends():
    scenarios = soak.Scenarios(pd.Timestamp(soak.YEAR_START), 365, dict(soak.LONG_SPAN))
    toxic = scenarios.dates["toxic"]
    lookback = soak.soak_catalog(Path("/x"), scenarios, None)["sleeves"]["crypto"]["policy"][
        "lookback"
    ]
    assert toxic + pd.Timedelta(days=lookback) < scenarios.end


def _folder(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    days = ["2024-03-25", "2024-03-26", "2024-03-27", "2024-03-28", "2024-04-02"]
    (source / "CALM-1d-no-bad-divs.csv").write_text(
        HEADER + "".join(_line(d, 50 + i) for i, d in enumerate(days))
    )
    (source / "EWG-1d-no-bad-divs.csv").write_text(
        HEADER + "".join(_line(d, 30 + i) for i, d in enumerate(days))
    )
    (source / "RGL-L-1d-bad-div.csv").write_text(
        HEADER + "".join(_line(d, 10 + i, "+00:00") for i, d in enumerate(days))
    )
    return source


def test_the_replay_reveals_each_file_up_to_the_simulated_day_line_for_line(tmp_path):
    source = _folder(tmp_path)
    scenarios = soak.Scenarios(pd.Timestamp("2024-03-25"), 14, {})
    replay = soak.Replay(source, tmp_path / "out", scenarios, ("CALM-1d-no-bad-divs.csv",))
    replay.reveal(pd.Timestamp("2024-03-27"))
    original = (source / "CALM-1d-no-bad-divs.csv").read_text().splitlines(keepends=True)
    assert (tmp_path / "out" / "CALM.csv").read_text() == "".join(original[:4])
    replay.reveal(pd.Timestamp("2024-04-01"))  # a holiday: nothing new, nothing lost
    assert (tmp_path / "out" / "CALM.csv").read_text() == "".join(original[:5])


def test_the_replay_lists_late_delivers_late_and_revises_one_close(tmp_path):
    source = _folder(tmp_path)
    scenarios = soak.Scenarios(
        pd.Timestamp("2024-03-25"), 14, {"revision": 2, "listing": 3, "late_bar": 7}
    )
    assert scenarios.dates == {
        "revision": pd.Timestamp("2024-03-27"),
        "listing": pd.Timestamp("2024-03-28"),
        "late_bar": pd.Timestamp("2024-04-02"),
    }
    files = ("CALM-1d-no-bad-divs.csv", "EWG-1d-no-bad-divs.csv", "RGL-L-1d-bad-div.csv")
    out = tmp_path / "out"
    replay = soak.Replay(source, out, scenarios, files)
    replay.reveal(pd.Timestamp("2024-03-27"))
    assert not (out / "RGL-L.csv").exists(), "listed before its listing day"
    ewg = (out / "EWG.csv").read_text().splitlines()
    source_ewg = (source / "EWG-1d-no-bad-divs.csv").read_text().splitlines()
    # The close two sessions back is revised up 1%; every other line is the source's.
    assert [i for i, (a, b) in enumerate(zip(ewg, source_ewg, strict=False)) if a != b] == [1]
    assert float(ewg[1].split(",")[4]) == pytest.approx(30 * 1.01)
    replay.reveal(pd.Timestamp("2024-03-28"))
    assert (out / "RGL-L.csv").read_text().splitlines()[1:] == [
        _line("2024-03-28", 13, "+00:00").strip()
    ], "a listing has no history before its first day"
    assert (out / "EWG.csv").read_text().splitlines()[1] == ewg[1], "the revision stays"
    replay.reveal(pd.Timestamp("2024-04-02"))
    assert "2024-04-02" not in (out / "CALM.csv").read_text(), "the late bar came on time"
    replay.reveal(pd.Timestamp("2024-04-03"))
    assert "2024-04-02" in (out / "CALM.csv").read_text(), "the late bar never came"


def test_a_fail_sleeve_is_expected_to_fail_while_the_toxic_print_is_in_its_window():
    scenarios = soak.Scenarios(pd.Timestamp("2024-03-25"), 14, {"toxic": 11})
    printed = scenarios.dates["toxic"]
    catalog = SimpleNamespace(
        sleeve=lambda name: SimpleNamespace(
            toxic_policy={"crypto": "fail", "tradfi": "quarantine"}[name],
            policy=SimpleNamespace(lookback=5),
        )
    )
    expect = soak.expected_sleeve
    assert expect("crypto", printed - pd.Timedelta(days=1), scenarios, catalog) == "success"
    assert expect("crypto", printed, scenarios, catalog) == "fail:toxic"
    assert expect("crypto", printed + pd.Timedelta(days=4), scenarios, catalog) == "fail:toxic"
    assert expect("crypto", printed + pd.Timedelta(days=5), scenarios, catalog) == "success"
    assert expect("tradfi", printed, scenarios, catalog) == "success"


KLINE_HEADER = "open_time,open,high,low,close,volume,close_time,quote_asset_volume\n"


def _klines(folder: Path, symbol: str, days: list[str]) -> None:
    """A Binance kline file: one row a UTC day, epoch milliseconds, as the exports hold them."""
    folder.mkdir(exist_ok=True)
    rows = []
    for i, day in enumerate(days):
        opened = int(pd.Timestamp(day).value // 1_000_000)
        close = 100.0 + i
        rows.append(
            f"{opened},{close},{close + 1},{close - 1},{close},10.0,{opened + 86399999},1000\n"
        )
    (folder / f"{symbol}.csv").write_text(KLINE_HEADER + "".join(rows))


def _served_days(url: str, symbol: str) -> list[str]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/v3/klines?symbol={symbol}&interval=1d") as answer:
        candles = json.load(answer)
    return [f"{pd.Timestamp(c[0], unit='ms'):%F}" for c in candles]


def test_the_exchange_replay_reveals_one_simulated_day_at_a_time(tmp_path):
    from tvq_resources.exchange_replay import ReplayExchange, markets_from

    days = ["2022-09-01", "2022-09-02", "2022-09-03", "2022-09-04"]
    _klines(tmp_path, "BTCUSDT", days)
    with ReplayExchange(markets_from(tmp_path), now="2022-09-02T06:00:00Z") as replay:
        # Production's morning: yesterday closed, today's candle the open one.
        assert _served_days(replay.url, "BTCUSDT") == days[:2]
        replay.now = pd.Timestamp("2022-09-03T06:00:00Z")
        assert _served_days(replay.url, "BTCUSDT") == days[:3]


def test_the_exchange_soak_adds_a_quarantine_sleeve_that_the_catalog_accepts(tmp_path):
    scenarios = soak.Scenarios(pd.Timestamp(soak.EXCHANGE_START), soak.DEFAULT_DAYS)
    exchange = {"url": "http://127.0.0.1:8123", "bases": ["BTC", "LUNA"]}
    document = soak.soak_catalog(tmp_path, scenarios, tmp_path, exchange)
    parsed = parse_catalog(document, origin="the exchange soak's catalog")
    assert list(parsed.sleeves) == ["crypto", "tradfi", "venues", "exchange"]
    assert parsed.meta_sleeves == ("crypto", "tradfi", "venues", "exchange")
    sleeve = parsed.sleeve("exchange")
    assert (sleeve.calendar, sleeve.toxic_policy) == ("crypto", "quarantine")
    assert document["sleeves"]["exchange"]["source"]["url"] == exchange["url"]
    small = document["sleeves"]["tradfi"]["policy"]
    assert document["sleeves"]["exchange"]["policy"] == small, "the soak's small policy"
    # The synthetic market and the first run partition come before the 2022 span.
    assert parsed.first_run < scenarios.start
    for name in ("crypto", "tradfi"):
        synthetic_start = pd.Timestamp(document["sleeves"][name]["source"]["start"])
        assert synthetic_start + pd.Timedelta(days=300) < scenarios.start


def test_the_usual_soak_keeps_its_synthetic_market_where_it_was():
    """The synthetic values are offsets from the market's start: moving it changes every result."""
    scenarios = soak.Scenarios(pd.Timestamp(soak.DEFAULT_START), soak.DEFAULT_DAYS)
    document = soak.soak_catalog(Path("/x"), scenarios, None)
    assert "exchange" not in document["sleeves"]
    assert document["first_run"] == soak.FIRST_RUN
    for name in ("crypto", "tradfi"):
        assert document["sleeves"][name]["source"]["start"] == soak.SYNTHETIC_START


def test_the_exchange_soak_refuses_a_missing_folder_and_a_span_outside_the_files(tmp_path):
    missing = soak.exchange_span_problem(tmp_path / "none", pd.Timestamp("2022-09-01"), 3)
    assert "no kline files" in missing and "crypto_binance_klines_yodumini" in missing
    _klines(tmp_path, "BTCUSDT", [f"2022-09-{d:02d}" for d in range(1, 11)])
    start = pd.Timestamp("2022-09-02")
    assert soak.exchange_span_problem(tmp_path, start, 9) == ""
    assert "2022-09-02 .. 2022-09-11 is not inside" in soak.exchange_span_problem(
        tmp_path, start, 10
    )
    assert "not inside" in soak.exchange_span_problem(tmp_path, pd.Timestamp("2022-09-01"), 3)


def test_the_soak_tracks_in_its_own_store_whatever_services_its_caller_names(tmp_path, monkeypatch):
    """The caller's MLflow store (the test session's, a developer's server) never receives the
    soak's runs: its registry would keep aliases the soak's decisions must move."""
    from tvq_resources.tracking import MlflowTracker

    for variable in soak.CALLERS_SERVICES:
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    saved = dict(os.environ)
    try:
        soak.Soak(tmp_path, soak.Scenarios(pd.Timestamp(soak.DEFAULT_START), 3), None).prepare()
        assert not set(soak.CALLERS_SERVICES) & set(os.environ)
        store = MlflowTracker().uri
        assert store == f"sqlite:///{(tmp_path / 'home' / 'mlflow').resolve()}/mlflow.db"
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_production_day_after_day_through_a_holiday_a_revision_a_kill_and_restarts(tmp_path):
    """Two days on real services of the soak's own: Juneteenth 2024 (New York closed, London
    open; the first run) with a kill -9 mid-step, then Thursday with a source revision after
    both Postgres and the MLflow server were restarted. (Weekends, the other holidays and the
    state carried across them are the CI span's: `make soak`.)"""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tvq_assets.soak",
            "--production",
            "--start",
            "2024-06-19",
            "--days",
            "2",
            # A revision needs a stored bar to revise: not the first day; the kill comes on the
            # holiday.
            "--scenario",
            "revision=1",
            "--scenario",
            "kill=0",
            "--scenario",
            "postgres_restart=1",
            "--scenario",
            "mlflow_restart=1",
            "--workdir",
            str(tmp_path / "soak"),
        ],
        cwd=soak.ROOT,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    print(done.stdout[-8000:], done.stderr[-3000:])
    assert done.returncode == 0
    lines = done.stdout.strip().splitlines()
    [summary] = [line for line in lines if line.startswith("soak: 2 days, ")]
    assert " 0 unexpected, 0 stuck, " in summary and "lake verify ok" in summary
    for scenario in ("killed run", "postgres and mlflow restarted"):
        assert scenario in done.stdout, scenario
    holiday = [line for line in lines if line.startswith("2024-06-19 Wed venues")]
    assert holiday and "success" in holiday[0]


@pytest.mark.slow
@pytest.mark.skipif(
    not soak.SHARED_KLINES.is_dir(), reason=f"real kline files not found at {soak.SHARED_KLINES}"
)
def test_production_day_after_day_reads_a_replay_of_the_exchange_one_day_at_a_time(tmp_path):
    """Three days from 2022-09-01 with a sleeve on a replay of Binance's API serving the real
    kline files (LUNA's collapse in every window): the sleeve succeeds each day, the day revealed
    stored and nothing of the open one (the soak's evidence), and the meta-portfolio holds it."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tvq_assets.soak",
            "--exchange",
            "--days",
            "3",
            "--workdir",
            str(tmp_path / "soak"),
        ],
        cwd=soak.ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    print(done.stdout[-8000:], done.stderr[-3000:])
    assert done.returncode == 0
    lines = done.stdout.strip().splitlines()
    [summary] = [line for line in lines if line.startswith("soak: 3 days, ")]
    assert " 0 unexpected, 0 stuck, " in summary and "lake verify ok" in summary
    days = [f"{d:%Y-%m-%d %a}" for d in pd.date_range(soak.EXCHANGE_START, periods=3)]
    for day in days:
        [row] = [line for line in lines if line.startswith(f"{day} exchange ")]
        assert row.split()[4] == "success", row
        [meta] = [line for line in lines if line.startswith(f"{day} meta ")]
        assert meta.split()[4] == "success", meta
