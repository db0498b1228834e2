"""The champion policy as an MLflow models-from-code pyfunc (no pickled objects).

Logged with ``mlflow.pyfunc.log_model(python_model=<this file>, model_config={...})``; the
``model_config`` carries ``champion`` (``scorer/profile``) and ``settings`` (every parameter of
the composed policy, ``policy.settings_config``), plus provenance keys that are only recorded.
``predict(frame)`` takes the run's history in the ``policy.model_input`` layout and returns the
target weights (``weight`` by ``symbol``) that ``policy.predict_portfolio`` computes — the same
decision the ``portfolio`` asset stores. Imported only by MLflow when a model is logged or loaded;
load a registered version with ``registry.load_policy``, which verifies this file's digest first.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from tvq_assets.quant import policy


class PolicyModel(PythonModel):
    def load_context(self, context) -> None:
        config = context.model_config
        self.champion = str(config["champion"])
        self.settings = policy.settings_from_config(config["settings"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        weights = policy.predict_portfolio(model_input, self.settings, self.champion)
        return weights.rename("weight").rename_axis("symbol").reset_index()


mlflow.models.set_model(PolicyModel())
