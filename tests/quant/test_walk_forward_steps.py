"""The walk-forward split into named steps decides exactly as the single function it replaced.

The reference below is that function, copied verbatim (names qualified by their module) and kept
only here: every case runs both and compares every output, and every entry written to the store,
bit for bit — cold, warm, partly warm, stateful and stateless, fanned out and serial."""

import functools
from collections.abc import Mapping, Sequence

import pandas as pd
import pytest

from tests.settings import TINY_UNEVEN, settings_for
from tvq_assets.quant import backtest, optimise, policy
from tvq_assets.quant import window_cache as cache_keys
from tvq_assets.quant.returns import ReturnsWindow
from tvq_resources.synthetic import Fault, generate_market


def reference_walk_forward(
    window: ReturnsWindow,
    settings: policy.PolicySettings,
    *,
    scorers: Sequence[str] = policy.SCORERS,
    profiles: Sequence[str] = optimise.PROFILES,
    map_tasks: backtest.TaskMap | None = None,
    cache: cache_keys.WindowStore | None = None,
) -> policy.WalkForward:
    """``policy.walk_forward`` as it was written before it was split into named steps."""
    history = window.history
    volume = window.history_dollar_volume.reindex(index=history.index, columns=history.columns)
    defects = window.defects
    rows = policy.decision_rows(len(history), settings)
    windows = policy.grid_windows(history.index, settings)
    if not windows:
        raise ValueError(
            f"the history has {len(history)} rows; the walk-forward needs a decision row on the "
            f"{settings.calendar} grid (every {settings.step}) after {rows} rows and before the "
            "last"
        )
    candidates = policy.candidates_of(scorers, profiles)
    names = [*candidates, *policy.BASELINES]
    settings_key = cache_keys.settings_digest(policy.settings_config(settings))
    stateful = settings.turnover_penalty > 0
    spans = [(w.train.start, w.train.stop) for w in windows] + [(len(history) - rows, len(history))]
    slice_keys = [
        cache_keys.slice_digest(
            *cache_keys.used_slice(history.iloc[a:b], volume.iloc[a:b], defects)
        )
        for a, b in spans
    ]

    def targets_key(k: int, done: Mapping[int, dict[str, pd.Series]]) -> str:
        previous = "stateless"
        if stateful:
            before = done.get(k - 1) if k > 0 else None
            previous = cache_keys.targets_digest(
                None if before is None else {n: before[n] for n in candidates}
            )
        return cache_keys.targets_key(
            slice_keys[k], settings_key, [*names, "|", *scorers], previous
        )

    def read(entry_key: str, columns) -> pd.DataFrame | None:
        return cache_keys.checked(cache.get(entry_key), columns) if cache is not None else None

    done: dict[int, dict[str, pd.Series]] = {}
    pending: list[int] = []
    for k in range(len(windows)):
        if stateful and pending:
            pending.append(k)
            continue
        stored = read(targets_key(k, done), cache_keys.TARGET_COLUMNS)
        if stored is None:
            pending.append(k)
        else:
            done[k] = cache_keys.targets_from(stored, names)

    # Phase 1: the alphas the pending windows and today's decision need.
    alpha_keys = {
        k: cache_keys.alpha_key(slice_keys[k], settings_key, scorers)
        for k in [*pending, len(windows)]
    }
    alphas: dict[int, pd.DataFrame] = {}
    for k, entry_key in alpha_keys.items():
        stored = read(entry_key, cache_keys.ALPHA_COLUMNS)
        if stored is not None:
            alphas[k] = stored
    missing = [k for k in alpha_keys if k not in alphas]
    task = functools.partial(
        policy.window_alpha,
        history=history,
        dollar_volume=volume,
        defects=defects,
        settings=settings,
        scorers=tuple(scorers),
    )
    computed = policy._mapped(map_tasks, task, [spans[k] for k in missing])
    for k, frame in zip(missing, computed, strict=True):
        if cache is not None:
            cache.put(alpha_keys[k], frame)
        # Through the stored form, exactly as a later run will read it.
        alphas[k] = cache_keys.checked(frame, cache_keys.ALPHA_COLUMNS)

    # Phase 2: one task per stateful policy, walking the pending windows in order.
    first = pending[0] if pending else len(windows)
    chains = [
        policy.Chain(
            policy=name,
            previous=done[first - 1][name] if first > 0 and (first - 1) in done else None,
            steps=tuple((k, spans[k], alphas[k]) for k in pending),
        )
        for name in (candidates if pending else [])
    ]
    walked = policy._mapped(
        map_tasks, functools.partial(policy.walk_chain, history=history, settings=settings), chains
    )
    for position, k in enumerate(pending):
        chosen = {name: walked[i][position] for i, name in enumerate(candidates)}
        chosen.update(policy.baseline_targets(alphas[k], scorers))
        where = f"window {k} (training rows to {history.index[windows[k].train.stop - 1]:%Y-%m-%d})"
        frame = cache_keys.targets_frame(
            {
                name: backtest.validated_weights(chosen[name], history.columns, f"{where}, {name}")
                for name in names
            }
        )
        done[k] = cache_keys.targets_from(frame, names)
        if cache is not None:
            cache.put(targets_key(k, done), frame)

    targets = {name: {k: done[k][name] for k in range(len(windows))} for name in names}
    reuse = cache_keys.Reuse(
        windows=len(windows),
        windows_computed=len(pending),
        windows_reused=len(windows) - len(pending),
        alphas_computed=len(missing),
        alphas_reused=len(alpha_keys) - len(missing),
    )
    return policy.WalkForward(windows, targets, alphas[len(windows)], reuse)


