"""Exports -> encoded numpy columns -> tensors per batch.

Columns keep their own types (int64 ids, float32 dense) and tensors are built per batch: never one float
matrix of everything, where ids above 2^24 would lose precision and memory would explode. Behaviour
sequences are stored once per (ds, user) as ragged arrays, and a batch's are packed without padding in
`CrowdData.batch` (the collate step). A behaviour repeated within a sequence (the same target, category,
action and age: three clicks on a brand in a day) is stored once with its count (`collapse_repeats`).
"""

from __future__ import annotations

import datetime as dt
import json
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ml.features.feature_map import FeatureMap
from ml.task import Task
from ml.train.calibration import population_weights
from ml.warehouse.export import export_dir

LABELS = ("label_buy", "label_collect_cart")
_LOG1P_COUNTS = np.log1p(np.arange(256, dtype=np.float32))  # the series' uint8 counts, log1p'd
SEQUENCES = ("hist_target_id", "hist_category_id", "hist_action", "hist_age_days", "hist_age_hours")


@dataclass
class RawExports:
    """What the exports hold for some dates, before encoding."""

    samples: pd.DataFrame
    dense: list[str]
    keys: np.ndarray  # distinct (ds, user) keys of the samples, sorted
    sequences: dict[str, np.ndarray]  # per key: flat values of each sequence column
    offsets: np.ndarray  # per key: start of its sequence in the flat values (len = keys + 1)
    series: dict[str, np.ndarray]  # timescale -> uint8 [keys, steps, slots]
    build: str = ""  # the warehouse build the exports come from (ml.warehouse.export.build_id)


def _key(ds: np.ndarray, user: np.ndarray) -> np.ndarray:
    """One int64 per (ds, user): days since epoch in the high bits, the user id (< 2^32) in the low ones."""
    ds = np.asarray(ds)
    if ds.dtype == object:  # datetime.date objects (parquet date32 read by pandas): convert each distinct one once
        codes, distinct = pd.factorize(ds)
        days = np.asarray(list(distinct), dtype="datetime64[D]").astype(np.int64)[codes]
    else:
        days = ds.astype("datetime64[D]").astype(np.int64)
    return (days << 32) | np.asarray(user, dtype=np.int64)


def _checked_schema(root: Path, ds: dt.date, part: str, fingerprint: str | None) -> dict:
    """The export's schema.json, after checking the part exists and was built with these settings."""
    d = export_dir(root, ds)
    if not (d / f"{part}.parquet").exists():
        raise ValueError(f"no {part} export for ds {ds} under {root}: run `crowd warehouse --ds {ds}` first")
    schema = json.loads((d / "schema.json").read_text())
    if fingerprint is not None and schema.get("fingerprint") != fingerprint:
        raise ValueError(f"the export of ds {ds} under {root} was built with other warehouse settings than "
                         f"this run's (fingerprint {schema.get('fingerprint') or 'none'} != {fingerprint}): "
                         f"rebuild it with the same task and overrides (crowd warehouse --task ... --ds {ds})")
    return schema


def read_exports(root: Path, dates: list[dt.date], part: str = "samples",
                 series_shape: dict[str, tuple[int, int]] | None = None, fingerprint: str | None = None,
                 keep: Callable[[pa.Table], np.ndarray] | None = None) -> RawExports:
    """Read samples (or the evaluation or forward set) of some dates with the sequences of their users, and
    their LSTM series when series_shape (Task.series_shape(): steps and slots per timescale) is given.
    With a fingerprint (Task.warehouse_fingerprint()), exports built with other settings are refused.
    keep: which rows of each date's table to keep (a boolean mask, called date by date in order), applied
    before the dates are joined and converted: the rows left out never reach memory as a frame."""
    frames, seq_tables, series_tables, dense, table = [], [], [], None, None
    builds: dict[str, dt.date] = {}
    for ds in dates:
        d = export_dir(root, ds)
        schema = _checked_schema(root, ds, part, fingerprint)
        builds.setdefault(schema.get("build", ""), ds)
        dense = dense or schema["dense"]
        table = pq.read_table(d / f"{part}.parquet")
        frames.append(table if keep is None else table.filter(pa.array(keep(table))))
        seq_tables.append(pq.read_table(d / "sequences.parquet"))
        if series_shape is not None:
            series_tables.append(pq.read_table(d / "category_series.parquet"))
    # one conversion of the concatenated Arrow tables: a pandas concat of wide frames would copy every block again
    joined = pa.concat_tables(frames, promote_options="permissive")
    del frames, table
    # each column's Arrow memory is released as it is converted: the peak is one copy, not two
    samples = joined.to_pandas(self_destruct=True, split_blocks=True)
    del joined
    check_one_build({build: f"ds {d}" for build, d in builds.items()}, root)
    return _with_users(samples, dense or [], seq_tables, series_tables, series_shape, next(iter(builds), ""))


