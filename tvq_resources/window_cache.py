"""The lake's store of walk-forward window outcomes (``tvq_assets.quant.window_cache``).

The keys and the tables' columns are the engine's; this module only stores them. One Parquet
file per entry at ``<lake root>/cache/windows/<key[:2]>/<key>.parquet``. The key is a
content digest, so an entry is never updated in place: it is written once to a temporary file in
its folder and renamed into place (a reader sees the whole entry or none). Entries are plain
tables (no pickles). Concurrent writers of one key write the same bytes, so the last rename wins
harmlessly.

An entry is bound to the instance that wrote it: its schema metadata carries the digest of its
content and an HMAC-SHA256 of that digest and its key, keyed by a secret that lives under
``DAGSTER_HOME`` (``secrets/window_cache.key``, created with mode 0600 on first use), not in the
lake. Whoever can write the lake (a shared bucket) but not read that secret cannot make an entry
this instance accepts: an altered entry — even one whose content digest was recomputed —, an
entry of another instance and one written before entries carried an HMAC are misses (the run
recomputes the window and rewrites the entry), surveyed as unreadable, never an input.
"""

import hashlib
import hmac
import io
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tvq_resources.lake import CACHE, LakePath, ParquetLake, lake_path, write_file

FOLDER = (CACHE, "windows")
# A temporary file older than this is left by a killed write (an entry is written in well under a
# second); a younger one may belong to a run writing now and is never removed.
LEFTOVER_SECONDS = 3600.0
# Schema metadata key holding the digest of an entry's content, checked on every read.
CONTENT_KEY = b"tvq_content_digest"
# Schema metadata key holding the entry's HMAC (instance secret; entry key and content digest).
MAC_KEY = b"tvq_entry_hmac"
# The instance secret, under DAGSTER_HOME (local even when the lake is on object storage).
SECRET = ("secrets", "window_cache.key")
SECRET_BYTES = 32
log = logging.getLogger(__name__)
# Without DAGSTER_HOME there is no instance to bind entries to: a key of this process only.
_process_secret = secrets.token_bytes(SECRET_BYTES)


def instance_secret(home: "str | os.PathLike[str] | None" = None) -> bytes:
    """The key that signs this instance's window-cache entries: ``$DAGSTER_HOME/secrets/
    window_cache.key``, created with mode 0600 (random bytes) on first use and read after.

    Without ``DAGSTER_HOME`` (a test's ephemeral instance), a key of this process: its entries
    are reused within the process and are misses for any other."""
    home = home if home is not None else os.environ.get("DAGSTER_HOME")
    if not home:
        return _process_secret
    path = Path(home).joinpath(*SECRET)
    if not path.exists():
        _create_secret(path)
    secret = path.read_bytes()
    if len(secret) < SECRET_BYTES:
        raise RuntimeError(
            f"window cache: the instance secret {path} holds {len(secret)} bytes, not "
            f"{SECRET_BYTES}; delete it (every cache entry is then recomputed once)"
        )
    return secret


def _create_secret(path: Path) -> None:
    """Write a fresh secret readable by its owner only; a concurrent creator's wins (link)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, secrets.token_bytes(SECRET_BYTES))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        os.link(temporary, path)  # fails if another process created it first: theirs stands
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)


def entry_mac(secret: bytes, key: str, digest: str) -> str:
    """The HMAC-SHA256 of an entry: its key (no entry can stand in for another) and its content
    digest, under the instance secret."""
    return hmac.new(secret, f"{key}\0{digest}".encode(), hashlib.sha256).hexdigest()


def content_digest(frame: pd.DataFrame) -> str:
    """Digest of a table's column names, dtypes, row order and values."""
    digest = hashlib.blake2b(digest_size=20)
    for column in frame.columns:
        values = frame[column]
        digest.update(f"\n{column}:{values.dtype}:".encode())
        if pd.api.types.is_numeric_dtype(values):
            digest.update(np.ascontiguousarray(values.to_numpy()).tobytes())
        else:
            digest.update("\0".join(map(str, values)).encode())
    return digest.hexdigest()


