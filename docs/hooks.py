"""MkDocs hooks: the reference pages are generated from the code at every build.

A reference page holds a marker, ``<!-- tvq-reference: NAME -->`` (invisible on GitHub), that the
build replaces with a table made from the code itself: the catalog's fields (``catalog.py``:
defaults, ranges, units, meanings), the ``tvq`` command's parser (``cli.py``), the asset graph
(``definitions.defs``) and the Makefile's ``## target: text`` lines. Nothing is copied by hand, so
a stale reference cannot be built: a catalog key without its meaning, an unknown marker or a
command the parser cannot give stops the build.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MARKER = re.compile(r"<!-- tvq-reference: ([a-z_]+) -->")


class ReferenceError(RuntimeError):
    """The code cannot give a complete reference (a key without its meaning, say)."""


def on_config(config: Any) -> Any:
    """Document this checkout's code, whatever the installed package points at (MkDocs restores
    ``sys.path`` after loading a hook module, so this is done here, not at import)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import tvq_assets

    imported = Path(tvq_assets.__file__).resolve().parents[1]
    if imported != ROOT:
        raise ReferenceError(
            f"tvq_assets was already imported from {imported}, not from this checkout ({ROOT})"
        )
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace every reference marker of a page with the table generated from the code."""

    def generated(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ReferenceError(
                f"{page.file.src_uri}: unknown reference {name!r} (known: {sorted(GENERATORS)})"
            )
        return GENERATORS[name]()

    return MARKER.sub(generated, markdown)


# ---------------------------------------------------------------------------------------------
# Formatting


def cell(text: object) -> str:
    """Text for one Markdown table cell: no line break, no column separator."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def shown(value: Any) -> str:
    """A default as a catalog would spell it, in code style."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e4:
        return f"`{value:,.0f}`".replace(",", "_")
    if isinstance(value, tuple | list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if isinstance(value, Mapping):
        return "`{}`" if not value else f"`{dict(value)}`"
    return f"`{value}`"


SIGNS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def rule_of(annotation: Any, limits: Mapping[str, float]) -> str:
    """The allowed values of a catalog field from its annotation and range."""
    parts = []
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    optional = False
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        optional = type(None) in arguments
        [annotation] = [a for a in arguments if a is not type(None)]
        origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    each = ""
    if origin is typing.Literal:
        parts.append("one of " + ", ".join(f"`{a}`" for a in arguments))
    elif origin is tuple:
        each = "each "
        parts.append(f"a list of {_type_name(arguments[0])}")
    elif origin in (dict, Mapping) or annotation in (dict, Mapping):
        parts.append("a mapping")
    else:
        parts.append(_type_name(annotation))
    bounds = " and ".join(f"{SIGNS[k]} {v:g}" for k, v in limits.items())
    if bounds:
        parts.append(f"{each}{bounds}")
    if optional:
        parts.append("or none")
    return ", ".join(parts)


def _type_name(annotation: Any) -> str:
    return {int: "whole number", float: "number", str: "text", bool: "true/false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


# ---------------------------------------------------------------------------------------------
# The catalog (tvq_assets/catalog.py)


def _field_rows(cls: type, prefix: str = "") -> list[tuple[object, ...]]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc")
        if not doc:
            raise ReferenceError(
                f"{cls.__name__}.{f.name} has no `doc` in tvq_assets/catalog.py: declare it with "
                "bounded(..., doc=..., unit=...) so the reference can say what it means"
            )
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rule = rule_of(hints[f.name], f.metadata.get("range", {}))
        rows.append(
            (f"`{prefix}{f.name}`", shown(default), f.metadata.get("unit") or "–", rule, doc)
        )
    return rows


def _source_rows() -> list[tuple[object, ...]]:
    from tvq_assets import catalog
    from tvq_resources.market_data import SourceConfig

    rows = []
    for name, info in SourceConfig.model_fields.items():
        if name == "calendar":  # set on the sleeve, never in its source
            continue
        if name not in catalog.SOURCE_KEY_DOCS:
            raise ReferenceError(
                f"source key {name!r} (SourceConfig) has no entry in "
                "tvq_assets/catalog.py SOURCE_KEY_DOCS"
            )
        unit, doc = catalog.SOURCE_KEY_DOCS[name]
        limits = {}
        for item in info.metadata:
            for key in ("ge", "gt", "le", "lt"):
                if getattr(item, key, None) is not None:
                    limits[key] = getattr(item, key)
            if getattr(item, "min_length", None):
                limits["length ≥"] = item.min_length
        rule = rule_of(info.annotation, {k: v for k, v in limits.items() if k in SIGNS})
        if "length ≥" in limits:
            rule += ", not empty"
        kinds = [k for k, keys in catalog.KIND_ONLY_SOURCE_KEYS.items() if name in keys]
        default = info.get_default(call_default_factory=True)
        rows.append(
            (f"`source.{name}`", ", ".join(kinds) or "all", shown(default), unit or "–", rule, doc)
        )
    return rows


def catalog_reference() -> str:
    from tvq_assets import catalog

    missing = [k for k in catalog.TOP_LEVEL_KEYS if k not in catalog.TOP_LEVEL_KEY_DOCS]
    missing += [k for k in catalog.SLEEVE_KEYS if k not in catalog.SLEEVE_KEY_DOCS]
    if missing:
        raise ReferenceError(f"catalog keys without a meaning in tvq_assets/catalog.py: {missing}")
    calendar_defaults = [
        (
            f"`{name}`",
            f"{catalog.CALENDARS[name]}",
            *(shown(values.get(key)) for key in _calendar_keys()),
        )
        for name, values in catalog.CALENDAR_DEFAULTS.items()
    ]
    rules = [
        (", ".join(f"`{f}`" for f in rule.fields), rule.rule) for rule in catalog.CROSS_FIELD_RULES
    ]
    sections = [
        "## Top level",
        table(
            ("key", "meaning"),
            [(f"`{k}`", catalog.TOP_LEVEL_KEY_DOCS[k]) for k in catalog.TOP_LEVEL_KEYS],
        ),
        "## A sleeve",
        table(
            ("key", "meaning"),
            [(f"`{k}`", catalog.SLEEVE_KEY_DOCS[k]) for k in catalog.SLEEVE_KEYS],
        ),
        "## A sleeve's source",
        "Validated by `SourceConfig` (`tvq_resources/market_data.py`); a key of another kind is "
        "refused, naming the kinds it applies to.",
        table(("key", "kinds", "default", "unit", "rule", "meaning"), _source_rows()),
        "## A sleeve's policy (`Policy`)",
        "Each key under `policy:`; a default below is replaced by the calendar's where the "
        "calendar table gives one.",
        table(
            ("key", "default", "unit", "rule", "meaning"), _field_rows(catalog.Policy, "policy.")
        ),
        "### Calendar defaults",
        table(
            ("calendar", "periods a year", *(f"`{k}`" for k in _calendar_keys())),
            calendar_defaults,
        ),
        "### Rules between fields",
        table(("fields", "rule"), rules),
        "## The meta-portfolio (`MetaPolicy`)",
        table(
            ("key", "default", "unit", "rule", "meaning"), _field_rows(catalog.MetaPolicy, "meta.")
        ),
        "### One sleeve's limits (`MetaLimit`)",
        table(
            ("key", "default", "unit", "rule", "meaning"),
            _field_rows(catalog.MetaLimit, "meta.limits.<sleeve>."),
        ),
    ]
    return "\n\n".join(sections) + "\n"


def _calendar_keys() -> list[str]:
    from tvq_assets import catalog

    return list(dict.fromkeys(k for v in catalog.CALENDAR_DEFAULTS.values() for k in v))


# ---------------------------------------------------------------------------------------------
# The tvq command (tvq_assets/cli.py)


class _Parsed(Exception):
    """Carries the parser out of ``cli.main`` before it parses anything."""


def cli_parser() -> argparse.ArgumentParser:
    """The ``tvq`` parser itself: ``cli.build_parser()`` when the module has one, else the parser
    ``cli.main`` builds, taken at the moment it would parse (nothing runs)."""
    from tvq_assets import cli

    if callable(getattr(cli, "build_parser", None)):
        return cli.build_parser()
    original = argparse.ArgumentParser.parse_args

    def stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        raise _Parsed(self)

    argparse.ArgumentParser.parse_args = stop  # type: ignore[method-assign]
    try:
        cli.main([])
    except _Parsed as parsed:
        return parsed.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise ReferenceError("tvq_assets.cli.main() returned without building its parser")


def cli_commands() -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Command name -> (its help, its parser), in the parser's order."""
    parser = cli_parser()
    [subcommands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {action.dest: action.help or "" for action in subcommands._choices_actions}
    return {name: (helps.get(name, ""), sub) for name, sub in subcommands.choices.items()}


@contextlib.contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps help to $COLUMNS: a fixed width makes the page the same on every machine."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def _argument_rows(parser: argparse.ArgumentParser) -> list[tuple[object, ...]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(action.option_strings) or action.dest
        if action.option_strings and action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}"
        notes = []
        if action.choices:
            notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
        if isinstance(action, argparse._AppendAction):
            notes.append("repeatable")
        if action.nargs == "?":
            notes.append("optional")
        if action.default not in (None, False, argparse.SUPPRESS):
            notes.append(f"default {action.default}")
        rows.append((f"`{name}`", action.help or "–", "; ".join(notes) or "–"))
    return rows


