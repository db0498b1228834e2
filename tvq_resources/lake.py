"""The Parquet lake: every asset value as Parquet files under one root, written atomically.

The root is a local folder or any fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``memory://…``);
every path of the lake is then a ``pathlib.Path`` or a ``upath.UPath`` and the helpers below
(``write_file``, ``write_table``, ``read_table``, ``write_bundle``, ``read_bundle``,
``exclusive``) take either. A value is either one DataFrame (one file) or a bundle of named
tables (a folder holding one file per table plus a manifest): a ``dict[str, DataFrame]``, or a
typed value — a frozen dataclass whose fields are DataFrames or Series, rebuilt as that class on
read. The manifest names a registered record type (``tvq_resources.records``), never code: a name
that is not registered, or tables that do not fit the type, is a ``LakeReadError``, and nothing
named by stored data is ever imported or called.

Writes never leave a half file and never replace a good value with a broken one. On a local disk
a file is written to a temporary file in the same folder, fsynced and moved into place with
``os.replace``. On object storage a file is one PUT, which the store makes visible whole or not
at all (no rename exists there). A bundle's tables get names of their own (a fresh token per
write) and its small manifest, written last, switches the value to the complete new set of
tables, so a crash mid-bundle leaves the previous bundle readable.

One writer per value: every write holds an exclusive lock on the value (``.{name}.lock`` next to
it) and an incremental writer holds it across read-merge-write with ``with lake.writer(asset,
partition):`` so a concurrent writer waits instead of overwriting rows it never saw. Locally the
lock is an ``fcntl`` lock the kernel releases when the process dies. On S3 it is a lock object
created with a conditional PUT (``If-None-Match: *``: exactly one creator wins), holding its
holder and a lease; it is deleted on release only if it is still ours (``If-Match`` on its ETag),
and a waiter may delete it (again by ETag) once its lease has expired, so a killed holder blocks
its value for at most ``lock_lease`` seconds. A holder that keeps a value longer than the lease
can lose it: the lease must exceed the longest write (an hour by default). Other object stores
get no cross-process lock: there one writer per value rests on the run queue's limits (one run
per partition key, ``dagster_home/dagster.yaml``).

A write also removes what a killed earlier write of the same value left behind (temporary files,
tables no manifest names). ``verify``, ``clean`` and ``quarantine`` (``tvq lake ...``) find
damaged values, remove leftovers and set a damaged value aside so its asset can be recomputed; a
read error always names the asset, partition and file.
"""

import contextlib
import copy
import dataclasses
import fcntl
import io
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import dagster as dg
import pandas as pd
from upath import UPath

from tvq_resources import records

MANIFEST = "manifest.json"
# Input metadata marking an asset's own earlier run partitions (a declared self-dependency on a
# window of them): it loads as the newest one stored (a :class:`PreviousRun`), or None when none
# of them is (a first run, a long gap) instead of failing.
PREVIOUS_RUN = "previous_run"
# Input metadata marking a fan-in over several partitions (e.g. every sleeve's run of one date):
# it loads as {partition key: value} of the partitions stored; a missing one is left out and the
# asset applies its own rule to the absence.
FAN_IN = "fan_in"
QUARANTINE = ".corrupt"  # under the lake root: values set aside by `tvq lake quarantine`
# Under the lake root: derived data that is recomputed when missing (the window cache). Not
# values of assets: `verify` and `clean` leave it to its own store (`tvq lake cache`).
CACHE = "cache"
# A bundle's table files are `{table}-{12 hex token}.parquet` (see write_bundle).
_BUNDLE_TABLE = re.compile(r"^.+-[0-9a-f]{12}\.parquet$")
# Protocols of a UPath that are the local disk (os calls, fcntl, rename work there).
_LOCAL = ("", "file", "local")
_S3 = ("s3", "s3a")

LakePath = Path | UPath


