"""The Parquet lake: every asset value as Parquet files under one root, written atomically.

A value is either one DataFrame (one file) or a bundle of named tables (a directory holding one
file per table plus a manifest): a ``dict[str, DataFrame]``, or a typed value — a frozen dataclass
whose fields are DataFrames or Series, rebuilt as that class on read (the manifest names the class;
only classes of this project's packages are ever imported). Writes never leave a half file and never
replace a good value with a broken one: a table is written to a temporary file in the same folder
and moved into place with ``os.replace``; a bundle's manifest, replaced last, names the complete
set of tables, so a crash mid-bundle leaves the previous bundle readable.
"""

import dataclasses
import importlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg
import pandas as pd

MANIFEST = "manifest.json"
TRUSTED_PACKAGES = ("tvq_assets", "tvq_checks", "tvq_resources")
# Input metadata marking an asset's own previous run partition (a declared self-dependency): a
# missing one (a first run, a gap) loads as None instead of failing.
PREVIOUS_RUN = "previous_run"


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
    previous = _read_manifest(manifest) or {}
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
    for stale in set(previous.values()) - set(files.values()):
        (folder / stale).unlink(missing_ok=True)


def read_bundle(folder: Path) -> object:
    """A bundle as written: a dict of tables, or the typed value its manifest names."""
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no bundle at {folder} (missing {MANIFEST})")
    manifest = json.loads(path.read_text())
    tables = {name: pd.read_parquet(folder / file) for name, file in manifest["tables"].items()}
    return _rebuild(tables, manifest, folder)


def _read_manifest(path: Path) -> dict[str, str] | None:
    """The manifest's table files by name; None when there is no manifest (no bundle)."""
    if not path.exists():
        return None
    return json.loads(path.read_text())["tables"]


class ParquetLake(dg.ConfigurableResource):
    """Where asset values live: ``{root}/{asset}/{sleeve}[/{run}].parquet`` (or a bundle folder).

    ``root`` defaults to ``$TVQ_LAKE``, else ``$DAGSTER_HOME/lake``, resolved when used (never at
    import time).
    """

    root: str | None = None

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

    def write(
        self, asset: Sequence[str], partition: str | None, value: "pd.DataFrame | dict"
    ) -> Path:
        base = self.location(asset, partition)
        if isinstance(value, pd.DataFrame):
            path = base.with_suffix(".parquet")
            write_table(value, path)
            if (base / MANIFEST).exists():
                shutil.rmtree(base)
            return path
        if is_typed_value(value) or (
            isinstance(value, Mapping) and all(isinstance(v, pd.DataFrame) for v in value.values())
        ):
            tables, describe = _tables_of(value)
            write_bundle(tables, base, describe=describe)
            base.with_suffix(".parquet").unlink(missing_ok=True)
            return base
        raise TypeError(
            "the Parquet lake stores DataFrames, dicts of DataFrames or frozen dataclasses of "
            f"DataFrames/Series, not {type(value).__name__}"
        )

    def read(self, asset: Sequence[str], partition: str | None) -> "pd.DataFrame | dict":
        base = self.location(asset, partition)
        if base.with_suffix(".parquet").exists():
            return pd.read_parquet(base.with_suffix(".parquet"))
        if (base / MANIFEST).exists():
            return read_bundle(base)
        raise FileNotFoundError(
            f"{'/'.join(asset)}[{partition}] has not been materialised (nothing at {base})"
        )


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
        if len(keys) != 1:
            raise ValueError(
                f"{'/'.join(asset)}: one partition per input is supported, got {len(keys)}"
            )
        return self.lake.read(asset, keys[0])