def cli_reference() -> str:
    commands = cli_commands()
    sections = [
        table(("command", "what it does"), [(f"`tvq {n}`", h) for n, (h, _) in commands.items()])
    ]
    with _columns(100):
        for name, (help_text, parser) in commands.items():
            sections += [
                f"## `tvq {name}`",
                help_text[:1].upper() + help_text[1:] + ".",
                f"```text\n{parser.format_help().rstrip()}\n```",
                table(("argument", "help", "values"), _argument_rows(parser)),
            ]
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------------------------------------
# The asset graph (tvq_assets/definitions.py)


@functools.cache
def definitions() -> Any:
    from tvq_assets.definitions import defs

    return defs


def _partitions(partitions_def: Any) -> str:
    import dagster as dg

    if partitions_def is None:
        return "none"
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return " × ".join(d.name for d in partitions_def.partitions_defs)
    if isinstance(partitions_def, dg.StaticPartitionsDefinition):
        return "sleeve"
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return "run (daily)"
    return type(partitions_def).__name__


def asset_rows() -> list[dict[str, Any]]:
    """Every asset of the code location, in the order the definitions list them, with its checks."""
    defs = definitions()
    rows = []
    for assets_def in defs.assets:  # the order the definitions list them: upstream first
        for key in assets_def.keys:
            spec = assets_def.specs_by_key[key]
            checks = sorted(
                (c for c in assets_def.check_specs if c.asset_key == key),
                key=lambda c: (not c.blocking, c.name),
            )
            rows.append(
                {
                    "key": key.to_user_string(),
                    "group": spec.group_name,
                    "partitions": _partitions(assets_def.partitions_def),
                    "deps": sorted(d.asset_key.to_user_string() for d in spec.deps),
                    "description": spec.description or "",
                    "checks": checks,
                }
            )
    return rows


