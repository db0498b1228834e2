"""The tracked stages as the definitions give them: the assets' order in the graph and the module
each asset is defined in (where its describer and its diff may sit beside it).

Nothing here lists an asset: the definitions pass their assets in (``definitions.STAGES`` is
:func:`stage_order` of ``definitions.ASSETS``).
"""

import sys
from collections.abc import Iterable
from types import ModuleType

import dagster as dg

from tvq_assets.partitions import sleeve_run


def stage_order(assets: Iterable[dg.AssetsDefinition]) -> tuple[str, ...]:
    """The sleeve × run assets among ``assets`` in an order of the graph: each after every asset
    it reads, otherwise in the order given (so the definitions' order where it agrees with the
    graph). An asset reading its own previous run is no cycle; a real cycle is an error."""
    assets = list(assets)
    upstream = {
        key.to_user_string(): [dep.to_user_string() for dep in a.asset_deps[key] if dep != key]
        for a in assets
        for key in a.keys
    }
    ordered: list[str] = []
    visiting: list[str] = []

    def place(name: str) -> None:
        if name in ordered or name not in upstream:
            return
        if name in visiting:
            raise ValueError(f"the assets read one another in a cycle: {' -> '.join(visiting)}")
        visiting.append(name)
        for dependency in upstream[name]:
            place(dependency)
        visiting.pop()
        ordered.append(name)

    for name in upstream:
        place(name)
    partitioned = {
        key.to_user_string() for a in assets for key in a.keys if a.partitions_def == sleeve_run
    }
    return tuple(name for name in ordered if name in partitioned)


def home_of(op: dg.OpDefinition | None) -> ModuleType | None:
    """The module that defines the function computing an asset's op (None without one)."""
    compute = getattr(op, "compute_fn", None)
    function = getattr(compute, "decorated_fn", compute)
    return sys.modules.get(getattr(function, "__module__", None) or "")


def homes_of(assets: Iterable[dg.AssetsDefinition]) -> dict[str, ModuleType | None]:
    """The sleeve × run assets in the graph's order, each with the module that defines it."""
    assets = list(assets)
    by_name = {key.to_user_string(): a for a in assets for key in a.keys}
    return {name: home_of(by_name[name].op) for name in stage_order(assets)}