def lake_path(location: "str | os.PathLike[str]", **storage_options) -> LakePath:
    """The lake path of a folder or URL: a ``Path`` on the local disk, else a ``UPath``.

    Object-store credentials and endpoint come from the store's usual environment (for S3:
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
    ``AWS_ENDPOINT_URL`` for an S3-compatible server) or ``storage_options``.
    """
    if isinstance(location, UPath):
        return location
    text = os.fspath(location)
    if "://" not in text:
        return Path(text).expanduser()
    if text.startswith("file://"):
        return Path(UPath(text).path)
    options = dict(storage_options)
    if text.split("://", 1)[0] in _S3:
        # Several processes write the lake: a listing cached by this process would hide their
        # values (and their locks) from it.
        options.setdefault("use_listings_cache", False)
    return UPath(text, **options)


def is_remote(path: LakePath) -> bool:
    """True for a path on object storage (or any fsspec filesystem but the local disk)."""
    return isinstance(path, UPath) and path.protocol not in _LOCAL


class LakeReadError(OSError):
    """A stored value that cannot be read; the message names asset, partition and file."""

    def __init__(self, message: str, path: LakePath):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return self.args[0]


class LakeBusy(TimeoutError):
    """Another writer held a value's lock for longer than the lake's ``lock_timeout``."""


# Locks this process holds, by (lock file, thread): a writer that already holds a value's lock
# (the bars asset around its read-merge-write) re-enters it when the IO manager writes the value.
_held: dict[tuple[str, int], list] = {}
_held_guard = threading.Lock()
# Without a cross-process lock (object stores other than S3), threads of one process still
# exclude each other.
_process_locks: dict[str, threading.Lock] = {}


@contextlib.contextmanager
def exclusive(
    lock: LakePath, *, what: str, timeout: float, lease: float = 3600.0
) -> Iterator[None]:
    """Hold the exclusive lock ``lock`` (created if missing), waiting up to ``timeout`` seconds.

    Re-entrant within one thread. A local lock file stays (deleting it would race with waiters)
    and holds the pid of the last holder, for the error message of a writer that gave up; an S3
    lock object exists only while held, and a lock older than ``lease`` seconds may be broken.
    """
    key = (str(lock), threading.get_ident())
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    if not is_remote(lock):
        acquire = _file_lock(Path(lock), what=what, timeout=timeout)
    elif lock.protocol in _S3:
        acquire = _object_lock(lock, what=what, timeout=timeout, lease=lease)
    else:
        acquire = _thread_lock(lock, what=what, timeout=timeout)
    with acquire:
        with _held_guard:
            _held[key] = [None, 1]
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]


