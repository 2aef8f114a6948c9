"""A trained model as one directory (a bundle): what scoring needs and nothing else.

    config.json        model name, hyper-parameters, the negative sampling rate to correct for
    feature_map.json   (deep models) vocabularies and dense statistics fitted on the training dates
    weights.pt         (deep models) the best checkpoint's state dict
    lgbm/*.txt         (LightGBM) one booster per model of the mode, plus gbdt.json (codes, groups, prior)

The same directory is logged to MLflow with the run, so the champion can be scored from the registry.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import torch

from ml.config import Paths
from ml.features.dataset import CrowdData, RawExports, read_exports
from ml.features.feature_map import FeatureMap, Vocabulary
from ml.models.zoo import NEEDS_SERIES, ModelConfig, build_model
from ml.train.gbdt import GbdtResult, predict_gbdt
from ml.train.trainer import predict, resolve_device


def correct_for_sampling(p: np.ndarray, negative_rate: float) -> np.ndarray:
    """Undo negative down-sampling: the model saw negatives at rate r, so its odds are the true odds / r."""
    if negative_rate >= 1.0:
        return p
    return negative_rate * p / (negative_rate * p + 1.0 - p)


@dataclass
class Bundle:
    path: Path
    config: dict

    @property
    def name(self) -> str:
        return self.config["model"]

    @classmethod
    def load(cls, path: Path) -> "Bundle":
        path = Path(path)
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is not a model bundle (no config.json): train one with `crowd train`")
        return cls(path, json.loads((path / "config.json").read_text()))

    def read_population(self, exports: Path, ds: dt.date) -> RawExports:
        """The evaluation export of ds (every active user x every evaluated target), as this model reads it."""
        return read_exports(exports, [ds], part="evaluation", with_series=self.name in NEEDS_SERIES)

    def score(self, raw: RawExports, device: str = "auto") -> np.ndarray:
        """P(buy) for every row of raw.samples, corrected for the negative sampling of training."""
        rate = self.config.get("negative_rate", 1.0)
        if self.name.startswith("lgbm"):
            return correct_for_sampling(predict_gbdt(self._gbdt(), raw.samples, self.config["dense"]), rate)
        fmap = FeatureMap.load(self.path / "feature_map.json")
        model = build_model(self.name, fmap, ModelConfig(**self.config["model_config"]))
        dev = resolve_device(device)
        model.load_state_dict(torch.load(self.path / "weights.pt", map_location=dev))
        return correct_for_sampling(predict(model.to(dev), CrowdData(raw, fmap), device=dev), rate)

    def _gbdt(self) -> GbdtResult:
        meta = json.loads((self.path / "gbdt.json").read_text())
        # boosters were saved truncated at their best iteration, so predicting with all of them is right
        boosters = {n: lgb.Booster(model_file=str(self.path / "lgbm" / f"{n}.txt")) for n in meta["boosters"]}
        return GbdtResult(np.zeros(0), boosters=boosters,
                          vocabularies={c: Vocabulary(np.asarray(v, np.int64)) for c, v in meta["vocabularies"].items()},
                          group_targets=meta["group_targets"], prior=meta["prior"], group_priors=meta["group_priors"])


def load_bundle(name: str | None, paths: Paths | None = None) -> Bundle:
    """A local bundle (DATA/models/NAME), or the registry's champion when no name is given."""
    paths = paths or Paths.default()
    if name:
        return Bundle.load(paths.models / name)
    import mlflow

    from ml.tracking import CHAMPION, REGISTERED_MODEL, configure

    configure(paths)
    try:
        version = mlflow.tracking.MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    except mlflow.exceptions.MlflowException:
        raise ValueError("no champion model yet: train one with `crowd train --model ...`") from None
    return Bundle.load(Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="bundle")))


def save_deep_bundle(path: Path, name: str, model: torch.nn.Module, fmap: FeatureMap, model_cfg: ModelConfig,
                     extra: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "weights.pt")
    fmap.save(path / "feature_map.json")
    (path / "config.json").write_text(json.dumps({"model": name, "model_config": model_cfg.to_dict(), **extra}, indent=2))
    return path


def save_gbdt_bundle(path: Path, name: str, result: GbdtResult, extra: dict) -> Path:
    (path / "lgbm").mkdir(parents=True, exist_ok=True)
    for n, booster in result.boosters.items():
        booster.save_model(str(path / "lgbm" / f"{n}.txt"), num_iteration=booster.best_iteration)
    (path / "gbdt.json").write_text(json.dumps({
        "boosters": list(result.boosters), "best_iterations": result.best_iterations,
        "vocabularies": {c: v.values.tolist() for c, v in result.vocabularies.items()},
        "group_targets": result.group_targets, "prior": result.prior, "group_priors": result.group_priors,
    }))
    (path / "config.json").write_text(json.dumps({"model": name, **extra}, indent=2))
    return path


def crowd_table(frame: pd.DataFrame, scores: np.ndarray, top: int) -> pd.DataFrame:
    """The top-N users per target: target_id, rank (1 = most likely), user_id, score."""
    df = pd.DataFrame({"target_id": frame["target_id"].to_numpy(), "user_id": frame["user_id"].to_numpy(),
                       "score": scores})
    df = df.sort_values(["target_id", "score", "user_id"], ascending=[True, False, True], kind="stable")
    df["rank"] = df.groupby("target_id").cumcount() + 1
    return df[df["rank"] <= top][["target_id", "rank", "user_id", "score"]].reset_index(drop=True)
