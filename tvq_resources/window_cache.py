"""The lake's store of walk-forward window outcomes (``tvq_assets.quant.window_cache``).

The keys and the tables' columns are the engine's; this module only stores them. One Parquet
file per entry at ``<lake root>/cache/windows/<key[:2]>/<key>.parquet``. The key is a
content digest, so an entry is never updated in place: it is written once to a temporary file in
its folder and renamed into place (a reader sees the whole entry or none). The file carries the
digest of its content in its schema metadata; a file that cannot be read or whose content does
not match that digest is a miss (the run recomputes the window and rewrites the entry), never an
error and never an input. Entries are plain tables (no pickles). Concurrent writers of one key
write the same bytes, so the last rename wins harmlessly.
"""

import hashlib
import io
import logging
import time
from dataclasses import dataclass, field

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
log = logging.getLogger(__name__)


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

    Holds only its folder, so it can be pickled or recreated anywhere (no locks, no handles).
    """

    def __init__(self, root: "str | LakePath") -> None:
        # A folder or a lake URL (object storage: the lake's own UPath).
        self.root = lake_path(root) if isinstance(root, str) else root

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
            stored = (table.schema.metadata or {}).get(CONTENT_KEY, b"").decode()
        except Exception as error:  # any unreadable file is a miss, whatever the cause
            log.warning("window cache: unreadable entry %s (%s); recomputing", path, error)
            return None
        if stored != content_digest(frame):
            log.warning("window cache: entry %s does not match its digest; recomputing", path)
            return None
        return frame

    def put(self, key: str, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        metadata = dict(table.schema.metadata or {})
        metadata[CONTENT_KEY] = content_digest(frame).encode()
        buffer = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(metadata), buffer)
        write_file(buffer.getvalue(), self.path(key))

    def __len__(self) -> int:
        return len(self.entries())

    def entries(self) -> list[LakePath]:
        return sorted(self.root.glob("*/*.parquet")) if self.root.exists() else []

    def survey(self, now: float | None = None) -> "CacheSurvey":
        """Every entry read and checked against its digest, and the leftovers of killed writes."""
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
    """The window store of a lake: ``<lake root>/cache/windows``."""
    return WindowCache(lake.root_path.joinpath(*FOLDER))