@contextlib.contextmanager
def _file_lock(lock: Path, *, what: str, timeout: float) -> Iterator[None]:
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OSError(
            error.errno,
            f"{what}: cannot create the writer lock {lock} ({error.strerror}); "
            "is the lake read-only?",
        ) from error
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
                    raise LakeBusy(
                        f"{what}: another writer (pid {holder or 'unknown'}) has held {lock} for "
                        f"more than {timeout:g} s; wait for it to finish (one writer per value)"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _object_lock(lock: UPath, *, what: str, timeout: float, lease: float) -> Iterator[None]:
    """A lock object on S3: created by a conditional PUT, deleted by a conditional DELETE."""
    fs = lock.fs
    bucket, key, _ = fs.split_path(lock.path)
    holder = f"{socket.gethostname()} pid {os.getpid()}"
    deadline = time.monotonic() + timeout
    while True:
        body = json.dumps({"holder": holder, "expires": time.time() + lease}).encode()
        try:
            answer = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            etag = answer["ETag"]
            break
        except FileExistsError:
            pass  # held by someone: who, and until when?
        except OSError as error:
            raise OSError(
                f"{what}: cannot create the writer lock {lock} ({error}); does the store "
                "support conditional writes (If-None-Match) and may these credentials write?"
            ) from error
        current = _lock_object(fs, bucket, key)
        if current is None:
            continue  # released meanwhile
        other, expires, other_etag = current
        if expires < time.time():
            _delete_if_match(fs, bucket, key, other_etag)  # a dead holder's: break it
            continue
        if time.monotonic() >= deadline:
            raise LakeBusy(
                f"{what}: another writer ({other}) has held {lock} for more than {timeout:g} s "
                f"(its lease ends {time.strftime('%H:%M:%S', time.gmtime(expires))} UTC); wait "
                "for it to finish (one writer per value)"
            )
        time.sleep(0.2)
    try:
        yield
    finally:
        _delete_if_match(fs, bucket, key, etag)


def _lock_object(fs, bucket: str, key: str) -> tuple[str, float, str] | None:
    """Holder, lease end and ETag of an S3 lock object; None if there is none."""
    try:
        answer = fs.call_s3("get_object", Bucket=bucket, Key=key)
        body = _read_body(fs, answer)
    except FileNotFoundError:
        return None
    try:
        content = json.loads(body)
        return str(content["holder"]), float(content["expires"]), answer["ETag"]
    except (ValueError, KeyError, TypeError):
        return "an unreadable lock", 0.0, answer["ETag"]  # not ours to honour: break it


def _read_body(fs, answer) -> bytes:
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with answer["Body"] as stream:
            return await stream.read()

    return sync(fs.loop, read)


def _delete_if_match(fs, bucket: str, key: str, etag: str) -> None:
    """Delete a lock object only if it is still the one with ``etag`` (else someone broke an
    expired lease of ours and holds it now, or another waiter broke it first)."""
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)


@contextlib.contextmanager
def _thread_lock(lock: UPath, *, what: str, timeout: float) -> Iterator[None]:
    with _held_guard:
        mutex = _process_locks.setdefault(str(lock), threading.Lock())
    if not mutex.acquire(timeout=timeout):
        raise LakeBusy(f"{what}: another thread has held {lock} for more than {timeout:g} s")
    try:
        yield
    finally:
        mutex.release()


def lock_path(base: LakePath) -> LakePath:
    """The lock file of the value stored at ``base`` (a ``.parquet`` file or a bundle folder)."""
    return base.parent / f".{base.name}.lock"


def _try_lock(base: LakePath) -> contextlib.AbstractContextManager | None:
    """The value's lock if it is free now, else None (a live writer is at work)."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive(lock_path(base), what=str(base), timeout=0))
    except LakeBusy:
        return None
    return stack


def _leftovers(base: LakePath) -> list[LakePath]:
    """What killed writes of the value at ``base`` left behind: temporary files next to it, and
    inside its bundle folder temporary files and tables the manifest does not name."""
    found = list(base.parent.glob(f".{glob_escape(base.name)}.*.tmp"))
    if base.is_dir():
        named = set((_read_manifest(base / MANIFEST, what=str(base)) or {}).values())
        found += [p for p in base.glob("*.tmp")]
        found += [p for p in base.glob("*.parquet") if p.name not in named]
    return found


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def is_typed_value(value: object) -> bool:
    """A frozen dataclass instance whose every field is a DataFrame or a Series."""
    return (
        dataclasses.is_dataclass(value)
        and not isinstance(value, type)
        and all(
            isinstance(getattr(value, f.name), pd.DataFrame | pd.Series)
            for f in dataclasses.fields(value)
        )
    )


def _tables_of(value: object) -> tuple[dict[str, pd.DataFrame], dict]:
    """Named tables of a bundle plus what the manifest needs to rebuild it."""
    if isinstance(value, Mapping):
        return dict(value), {}
    tables, series = {}, []
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if isinstance(item, pd.Series):
            series.append(f.name)
            item = item.to_frame(name=item.name if item.name is not None else f.name)
        tables[f.name] = item
    name = records.name_of(value)
    if name is None:
        raise TypeError(_unregistered(value))
    return tables, {"type": name, "series": series}


def _unregistered(value: object) -> str:
    kind = type(value)
    return (
        f"{kind.__module__}.{kind.__qualname__} is not a registered record type: decorate the "
        "class with tvq_resources.records.lake_record so that the lake can read it back"
    )


def _record_type(manifest: dict) -> "records.RecordType | None":
    """The registered type a manifest names, its tables checked against it (None: a dict of
    tables); raises ``RecordError`` naming the rule. Runs before any table is read."""
    if "type" not in manifest:
        return None
    kind = records.lookup(manifest["type"])
    series = manifest.get("series", [])
    if not isinstance(series, list):
        raise records.RecordError(f"`series` must be a list of field names, not {series!r}")
    kind.check(list(manifest["tables"]), series)
    return kind


def _rebuild(kind: "records.RecordType | None", tables: dict, manifest: dict) -> object:
    if kind is None:
        return tables
    for column in manifest.get("series", []):
        tables[column] = tables[column].iloc[:, 0]
    return kind.build(**tables)


def write_file(data: bytes, path: LakePath) -> None:
    """Write bytes to ``path`` atomically: locally a temporary file in the same folder, fsync,
    rename; on object storage one PUT (an object appears whole or not at all)."""
    if is_remote(path):
        path.fs.pipe_file(path.path, data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_table(frame: pd.DataFrame, path: LakePath) -> None:
    """Write one DataFrame to ``path`` atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=True)
    write_file(buffer.getvalue(), path)


