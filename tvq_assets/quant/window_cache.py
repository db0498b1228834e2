"""Content-addressed outcomes of walk-forward windows: the keys and the store protocol.

A window's outcome is a pure function of what it reads, so it is stored under a digest of exactly
that input and reused by any later run — the next day's run, a re-run, a backfill — whose window
reads the same input. A change in the data of the slice, in any policy parameter or in the code
(:data:`CODE_VERSION`) changes the key, so a stale entry is never found rather than detected.

Two kinds of entries (``kind`` is part of the key):

- ``alpha``: the window's universe and each scorer's winners with their clusters
  (:data:`ALPHA_COLUMNS`), keyed by the window's data slice and the policy parameters;
- ``targets``: every policy's target weights of the window (:data:`TARGET_COLUMNS`), keyed also by
  the previous window's targets when the decision reads them (a turnover penalty), so a stateful
  chain is reused only from the same starting point.

The data slice is the window's rows restricted to the symbols with a return or a dollar volume in
it, plus the dated defects of those symbols inside it; the decision is computed on that same
restricted slice (:func:`used_slice`), so equal keys mean equal inputs by construction.

The store is anything with ``get(key) -> DataFrame | None`` and ``put(key, frame)`` (the lake's
file store is ``tvq_resources.window_cache``, which also checks each file against the digest of its
content and an HMAC keyed by the instance). A store may lose or damage entries: an entry whose
columns or dtypes do not check out (:func:`checked`) is a miss.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

# Bump when the decision code changes what a window's outcome is for the same input: every entry
# written before then is simply never found again.
CODE_VERSION = "window-outcome-1"

ALPHA_COLUMNS = ("part", "symbol", "cluster")
TARGET_COLUMNS = ("policy", "symbol", "weight")
UNIVERSE_PART = "universe"
_DTYPES = {"part": "str", "policy": "str", "symbol": "str", "cluster": "int", "weight": "float"}


class WindowStore(Protocol):
    """Where window outcomes live; ``get`` returns None for a missing or unreadable entry."""

    def get(self, key: str) -> pd.DataFrame | None: ...

    def put(self, key: str, frame: pd.DataFrame) -> None: ...


@dataclass(frozen=True)
class Reuse:
    """How much of a tournament came from the store: windows (targets) and alphas."""

    windows: int = 0
    windows_computed: int = 0
    windows_reused: int = 0
    alphas_computed: int = 0
    alphas_reused: int = 0


def _hash() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=20)


def _text(value) -> bytes:
    """Canonical bytes of a scalar (floats exactly, by their hex form)."""
    if isinstance(value, float | np.floating):
        return float(value).hex().encode()
    if isinstance(value, pd.Timestamp):
        return str(value.value).encode()
    return repr(value).encode()


def used_columns(returns: pd.DataFrame, dollar_volume: pd.DataFrame) -> pd.Index:
    """The symbols with a return or a dollar volume in the slice (the others cannot be chosen)."""
    present = returns.notna().to_numpy().any(axis=0) | dollar_volume.notna().to_numpy().any(axis=0)
    return returns.columns[present]


def used_slice(
    returns: pd.DataFrame, dollar_volume: pd.DataFrame, defects: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A window's slice restricted to :func:`used_columns`, and the defects of those symbols dated
    inside it: what the decision reads and what the key digests."""
    columns = used_columns(returns, dollar_volume)
    returns, dollar_volume = returns[columns], dollar_volume[columns]
    if len(returns) and len(defects):
        dates = defects["date"]
        inside = (dates >= returns.index[0]) & (dates <= returns.index[-1])
        defects = defects[inside & defects["symbol"].isin(columns)]
    else:
        defects = defects.iloc[0:0]
    defects = defects.sort_values(list(defects.columns), kind="stable").reset_index(drop=True)
    return returns, dollar_volume, defects


def slice_digest(returns: pd.DataFrame, dollar_volume: pd.DataFrame, defects: pd.DataFrame) -> str:
    """Digest of a :func:`used_slice`: dates, symbols, the float64 bytes of returns and dollar
    volume, and every defect row."""
    digest = _hash()
    digest.update(np.asarray(returns.index.asi8, dtype=np.int64).tobytes())
    digest.update("\0".join(map(str, returns.columns)).encode())
    for frame in (returns, dollar_volume):
        digest.update(b"|" + np.ascontiguousarray(frame.to_numpy(dtype=np.float64)).tobytes())
    for row in defects.itertuples(index=False):
        digest.update(b"\n" + b"\0".join(_text(value) for value in row))
    return digest.hexdigest()


