"""The Parquet lake: every asset value as Parquet files under one root, written atomically.

A value is either one DataFrame (one file) or a bundle of named tables (a directory holding one
file per table plus a manifest): a ``dict[str, DataFrame]``, or a typed value — a frozen dataclass
whose fields are DataFrames or Series, rebuilt as that class on read (the manifest names the class;
only classes of this project's packages are ever imported). Writes never leave a half file and never
replace a good value with a broken one: a table is written to a temporary file in the same folder
and moved into place with ``os.replace``; a bundle's manifest, replaced last, names the complete
set of tables, so a crash mid-bundle leaves the previous bundle readable.

One writer per value: every write holds an exclusive lock on the value (``.{name}.lock`` next to
it, an ``fcntl`` lock the kernel releases when the process dies), and an incremental writer holds
it across read-merge-write with ``with lake.writer(asset, partition):`` so a concurrent writer
waits instead of overwriting rows it never saw. A write also removes what a killed earlier write
of the same value left behind (temporary files, tables no manifest names). ``verify``, ``clean``
and ``quarantine`` (``tvq lake ...``) find damaged values, remove leftovers and set a damaged value
aside so its asset can be recomputed; a read error always names the asset, partition and file.
"""

import contextlib
import dataclasses
import fcntl
import importlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import dagster as dg
import pandas as pd

MANIFEST = "manifest.json"
TRUSTED_PACKAGES = ("tvq_assets", "tvq_checks", "tvq_resources")
# Input metadata marking an asset's own previous run partition (a declared self-dependency): a
# missing one (a first run, a gap) loads as None instead of failing.
PREVIOUS_RUN = "previous_run"
# Input metadata marking a fan-in over several partitions (e.g. every sleeve's run of one date):
# it loads as {partition key: value} of the partitions stored; a missing one is left out and the
# asset applies its own rule to the absence.
FAN_IN = "fan_in"
QUARANTINE = ".corrupt"  # under the lake root: values set aside by `tvq lake quarantine`
# A bundle's table files are `{table}-{12 hex token}.parquet` (see write_bundle).
_BUNDLE_TABLE = re.compile(r"^.+-[0-9a-f]{12}\.parquet$")


class LakeReadError(OSError):
    """A stored value that cannot be read; the message names asset, partition and file."""

    def __init__(self, message: str, path: Path):
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


@contextlib.contextmanager
def exclusive(lock: Path, *, what: str, timeout: float) -> Iterator[None]:
    """Hold the exclusive lock ``lock`` (created if missing), waiting up to ``timeout`` seconds.

    Re-entrant within one thread. The lock file stays (deleting it would race with waiters); it
    holds the pid of the last holder, for the error message of a writer that gave up.
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
        with _held_guard:
            _held[key] = [descriptor, 1]
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def lock_path(base: Path) -> Path:
    """The lock file of the value stored at ``base`` (a ``.parquet`` file or a bundle folder)."""
    return base.parent / f".{base.name}.lock"


def _try_lock(base: Path) -> contextlib.AbstractContextManager | None:
    """The value's lock if it is free now, else None (a live writer is at work)."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive(lock_path(base), what=str(base), timeout=0))
    except LakeBusy:
        return None
    return stack


def _leftovers(base: Path) -> list[Path]:
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
    kind = type(value)
    return tables, {"type": f"{kind.__module__}:{kind.__qualname__}", "series": series}


def _rebuild(tables: dict[str, pd.DataFrame], manifest: dict, where: Path) -> object:
    kind = manifest.get("type")
    if kind is None:
        return tables
    module, _, name = kind.partition(":")
    if module.split(".")[0] not in TRUSTED_PACKAGES:
        raise ValueError(f"{where}: refusing to rebuild {kind!r}, not a class of this project")
    cls = getattr(importlib.import_module(module), name)
    for column in manifest.get("series", []):
        tables[column] = tables[column].iloc[:, 0]
    return cls(**tables)