def write_bundle(
    tables: Mapping[str, pd.DataFrame], folder: LakePath, *, describe: Mapping | None = None
) -> None:
    """Write named tables as one unit: the manifest is switched only once every table is stored.

    A failure before the switch removes the tables already written for this bundle, so the
    folder holds exactly the previous bundle.
    """
    if not is_remote(folder):
        folder.mkdir(parents=True, exist_ok=True)  # object stores have no folders to make
    token = uuid.uuid4().hex[:12]
    files = {name: f"{name}-{token}.parquet" for name in tables}
    try:
        for name, frame in tables.items():
            write_table(frame, folder / files[name])
        manifest = json.dumps({"tables": files, **(describe or {})}).encode()
        write_file(manifest, folder / MANIFEST)
    except BaseException:
        for file in files.values():
            (folder / file).unlink(missing_ok=True)
        raise
    # Tables of the previous bundle, and any a killed write left behind: the caller holds the
    # value's lock, so no other writer has tables in progress here.
    for stale in folder.glob("*.parquet"):
        if stale.name not in files.values():
            stale.unlink(missing_ok=True)
    for stale in folder.glob("*.tmp"):
        stale.unlink(missing_ok=True)


def read_bundle(folder: LakePath, *, what: str | None = None) -> object:
    """A bundle as written: a dict of tables, or the typed value its manifest names."""
    what = what or str(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no bundle at {folder} (missing {MANIFEST})")
    manifest = _load_manifest(path, what=what)
    try:
        kind = _record_type(manifest)
    except records.RecordError as error:
        raise LakeReadError(_damaged(what, path, error), path) from error
    tables = {
        name: read_table(folder / file, what=what) for name, file in manifest["tables"].items()
    }
    try:
        return _rebuild(kind, tables, manifest)
    except (TypeError, ValueError, KeyError, IndexError) as error:
        # Tables of the right names whose content the type refuses (e.g. a Series field
        # stored with no column).
        raise LakeReadError(_damaged(what, path, error), path) from error


def read_table(path: LakePath, *, what: str) -> pd.DataFrame:
    """One stored table; any failure is a ``LakeReadError`` naming ``what`` and the file."""
    try:
        if is_remote(path):
            # One GET of the whole object: the store's own credentials and endpoint (those of
            # the path) serve it, and a value is read as of one moment.
            return pd.read_parquet(io.BytesIO(path.read_bytes()))
        return pd.read_parquet(path)
    except Exception as error:
        raise LakeReadError(_damaged(what, path, error), path) from error


def _damaged(what: str, path: LakePath, error: BaseException) -> str:
    asset, _, partition = what.partition("[")
    return (
        f"{what}: cannot read {path} ({type(error).__name__}: {error}). "
        f"`tvq lake verify` lists every damaged value; `tvq lake quarantine {asset} "
        f"{partition.rstrip(']') or '-'}` sets this one aside and recomputes it"
    )


def _load_manifest(path: LakePath, *, what: str) -> dict:
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("tables"), dict):
            raise ValueError("no `tables` mapping")
    except (OSError, ValueError) as error:
        raise LakeReadError(_damaged(what, path, error), path) from error
    return manifest


