"""Window outcomes reused from the lake's window cache: a run from the cache equals a cold run bit
for bit, the next day recomputes only its newest window, and anything that changes a window's
input — its data, a policy parameter, the previous target of a stateful chain — misses."""

import dataclasses
import pickle

import cloudpickle
import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import materialised, metadata, resources_for, synthetic_source
from tests.settings import TINY_UNEVEN, settings_for
from tvq_assets import allocation, data
from tvq_assets.quant import backtest, policy
from tvq_assets.quant import window_cache as keys
from tvq_resources.lake import ParquetLake
from tvq_resources.synthetic import generate_market
from tvq_resources.window_cache import WindowCache, lake_window_cache

# A turnover penalty large enough that each decision depends on the previous target.
STATEFUL = settings_for(**TINY_UNEVEN, turnover_penalty=1.0)
STATELESS = settings_for(**TINY_UNEVEN)
# 2026-06-10 is a crypto grid date for step 10 (days since 1970-01-05 divisible by 10).
ANCHOR = pd.Timestamp("2026-06-10")


@pytest.fixture(scope="module")
def bars():
    return generate_market(seed=11, n_symbols=16, end="2026-07-10")


def run_window(bars, as_of, settings):
    return policy.point_in_time(
        bars[bars["date"] <= as_of], as_of=pd.Timestamp(as_of), settings=settings, quarantine=True
    )


def assert_same(a: policy.TournamentOutcome, b: policy.TournamentOutcome, dates) -> None:
    """Bit for bit: returns, turnover, metrics, verdict, every target, today's weights."""
    pd.testing.assert_frame_equal(a.result.returns, b.result.returns, check_exact=True)
    pd.testing.assert_frame_equal(a.result.turnover, b.result.turnover, check_exact=True)
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)
    assert (a.verdict is None) == (b.verdict is None)
    if a.verdict is not None:
        numbers = dataclasses.asdict(a.verdict).pop("numbers")
        assert dataclasses.replace(a.verdict, numbers={}) == dataclasses.replace(
            b.verdict, numbers={}
        )
        pd.testing.assert_series_equal(
            pd.Series(numbers, dtype=float), pd.Series(b.verdict.numbers, dtype=float)
        )
    pd.testing.assert_frame_equal(
        backtest.target_table(a.result, dates),
        backtest.target_table(b.result, dates),
        check_exact=True,
    )
    pd.testing.assert_series_equal(a.champion_weights, b.champion_weights, check_exact=True)


@pytest.mark.slow
def test_a_warm_run_equals_the_cold_run_and_the_next_day_computes_only_its_newest_window(
    bars, tmp_path
):
    assert (ANCHOR.to_datetime64().astype("datetime64[D]") - backtest.GRID_EPOCH).astype(
        int
    ) % 10 == 0
    store = WindowCache(tmp_path)
    today = run_window(bars, ANCHOR, STATEFUL)
    cold = policy.tournament(today, STATEFUL, incumbent=None)
    filled = policy.tournament(today, STATEFUL, incumbent=None, cache=store)
    assert (
        filled.reuse.windows_reused == 0 and filled.reuse.windows_computed == filled.reuse.windows
    )
    warm = policy.tournament(today, STATEFUL, incumbent=None, cache=store)
    assert warm.reuse.windows_reused == warm.reuse.windows and warm.reuse.alphas_computed == 0
    assert_same(cold, warm, today.history.index)
    assert_same(cold, filled, today.history.index)

    # The next day decides a new window on today's rows (today is a grid date): its alpha is
    # today's decision alpha, already stored; only tomorrow's own decision alpha is new.
    tomorrow = run_window(bars, ANCHOR + pd.Timedelta(days=1), STATEFUL)
    next_warm = policy.tournament(tomorrow, STATEFUL, incumbent=None, cache=store)
    assert next_warm.reuse.windows_computed == 1
    assert next_warm.reuse.windows_reused == next_warm.reuse.windows - 1 == warm.reuse.windows
    assert next_warm.reuse.alphas_reused == 1 and next_warm.reuse.alphas_computed == 1
    assert_same(
        policy.tournament(tomorrow, STATEFUL, incumbent=None), next_warm, tomorrow.history.index
    )