def settings_digest(config: Mapping) -> str:
    """Digest of the policy parameters (``policy.settings_config``), floats exactly."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    floats = [float(v).hex() for v in _floats(config)]
    return hashlib.blake2b((text + "|" + ",".join(floats)).encode(), digest_size=20).hexdigest()


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, Mapping):
        for key in sorted(value):
            yield from _floats(value[key])
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _floats(item)


def targets_digest(targets: Mapping[str, pd.Series | None] | None) -> str:
    """Digest of policy -> target weights (None: no previous window)."""
    if targets is None:
        return "none"
    digest = _hash()
    for name in sorted(targets):
        weights = targets[name]
        digest.update(f"\n{name}:".encode())
        if weights is None:
            digest.update(b"none")
            continue
        digest.update("\0".join(map(str, weights.index)).encode() + b"|")
        digest.update(np.ascontiguousarray(weights.to_numpy(dtype=np.float64)).tobytes())
    return digest.hexdigest()


def key(kind: str, *parts: str) -> str:
    """The store key of one entry: hex digest of the kind, the code version and ``parts``."""
    return hashlib.blake2b(
        "\0".join((kind, CODE_VERSION, *parts)).encode(), digest_size=24
    ).hexdigest()


def alpha_key(slice_key: str, settings_key: str, scorers: Sequence[str]) -> str:
    return key("alpha", slice_key, settings_key, ",".join(scorers))


def targets_key(
    slice_key: str, settings_key: str, policies: Sequence[str], previous_key: str
) -> str:
    """``previous_key``: :func:`targets_digest` of the previous window's targets when the decision
    reads them, ``"stateless"`` when it does not (no turnover penalty)."""
    return key("targets", slice_key, settings_key, ",".join(policies), previous_key)


def checked(frame: pd.DataFrame | None, columns: Sequence[str]) -> pd.DataFrame | None:
    """``frame`` in canonical dtypes if it has exactly ``columns`` with their dtypes, else None
    (a damaged or foreign entry is a miss, never an input)."""
    if frame is None or tuple(frame.columns) != tuple(columns):
        return None
    try:
        canonical = {}
        for column in columns:
            values = frame[column]
            kind = _DTYPES[column]
            if kind == "str":
                if not all(isinstance(value, str) for value in values):
                    return None
                canonical[column] = np.asarray(values, dtype=object)
            elif kind == "int":
                if not pd.api.types.is_integer_dtype(values):
                    return None
                canonical[column] = values.to_numpy(dtype=np.int64)
            else:
                if not pd.api.types.is_float_dtype(values):
                    return None
                canonical[column] = values.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return pd.DataFrame(canonical, columns=list(columns))


def alpha_frame(
    universe: Sequence[str], winners: Mapping[str, tuple[Sequence[str], Sequence[int]]]
) -> pd.DataFrame:
    """The ``alpha`` entry: the universe (``part`` = ``universe``, cluster -1) then each scorer's
    winners in selection order with their cluster. Empty: the window holds cash."""
    parts, symbols, labels = [], [], []
    parts_of = [(UNIVERSE_PART, (universe, [-1] * len(universe))), *winners.items()]
    for part, (names, clusters) in parts_of:
        parts += [part] * len(names)
        symbols += [str(s) for s in names]
        labels += [int(c) for c in clusters]
    frame = pd.DataFrame(
        {
            "part": np.asarray(parts, dtype=object),
            "symbol": np.asarray(symbols, dtype=object),
            "cluster": np.asarray(labels, dtype=np.int64),
        }
    )
    return checked(frame, ALPHA_COLUMNS)


def targets_frame(targets: Mapping[str, pd.Series]) -> pd.DataFrame:
    """The ``targets`` entry: one row per policy × held symbol (cash: no row), policies in order."""
    policies, symbols, weights = [], [], []
    for name, series in targets.items():
        policies += [name] * len(series)
        symbols += [str(s) for s in series.index]
        weights.append(series.to_numpy(dtype=np.float64))
    frame = pd.DataFrame(
        {
            "policy": np.asarray(policies, dtype=object),
            "symbol": np.asarray(symbols, dtype=object),
            "weight": np.concatenate(weights) if weights else np.array([], dtype=np.float64),
        }
    )
    return checked(frame, TARGET_COLUMNS)


def targets_from(frame: pd.DataFrame, policies: Sequence[str]) -> dict[str, pd.Series]:
    """Policy -> target weights (float64, index ``symbol``) of a ``targets`` entry."""
    chosen = {}
    for name in policies:
        rows = frame[frame["policy"].to_numpy() == name]
        chosen[name] = pd.Series(
            rows["weight"].to_numpy(dtype=np.float64),
            index=pd.Index(rows["symbol"].to_numpy(dtype=object), name="symbol"),
        )
    return chosen