def _read_manifest(path: LakePath, *, what: str | None = None) -> dict[str, str] | None:
    """The manifest's table files by name; None when there is no manifest (no bundle)."""
    if not path.exists():
        return None
    return _load_manifest(path, what=what or str(path.parent))["tables"]


@dataclasses.dataclass(frozen=True)
class LakeProblem:
    """Something ``verify`` found: a ``damaged`` value, or a ``leftover`` of a killed write."""

    kind: str
    asset: str
    partition: str | None
    path: LakePath
    detail: str
    size: int

    def __str__(self) -> str:
        where = f"{self.asset}[{self.partition}]" if self.partition else self.asset
        return f"{self.kind:8} {where}: {self.path} ({self.detail})"


def root_setting(explicit: str | None = None) -> "str | dg.EnvVar | None":
    """The lake root the definitions configure: ``explicit`` (a test's folder), else
    ``EnvVar("TVQ_LAKE")`` when that variable is set — Dagster resolves it as a run starts and
    the UI's resource page shows it as the variable —, else None: ``$DAGSTER_HOME/lake`` when
    used. (Dagster fails a run on an ``EnvVar`` that is unset, so the local default cannot be one.)
    """
    if explicit is not None:
        return explicit
    return dg.EnvVar("TVQ_LAKE") if os.environ.get("TVQ_LAKE") else None


class RecentReads:
    """The values this process read last, by the identity of the local file that defines each
    (a table's file, a bundle's manifest): its inode, size and modification time. Several assets
    of one run read the same value (every stage after ``returns`` reads its window): it is decoded
    once and every reader gets its own deep copy, so no reader sees another's changes.

    A write replaces the file (a new inode; a bundle's manifest is written last) and so reads anew;
    object storage is always read (its files carry no identity here). At most ``entries`` values
    of at most ``budget`` bytes in all are held; a larger value is never held.
    """

    def __init__(self, *, entries: int = 8, budget: int = 512 * 2**20) -> None:
        self.entries, self.budget = entries, budget
        self._held: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.decoded = 0  # values decoded from their files (what a test of reuse counts)

    def read(self, path: LakePath, decode: Callable[[], object]) -> object:
        if is_remote(path):
            return decode()
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return decode()  # replaced meanwhile: decode() reads what is there or names it
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                self._held.move_to_end(key)
        if held is None:
            value = decode()
            self.decoded += 1
            size = _bytes_of(value)
            if size > self.budget:
                return value
            with self._lock:
                self._held[key] = (value, size)
                while (
                    len(self._held) > self.entries
                    or sum(s for _, s in self._held.values()) > self.budget
                ):
                    self._held.popitem(last=False)
            held = (value, size)
        return copy.deepcopy(held[0])

    def clear(self) -> None:
        with self._lock:
            self._held.clear()


def _bytes_of(value: object) -> int:
    """The memory of a stored value's frames and series (their data, not Python objects)."""
    if isinstance(value, pd.DataFrame):
        return int(value.memory_usage(index=True).sum())
    if isinstance(value, pd.Series):
        return int(value.memory_usage(index=True))
    parts = (
        value.values()
        if isinstance(value, Mapping)
        else (getattr(value, f.name) for f in dataclasses.fields(value))
        if dataclasses.is_dataclass(value)
        else ()
    )
    return sum(_bytes_of(part) for part in parts)