class WindowCache:
    """``get(key) -> DataFrame | None`` and ``put(key, frame)`` over files under ``root``.

    Holds only its folder and the instance secret (``instance_secret()`` unless given), so it can
    be pickled or recreated anywhere — a Ray worker on another machine checks entries with the
    secret of the instance that started the run (no locks, no handles).
    """

    def __init__(self, root: "str | LakePath", secret: bytes | None = None) -> None:
        # A folder or a lake URL (object storage: the lake's own UPath).
        self.root = lake_path(root) if isinstance(root, str) else root
        self._secret = instance_secret() if secret is None else secret

    def __repr__(self) -> str:  # never the secret
        return f"WindowCache({str(self.root)!r})"

    def path(self, key: str) -> LakePath:
        if len(key) < 3 or not key.isalnum():
            raise ValueError(f"window cache: malformed key {key!r} (expected a hex digest)")
        return self.root / key[:2] / f"{key}.parquet"

    def get(self, key: str) -> pd.DataFrame | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            table = pq.read_table(io.BytesIO(path.read_bytes()))
            frame = table.to_pandas()
            metadata = table.schema.metadata or {}
            stored = metadata.get(CONTENT_KEY, b"").decode()
            mac = metadata.get(MAC_KEY, b"").decode()
            digest = content_digest(frame)
        except Exception as error:  # any unreadable file is a miss, whatever the cause
            log.warning("window cache: unreadable entry %s (%s); recomputing", path, error)
            return None
        if stored != digest:
            log.warning("window cache: entry %s does not match its digest; recomputing", path)
            return None
        if not hmac.compare_digest(mac, entry_mac(self._secret, key, digest)):
            log.warning(
                "window cache: entry %s was not written by this instance (its HMAC does not "
                "verify: altered, another instance's, or older than entry HMACs); recomputing",
                path,
            )
            return None
        return frame

    def put(self, key: str, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        metadata = dict(table.schema.metadata or {})
        digest = content_digest(frame)
        metadata[CONTENT_KEY] = digest.encode()
        metadata[MAC_KEY] = entry_mac(self._secret, key, digest).encode()
        buffer = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(metadata), buffer)
        write_file(buffer.getvalue(), self.path(key))

    def __len__(self) -> int:
        return len(self.entries())

    def entries(self) -> list[LakePath]:
        return sorted(self.root.glob("*/*.parquet")) if self.root.exists() else []

    def survey(self, now: float | None = None) -> "CacheSurvey":
        """Every entry read and checked against its digest and HMAC (one that fails is unreadable),
        and the leftovers of killed writes."""
        now = time.time() if now is None else now
        survey = CacheSurvey()
        for path in self.entries():
            survey.entries += 1
            survey.bytes += _size(path)
            if self.get(path.stem) is None:
                survey.unreadable.append(path)
        if self.root.exists():
            survey.leftovers = [
                path
                for path in sorted(self.root.glob("*/.*.tmp"))
                if now - _modified(path, now) > LEFTOVER_SECONDS
            ]
        return survey

    def prune(self, older_than_days: float | None, now: float | None = None) -> "CacheSurvey":
        """Remove the entries written more than ``older_than_days`` ago (every entry when
        ``None``), the unreadable ones and the leftovers of killed writes; returns what was
        removed. Removing an entry costs only its recomputation by the next run that needs it."""
        now = time.time() if now is None else now
        found = self.survey(now)
        removed = CacheSurvey(unreadable=found.unreadable, leftovers=found.leftovers)
        doomed = set(map(str, found.unreadable))
        cutoff = None if older_than_days is None else now - older_than_days * 86400
        for path in self.entries():
            if cutoff is None or _modified(path, now) < cutoff or str(path) in doomed:
                removed.entries += 1
                removed.bytes += _size(path)
                path.unlink(missing_ok=True)
        for path in found.leftovers:
            path.unlink(missing_ok=True)
        return removed


@dataclass
class CacheSurvey:
    """Entries (count, bytes), unreadable entries (a miss on use) and leftovers of killed writes."""

    entries: int = 0
    bytes: int = 0
    unreadable: list[LakePath] = field(default_factory=list)
    leftovers: list[LakePath] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.entries} entr{'y' if self.entries == 1 else 'ies'} "
            f"({self.bytes / 1e6:.1f} MB), {len(self.unreadable)} unreadable, "
            f"{len(self.leftovers)} leftover(s) of killed writes"
        )


def _size(path: LakePath) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _modified(path: LakePath, default: float) -> float:
    try:
        return path.stat().st_mtime
    except (OSError, AttributeError, KeyError):
        return default


def lake_window_cache(lake: ParquetLake) -> WindowCache:
    """The window store of a lake: ``<lake root>/cache/windows``, checked with this instance's
    secret."""
    return WindowCache(lake.root_path.joinpath(*FOLDER), instance_secret())
