"""Every policy default has one home, ``catalog.Policy``; the engine's parameter objects have none.

A second home of a default is how the tournament and production drifted apart (0.98 against 0.90
for ``max_entropy``): these tests fail when an engine dataclass or an engine function carries a
default for a policy parameter, or when an engine object built from the catalog disagrees with it.
"""

import dataclasses
import inspect

import pytest

from tvq_assets.catalog import Policy
from tvq_assets.quant import optimise, policy, selection
from tvq_assets.quant.optimise import Constraints
from tvq_assets.quant.selection import SelectionPolicy

POLICY_FIELDS = {field.name for field in dataclasses.fields(Policy)}
ENGINE_MODULES = (selection, optimise, policy)


def _engine_dataclasses():
    for module in ENGINE_MODULES:
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
            ):
                yield f"{module.__name__}.{name}", value


def _engine_functions():
    for module in ENGINE_MODULES:
        for name, value in vars(module).items():
            if inspect.isfunction(value) and value.__module__ == module.__name__:
                yield f"{module.__name__}.{name}", value


@pytest.mark.parametrize(("name", "cls"), list(_engine_dataclasses()))
def test_no_engine_dataclass_carries_a_policy_default_of_its_own(name, cls):
    defaults = {
        field.name
        for field in dataclasses.fields(cls)
        if field.name in POLICY_FIELDS
        and (
            field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        )
    }
    assert not defaults, f"{name} has defaults for the policy parameters {sorted(defaults)}"


@pytest.mark.parametrize(("name", "function"), list(_engine_functions()))
def test_no_engine_function_carries_a_policy_default_of_its_own(name, function):
    parameters = inspect.signature(function).parameters.values()
    defaults = {p.name for p in parameters if p.name in POLICY_FIELDS and p.default is not p.empty}
    assert not defaults, f"{name} has defaults for the policy parameters {sorted(defaults)}"


def test_selection_policy_and_constraints_read_only_catalog_parameters():
    selection_fields = {field.name for field in dataclasses.fields(SelectionPolicy)}
    constraint_fields = {field.name for field in dataclasses.fields(Constraints)}
    assert selection_fields <= POLICY_FIELDS
    assert constraint_fields - {"clusters", "previous"} <= POLICY_FIELDS


@pytest.mark.parametrize(
    "policy",
    [Policy(), Policy(max_entropy=0.8, top_n=3, cap=0.1, cluster_cap=0.3, infeasible_cap="raise")],
)
def test_engine_objects_built_from_the_catalog_agree_with_it_field_by_field(policy):
    built = [SelectionPolicy.of(policy), Constraints.of(policy)]
    for engine in built:
        for field in dataclasses.fields(engine):
            if field.name in POLICY_FIELDS:
                assert getattr(engine, field.name) == getattr(policy, field.name), field.name


def test_the_catalog_entropy_default_is_the_one_selection_uses():
    assert SelectionPolicy.of(Policy()).max_entropy == 0.90


def test_an_engine_object_cannot_be_built_without_the_catalog_values():
    with pytest.raises(TypeError):
        SelectionPolicy()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Constraints()  # type: ignore[call-arg]