RECENT_READS = RecentReads()


class ParquetLake(dg.ConfigurableResource):
    """Where asset values live: ``{root}/{asset}/{sleeve}[/{run}].parquet`` (or a bundle folder).

    ``root`` is a folder or an fsspec URL (``s3://bucket/prefix``); the definitions pass
    ``EnvVar("TVQ_LAKE")`` (see :func:`root_setting`). Unset, it is ``$TVQ_LAKE``, else
    ``$DAGSTER_HOME/lake``, resolved when used (never at import time). ``lock_timeout`` is how
    long a writer waits for another writer of the same value; ``lock_lease`` how long an S3 lock
    object counts as held before a waiter may break it (longer than any write of one value).
    """

    root: str | None = None
    lock_timeout: float = 600.0
    lock_lease: float = 3600.0

    @property
    def root_path(self) -> LakePath:
        root = self.root
        if isinstance(root, dg.EnvVar):  # a resource not yet resolved by Dagster (the CLI)
            root = root.get_value()
        root = root or dg.EnvVar("TVQ_LAKE").get_value()
        if root:
            return lake_path(root)
        home = dg.EnvVar("DAGSTER_HOME").get_value()
        if home:
            return Path(home) / "lake"
        raise RuntimeError("set TVQ_LAKE or DAGSTER_HOME (the Makefile exports DAGSTER_HOME)")

    def location(self, asset: Sequence[str], partition: str | None) -> LakePath:
        path = self.root_path.joinpath(*asset)
        if partition is None:
            return path / "value"
        # Multi-partition keys read "2026-11-20|crypto": sleeve first on disk so one sleeve's
        # history sits in one folder.
        parts = partition.split("|")
        return path.joinpath(*reversed(parts))

    def figure(self, asset: Sequence[str], partition: str | None) -> LakePath:
        """Where the figure an asset renders of a value is stored: beside it, ``<value>.png``."""
        return self.location(asset, partition).with_suffix(".png")

    def exists(self, asset: Sequence[str], partition: str | None) -> bool:
        base = self.location(asset, partition)
        return base.with_suffix(".parquet").exists() or (base / MANIFEST).exists()

    def newest_stored(self, asset: Sequence[str], partitions: Sequence[str]) -> str | None:
        """The newest of ``partitions`` (keys of one sleeve, which differ only in their leading
        date and so sort as text) that holds a value of ``asset``, or None."""
        stored = [key for key in partitions if self.exists(asset, key)]
        return max(stored) if stored else None

    @contextlib.contextmanager
    def writer(self, asset: Sequence[str], partition: str | None) -> Iterator[None]:
        """Be the only writer of one value while the block runs.

        Hold it across read-merge-write of an incremental value (``with lake.writer(key, part):
        stored = lake.read(...); ...; yield Output(merged)``): the IO manager's write inside the
        block re-enters the lock, and a second writer waits (up to ``lock_timeout``, then
        ``LakeBusy``) and then reads what the first one wrote.
        """
        base = self.location(asset, partition)
        what = _describe(asset, partition)
        with exclusive(
            lock_path(base), what=what, timeout=self.lock_timeout, lease=self.lock_lease
        ):
            yield

    def write(
        self, asset: Sequence[str], partition: str | None, value: "pd.DataFrame | dict"
    ) -> LakePath:
        base = self.location(asset, partition)
        if not isinstance(value, pd.DataFrame) and not (
            is_typed_value(value)
            or (
                isinstance(value, Mapping)
                and all(isinstance(v, pd.DataFrame) for v in value.values())
            )
        ):
            raise TypeError(
                "the Parquet lake stores DataFrames, dicts of DataFrames or frozen dataclasses "
                f"of DataFrames/Series, not {type(value).__name__}"
            )
        if is_typed_value(value) and records.name_of(value) is None:
            raise TypeError(_unregistered(value))  # never write what no reader could decode
        with self.writer(asset, partition):
            for leftover in base.parent.glob(f".{glob_escape(base.name)}.*.tmp"):
                leftover.unlink(missing_ok=True)
            if isinstance(value, pd.DataFrame):
                path = base.with_suffix(".parquet")
                write_table(value, path)
                if base.is_dir():
                    _remove_tree(base)
                return path
            tables, describe = _tables_of(value)
            write_bundle(tables, base, describe=describe)
            base.with_suffix(".parquet").unlink(missing_ok=True)
            return base

    def read(self, asset: Sequence[str], partition: str | None) -> "pd.DataFrame | dict":
        """The stored value; a local file read before by this process, and unchanged since, is
        not decoded again (:data:`RECENT_READS`)."""
        base = self.location(asset, partition)
        what = _describe(asset, partition)
        if base.with_suffix(".parquet").exists():
            table = base.with_suffix(".parquet")
            return RECENT_READS.read(table, lambda: read_table(table, what=what))
        if (base / MANIFEST).exists():
            return RECENT_READS.read(base / MANIFEST, lambda: read_bundle(base, what=what))
        raise FileNotFoundError(
            f"{what} has not been materialised (nothing at {base}); materialise it first"
        )

    # Integrity: find damaged values and leftovers, remove leftovers, set damaged values aside.

    def _values(self) -> list[LakePath]:
        """Every stored value's base path (a table's path without ``.parquet``, or a bundle
        folder), including values of which a killed write left only temporary files."""
        bases: dict[str, LakePath] = {}
        for here, names in _folders(self.root_path):
            if MANIFEST in names or any(
                _BUNDLE_TABLE.match(n.removeprefix(".").split(".parquet")[0] + ".parquet")
                or n.startswith(".manifest.")
                for n in names
            ):
                bases[str(here)] = here  # a bundle folder: its files belong to it
                continue
            for name in names:
                if name.endswith(".parquet"):
                    base = here / name.removesuffix(".parquet")
                elif name.startswith(".") and name.endswith(".tmp"):
                    base = here / name[1:].split(".")[0]
                else:
                    continue
                bases[str(base)] = base
        return [bases[key] for key in sorted(bases)]

    def _where(self, base: LakePath) -> tuple[str, str | None]:
        """Asset and partition of a value path (assets are single-component keys here)."""
        parts = _relative_parts(base, self.root_path)
        asset, rest = parts[0], parts[1:]
        if rest == ("value",) or not rest:
            return asset, None
        return asset, "|".join(reversed(rest))

    def verify(self) -> list[LakeProblem]:
        """Read every stored value; list the damaged ones and every leftover of a killed write."""
        problems = []
        for base in self._values():
            asset, partition = self._where(base)
            what = _describe([asset], partition)
            try:
                if base.with_suffix(".parquet").exists():
                    read_table(base.with_suffix(".parquet"), what=what)
                elif (base / MANIFEST).exists():
                    read_bundle(base, what=what)
            except LakeReadError as error:
                problems.append(
                    LakeProblem(
                        "damaged", asset, partition, error.path, str(error), _size(error.path)
                    )
                )
            try:
                leftovers = _leftovers(base)
            except LakeReadError:
                leftovers = list(base.glob("*.tmp")) if base.is_dir() else []
            problems += [
                LakeProblem("leftover", asset, partition, p, "left by a killed write", _size(p))
                for p in leftovers
            ]
        return problems

    def clean(self) -> list[LakeProblem]:
        """Remove every leftover of a killed write whose value no live writer holds now."""
        removed = []
        for problem in self.verify():
            if problem.kind != "leftover":
                continue
            base = self.location([problem.asset], problem.partition)
            held = _try_lock(base)
            if held is None:
                continue  # a live writer: its temporary files are not leftovers
            with held:
                problem.path.unlink(missing_ok=True)
            removed.append(problem)
            if not is_remote(base) and base.is_dir() and not any(base.iterdir()):
                base.rmdir()  # (an object store's folder vanishes with its last object)
        return removed

    def quarantine(self, asset: Sequence[str], partition: str | None) -> LakePath:
        """Move a stored value to ``{root}/.corrupt/`` (nothing is deleted) so that the next
        materialisation recomputes it; returns where it went."""
        base = self.location(asset, partition)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        with self.writer(asset, partition):
            found = [p for p in (base.with_suffix(".parquet"), base) if p.exists()]
            if not found:
                raise FileNotFoundError(f"{_describe(asset, partition)}: nothing stored at {base}")
            target = self.root_path.joinpath(QUARANTINE, *_relative_parts(base, self.root_path))
            target = target.with_name(f"{target.name}.{stamp}")
            for path in found:
                _move(path, target / path.name)
        return target