STATELESS = settings_for(**TINY_UNEVEN)
STATEFUL = settings_for(**TINY_UNEVEN, turnover_penalty=1.0)
AS_OF = "2026-07-03"


class RecordingStore:
    """A window store in memory that remembers every write in order."""

    def __init__(self, entries: Mapping[str, pd.DataFrame] | None = None) -> None:
        self.entries = dict(entries or {})
        self.writes: list[tuple[str, pd.DataFrame]] = []

    def get(self, key: str) -> pd.DataFrame | None:
        return self.entries.get(key)

    def put(self, key: str, frame: pd.DataFrame) -> None:
        self.entries[key] = frame
        self.writes.append((key, frame))


def reversed_map(function, items):
    """A fan-out that computes its items in reverse order (results still in order)."""
    return [function(item) for item in reversed(list(items))][::-1]


@pytest.fixture(scope="module")
def bars():
    return generate_market(
        seed=11, n_symbols=16, end=AS_OF, faults=[Fault("toxic_spike", date="2026-05-01")]
    )


def run_window(bars, as_of, settings) -> ReturnsWindow:
    return policy.point_in_time(
        bars[bars["date"] <= as_of], as_of=pd.Timestamp(as_of), settings=settings, quarantine=True
    )


def assert_same_walk(new: policy.WalkForward, old: policy.WalkForward) -> None:
    assert new.windows == old.windows
    assert new.reuse == old.reuse
    pd.testing.assert_frame_equal(new.latest, old.latest, check_exact=True)
    assert list(new.targets) == list(old.targets)
    for name, by_window in old.targets.items():
        assert list(new.targets[name]) == list(by_window)
        for k, weights in by_window.items():
            pd.testing.assert_series_equal(new.targets[name][k], weights, check_exact=True)


