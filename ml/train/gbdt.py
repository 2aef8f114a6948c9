"""LightGBM baselines in the original project's three modes:

  per_target   one model per evaluated target, trained on that target's samples only
  few_mixed    one model per group of a few evaluated targets (by buyer rank), the target as a category
  all_mixed    one model over every target's samples, the target and its category as categories

Every mode scores the whole evaluation set, so the three are compared on the same population. Early
stopping watches the validation AUC. A group whose training samples hold no buyer cannot be learnt: its
rows get that group's training buy rate (zero), which ranks them below every learnt group.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import pandas as pd

from ml.features.feature_map import Vocabulary
from ml.train.calibration import population_weights

if TYPE_CHECKING:
    from ml.train.compiled_trees import CompiledBooster

log = logging.getLogger(__name__)
MODES = ("per_target", "few_mixed", "all_mixed")
CATEGORICAL = ["target_id", "target_category_id"]
PREDICT_BLOCK_ROWS = 131_072
# compiled trees' blocks, one per thread at a time: a float64 matrix of 16k rows (15 MB) is still in the cache
# when the trees read it; 2.6M pairs/s on 2 cores against 2.3M in blocks of 131k (bench/score.py's rows)
COMPILED_BLOCK_ROWS = 16_384


@dataclass
class GbdtConfig:
    mode: str = "all_mixed"
    group_size: int = 5  # targets per model in few_mixed
    learning_rate: float = 0.05
    num_leaves: int = 63
    min_data_in_leaf: int = 50
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    max_rounds: int = 1000
    early_stopping: int = 30
    seed: int = 42
    threads: int = 0  # 0: LightGBM's default (all cores)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")

    def hyper_parameters(self) -> dict:
        """What decides the boosters, as a run logs it: not the threads, nor the group size outside few_mixed."""
        skip = {"threads"} | (set() if self.mode == "few_mixed" else {"group_size"})
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def params(self) -> dict:
        return {"objective": "binary", "metric": "auc", "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
                "feature_fraction": self.feature_fraction, "bagging_fraction": self.bagging_fraction,
                "bagging_freq": 1, "seed": self.seed, "deterministic": True, "verbosity": -1,
                **({"num_threads": self.threads} if self.threads else {})}


@dataclass
class GbdtResult:
    scores: np.ndarray  # on the evaluation rows, in their order
    boosters: dict[str, lgb.Booster] = field(default_factory=dict)  # model name -> booster
    importance: pd.Series | None = None  # total gain per feature, summed over boosters
    best_iterations: dict[str, int] = field(default_factory=dict)
    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)  # categorical id -> small code
    group_targets: dict[str, list[int] | None] = field(default_factory=dict)
    prior: float = 0.0  # for rows of targets outside every group
    group_priors: dict[str, float] = field(default_factory=dict)  # for groups with no booster
    seconds: float = 0.0
    # the boosters as machine code (ml.train.compiled_trees), for a bundle's scoring; a booster missing here
    # is scored by LightGBM
    compiled: dict[str, CompiledBooster] = field(default_factory=dict)


def booster_inputs(frame: pd.DataFrame, dense: list[str], vocabularies: dict[str, Vocabulary] | None) -> pd.DataFrame:
    """Dense features as float32 (missing stays NaN, which trees handle); in the mixed modes the target and
    its category as small category codes (raw ids can reach 2^31, beyond what LightGBM bins well)."""
    x = pd.DataFrame(frame[dense].to_numpy(dtype=np.float32, na_value=np.nan), columns=dense, index=frame.index)
    codes = {c: vocab.encode(frame[c].to_numpy()).astype("int32") for c, vocab in (vocabularies or {}).items()}
    return pd.concat([x, pd.DataFrame(codes, index=frame.index)], axis=1) if codes else x


def booster_matrix(frame: pd.DataFrame, dense: list[str], vocabularies: dict[str, Vocabulary] | None,
                   dtype: type = np.float32) -> np.ndarray:
    """booster_inputs as one C-ordered float matrix, for scoring: LightGBM reads it as it is, where a frame
    of mixed types is first copied into a float64 matrix (half the scoring time). The dense features are
    float32 values either way (booster_inputs), so a float64 matrix (what compiled trees read) holds the same
    numbers; the category codes are small integers, exact in both, and the columns keep booster_inputs' order."""
    return _BlockInputs.of(frame, dense, vocabularies).matrix(vocabularies, dtype)