def _describe(asset: Sequence[str], partition: str | None) -> str:
    name = "/".join(asset)
    return f"{name}[{partition}]" if partition is not None else name


def _size(path: LakePath) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _relative_parts(path: LakePath, root: LakePath) -> tuple[str, ...]:
    if not is_remote(path):
        return Path(path).relative_to(root).parts
    inner, top = path.path.rstrip("/"), root.path.rstrip("/")
    if not inner.startswith(top + "/"):
        raise ValueError(f"{path} is not under the lake root {root}")
    return tuple(inner[len(top) + 1 :].split("/"))


def _folders(root: LakePath) -> Iterator[tuple[LakePath, list[str]]]:
    """Every folder under ``root`` but the quarantine and the cache, with the names of its files."""
    skipped = (QUARANTINE, CACHE)
    if not is_remote(root):
        for folder, subfolders, names in os.walk(root):
            if Path(folder) == Path(root):
                subfolders[:] = [d for d in subfolders if d not in skipped]
            yield Path(folder), names
        return
    if not root.exists():
        return
    top = root.path.rstrip("/")
    for folder, _subfolders, names in root.fs.walk(top):
        relative = folder.rstrip("/")[len(top) + 1 :]
        if relative.split("/")[0] in skipped:
            continue
        yield (root.joinpath(*relative.split("/")) if relative else root), list(names)