def assert_same_writes(new: RecordingStore, old: RecordingStore) -> None:
    assert [key for key, _ in new.writes] == [key for key, _ in old.writes]
    for (_, a), (_, b) in zip(new.writes, old.writes, strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.parametrize("settings", [STATELESS, STATEFUL], ids=["stateless", "stateful"])
def test_a_cold_walk_equals_the_reference_and_writes_the_same_entries(bars, settings):
    window = run_window(bars, AS_OF, settings)
    new_store, old_store = RecordingStore(), RecordingStore()
    new = policy.walk_forward(window, settings, cache=new_store)
    old = reference_walk_forward(window, settings, cache=old_store)
    assert_same_walk(new, old)
    assert_same_writes(new_store, old_store)
    assert new.reuse.windows_computed == len(new.windows) > 1


@pytest.mark.parametrize("settings", [STATELESS, STATEFUL], ids=["stateless", "stateful"])
def test_a_walk_from_a_store_that_lost_entries_equals_the_reference(bars, settings):
    window = run_window(bars, AS_OF, settings)
    filled = RecordingStore()
    policy.walk_forward(window, settings, cache=filled)
    # Alphas are written first, then targets window by window: lose one of each.
    for key, _ in (filled.writes[1], filled.writes[-2]):
        del filled.entries[key]
    new_store, old_store = RecordingStore(filled.entries), RecordingStore(filled.entries)
    new = policy.walk_forward(window, settings, cache=new_store, map_tasks=reversed_map)
    old = reference_walk_forward(window, settings, cache=old_store, map_tasks=reversed_map)
    assert_same_walk(new, old)
    assert_same_writes(new_store, old_store)
    assert 0 < new.reuse.windows_reused < len(new.windows)
    assert new.reuse.alphas_reused > 0


@pytest.mark.parametrize("settings", [STATELESS, STATEFUL], ids=["stateless", "stateful"])
def test_the_next_days_walk_from_yesterdays_store_equals_the_reference(bars, settings):
    filled = RecordingStore()
    policy.walk_forward(run_window(bars, "2026-06-20", settings), settings, cache=filled)
    window = run_window(bars, AS_OF, settings)
    new_store, old_store = RecordingStore(filled.entries), RecordingStore(filled.entries)
    new = policy.walk_forward(window, settings, cache=new_store)
    old = reference_walk_forward(window, settings, cache=old_store)
    assert_same_walk(new, old)
    assert_same_writes(new_store, old_store)
    assert new.reuse.alphas_reused > 0


def test_a_warm_walk_equals_the_reference_and_writes_nothing(bars):
    window = run_window(bars, AS_OF, STATEFUL)
    filled = RecordingStore()
    policy.walk_forward(window, STATEFUL, cache=filled)
    new_store, old_store = RecordingStore(filled.entries), RecordingStore(filled.entries)
    new = policy.walk_forward(window, STATEFUL, cache=new_store)
    old = reference_walk_forward(window, STATEFUL, cache=old_store)
    assert_same_walk(new, old)
    assert new_store.writes == old_store.writes == []
    assert new.reuse.windows_reused == len(new.windows)


def test_one_policy_walked_alone_without_a_store_equals_the_reference(bars):
    window = run_window(bars, AS_OF, STATEFUL)
    chosen = {"scorers": ("rank_ic",), "profiles": (optimise.PROFILES[-1],)}
    new = policy.walk_forward(window, STATEFUL, **chosen)
    old = reference_walk_forward(window, STATEFUL, **chosen)
    assert_same_walk(new, old)


def test_a_history_too_short_for_a_window_fails_with_the_same_message(bars):
    short = run_window(bars, "2026-03-01", STATELESS)
    history = short.history.tail(5)
    window = ReturnsWindow(
        returns=history,
        dollar_volume=short.history_dollar_volume.tail(5),
        excluded=short.excluded,
        history=history,
        history_dollar_volume=short.history_dollar_volume.tail(5),
        defects=short.defects,
    )
    with pytest.raises(ValueError) as new:
        policy.walk_forward(window, STATELESS)
    with pytest.raises(ValueError) as old:
        reference_walk_forward(window, STATELESS)
    assert str(new.value) == str(old.value)
