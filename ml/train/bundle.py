"""A trained model as one directory (a bundle): what scoring needs and nothing else.

    config.json        model name, hyper-parameters, the negative sampling rate to correct for
    feature_map.json   (deep models) vocabularies and dense statistics fitted on the training dates
    weights.pt         (deep models) the best checkpoint's state dict
    lgbm/*.txt         (LightGBM) one booster per model of the mode, plus gbdt.json (codes, groups, prior)
    lgbm/compiled/     (LightGBM) the boosters as machine code per host, written when a large population is
                       scored (Bundle.compile_trees)

The same directory is logged to MLflow with the run, so the champion can be scored from the registry.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import torch

from ml.features.dataset import CrowdData, RawExports, iter_exports, read_exports
from ml.features.feature_map import FeatureMap, Vocabulary
from ml.models.zoo import NEEDS_SERIES, ModelConfig, build_model
from ml.outputs import checked_name, file_lock, is_ours, replacing
from ml.task import ALL_MODELS, GBDT_MODELS, TaskPaths
from ml.train.calibration import correct_for_sampling, stratified_platt_apply
from ml.train.compiled_trees import compile_booster
from ml.train.gbdt import GbdtResult, predict_gbdt
from ml.train.scoring import predict
from ml.train.trainer import load_weights, resolve_device

# LightGBM's predict costs about 1.3 s a million rows of make run's booster on 2 cores; compiling its trees
# costs 7-12 s once, and they then score a million rows in 0.3-0.5 s (ml.train.compiled_trees). A bundle
# compiles its boosters once LightGBM has spent about what compiling costs (the rent-or-buy rule: never more
# than twice the better of the two for a population whose size is not known up front, scored in chunks), and
# reads them compiled from the start where this host's are cached
COMPILE_AFTER_ROWS = 8_000_000

# the registered runs' bundles kept on disk per task (registered_bundle): the champion and the two before it
KEPT_REGISTERED = 3


@dataclass
class Bundle:
    path: Path
    config: dict
    _boosters: GbdtResult | None = field(default=None, repr=False, compare=False)
    _rows_scored: int = field(default=0, repr=False, compare=False)  # by the boosters, for COMPILE_AFTER_ROWS
    _compile_tried: bool = field(default=False, repr=False, compare=False)  # a refused compile is not retried
    _networks: dict = field(default_factory=dict, repr=False, compare=False)  # device -> (feature map, network)

    @property
    def name(self) -> str:
        return self.config["model"]

    @property
    def submission_k(self) -> int:
        """The next-day item task's submission size, chosen on the validation day at training (0: none chosen)."""
        return int(self.config.get("submission_k") or 0)

    @classmethod
    def load(cls, path: Path) -> Bundle:
        path = Path(path)
        if not (path / "config.json").exists():
            raise ValueError(f"{path} is not a model bundle (no config.json): train one with `crowd train`")
        return cls(path, json.loads((path / "config.json").read_text()))

    def read_population(self, exports: Path, ds: dt.date, part: str = "evaluation") -> RawExports:
        """A population export of ds (evaluation: the backtest's; forward: the crowds'), as this model reads it;
        refused when it was built with other warehouse settings than the model was trained on."""
        return read_exports(exports, [ds], part=part, series_shape=self._series_shape(),
                            fingerprint=self.config.get("warehouse_fingerprint"))

    def iter_population(self, exports: Path, ds: dt.date, part: str, rows: int) -> Iterator[RawExports]:
        """read_population in chunks of at most `rows` rows (ml.features.dataset.iter_exports): bounded memory
        for a population of any size."""
        return iter_exports(exports, ds, part, rows, series_shape=self._series_shape(),
                            fingerprint=self.config.get("warehouse_fingerprint"))

    def _series_shape(self) -> dict[str, tuple[int, int]] | None:
        return {k: tuple(v) for k, v in self.config["series_shape"].items()} if self.name in NEEDS_SERIES else None

    def probability(self, output: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        """The model's output for the rows of frame as P(buy) in the population: the negative sampling of
        training undone, and the Platt scaling fitted on the validation dates applied per stratum (frame's
        is_candidate; a frame without it is taken as pairs with history)."""
        touched = (frame["is_candidate"].to_numpy(dtype=bool) if "is_candidate" in frame
                   else np.ones(len(frame), dtype=bool))
        return stratified_platt_apply(correct_for_sampling(output, self.config.get("negative_rate", 1.0)), touched,
                                      self.config.get("platt"))

    def score(self, raw: RawExports, device: str = "auto", hide_own_target: bool = False) -> np.ndarray:
        """P(buy) for every row of raw.samples (see probability); hide_own_target: each row's behaviour
        sequence without the entries on its own target (an ablation: ml.evaluate.ablation)."""
        if self.name in GBDT_MODELS:
            return self.probability(predict_gbdt(self._boosters_for(len(raw.samples)), raw.samples,
                                                 self.config["dense"]), raw.samples)
        dev = resolve_device(device)
        fmap, model = self.network(dev)
        data = CrowdData(raw, fmap, hide_own_target=hide_own_target)
        return self.probability(predict(model, data, device=dev), raw.samples)

    def network(self, device: torch.device | str = "cpu") -> tuple[FeatureMap, torch.nn.Module]:
        """A deep bundle's feature map and network on `device`, in eval mode, read once per device: a population
        scored in chunks, or a serving pyfunc's batches, reuse it."""
        if str(device) not in self._networks:
            fmap = FeatureMap.load(self.path / "feature_map.json")
            model = build_model(self.name, fmap, ModelConfig(**self.config["model_config"]))
            model.load_state_dict(load_weights(self.path / "weights.pt", device))
            self._networks[str(device)] = (fmap, model.to(device).eval())
        return self._networks[str(device)]

    def score_batch(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """P(buy) (see probability) for the rows of a deep model's batch as arrays (CrowdData.batch: ids, dense
        features, and the packed behaviours or the series the model reads), with `is_candidate` per row for the
        calibration's stratum: what the registered pyfunc serves (ml.train.serving)."""
        if self.name in GBDT_MODELS:
            raise ValueError(f"{self.name} reads a frame of features: score it with Bundle.score_frame")
        _, model = self.network("cpu")
        batch = {k: torch.as_tensor(v) for k, v in arrays.items() if k != "is_candidate"}
        with torch.no_grad():
            output = model(batch)["buy"].numpy()
        return self.probability(output, pd.DataFrame({k: arrays[k] for k in ("is_candidate",) if k in arrays}))

    def score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """P(buy) for the rows of a samples-like frame (keys and dense features): LightGBM bundles only, whose
        inputs are all columns (the deep models also read the behaviour sequences, see score)."""
        if self.name not in GBDT_MODELS:
            raise ValueError(f"{self.name} reads behaviour sequences too: score it with Bundle.score")
        needed = dict.fromkeys(["target_id", *self.gbdt().vocabularies, *self.config["dense"]])  # mixed: the category
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{self.name}: the input lacks {len(missing)} feature column(s), first {missing[:5]}")
        return self.probability(predict_gbdt(self._boosters_for(len(frame)), frame, self.config["dense"]), frame)

    def gbdt(self) -> GbdtResult:
        """The boosters, read once per bundle: a serving pyfunc scores many batches with the same ones."""
        if self._boosters is None:
            self._boosters = self._read_gbdt()
        return self._boosters

    def compile_trees(self) -> GbdtResult:
        """The boosters with their trees compiled (and cached beside them for this host): what scoring a large
        population pays for once (COMPILE_AFTER_ROWS)."""
        gbdt = self.gbdt()
        for name in gbdt.boosters.keys() - gbdt.compiled.keys():
            compiled = compile_booster(self._booster_file(name), torch.get_num_threads())
            if compiled is not None:
                gbdt.compiled[name] = compiled
        return gbdt

    def _boosters_for(self, rows: int) -> GbdtResult:
        """The boosters to score `rows` more rows with: compiled once the bundle has scored COMPILE_AFTER_ROWS."""
        gbdt = self.gbdt()
        if not self._compile_tried and self._rows_scored + rows >= COMPILE_AFTER_ROWS:
            self._compile_tried = True
            gbdt = self.compile_trees()
        self._rows_scored += rows
        return gbdt

    def _booster_file(self, name: str) -> Path:
        return self.path / "lgbm" / f"{name}.txt"

    def _read_gbdt(self) -> GbdtResult:
        meta = json.loads((self.path / "gbdt.json").read_text())
        # boosters were saved truncated at their best iteration, so predicting with all of them is right
        files = {n: self._booster_file(n) for n in meta["boosters"]}
        boosters = {n: lgb.Booster(model_file=str(f)) for n, f in files.items()}
        # this host's compiled trees where they are cached (compile_trees), on the threads torch and LightGBM's
        # OpenMP take in this process
        threads = torch.get_num_threads()
        compiled = {n: c for n, f in files.items() if (c := compile_booster(f, threads, cached_only=True)) is not None}
        return GbdtResult(np.zeros(0), boosters=boosters, compiled=compiled,
                          vocabularies={c: Vocabulary(np.asarray(v, np.int64))
                                        for c, v in meta["vocabularies"].items()},
                          group_targets=meta["group_targets"], prior=meta["prior"], group_priors=meta["group_priors"])


def load_bundle(name: str | None, paths: TaskPaths, key: str, features_key: str | None = None) -> Bundle:
    """A local bundle of the task (its models/NAME), or the registered champion of the task's comparison
    fingerprint `key` when no name is given (or, given `features_key`, the latest champion of the same features
    on other data: champion_version); the bundle's config then also carries `version` and `run_id`."""
    if name:
        folder = paths.models / checked_name(name, "model")
        if not (folder / "config.json").exists():  # say which there are, not only that this one is not
            trained = ", ".join(sorted(p.parent.name for p in paths.models.glob("*/config.json"))) or "none"
            if name not in ALL_MODELS:
                raise ValueError(f"no model named {name!r}: expected one of {', '.join(ALL_MODELS)} (trained for "
                                 f"task {paths.task} on {paths.dataset}: {trained})")
            raise ValueError(f"task {paths.task} on {paths.dataset} has no trained model {name} (trained: "
                             f"{trained}): train it with `crowd train --task {paths.task} --model {name}`")
        return Bundle.load(folder)
    version = champion_version(paths, key, features_key)
    bundle = Bundle.load(registered_bundle(paths, version.run_id))
    bundle.config.update(version=str(version.version), run_id=version.run_id)
    return bundle


def champion_version(paths: TaskPaths, key: str, features_key: str | None = None):  # noqa: ANN201 (a ModelVersion)
    """The registered version serving comparison fingerprint `key`; while that comparison has none, given
    `features_key` (Task.serving_fingerprint), the latest champion of the same features and choice trained on
    other data (a log loaded again with more days): the crowds of a growing log are not held back until a
    training. Otherwise a one-line error saying there is none (and which champion there is, of
    other dbt models or settings). Cheap: `crowd score` asks before it builds the forward date's features, which
    on a large log took minutes only to end in this error."""
    import mlflow

    from ml.tracking import CHAMPION, champion_alias, configure, serving_alias, version_by_alias

    configure(paths)
    client = mlflow.tracking.MlflowClient()
    version = version_by_alias(client, paths.registered_model, champion_alias(key))
    if version is None and features_key:
        version = version_by_alias(client, paths.registered_model, serving_alias(features_key))
    if version is None:
        # the latest champion, of other data or settings: say so, it is what a user expects to be served
        latest = version_by_alias(client, paths.registered_model, CHAMPION)
        before = ("" if latest is None else
                  f"; the latest champion (version {latest.version}, {latest.tags.get('model', '?')}) was "
                  f"trained on other {'' if features_key else 'data, '}dbt models or settings and is not served on "
                  "these")
        raise ValueError(f"task {paths.task} on {paths.dataset} has no champion model for the current data and "
                         f"settings (comparison fingerprint {key}){before}: train one with "
                         f"`crowd train --task {paths.task}`")
    return version


def registered_bundle(paths: TaskPaths, run_id: str) -> Path:
    """The bundle logged with a registered run, downloaded once into the task's models/registered/RUN_ID/ and
    read from there afterwards. MLflow's download without a destination makes a temporary folder per call and
    never removes it (a copy of the champion in /tmp each time crowds are scored), and the boosters' compiled
    trees (Bundle.compile_trees) are cached beside them only in a folder that lasts. The KEPT_REGISTERED most
    recently used downloads stay; older ones are removed (a process that began scoring with one is done)."""
    import mlflow

    root = paths.models / "registered"
    folder = root / checked_name(run_id, "run id")
    with file_lock(paths.models / "registered.lock"):
        if not (folder / "bundle" / "config.json").is_file():
            with replacing(folder) as tmp:
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="bundle", dst_path=str(tmp))
        os.utime(folder)
        others = [p for p in root.iterdir() if p.is_dir() and p != folder and not p.name.startswith(".")
                  and is_ours(p)]
        for old in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)[KEPT_REGISTERED - 1:]:
            shutil.rmtree(old, ignore_errors=True)
    return folder / "bundle"


def save_deep_bundle(path: Path, name: str, model: torch.nn.Module, fmap: FeatureMap, model_cfg: ModelConfig,
                     extra: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / "weights.pt")
    fmap.save(path / "feature_map.json")
    config = {"model": name, "model_config": model_cfg.to_dict(), **extra}
    (path / "config.json").write_text(json.dumps(config, indent=2))
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