@dataclass
class _BlockInputs:
    """A block's columns as numpy arrays, taken from the frame by one thread (pandas is not thread-safe), for
    another to copy into a matrix."""

    dense: np.ndarray  # rows x dense features, float32, in the frame's own layout (a view where it can be)
    ids: dict[str, np.ndarray]  # the categorical columns' raw ids
    targets: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, dense: list[str], vocabularies: dict[str, Vocabulary] | None) -> _BlockInputs:
        return cls(frame[dense].to_numpy(dtype=np.float32, na_value=np.nan),
                   {c: frame[c].to_numpy() for c in vocabularies or {}}, frame["target_id"].to_numpy())

    def matrix(self, vocabularies: dict[str, Vocabulary] | None, dtype: type) -> np.ndarray:
        codes = list(vocabularies or {})
        out = np.empty((len(self.dense), self.dense.shape[1] + len(codes)), dtype=dtype)
        out[:, :self.dense.shape[1]] = self.dense
        for i, c in enumerate(codes):
            out[:, self.dense.shape[1] + i] = vocabularies[c].encode(self.ids[c])
        return out


def _fit(name: str, cfg: GbdtConfig, train: pd.DataFrame, valid: pd.DataFrame, dense: list[str],
         vocabularies: dict[str, Vocabulary] | None) -> lgb.Booster:
    cats = list(vocabularies) if vocabularies else "auto"
    # Training rows count once each, as drawn: the warehouse's draw looks at no label, only at whether the
    # pair is a candidate, which the features say, so a buyer's odds given the features are the population's
    # (what is left, Platt maps back). At their
    # population weights (a sampled negative counts for 65 users on the Taobao fixture), the first rounds
    # moved on a few heavy rows: with another equally fair draw, early stopping kept round 1 and the backtest
    # AUC fell from 0.83 to 0.41. Early stopping still reads the validation dates at their population
    # weights: the criterion is the population's AUC.
    dtrain = lgb.Dataset(booster_inputs(train, dense, vocabularies), train["label_buy"], categorical_feature=cats)
    dvalid = lgb.Dataset(booster_inputs(valid, dense, vocabularies), valid["label_buy"], reference=dtrain,
                         weight=population_weights(valid))
    callbacks = [lgb.early_stopping(cfg.early_stopping, verbose=False)]
    booster = lgb.train(cfg.params(), dtrain, cfg.max_rounds, valid_sets=[dvalid], callbacks=callbacks)
    log.info("lgbm %s: %d rounds, valid AUC %.4f", name, booster.best_iteration,
             booster.best_score["valid_0"]["auc"])
    return booster


def _rate(frame: pd.DataFrame) -> float:
    """The buy rate of the population the rows stand for."""
    return float(np.average(frame["label_buy"].to_numpy(np.float64), weights=population_weights(frame)))