def write_file(data: bytes, path: Path) -> None:
    """Write bytes to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
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


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write one DataFrame to ``path`` atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=True)
    write_file(buffer.getvalue(), path)


def write_bundle(
    tables: Mapping[str, pd.DataFrame], folder: Path, *, describe: Mapping | None = None
) -> None:
    """Write named tables as one unit: the manifest is switched only once every table is on disk.

    A failure before the switch removes the tables already written for this bundle, so the
    folder holds exactly the previous bundle.
    """
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    files = {name: f"{name}-{token}.parquet" for name in tables}
    manifest = folder / MANIFEST
    try:
        for name, frame in tables.items():
            write_table(frame, folder / files[name])
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".manifest.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump({"tables": files, **(describe or {})}, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, manifest)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
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


def read_bundle(folder: Path, *, what: str | None = None) -> object:
    """A bundle as written: a dict of tables, or the typed value its manifest names."""
    what = what or str(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no bundle at {folder} (missing {MANIFEST})")
    manifest = _load_manifest(path, what=what)
    tables = {
        name: read_table(folder / file, what=what) for name, file in manifest["tables"].items()
    }
    return _rebuild(tables, manifest, folder)


def read_table(path: Path, *, what: str) -> pd.DataFrame:
    """One stored table; any failure is a ``LakeReadError`` naming ``what`` and the file."""
    try:
        return pd.read_parquet(path)
    except Exception as error:
        raise LakeReadError(_damaged(what, path, error), path) from error


def _damaged(what: str, path: Path, error: BaseException) -> str:
    asset, _, partition = what.partition("[")
    return (
        f"{what}: cannot read {path} ({type(error).__name__}: {error}). "
        f"`tvq lake verify` lists every damaged value; `tvq lake quarantine {asset} "
        f"{partition.rstrip(']') or '-'}` sets this one aside and recomputes it"
    )


def _load_manifest(path: Path, *, what: str) -> dict:
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("tables"), dict):
            raise ValueError("no `tables` mapping")
    except (OSError, ValueError) as error:
        raise LakeReadError(_damaged(what, path, error), path) from error
    return manifest


def _read_manifest(path: Path, *, what: str | None = None) -> dict[str, str] | None:
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
    path: Path
    detail: str
    size: int

    def __str__(self) -> str:
        where = f"{self.asset}[{self.partition}]" if self.partition else self.asset
        return f"{self.kind:8} {where}: {self.path} ({self.detail})"


class ParquetLake(dg.ConfigurableResource):
    """Where asset values live: ``{root}/{asset}/{sleeve}[/{run}].parquet`` (or a bundle folder).

    ``root`` defaults to ``$TVQ_LAKE``, else ``$DAGSTER_HOME/lake``, resolved when used (never at
    import time). ``lock_timeout`` is how long a writer waits for another writer of the same value.
    """

    root: str | None = None
    lock_timeout: float = 600.0

    @property
    def root_path(self) -> Path:
        if self.root:
            return Path(self.root)
        if os.environ.get("TVQ_LAKE"):
            return Path(os.environ["TVQ_LAKE"])
        if os.environ.get("DAGSTER_HOME"):
            return Path(os.environ["DAGSTER_HOME"]) / "lake"
        raise RuntimeError("set TVQ_LAKE or DAGSTER_HOME (the Makefile exports DAGSTER_HOME)")

    def location(self, asset: Sequence[str], partition: str | None) -> Path:
        path = self.root_path.joinpath(*asset)
        if partition is None:
            return path / "value"
        # Multi-partition keys read "2026-11-20|crypto": sleeve first on disk so one sleeve's
        # history sits in one folder.
        parts = partition.split("|")
        return path.joinpath(*reversed(parts))

    def exists(self, asset: Sequence[str], partition: str | None) -> bool:
        base = self.location(asset, partition)
        return base.with_suffix(".parquet").exists() or (base / MANIFEST).exists()

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
        with exclusive(lock_path(base), what=what, timeout=self.lock_timeout):
            yield

    def write(
        self, asset: Sequence[str], partition: str | None, value: "pd.DataFrame | dict"
    ) -> Path:
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
        with self.writer(asset, partition):
            for leftover in base.parent.glob(f".{glob_escape(base.name)}.*.tmp"):
                leftover.unlink(missing_ok=True)
            if isinstance(value, pd.DataFrame):
                path = base.with_suffix(".parquet")
                write_table(value, path)
                if base.is_dir():
                    shutil.rmtree(base)
                return path
            tables, describe = _tables_of(value)
            write_bundle(tables, base, describe=describe)
            base.with_suffix(".parquet").unlink(missing_ok=True)
            return base

    def read(self, asset: Sequence[str], partition: str | None) -> "pd.DataFrame | dict":
        base = self.location(asset, partition)
        what = _describe(asset, partition)
        if base.with_suffix(".parquet").exists():
            return read_table(base.with_suffix(".parquet"), what=what)
        if (base / MANIFEST).exists():
            return read_bundle(base, what=what)
        raise FileNotFoundError(
            f"{what} has not been materialised (nothing at {base}); materialise it first"
        )

    # Integrity: find damaged values and leftovers, remove leftovers, set damaged values aside.

    def _values(self) -> list[Path]:
        """Every stored value's base path (a table's path without ``.parquet``, or a bundle
        folder), including values of which a killed write left only temporary files."""
        root = self.root_path
        bases: set[Path] = set()
        for folder, subfolders, names in os.walk(root):
            here = Path(folder)
            if here == root:
                subfolders[:] = [d for d in subfolders if d != QUARANTINE]
            if MANIFEST in names or any(
                _BUNDLE_TABLE.match(n.removeprefix(".").split(".parquet")[0] + ".parquet")
                or n.startswith(".manifest.")
                for n in names
            ):
                bases.add(here)  # a bundle folder: its files belong to it
                continue
            for name in names:
                if name.endswith(".parquet"):
                    bases.add(here / name.removesuffix(".parquet"))
                elif name.startswith(".") and name.endswith(".tmp"):
                    bases.add(here / name[1:].split(".")[0])
        return sorted(bases)

    def _where(self, base: Path) -> tuple[str, str | None]:
        """Asset and partition of a value path (assets are single-component keys here)."""
        parts = base.relative_to(self.root_path).parts
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
            if base.is_dir() and not any(base.iterdir()):
                base.rmdir()
        return removed

    def quarantine(self, asset: Sequence[str], partition: str | None) -> Path:
        """Move a stored value to ``{root}/.corrupt/`` (nothing is deleted) so that the next
        materialisation recomputes it; returns where it went."""
        base = self.location(asset, partition)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        with self.writer(asset, partition):
            found = [p for p in (base.with_suffix(".parquet"), base) if p.exists()]
            if not found:
                raise FileNotFoundError(f"{_describe(asset, partition)}: nothing stored at {base}")
            target = self.root_path / QUARANTINE / base.relative_to(self.root_path)
            target = target.with_name(f"{target.name}.{stamp}")
            target.mkdir(parents=True, exist_ok=True)
            for path in found:
                shutil.move(str(path), str(target / path.name))
        return target


def _describe(asset: Sequence[str], partition: str | None) -> str:
    name = "/".join(asset)
    return f"{name}[{partition}]" if partition is not None else name


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores every asset value in the Parquet lake; no pickle anywhere."""

    lake: ParquetLake

    def handle_output(self, context: dg.OutputContext, obj: "pd.DataFrame | dict") -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self.lake.write(context.asset_key.path, partition, obj)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> "pd.DataFrame | dict":
        asset = context.asset_key.path
        if not context.has_asset_partitions:
            return self.lake.read(asset, None)
        keys = context.asset_partition_keys
        if (context.definition_metadata or {}).get(PREVIOUS_RUN) and (
            len(keys) != 1 or not self.lake.exists(asset, keys[0])
        ):
            return None
        if (context.definition_metadata or {}).get(FAN_IN):
            return {key: self.lake.read(asset, key) for key in keys if self.lake.exists(asset, key)}
        if len(keys) != 1:
            raise ValueError(
                f"{'/'.join(asset)}: one partition per input is supported, got {len(keys)}"
            )
        return self.lake.read(asset, keys[0])