def iter_exports(root: Path, ds: dt.date, part: str, rows: int,
                 series_shape: dict[str, tuple[int, int]] | None = None, fingerprint: str | None = None,
                 ) -> Iterator[RawExports]:
    """One date's export (the forward population, say) in chunks of at most `rows` rows, each with the
    sequences and series of its own users: memory bounded by the chunk and the users, not by the pairs
    (users x targets), whatever the population's size."""
    d = export_dir(root, ds)
    schema = _checked_schema(root, ds, part, fingerprint)
    seq_tables = [pq.read_table(d / "sequences.parquet")]
    series_tables = [pq.read_table(d / "category_series.parquet")] if series_shape is not None else []
    for batch in pq.ParquetFile(d / f"{part}.parquet").iter_batches(batch_size=rows):
        samples = pa.Table.from_batches([batch]).to_pandas(self_destruct=True, split_blocks=True)
        yield _with_users(samples, schema["dense"], seq_tables, series_tables, series_shape, schema.get("build", ""))


def _with_users(samples: pd.DataFrame, dense: list[str], seq_tables: list[pa.Table], series_tables: list[pa.Table],
                series_shape: dict[str, tuple[int, int]] | None, build: str) -> RawExports:
    """The samples with the sequences (and series) of their (ds, user) keys, taken from the exports' tables."""
    keys = np.unique(_key(samples["ds"].to_numpy(), samples["user_id"].to_numpy()))

    # sequences: map each exported row onto its key, then lay the lists out flat in key order
    lengths = np.zeros(len(keys), dtype=np.int64)
    flat: dict[str, list[np.ndarray]] = {c: [] for c in SEQUENCES}
    owners: list[np.ndarray] = []
    for t in seq_tables:
        k = _key(t["ds"].to_numpy(), t["user_id"].to_numpy())
        pos = np.searchsorted(keys, k)
        ok = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == k)
        if not ok.all():  # a chunk's users only: the others' lists are never flattened
            t, pos, ok = t.filter(pa.array(ok)), pos[ok], ok[ok]
        lens = pc.list_value_length(t["hist_target_id"]).to_numpy(zero_copy_only=False).astype(np.int64)
        lengths[pos[ok]] = lens[ok]
        owners.append(np.repeat(np.where(ok, pos, -1), lens))
        for c in SEQUENCES:
            flat[c].append(pc.list_flatten(t[c]).to_numpy().astype(np.int64))
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    order = np.argsort(owner, kind="stable")  # group by key, keeping each list's order (most recent first)
    keep = order[owner[order] >= 0]
    sequences = {c: np.concatenate(flat[c])[keep] if flat[c] else np.zeros(0, np.int64) for c in SEQUENCES}
    offsets = np.concatenate([[0], np.cumsum(lengths)])

    series: dict[str, np.ndarray] = {}
    if series_shape is not None:
        cells = pd.concat([t.to_pandas() for t in series_tables], ignore_index=True)
        k = _key(cells["ds"].to_numpy(), cells["user_id"].to_numpy())
        pos = np.searchsorted(keys, k)
        ok = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == k)
        for timescale, (steps, slots) in series_shape.items():
            arr = np.zeros((len(keys), steps, slots), dtype=np.uint8)
            m = ok & (cells["timescale"].to_numpy() == timescale)
            counts = np.minimum(cells["n"].to_numpy()[m], 255)
            arr[pos[m], cells["step"].to_numpy()[m], cells["slot"].to_numpy()[m]] = counts
            series[timescale] = arr
    return RawExports(samples, dense, keys, sequences, offsets, series, build)


