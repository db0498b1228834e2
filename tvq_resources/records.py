"""The record types the lake stores, by name: stored data names a type, never code.

A typed value (a frozen dataclass of DataFrames/Series) is stored as a bundle whose manifest names
its record type. Reading it looks that name up here and builds the registered type from tables
whose names were checked against the type first: every required table present, none unknown, only
fields of the type stored as a Series. Nothing named by stored data is ever imported or called
(anyone who can write the lake — a shared S3 bucket — could otherwise run code in every reader).

Types register where they are defined (``@lake_record`` on the class), so a process that holds a
value's class can read the value back; the bar store registers its own decoder (a value whose
table names vary). Manifests written before the registry name ``module:qualname``; a registered
type answers to that name too, so existing lakes keep loading. This module imports no Dagster:
the engine's dataclasses register themselves without leaving the pure engine.
"""

import dataclasses
import re
from collections.abc import Callable, Collection, Iterable
from typing import TypeVar

# Lake-facing name -> record type, and pre-registry names (``module:qualname``) -> name.
_BY_NAME: dict[str, "RecordType"] = {}
_BY_LEGACY: dict[str, str] = {}
_BY_CLASS: dict[type, str] = {}
T = TypeVar("T", bound=type)


class RecordError(ValueError):
    """Stored names that do not describe a registered record type; the message says which rule."""


@dataclasses.dataclass(frozen=True)
class RecordType:
    """How to build one stored record: ``build(**tables)`` once the table names check out."""

    name: str
    build: Callable[..., object]
    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    # Further table names accepted (the bar store's numbered segments); None: no others.
    more: re.Pattern[str] | None = None
    # Tables that may be stored as a Series (a one-column table turned back into its column).
    series: frozenset[str] = frozenset()
    legacy: tuple[str, ...] = ()

    def check(self, tables: Collection[str], series: Iterable[str]) -> None:
        """Raise ``RecordError`` naming the rule if ``tables``/``series`` do not fit this type."""
        missing = sorted(self.required - set(tables))
        if missing:
            raise RecordError(f"record type {self.name!r} needs table(s) {missing}, not stored")
        unknown = sorted(
            t
            for t in tables
            if t not in self.required
            and t not in self.optional
            and not (self.more is not None and self.more.fullmatch(t))
        )
        if unknown:
            raise RecordError(
                f"table(s) {unknown} are not fields of record type {self.name!r} "
                f"(its fields: {sorted(self.required | self.optional)})"
            )
        foreign = sorted(set(series) - (self.series & set(tables)))
        if foreign:
            raise RecordError(
                f"`series` names {foreign}, not a stored field of record type {self.name!r}"
            )


def lake_record(cls: T) -> T:
    """Register a frozen dataclass of DataFrames/Series as a lake record type (class decorator).

    Its lake name is the class name; its tables are exactly its fields. A field with a default is
    optional: a value stored before the field was added loads with the default (so a record type
    grows by adding defaulted fields, and old lakes keep loading)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"@lake_record registers dataclasses, not {cls!r}")
    fields = frozenset(f.name for f in dataclasses.fields(cls))
    defaulted = frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    )
    _register(
        RecordType(
            name=cls.__qualname__,
            build=cls,
            required=fields - defaulted,
            optional=defaulted,
            series=fields,
            legacy=(f"{cls.__module__}:{cls.__qualname__}",),
        )
    )
    _BY_CLASS[cls] = cls.__qualname__
    return cls


def register_decoder(
    name: str,
    build: Callable[..., object],
    *,
    required: Iterable[str],
    optional: Iterable[str] = (),
    more: str | None = None,
    legacy: Iterable[str] = (),
) -> None:
    """Register a stored form whose tables are not one dataclass's fields (``more``: a regular
    expression of further table names); ``build(**tables)`` returns the value."""
    _register(
        RecordType(
            name=name,
            build=build,
            required=frozenset(required),
            optional=frozenset(optional),
            more=re.compile(more) if more else None,
            legacy=tuple(legacy),
        )
    )


def _register(kind: RecordType) -> None:
    known = _BY_NAME.get(kind.name)
    if known is not None and known.legacy != kind.legacy:
        raise ValueError(
            f"two record types are named {kind.name!r} ({known.legacy} and {kind.legacy}); "
            "a lake name must be unique"
        )
    _BY_NAME[kind.name] = kind  # (the same type again: a module imported twice)
    for old in kind.legacy:
        _BY_LEGACY[old] = kind.name


def name_of(value: object) -> str | None:
    """The lake name of ``value``'s registered class; None when it is not registered."""
    return _BY_CLASS.get(type(value))


def lookup(stored: object) -> RecordType:
    """The record type a manifest names (its lake name, or a pre-registry ``module:qualname``)."""
    if not isinstance(stored, str):
        raise RecordError(f"`type` must name a record type, not {stored!r}")
    kind = _BY_NAME.get(stored) or _BY_NAME.get(_BY_LEGACY.get(stored, ""))
    if kind is None:
        raise RecordError(
            f"{stored!r} is not a registered record type (known: {sorted(_BY_NAME)}); stored "
            "data names a record type and is never imported or called"
        )
    return kind


def registered() -> dict[str, RecordType]:
    """Every registered record type by lake name."""
    return dict(_BY_NAME)