def _remove_tree(path: LakePath) -> None:
    if is_remote(path):
        path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path)


def _move(source: LakePath, target: LakePath) -> None:
    """Move a file or folder; on object storage a copy then a delete (under the value's lock)."""
    if is_remote(source):
        source.fs.mv(source.path, target.path, recursive=source.is_dir())
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))


@dataclasses.dataclass(frozen=True)
class PreviousRun:
    """An asset's own previous run: the newest of the earlier partitions its input maps to that
    holds a value (a weekday sleeve's Friday on Monday, the day before a failed run), and that
    value."""

    partition: str
    value: object


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores every asset value in the Parquet lake; no pickle anywhere."""

    lake: ParquetLake

    def handle_output(self, context: dg.OutputContext, obj: "pd.DataFrame | dict") -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self.lake.write(context.asset_key.path, partition, obj)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> "pd.DataFrame | dict | PreviousRun | None":
        asset = context.asset_key.path
        if not context.has_asset_partitions:
            return self.lake.read(asset, None)
        keys = context.asset_partition_keys
        if (context.definition_metadata or {}).get(PREVIOUS_RUN):
            newest = self.lake.newest_stored(asset, keys)
            return None if newest is None else PreviousRun(newest, self.lake.read(asset, newest))
        if (context.definition_metadata or {}).get(FAN_IN):
            return {key: self.lake.read(asset, key) for key in keys if self.lake.exists(asset, key)}
        if len(keys) != 1:
            raise ValueError(
                f"{'/'.join(asset)}: one partition per input is supported, got {len(keys)}"
            )
        return self.lake.read(asset, keys[0])
