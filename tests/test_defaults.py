"""One home per default: every engine or contract default that names a policy parameter must equal
the catalog's ``Policy`` default (the single home); a second home that drifts fails here. The
engine's parameter objects carry no policy default at all (tests/quant/test_policy_homes.py)."""

import dataclasses
import inspect

import pytest

from tvq_assets.catalog import Policy
from tvq_assets.quant import clusters, features, inference
from tvq_checks import contracts

POLICY = {f.name: f.default for f in dataclasses.fields(Policy)}

# (home, its parameter, the Policy field it duplicates)
HOMES = [
    (features.compute_features, "lookback", "feature_lookback"),
    (inference.rank_ic, "lookback", "feature_lookback"),
    (clusters.cluster_symbols, "lookbacks", "cluster_lookbacks"),
    (clusters.cluster_symbols, "threshold", "cluster_threshold"),
    (clusters.cluster_symbols, "max_clusters", "max_clusters"),
    (clusters.correlation_distance, "lookbacks", "cluster_lookbacks"),
    (contracts.prepare_bars, "stall_bars", "stall_bars"),
    (contracts.prepare_bars, "volume_spike_window", "volume_spike_window"),
    (contracts.bars_warning_schema, "volume_spike_sigma", "volume_spike_sigma"),
    (contracts.returns_schema, "toxic_threshold", "toxic_threshold"),
    (contracts.returns_violations, "toxic_threshold", "toxic_threshold"),
]


def _default(home, name):
    if dataclasses.is_dataclass(home):
        [field] = [f for f in dataclasses.fields(home) if f.name == name]
        return field.default
    return inspect.signature(home).parameters[name].default


@pytest.mark.parametrize(("home", "name", "field"), HOMES, ids=lambda v: getattr(v, "__name__", v))
def test_a_default_outside_the_catalog_equals_the_catalogs(home, name, field):
    value = _default(home, name)
    if value in (inspect.Parameter.empty, dataclasses.MISSING):
        return  # no second home: the caller must pass the policy's value
    value = tuple(value) if isinstance(value, list | tuple) else value
    assert value == POLICY[field], f"{home.__name__}({name}={value!r}) vs Policy.{field}"