@pytest.mark.slow
def test_a_stateful_chain_that_starts_elsewhere_misses_and_reuses_only_the_alphas(bars, tmp_path):
    # Eight days later the oldest window (decided 60 days before the anchor) has left the
    # history: every chain starts one window later with no previous target, so every target
    # differs from the stored ones although the windows' data do not. Keyed without the previous
    # target, this run would reuse them.
    store = WindowCache(tmp_path)
    policy.tournament(run_window(bars, ANCHOR, STATEFUL), STATEFUL, incumbent=None, cache=store)
    later = run_window(bars, ANCHOR + pd.Timedelta(days=8), STATEFUL)
    warm = policy.tournament(later, STATEFUL, incumbent=None, cache=store)
    assert warm.reuse.windows_reused == 0
    assert warm.reuse.alphas_reused == warm.reuse.windows  # every window's alpha was stored
    assert_same(policy.tournament(later, STATEFUL, incumbent=None), warm, later.history.index)


@pytest.mark.slow
def test_changed_parameters_or_data_miss_and_a_damaged_entry_is_recomputed(bars, tmp_path):
    store = WindowCache(tmp_path)
    today = run_window(bars, ANCHOR, STATELESS)
    first = policy.tournament(today, STATELESS, incumbent=None, cache=store)
    windows = first.reuse.windows
    entries = sorted(tmp_path.glob("*/*.parquet"))

    # A changed policy parameter misses every window.
    capped = dataclasses.replace(STATELESS, cap=0.3)
    changed = policy.tournament(today, capped, incumbent=None, cache=store)
    assert changed.reuse.windows_reused == 0 and changed.reuse.alphas_reused == 0

    # Changed data in the newest window's slice only: that window misses, the others are reused
    # (no turnover penalty, so a window's key does not depend on the window before).
    last = first.result.windows[-1]
    moved = today.history.index[last.train.stop - 1]
    symbol = today.history.columns[3]
    history = today.history.copy()
    history.loc[moved, symbol] = history.loc[moved, symbol] + 0.01
    edited = dataclasses.replace(today, history=history)
    warm = policy.tournament(edited, STATELESS, incumbent=None, cache=store)
    assert warm.reuse.windows_computed == 1 and warm.reuse.windows_reused == windows - 1
    assert_same(policy.tournament(edited, STATELESS, incumbent=None), warm, today.history.index)

    # A damaged entry (garbage bytes; a readable table whose content was altered) is a miss that
    # is recomputed and rewritten; the result is the cold one.
    targets = [f for f in entries if "policy" in pq.read_schema(f).names]
    targets[0].write_bytes(b"not parquet at all")
    table = pq.read_table(targets[1])
    weights = table.column("weight").to_pylist()
    altered = table.set_column(
        table.schema.get_field_index("weight"),
        "weight",
        pa.array([w * 0.5 for w in weights], pa.float64()),
    )
    pq.write_table(altered, targets[1])
    assert store.get(targets[0].stem) is None and store.get(targets[1].stem) is None
    again = policy.tournament(today, STATELESS, incumbent=None, cache=store)
    assert again.reuse.windows_computed == 2 and again.reuse.windows_reused == windows - 2
    assert_same(first, again, today.history.index)
    assert store.get(targets[0].stem) is not None and store.get(targets[1].stem) is not None


@pytest.mark.slow
def test_an_entry_the_lake_s_writers_altered_is_a_miss_and_the_decision_is_the_untampered_one(
    bars, tmp_path
):
    # Whoever can write the lake can alter an entry and recompute its content digest; without
    # the instance secret they cannot make its HMAC, so the run recomputes and rewrites it.
    store = WindowCache(tmp_path, secret=b"this instance's secret, 32 bytes")
    today = run_window(bars, ANCHOR, STATELESS)
    first = policy.tournament(today, STATELESS, incumbent=None, cache=store)
    targets = [
        f for f in sorted(tmp_path.glob("*/*.parquet")) if "policy" in pq.read_schema(f).names
    ]
    for entry in targets:
        frame = pq.read_table(entry).to_pandas()
        frame["weight"] = frame["weight"].to_numpy()[::-1]  # every window holds other weights
        forge(entry, frame)
        assert store.get(entry.stem) is None
    again = policy.tournament(today, STATELESS, incumbent=None, cache=store)
    assert again.reuse.windows_computed == first.reuse.windows == len(targets)
    assert_same(first, again, today.history.index)
    assert again.verdict == first.verdict  # the champion
    assert all(store.get(entry.stem) is not None for entry in targets)  # rewritten


def forge(entry, frame: pd.DataFrame, keep_mac: bool = True) -> None:
    """Write ``frame`` to ``entry`` with its content digest recomputed (and the old HMAC kept)."""
    from tvq_resources.window_cache import CONTENT_KEY, MAC_KEY, content_digest

    metadata = dict(pq.read_schema(entry).metadata)
    metadata[CONTENT_KEY] = content_digest(frame).encode()
    if not keep_mac:
        metadata.pop(MAC_KEY)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(metadata), entry)