def check_one_build(builds: dict[str, str], root: Path) -> None:
    """{build id: what carries it}: more than one build is a mix of data or models, refused."""
    if len(builds) > 1:
        shown = ", ".join(f"{what} from build {build or 'unrecorded'}" for build, what in builds.items())
        raise ValueError(f"the exports under {root} mix builds of the warehouse ({shown}): other data or models "
                         f"built some of them; rebuild and export every date again (crowd warehouse --task ...)")


def read_buyers(root: Path, ds: dt.date) -> pd.DataFrame:
    """Every buyer of each evaluated target in the label window of the backtest or a validation date
    (target_id, user_id, in_population, is_candidate): recall@N's denominator, which counts the buyers the
    scored set does not hold."""
    path = export_dir(root, ds) / "buyers.parquet"
    if not path.exists():
        raise ValueError(f"no buyers export for {ds} under {root}: rebuild it "
                         f"(crowd warehouse --task ... --ds {ds}) with this version of the warehouse")
    return pd.read_parquet(path, columns=["target_id", "user_id", "in_population", "is_candidate"])


class CrowdData:
    """One split's rows as the models read them, and the collate step that turns a batch of row indices into
    tensors.

    The ids and the behaviour sequences are encoded once. The dense features are kept as read (`features`:
    float32, NaN where missing, every exported dense column: LightGBM's input too) and scaled per batch by the
    feature map: a few milliseconds a batch, against a second float copy of every row (1.2 GB over the four
    splits of the default task). Every array is a plain numpy array, so a split can be written once and
    memory-mapped by every model and process that trains on it (ml.train.prepared)."""

    # per row, and per (ds, user) key (the sequences, laid out flat, and the LSTM series): what a split holds
    ROW_ARRAYS = ("ids", "features", "labels", "weights", "inclusion_prob", "user_id", "target_id",
                  "target_category_id", "is_candidate", "ds", "row")
    KEY_ARRAYS = ("offsets", "hist_target", "hist_category", "hist_action", "hist_age", "hist_count")

    def __init__(self, raw: RawExports, fmap: FeatureMap, hide_own_target: bool = False):
        """hide_own_target: a row's sequence shows no behaviour on the row's own target (an ablation)."""
        self._set(encode_split(raw, fmap), fmap, list(raw.dense), hide_own_target)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], fmap: FeatureMap, columns: list[str],
                    hide_own_target: bool = False) -> CrowdData:
        """A split from its arrays (encode_split's, or the same memory-mapped from disk); columns names the
        columns of `features`."""
        data = cls.__new__(cls)
        data._set(arrays, fmap, columns, hide_own_target)
        return data

    def _set(self, arrays: dict[str, np.ndarray], fmap: FeatureMap, columns: list[str], hide_own_target: bool) -> None:
        missing = [c for c in fmap.dense if c not in columns]
        if missing:
            raise ValueError(f"the samples lack dense features the model was trained with: {missing[:5]}")
        self.fmap, self.columns, self.hide_own_target = fmap, list(columns), hide_own_target
        self.dense_index = np.asarray([self.columns.index(c) for c in fmap.dense], dtype=np.int64)
        self.series = {k.removeprefix("series_"): v for k, v in arrays.items() if k.startswith("series_")}
        for name in (*self.ROW_ARRAYS, *self.KEY_ARRAYS):
            setattr(self, name, arrays[name])

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the split by name (the series as series_TIMESCALE): what from_arrays takes."""
        return {**{n: getattr(self, n) for n in (*self.ROW_ARRAYS, *self.KEY_ARRAYS)},
                **{f"series_{k}": v for k, v in self.series.items()}}

    def release_pages(self) -> None:
        """Drop the pages of the memory-mapped arrays from this process's resident set (MADV_DONTNEED; they
        stay in the page cache, and the next read maps them again without touching the disk). Scoring a
        million rows otherwise keeps every page it has read resident until the model is done."""
        for array in self.arrays().values():
            handle = getattr(array, "_mmap", None)
            if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
                handle.madvise(mmap.MADV_DONTNEED)

    def take(self, rows: np.ndarray) -> CrowdData:
        """These rows only (a rank's shard); the sequences stay whole, rows look theirs up by key."""
        arrays = self.arrays()
        arrays.update({n: np.asarray(arrays[n])[rows] for n in self.ROW_ARRAYS})
        return CrowdData.from_arrays(arrays, self.fmap, self.columns, self.hide_own_target)

    def __len__(self) -> int:
        return len(self.ids)

    def encoded_dense(self, idx: np.ndarray | slice = slice(None)) -> np.ndarray:
        """The models' dense inputs of these rows: the feature map's columns, scaled."""
        return self.fmap.scale_dense(np.take(np.asarray(self.features[idx]), self.dense_index, axis=1))

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu", *, sequences: bool = True,
              series: bool = True) -> dict[str, torch.Tensor]:
        """The collate step: gather the rows, and (sequences) the behaviours of their distinct sequences, packed
        one sequence after another (no padding): hist_target, hist_category, hist_action, hist_age and
        hist_count [Mu] say what each behaviour was and how many times it occurred. Each row's behaviours are
        pairs (hist_row [M], hist_index [M]): the row in the batch, the behaviour in the packed ones.

        DIN's attention runs over these M pairs only, where a batch padded to its longest sequence holds several
        times as many cells (and a mask to build and skip); and the rows of one user on one date share one
        sequence, whose keys are then built once (scoring orders its rows by sequence: `predict`).
        series: the LSTM's count series, log1p'd, once per distinct sequence too (series_index [B]: each row's).
        A model's batches hold what it reads (CrowdModel.reads): the series were most of the collate's work,
        and only the LSTM reads them."""
        rows = self.row[idx]
        out = {
            "ids": self.ids[idx],
            "dense": self.encoded_dense(idx),
            "labels": self.labels[idx],
            "weight": self.weights[idx],
        }
        seqs, seq_of = np.unique(rows, return_inverse=True) if sequences or series else (None, None)
        if sequences:
            start, lens = self.offsets[seqs], self.offsets[seqs + 1] - self.offsets[seqs]
            packed_at = np.cumsum(lens) - lens  # each distinct sequence's first behaviour among the packed ones
            flat = np.arange(int(lens.sum())) + np.repeat(start - packed_at, lens)
            row_lens = lens[seq_of]
            owner = np.repeat(np.arange(len(idx)), row_lens)
            index = np.arange(len(owner)) + np.repeat(packed_at[seq_of] - (np.cumsum(row_lens) - row_lens), row_lens)
            if self.hide_own_target and len(index):
                own = self.fmap.vocabularies["target"].encode(self.target_id[idx])
                shown = self.hist_target[flat[index]] != own[owner]
                owner, index = owner[shown], index[shown]
            out["hist_row"], out["hist_index"] = owner, index
            for name in ("hist_target", "hist_category", "hist_action", "hist_age"):
                out[name] = getattr(self, name)[flat]
            out["hist_count"] = self.hist_count[flat].astype(np.float32)
        if series and self.series:
            # each distinct (ds, user)'s series once (series_index: each row's), log1p'd through a table of the
            # 256 values a uint8 count takes: the same float32 numbers, no logarithm per cell
            out["series_index"] = seq_of
            for timescale, arr in self.series.items():
                out[timescale] = _LOG1P_COUNTS[arr[seqs]]
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in out.items()}

    def scoring_order(self, by_user: bool) -> np.ndarray:
        """The order to score rows in: by_user, the rows of one (ds, user) together, for a model that reads the
        sequences or the series (a batch then holds each once: `batch`), else as stored."""
        return np.argsort(self.row, kind="stable") if by_user else np.arange(len(self))

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, device: torch.device | str = "cpu",
                sequences: bool = True, series: bool = True, order: np.ndarray | None = None,
                ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of the rows in `order` (default: shuffled with `seed`, or as stored)."""
        if order is None:
            order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i:i + batch_size], device, sequences=sequences, series=series)


def encode_split(raw: RawExports, fmap: FeatureMap) -> dict[str, np.ndarray]:
    """The arrays of CrowdData for the rows of raw (see there), from one pass over its samples."""
    s = raw.samples
    seq = raw.sequences
    offsets, behaviours = collapse_repeats(raw.offsets, {
        "hist_target": fmap.vocabularies["target"].encode(seq["hist_target_id"]),
        "hist_category": fmap.vocabularies["category"].encode(seq["hist_category_id"]),
        "hist_action": np.clip(seq["hist_action"], 0, 4),
        "hist_age": np.clip(seq[fmap.age_column], 1, fmap.max_age),
    })
    arrays = {
        "ids": fmap.encode_ids(s),
        "features": dense_matrix(s, list(raw.dense)),
        # the forward set has no labels yet: zeros keep one batch layout for training and scoring
        "labels": np.stack([s[c].to_numpy(dtype=np.float32) if c in s else np.zeros(len(s), np.float32)
                            for c in LABELS], axis=1),
        # each row's weight in the population (1 / inclusion probability): the loss then counts a sampled
        # negative for every user it stands for, and the scores come out calibrated on the whole population
        "weights": population_weights(s),
        "inclusion_prob": (s["inclusion_prob"].to_numpy(np.float64) if "inclusion_prob" in s
                           else np.ones(len(s), np.float64)),
        "user_id": s["user_id"].to_numpy(dtype=np.int64),
        "target_id": s["target_id"].to_numpy(dtype=np.int64),
        "target_category_id": s["target_category_id"].to_numpy(dtype=np.int64),
        "is_candidate": (s["is_candidate"].to_numpy(dtype=bool) if "is_candidate" in s
                         else np.ones(len(s), dtype=bool)),
        "ds": pd.to_datetime(s["ds"]).to_numpy().astype("datetime64[D]"),
        "row": np.searchsorted(raw.keys, _key(s["ds"].to_numpy(), s["user_id"].to_numpy())),
        "offsets": offsets,
        **behaviours,
    }
    return arrays | {f"series_{k}": v for k, v in raw.series.items()}


def collapse_repeats(offsets: np.ndarray, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each sequence (a slice of the flat columns, offsets as in RawExports) with its repeated behaviours, equal in
    every column, kept once at their most recent place, and `hist_count` saying how many there were.

    Why: DIN pools sum_l score(candidate, key_l) x key_l, and a behaviour's key is a function of its columns, so
    equal behaviours score and weigh equally: count x score x key is the same sum, and its gradients the same.
    On the default task 529k behaviours of the backtest's users are 170k distinct ones: the attention, most of
    DIN's, MoE's and PLE's work per row, runs over a third of them."""
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    if len(owner) == 0:
        return offsets, {**columns, "hist_count": np.zeros(0, np.int32)}
    # sorted by (owner, columns...), ties in their stored order (lexsort is stable): a group's first is its
    # most recent place
    order = np.lexsort([*reversed(list(columns.values())), owner])  # the last key is the primary one
    keys = [owner[order], *(columns[c][order] for c in columns)]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = np.any([k[1:] != k[:-1] for k in keys], axis=0)
    group_starts = np.flatnonzero(starts)
    counts = np.diff(np.append(group_starts, len(order)))
    first = order[group_starts]  # each group's most recent place in the flat columns
    by_place = np.argsort(first, kind="stable")  # back to (owner, recency) order
    kept = first[by_place]
    new_offsets = np.concatenate([[0], np.cumsum(np.bincount(owner[kept], minlength=len(lengths)))])
    return new_offsets.astype(offsets.dtype, copy=False), {
        **{c: v[kept] for c, v in columns.items()}, "hist_count": counts[by_place].astype(np.int32)}


def dense_matrix(samples: pd.DataFrame, columns: list[str], block_rows: int = 65_536) -> np.ndarray:
    """[rows, columns] float32, NaN where missing; converted in row blocks so the temporaries stay small."""
    out = np.empty((len(samples), len(columns)), dtype=np.float32)
    for start in range(0, len(samples), block_rows):
        block = samples.iloc[start:start + block_rows][columns]
        out[start:start + len(block)] = block.to_numpy(dtype=np.float32, na_value=np.nan)
    return out


def fit_feature_map(raw: RawExports, task: Task) -> FeatureMap:
    """Next-day item tasks read the sequences' ages in hours (the log's resolution), others in days."""
    hours = task.target == "item"
    return FeatureMap.fit(
        raw.samples, raw.sequences["hist_target_id"], raw.sequences["hist_category_id"], dense=raw.dense,
        sequence_length=task.warehouse.sequence_length,
        max_age=task.windows.sequence_days * (24 if hours else 1), series_shape=task.series_shape(),
        age_column="hist_age_hours" if hours else "hist_age_days",
    )
