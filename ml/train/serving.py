"""The LightGBM bundles as MLflow pyfunc models, so that every model family is registered and can serve.

`lgbm_all_mixed` is one booster and is logged in MLflow's LightGBM flavour; `lgbm_per_target` and
`lgbm_few_mixed` are many boosters with their routing (which target goes to which booster, and the prior for
the rest), which no flavour holds: this wrapper loads the bundle and scores a samples-like DataFrame with it.

The file is logged as it is (MLflow's models from code: `python_model=` this file's path), so no object is
pickled; loading the model runs this file, whose set_model names the model.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from ml.train.bundle import Bundle


class GbdtBundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc over a LightGBM bundle: predict(frame with target_id and the dense features) -> P(buy)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.bundle = Bundle.load(context.artifacts["bundle"])

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict | None = None) -> np.ndarray:
        return self.bundle.score_frame(model_input)


mlflow.models.set_model(GbdtBundleModel())