def assets_reference() -> str:
    defs = definitions()
    rows = asset_rows()
    sections = [
        table(
            ("asset", "group", "partitions", "reads", "checks"),
            [
                (
                    f"[`{r['key']}`](#{r['key']})",
                    r["group"],
                    r["partitions"],
                    ", ".join(f"`{d}`" for d in r["deps"]) or "the source",
                    ", ".join(f"`{c.name}`" for c in r["checks"]) or "–",
                )
                for r in rows
            ],
        )
    ]
    for r in rows:
        sections += [
            f"## `{r['key']}`",
            f"Group `{r['group']}`, partitioned by {r['partitions']}. {r['description']}",
        ]
        if r["checks"]:
            sections.append(
                table(
                    ("check", "severity on failure", "what it checks"),
                    [
                        (
                            f"`{c.name}`",
                            "ERROR, blocking: nothing downstream runs"
                            if c.blocking
                            else "WARN, recorded",
                            c.description or "–",
                        )
                        for c in r["checks"]
                    ],
                )
            )
    jobs = [(f"`{j.name}`", j.description or "–") for j in defs.jobs]
    schedules = [
        (
            f"`{s.name}`",
            f"`{s.cron_schedule}` ({s.execution_timezone or 'UTC'})",
            s.default_status.value.lower(),
            s.description or "–",
        )
        for s in defs.schedules
    ]
    sensors = [
        (f"`{s.name}`", s.default_status.value.lower(), s.description or "–") for s in defs.sensors
    ]
    sections += [
        "## Jobs",
        table(("job", "description"), jobs),
        "## Schedules",
        table(("schedule", "cron", "default status", "description"), schedules),
        "## Sensors",
        table(("sensor", "default status", "description"), sensors),
    ]
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------------------------------------
# The Makefile's targets


def make_targets() -> dict[str, str]:
    """Target -> its ``## target[ ARGS]: text`` comment (the following ``##`` lines joined), for
    every target the Makefile defines, in its order; the same rule as ``make help``."""
    text = (ROOT / "Makefile").read_text()
    defined = set(re.findall(r"^([\w-]+):", text, flags=re.MULTILINE))
    targets: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"## ([\w-]+)( [^:]*)?: (.*)", line)
        if match and match.group(1) in defined:
            current = match.group(1)
            usage = (match.group(2) or "").strip()
            targets[current] = (f"`{usage}`: " if usage else "") + match.group(3)
        elif line.startswith("## ") and current:
            targets[current] += " " + line[3:]
        else:
            current = None
    return targets


def make_reference() -> str:
    rows = [(f"`make {t}`", text.replace("$$", "$")) for t, text in make_targets().items()]
    return table(("target", "what it does"), rows) + "\n"


GENERATORS: Mapping[str, Callable[[], str]] = {
    "catalog": catalog_reference,
    "cli": cli_reference,
    "assets": assets_reference,
    "make": make_reference,
}
