"""The champion policy as an MLflow models-from-code pyfunc: registered when the run stores its
``portfolio``, loaded from the registry by alias, and it reproduces that ``portfolio`` (the local
SQLite tracking store, no server)."""

import dagster as dg
import numpy as np
import pytest

from tests.conftest import AS_OF, resources_for, synthetic_source
from tvq_assets import allocation, data
from tvq_assets.partitions import catalog
from tvq_assets.quant import policy
from tvq_assets.settings import policy_settings
from tvq_assets.tracking import registry
from tvq_resources.lake import ParquetLake
from tvq_resources.tracking import MlflowTracker

KEY = f"{AS_OF}|crypto"


@pytest.mark.slow
def test_the_registered_champion_predicts_the_stored_portfolio(
    tmp_path, monkeypatch, lake_root, sleeve_policy
):
    monkeypatch.chdir(tmp_path)  # anything MLflow writes relative to the cwd stays here
    sleeve_policy("crypto", policy={"test": 40, "step": 40, "turnover_penalty": 1.0})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    resources = resources_for(lake_root, crypto=synthetic_source(symbols=30))
    assets = [data.bars, data.returns, allocation.backtest, allocation.portfolio]
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(
            [data.bars], partition_key="crypto", resources=resources, instance=instance
        ).success
        assert dg.materialize(
            assets,
            partition_key=KEY,
            selection=[a.key for a in assets[1:]],
            resources=resources,
            instance=instance,
        ).success
    lake = ParquetLake(root=lake_root)
    window, stored = lake.read(["returns"], KEY), lake.read(["portfolio"], KEY)
    champion = lake.read(["backtest"], KEY).champion
    settings = policy_settings(catalog.sleeve("crypto"))
    assert policy.settings_from_config(policy.settings_config(settings)) == settings

    # The IO manager registered the champion when it stored the portfolio: load it by alias,
    # its files verified against the digests its registration recorded.
    model = registry.load_policy("crypto", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    predicted = model.predict(policy.model_input(window)).set_index("symbol")["weight"]
    expected = stored.weights["weight"]
    assert len(expected) and set(predicted.index) == set(expected.index)
    assert np.allclose(predicted.reindex(expected.index), expected, rtol=0, atol=1e-9)
    version = MlflowTracker().alias(registry.model_name("crypto"), registry.CHAMPION)
    assert version.tags["tvq.policy"] == champion and version.tags["dagster.partition"] == KEY
    assert f"decision.{AS_OF}" in version.tags
