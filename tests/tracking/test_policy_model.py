"""The champion policy as an MLflow models-from-code pyfunc: logged, loaded, and it reproduces the
stored ``portfolio`` (a local SQLite tracking store, no server)."""

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from tests.conftest import AS_OF, resources_for, synthetic_source
from tvq_assets import allocation, data
from tvq_assets.partitions import catalog
from tvq_assets.quant import policy
from tvq_assets.settings import policy_settings
from tvq_resources.lake import ParquetLake

MODEL_FILE = Path(policy.__file__).resolve().parents[1] / "policy_model.py"
KEY = f"{AS_OF}|crypto"


@pytest.mark.slow
def test_the_logged_policy_model_predicts_the_stored_portfolio(
    tmp_path, monkeypatch, lake_root, sleeve_policy
):
    monkeypatch.chdir(tmp_path)  # anything MLflow writes relative to the cwd stays here
    import mlflow

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

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # The artifacts beside the store, never in the working directory.
    experiment = mlflow.create_experiment("models", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(
            name="policy",
            python_model=str(MODEL_FILE),
            model_config={"champion": champion, "settings": policy.settings_config(settings)},
        )
    model = mlflow.pyfunc.load_model(info.model_uri)
    predicted = model.predict(policy.model_input(window)).set_index("symbol")["weight"]
    expected = stored.weights["weight"]
    assert len(expected) and set(predicted.index) == set(expected.index)
    assert np.allclose(predicted.reindex(expected.index), expected, rtol=0, atol=1e-9)
