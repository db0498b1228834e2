"""``TVQ_NOW`` replaces the clock wherever tvq reads "now"."""

import pandas as pd
import pytest

from tvq_assets.partitions import newest_run_date
from tvq_resources import clock


def test_now_reads_tvq_now_as_utc(monkeypatch):
    monkeypatch.setenv("TVQ_NOW", "2026-12-07T06:00:00Z")
    assert clock.now() == pd.Timestamp("2026-12-07 06:00", tz="UTC")
    monkeypatch.setenv("TVQ_NOW", "2026-12-07T01:00:00+03:00")
    assert clock.now() == pd.Timestamp("2026-12-06 22:00", tz="UTC")
    monkeypatch.setenv("TVQ_NOW", "2026-12-07 06:00")  # naive: UTC
    assert clock.now() == pd.Timestamp("2026-12-07 06:00", tz="UTC")


def test_without_tvq_now_the_clock_is_the_system_clock(monkeypatch):
    monkeypatch.delenv("TVQ_NOW", raising=False)
    before = pd.Timestamp.now(tz="UTC")
    assert before <= clock.now() <= pd.Timestamp.now(tz="UTC")


def test_a_malformed_tvq_now_is_named(monkeypatch):
    monkeypatch.setenv("TVQ_NOW", "next tuesday")
    with pytest.raises(ValueError, match="TVQ_NOW='next tuesday' is not an ISO timestamp"):
        clock.now()


def test_the_newest_run_is_the_last_complete_utc_day_of_the_clock(monkeypatch):
    monkeypatch.setenv("TVQ_NOW", "2026-12-07T00:10:00Z")  # a Monday just after midnight
    assert newest_run_date() == "2026-12-06"
    monkeypatch.setenv("TVQ_NOW", "2026-12-06T23:59:59-01:00")  # already Monday in UTC
    assert newest_run_date() == "2026-12-06"
