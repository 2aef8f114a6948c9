"""Every trained model as an MLflow pyfunc over its bundle, returning what `crowd score` computes: P(buy) in
the population (negative sampling undone, Platt-scaled on the validation dates), whichever model family.

Until 2026-11-29 the PyTorch models were logged in MLflow's PyTorch flavour (a pickled module, whose pyfunc
refuses their dict input: `predict` raised a TypeError on the logged example) and `lgbm_all_mixed` in the
LightGBM one (its raw output, at the training's negative rate: 0.0078 for pairs the crowds put at 0.0005), so
the champion's served scores changed meaning with its family. The bundle is the same directory `crowd score`
reads; this file is logged as it is (MLflow's models from code: `python_model=` its path), so nothing is
pickled, and loading the model runs this file, whose set_model names the model. It loads in the project's
environment (the `ml` package and its pinned dependencies).
"""

from __future__ import annotations

import mlflow
import numpy as np

from ml.train.bundle import Bundle


class BundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc over a bundle. A LightGBM model reads a samples-like frame (target_id, target_category_id,
    is_candidate and the dense features); a deep model its batch as arrays (ids, dense, the packed behaviours or
    series it reads, and is_candidate). Both return P(buy) per row."""

    # the logged signature (from the input example) is the schema MLflow validates the input with. predict's
    # model_input has no type hint, which MLflow would read as the schema (a frame or a dict of arrays warned at
    # every logging and loading that it "must be wrapped in list[...]"), and its check for one is off (MLflow's
    # own switch, which its ChatModel sets: it warned that a hint "enables data validation")
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.bundle = Bundle.load(context.artifacts["bundle"])

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input,  # noqa: ANN001 (a frame or a dict)
                params: dict | None = None) -> np.ndarray:
        if isinstance(model_input, dict):
            return self.bundle.score_batch({k: np.asarray(v) for k, v in model_input.items()})
        return self.bundle.score_frame(model_input)


mlflow.models.set_model(BundleModel())
