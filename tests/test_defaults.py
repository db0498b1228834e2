"""One home per default: every engine or contract default that names a policy parameter must equal
the catalog's ``Policy`` default (the single home); a second home that drifts fails here. The
engine's parameter objects carry no policy default at all (tests/quant/test_policy_homes.py).

The homes are found, not listed: every public function, class and method of ``tvq_assets.quant``
and ``tvq_checks`` whose parameter is named like a ``Policy`` field — the field's own name
(``toxic_threshold``) or its last words (``lookback`` for ``feature_lookback``, ``threshold``
for ``cluster_threshold``) — so a new copy is caught the day it is written."""

import dataclasses
import importlib
import inspect
import pkgutil

import pytest

import tvq_assets.quant
import tvq_checks
from tvq_assets.catalog import Policy

POLICY = {f.name: f.default for f in dataclasses.fields(Policy)}
PACKAGES = (tvq_assets.quant, tvq_checks)


def _fields_named_like(parameter: str) -> list[str]:
    return [name for name in POLICY if name == parameter or name.endswith(f"_{parameter}")]


def _callables(module):
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(value) or inspect.isclass(value):
            yield f"{module.__name__}.{name}", value
        if inspect.isclass(value):
            for method, function in vars(value).items():
                if inspect.isfunction(function) and not method.startswith("_"):
                    yield f"{module.__name__}.{name}.{method}", function


def _homes() -> list[tuple[str, str, object, list[str]]]:
    """(where, parameter, default, the Policy fields it is named like) of every default found."""
    found = []
    for package in PACKAGES:
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for where, home in _callables(module):
                try:
                    parameters = inspect.signature(home).parameters.values()
                except (TypeError, ValueError):
                    continue
                for parameter in parameters:
                    fields = _fields_named_like(parameter.name)
                    if not fields or parameter.default is inspect.Parameter.empty:
                        continue
                    exact = fields == [parameter.name]
                    # ``clusters=None`` (no cluster constraint) is an absent value, not a copy of
                    # ``max_clusters``, and ``BarPolicy.actions`` (a full table built by a factory)
                    # is no copy of ``bar_actions`` (overrides); under the field's own name even
                    # None must agree.
                    absent = parameter.default is None or _is_factory(parameter.default)
                    if absent and not exact:
                        continue
                    found.append((where, parameter.name, parameter.default, fields))
    return found


def _is_factory(value) -> bool:
    return repr(value) == "<factory>"  # how a dataclass's signature shows a default_factory


HOMES = _homes()


def _agrees(value, field: str) -> bool:
    policy = POLICY[field]
    if policy is dataclasses.MISSING:  # a default_factory field (bar_actions): no copyable value
        return False
    value = tuple(value) if isinstance(value, list | tuple) else value
    return value == policy


def test_the_search_finds_the_known_homes():
    # The search must keep seeing the copies it exists to pin (a broken search passes vacuously).
    found = {(where, name) for where, name, _, _ in HOMES}
    assert ("tvq_checks.contracts.returns_schema", "toxic_threshold") in found
    assert ("tvq_assets.quant.features.compute_features", "lookback") in found
    assert ("tvq_assets.quant.clusters.cluster_symbols", "threshold") in found


@pytest.mark.parametrize(
    ("where", "name", "value", "fields"), HOMES, ids=[f"{w}({n})" for w, n, _, _ in HOMES]
)
def test_a_default_outside_the_catalog_equals_the_catalogs(where, name, value, fields):
    assert any(_agrees(value, field) for field in fields), (
        f"{where}({name}={value!r}) differs from "
        + " and ".join(f"Policy.{field}={POLICY[field]!r}" for field in fields)
        + ": take the value from the catalog's Policy (its one home) or drop the default"
    )