def train_gbdt(cfg: GbdtConfig, train: pd.DataFrame, valid: pd.DataFrame, evaluation: pd.DataFrame,
               dense: list[str], evaluated_targets: list[int]) -> GbdtResult:
    """Train the mode's boosters and score every evaluation row."""
    if cfg.mode == "all_mixed":
        groups: list[tuple[str, list[int] | None]] = [("all", None)]
    elif cfg.mode == "few_mixed":
        groups = [(f"group{i // cfg.group_size}", evaluated_targets[i:i + cfg.group_size])
                  for i in range(0, len(evaluated_targets), cfg.group_size)]
    else:
        groups = [(f"target{t}", [t]) for t in evaluated_targets]
    vocabularies = {c: Vocabulary.fit(train[c].to_numpy()) for c in CATEGORICAL} if cfg.mode != "per_target" else {}
    result = GbdtResult(np.zeros(0), vocabularies=vocabularies, group_targets=dict(groups),
                        prior=_rate(train))
    importance = pd.Series(0.0, index=booster_inputs(train.head(1), dense, vocabularies).columns)
    start = time.perf_counter()
    for name, targets in groups:
        tr = train if targets is None else train[train["target_id"].isin(targets)]
        va = valid if targets is None else valid[valid["target_id"].isin(targets)]
        if tr["label_buy"].sum() == 0 or va["label_buy"].nunique() < 2:
            result.group_priors[name] = _rate(tr) if len(tr) else 0.0
            log.info("lgbm %s: too few buyers to learn from, scored with its buy rate", name)
            continue
        booster = _fit(name, cfg, tr, va, dense, vocabularies)
        result.boosters[name] = booster
        result.best_iterations[name] = booster.best_iteration
        importance = importance.add(pd.Series(booster.feature_importance("gain"), index=booster.feature_name()),
                                    fill_value=0.0)
    result.seconds = time.perf_counter() - start
    result.importance = importance.sort_values(ascending=False)
    result.scores = predict_gbdt(result, evaluation, dense)
    return result


def predict_gbdt(result: GbdtResult, frame: pd.DataFrame, dense: list[str]) -> np.ndarray:
    """Score new rows with trained boosters (crowd score); rows no booster covers get the prior.

    In blocks of consecutive rows (bounded memory whatever the population's size), each turned into one float
    matrix once, which every group's booster then reads its rows of. Taking each group's rows out of the frame
    first (frame.iloc[rows], every column copied) cost as much as the trees: 1.2-1.4 s for the million rows of
    the default backtest against 0.64-0.84 s in LightGBM. Where every booster is compiled (a bundle's,
    ml.train.compiled_trees), the process's threads score one block each at once, building its matrix too: the
    matrix, a transposing copy, cost twice the compiled trees when one thread built it for both."""
    out = np.full(len(frame), result.prior)
    compiled_all = bool(result.boosters) and set(result.compiled) >= set(result.boosters)
    threads = max(c.threads for c in result.compiled.values()) if compiled_all else 1
    dtype = np.float64 if result.compiled else np.float32  # what compiled trees read; LightGBM reads either
    size = COMPILED_BLOCK_ROWS if compiled_all else PREDICT_BLOCK_ROWS
    starts = range(0, len(frame), size)

    def block(start: int) -> _BlockInputs:  # called by this thread only: pandas is not thread-safe
        return _BlockInputs.of(frame.iloc[start:start + size], dense, result.vocabularies)

    def score(start: int, inputs: _BlockInputs, tree_threads: int | None) -> None:
        _score_block(result, inputs, out[start:start + len(inputs.targets)], dtype, tree_threads)

    if threads == 1 or len(starts) == 1:  # the compiled trees on every thread of theirs, LightGBM on its own
        for start in starts:
            score(start, block(start), None)
        return out
    with ThreadPoolExecutor(threads) as pool:
        for wave in range(0, len(starts), threads):  # a block per thread at a time: bounded memory
            waiting = [pool.submit(score, start, block(start), 1) for start in starts[wave:wave + threads]]
            for done in waiting:
                done.result()
    return out


def _score_block(result: GbdtResult, inputs: _BlockInputs, scores: np.ndarray, dtype: type,
                 threads: int | None) -> None:
    """scores (a view into predict_gbdt's output) for one block, every group's booster on its rows; threads:
    the compiled trees' (None: all of theirs)."""
    matrix = None
    for name, group in result.group_targets.items():
        rows = np.arange(len(scores)) if group is None else np.flatnonzero(np.isin(inputs.targets, group))
        booster = result.boosters.get(name)
        if len(rows) == 0 or booster is None:
            scores[rows] = result.group_priors.get(name, result.prior)
            continue
        if matrix is None:
            matrix = inputs.matrix(result.vocabularies, dtype)
        x = matrix if group is None else matrix[rows]
        compiled = result.compiled.get(name)
        scores[rows] = (compiled.predict(x, threads) if compiled is not None
                        else booster.predict(x, num_iteration=booster.best_iteration))
