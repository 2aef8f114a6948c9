"""The fitted feature map, persisted with every model.

Evaluation and scoring reuse the map fitted on the training dates, so an id never seen in training maps to
the OOV index instead of failing, and dense features are scaled with the training statistics. Index 0 is
padding, 1 is OOV, known ids start at 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

PAD, OOV = 0, 1
ENCODE_BLOCK_ROWS = 65_536
DENSE_CLIP = 5.0  # standardised dense values are clipped to +-5: a heavy tail must not saturate FM terms
# id fields of every sample -> the vocabulary they share with the behaviour sequences
ID_FIELDS: dict[str, str] = {"user_id": "user", "target_id": "target", "target_category_id": "category"}
# categorical context a sample may carry (target item: the time of the pair's last interaction) -> its
# vocabulary of every possible value; embedded like the ids, never scaled as a number
CONTEXT_FIELDS: dict[str, tuple[str, int]] = {"ub_last_hour": ("hour", 24), "ub_last_weekday": ("weekday", 7)}
N_ACTIONS = 5  # 0 padding, 1 click, 2 collect, 3 cart, 4 buy


@dataclass
class Vocabulary:
    values: np.ndarray  # sorted distinct raw ids (int64)

    @classmethod
    def fit(cls, *columns: np.ndarray) -> Vocabulary:
        return cls(np.unique(np.concatenate([np.asarray(c, dtype=np.int64) for c in columns])))

    @property
    def size(self) -> int:
        return len(self.values) + 2

    def encode(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.int64)
        if len(self.values) == 0:
            return np.full(raw.shape, OOV, dtype=np.int64)
        pos = np.searchsorted(self.values, raw)
        hit = self.values[np.minimum(pos, len(self.values) - 1)] == raw
        return np.where(hit, pos + 2, OOV).astype(np.int64)


@dataclass
class FeatureMap:
    vocabularies: dict[str, Vocabulary]
    dense: list[str]
    fill: np.ndarray  # per dense column: the value of a missing entry (a recency with no event)
    mean: np.ndarray
    std: np.ndarray
    sequence_length: int
    max_age: int
    series_shape: dict[str, tuple[int, int]] = field(default_factory=dict)  # timescale -> (steps, slots)
    # the sample's categorical fields in the models' order (column -> vocabulary): ID_FIELDS, then the
    # CONTEXT_FIELDS the samples have. Models look a field up by name here, never by position.
    id_fields: dict[str, str] = field(default_factory=lambda: dict(ID_FIELDS))
    age_column: str = "hist_age_days"  # the sequences' age, in days, or in hours for a log with hours

    @classmethod
    def fit(cls, samples: pd.DataFrame, hist_target: np.ndarray, hist_category: np.ndarray, *, dense: list[str],
            sequence_length: int, max_age: int, series_shape: dict[str, tuple[int, int]],
            age_column: str = "hist_age_days") -> FeatureMap:
        vocabularies = {
            "user": Vocabulary.fit(samples["user_id"].to_numpy()),
            "target": Vocabulary.fit(samples["target_id"].to_numpy(), hist_target[hist_target >= 0]),
            "category": Vocabulary.fit(samples["target_category_id"].to_numpy(), hist_category),
        }
        id_fields = dict(ID_FIELDS)
        for column, (vocabulary, n_values) in CONTEXT_FIELDS.items():
            if column in samples.columns:
                vocabularies[vocabulary] = Vocabulary(np.arange(n_values, dtype=np.int64))
                id_fields[column] = vocabulary
        dense = [c for c in dense if c not in id_fields]
        raw = samples[dense].to_numpy(dtype=np.float64, na_value=np.nan)
        # a missing value is a recency with no event in the window: "longer ago than anything seen"; fmax skips
        # NaN without nanmax's warning on a column with no value at all (a recency of an action no one took)
        fill = np.nan_to_num(np.fmax.reduce(raw, axis=0), nan=0.0) + 1.0
        x = np.log1p(np.maximum(np.where(np.isnan(raw), fill, raw), 0.0))
        mean, std = x.mean(axis=0), x.std(axis=0)
        return cls(vocabularies, list(dense), fill, mean, np.where(std > 1e-9, std, 1.0), sequence_length,
                   max_age, dict(series_shape), id_fields, age_column)

    def field_index(self, column: str) -> int:
        return list(self.id_fields).index(column)

    def encode_ids(self, samples: pd.DataFrame) -> np.ndarray:
        """[rows, id fields]; a context field with no value (a pair never touched) takes the OOV index."""
        return np.stack([self.vocabularies[v].encode(samples[c].to_numpy(dtype=np.float64, na_value=-1)
                                                     if c in CONTEXT_FIELDS else samples[c].to_numpy())
                         for c, v in self.id_fields.items()], axis=1)

    def encode_dense(self, samples: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.dense if c not in samples.columns]
        if missing:
            raise ValueError(f"the samples lack dense features the model was trained with: {missing[:5]}")
        out = np.empty((len(samples), len(self.dense)), dtype=np.float32)
        # in row blocks, so that the temporaries stay small and the passes run over cached memory
        for start in range(0, len(samples), ENCODE_BLOCK_ROWS):
            block = samples.iloc[start:start + ENCODE_BLOCK_ROWS][self.dense]
            out[start:start + len(block)] = self.scale_dense(block.to_numpy(dtype=np.float32, na_value=np.nan))
        return out

    def scale_dense(self, x: np.ndarray) -> np.ndarray:
        """Raw dense values [rows, dense] as float32 (NaN where missing) -> the models' inputs, in place: the
        missing filled, log1p, standardised with the training statistics, clipped. CrowdData calls it per
        batch, so a split keeps one float copy of its features (the raw one, LightGBM's input too)."""
        x = np.asarray(x, dtype=np.float32)
        fill, mean, std = (a.astype(np.float32) for a in (self.fill, self.mean, self.std))
        np.copyto(x, fill, where=np.isnan(x))
        np.maximum(x, 0.0, out=x)
        np.log1p(x, out=x)
        x -= mean
        x /= std
        np.clip(x, -DENSE_CLIP, DENSE_CLIP, out=x)
        return x

    @property
    def sizes(self) -> dict[str, int]:
        return {name: v.size for name, v in self.vocabularies.items()}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({
            "vocabularies": {k: v.values.tolist() for k, v in self.vocabularies.items()},
            "dense": self.dense, "fill": self.fill.tolist(), "mean": self.mean.tolist(), "std": self.std.tolist(),
            "sequence_length": self.sequence_length, "max_age": self.max_age,
            "series_shape": {k: list(v) for k, v in self.series_shape.items()},
            "id_fields": self.id_fields, "age_column": self.age_column,
        }))

    @classmethod
    def load(cls, path: Path) -> FeatureMap:
        d = json.loads(Path(path).read_text())
        return cls(
            {k: Vocabulary(np.asarray(v, dtype=np.int64)) for k, v in d["vocabularies"].items()},
            d["dense"], np.asarray(d["fill"]), np.asarray(d["mean"]), np.asarray(d["std"]),
            d["sequence_length"], d["max_age"], {k: tuple(v) for k, v in d["series_shape"].items()},
            d.get("id_fields", dict(ID_FIELDS)), d.get("age_column", "hist_age_days"),
        )