def test_an_entry_is_accepted_only_by_the_instance_that_wrote_it(tmp_path):
    ours = WindowCache(tmp_path, secret=b"a" * 32)
    frame = keys.targets_frame({"a/b": pd.Series([0.25, 0.75], index=["X", "Y"])})
    key = keys.key("targets", "slice")
    ours.put(key, frame)
    pd.testing.assert_frame_equal(ours.get(key), frame)
    assert WindowCache(tmp_path, secret=b"b" * 32).get(key) is None  # another instance's key
    (tmp_path / key[:2] / f"{key[:-2]}00.parquet").write_bytes(ours.path(key).read_bytes())
    assert ours.get(f"{key[:-2]}00") is None  # an entry copied under another key
    forge(ours.path(key), frame)
    assert ours.get(key) is not None  # (the same content and digest: still ours)
    forge(ours.path(key), frame.assign(weight=[0.75, 0.25]))
    assert ours.get(key) is None
    ours.put(key, frame)
    forge(ours.path(key), frame, keep_mac=False)  # as written before entries carried an HMAC
    assert ours.get(key) is None
    assert [p.stem for p in ours.survey().unreadable] == sorted([key, f"{key[:-2]}00"])
    assert "secret" not in repr(ours) and "a" * 32 not in repr(ours)


def test_an_entry_with_foreign_columns_or_dtypes_is_a_miss():
    good = keys.targets_frame({"a/b": pd.Series([0.25, 0.75], index=["X", "Y"])})
    assert keys.checked(good, keys.TARGET_COLUMNS) is not None
    assert keys.checked(good.rename(columns={"weight": "w"}), keys.TARGET_COLUMNS) is None
    assert keys.checked(good.astype({"weight": str}), keys.TARGET_COLUMNS) is None
    assert keys.checked(None, keys.TARGET_COLUMNS) is None


def pickled_map(function, items):
    """Every function and item goes through cloudpickle, as a Ray or process pool would send it."""
    calls.append(len(items))
    function = pickle.loads(cloudpickle.dumps(function))
    return [function(pickle.loads(cloudpickle.dumps(item))) for item in items]


calls: list[int] = []


@pytest.mark.slow
def test_the_tournament_fans_out_in_two_picklable_calls_that_equal_the_serial_run(bars):
    today = run_window(bars, ANCHOR, STATEFUL)
    serial = policy.tournament(today, STATEFUL, incumbent=None)
    calls.clear()
    mapped = policy.tournament(today, STATEFUL, incumbent=None, map_tasks=pickled_map)
    # Phase 1: every window's alpha and today's; phase 2: one task per stateful policy.
    candidates = policy.candidates_of(policy.SCORERS, policy.optimise.PROFILES)
    assert calls == [serial.reuse.windows + 1, len(candidates)]
    assert_same(serial, mapped, today.history.index)


@pytest.mark.slow
def test_the_backtest_asset_reports_reuse_and_the_next_day_recomputes_only_the_newest_window(
    instance, lake_root, sleeve_policy
):
    sleeve_policy("crypto", policy=TINY_UNEVEN)
    resources = resources_for(lake_root, crypto=synthetic_source(symbols=12, end="2026-06-20"))
    assert dg.materialize(
        [data.bars], partition_key="crypto", resources=resources, instance=instance
    ).success
    targets = [data.returns, allocation.backtest, allocation.portfolio]
    first = dg_materialize(instance, resources, targets, f"{ANCHOR:%Y-%m-%d}|crypto")
    assert first.success and "portfolio" in materialised(first)
    shown = metadata(first, "backtest")
    assert shown["windows_reused"] == 0 and shown["windows_computed"] == shown["windows"] > 0
    store = lake_window_cache(ParquetLake(root=lake_root))
    assert len(store) > 0 and str(store.root).startswith(str(lake_root))

    second = dg_materialize(
        instance, resources, targets, f"{ANCHOR + pd.Timedelta(days=1):%Y-%m-%d}|crypto"
    )
    assert second.success
    shown = metadata(second, "backtest")
    assert shown["windows_computed"] == 1 and shown["windows_reused"] == shown["windows"] - 1


def dg_materialize(instance, resources, assets, partition):
    every = [data.bars, data.returns, allocation.backtest, allocation.portfolio]
    return dg.materialize(
        every,
        partition_key=partition,
        selection=[a.key for a in assets],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
