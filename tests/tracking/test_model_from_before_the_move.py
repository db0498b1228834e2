"""A policy registered while the pyfunc's code lived at ``tvq_assets/policy_model.py`` still
loads now that it is ``tvq_assets/tracking/policy_model.py``.

MLflow's models-from-code copies the file into the model folder and records its path in
``MLmodel`` (``model_code_path``); loading joins that path's base name to the downloaded folder
and executes the copy as a fresh module (``mlflow.models.utils._load_model_code_path``), so no
module path of ours is imported by name. What the copy itself imports (``tvq_assets.quant``) and
the file's name (the ``tvq.code_sha256`` digest is of ``policy_model.py``) must stay.
``registered_before_the_move/policy_model.py`` is the file as it was registered (commit a3f1feb).
"""

import shutil
import tempfile
from pathlib import Path

import mlflow.pyfunc
import yaml

from tvq_assets.partitions import catalog
from tvq_assets.quant import policy
from tvq_assets.settings import policy_settings
from tvq_assets.tracking import registry
from tvq_resources.tracking import MlflowTracker

BEFORE = Path(__file__).with_name("registered_before_the_move") / "policy_model.py"
CHAMPION = "rank_ic/hrp"


def test_a_version_registered_from_the_old_module_path_loads_verified(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The `models:/` download reads the registry of the environment.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = MlflowTracker(tracking_uri=uri)
    name = registry.model_name("crypto")
    tracker.ensure_registered_model(name, "registered before the move")
    config = policy.settings_config(policy_settings(catalog.sleeve("crypto")))
    # The old layout: the code at <checkout>/tvq_assets/policy_model.py, registered as
    # registry._register did then; the checkout is gone by the time the version is loaded.
    checkout = Path(tempfile.mkdtemp(dir=tmp_path)) / "tvq_assets"
    checkout.mkdir()
    shutil.copy(BEFORE, checkout / "policy_model.py")
    folder = tmp_path / "model"
    mlflow.pyfunc.save_model(
        str(folder),
        python_model=str(checkout / "policy_model.py"),
        model_config={"champion": CHAMPION, "settings": config},
    )
    recorded = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert recorded["model_code_path"] == str(checkout / "policy_model.py")
    experiment = tracker.experiment_id("tvq-crypto")
    run_id = tracker.client.create_run(experiment).info.run_id
    source = tracker.log_directory(run_id, folder, "registry/rank_ic__hrp")
    tracker.create_model_version(name, source, run_id, registry.digest_tags(folder))
    shutil.rmtree(checkout)

    model = registry.load_policy("crypto", version="1", tracking_uri=tracker.uri)
    loaded = model.unwrap_python_model()
    assert type(loaded).__module__.startswith("code_model_"), "executed from the copied file"
    assert loaded.champion == CHAMPION
    assert loaded.settings == policy_settings(catalog.sleeve("crypto"))
