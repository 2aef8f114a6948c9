"""Training throughput of our DIN and DeepFM against torch-rechub's, on the same exported samples.

    make bench            # installs the optional `bench` extra (torch-rechub) and runs every benchmark
    python bench/train.py --dates 3 --epochs 1 --batch-sizes 1024 4096

Both sides get the same rows (the last `--dates` training dates of the default export, negatives kept at
0.2 as in training, validation on the last sample date), the same encoded ids and scaled dense features,
the same optimiser (Adam, lr 1e-3) and the same number of epochs; each side uses its own data pipeline and
model. Reported: training samples/s (the training loop only), peak resident memory of the process, and
validation AUC. "loader" is our collate alone, with no model, to show it is never the bottleneck.
Each measurement runs in its own process so that its peak memory is its own. torch-rechub's DIN cannot take
dense features, so its AUC there reflects ids and sequences only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from ml.evaluate.metrics import auc
from ml.features.dataset import CrowdData, fit_feature_map, read_exports
from ml.features.feature_map import FeatureMap
from ml.models.zoo import ModelConfig, build_model
from ml.task import TaskPaths, load_task
from ml.train.prepared import negatives_kept
from ml.train.scoring import predict
from ml.train.trainer import TrainConfig, model_loss, seed_everything


def _data(n_dates: int) -> tuple[FeatureMap, CrowdData, CrowdData]:
    task = load_task("tmall-2013")
    paths = TaskPaths.of(task)
    dates = task.sample_dates[-n_dates:]
    train_raw = read_exports(paths.exports, dates, keep=negatives_kept(0.2, 42))
    valid_raw = read_exports(paths.exports, list(task.validation))
    fmap = fit_feature_map(train_raw, task)
    return fmap, CrowdData(train_raw, fmap), CrowdData(valid_raw, fmap)


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_ours(model_name: str, batch_size: int, epochs: int, n_dates: int) -> dict:
    fmap, train, valid = _data(n_dates)
    if model_name == "loader":
        t0 = time.perf_counter()
        n = sum(len(b["labels"]) for _ in range(epochs) for b in train.batches(batch_size, shuffle=True))
        return {"samples_per_s": n / (time.perf_counter() - t0), "auc": float("nan"), "peak_gib": _peak_gib()}
    seed_everything(0)
    model = build_model(model_name, fmap, ModelConfig())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = TrainConfig()
    t0, n = time.perf_counter(), 0
    for epoch in range(epochs):
        model.train()
        for b in train.batches(batch_size, shuffle=True, seed=epoch):
            loss = model_loss(model(b), b["labels"], cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(b["labels"])
    seconds = time.perf_counter() - t0
    return {"samples_per_s": n / seconds, "auc": auc(valid.labels[:, 0], predict(model, valid)),
            "peak_gib": _peak_gib()}


def run_rechub(model_name: str, batch_size: int, epochs: int, n_dates: int) -> dict:
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.models.ranking import DIN, DeepFM
    from torch_rechub.utils.data import DataGenerator

    fmap, train, valid = _data(n_dates)
    e, width = ModelConfig().embed_dim, fmap.sequence_length

    def x_dict(data: CrowdData) -> dict[str, np.ndarray]:
        x = {"target_id": data.ids[:, 1], "target_category_id": data.ids[:, 2]}
        encoded = data.encoded_dense()
        for i, name in enumerate(fmap.dense):
            x[name] = encoded[:, i]
        parts = {"hist_target_id": [], "hist_category_id": []}
        for start in range(0, len(data), 65536):
            b = data.batch(np.arange(start, min(start + 65536, len(data))))
            # rechub reads whole padded sequences: each collapsed behaviour repeated its count times
            index = b["hist_index"].numpy()
            counts = b["hist_count"].numpy()[index].astype(np.int64)
            owner = np.repeat(b["hist_row"].numpy(), counts)
            lens = np.bincount(owner, minlength=len(b["ids"]))
            place = np.arange(len(owner)) - np.repeat(np.cumsum(lens) - lens, lens)
            for key, col in (("hist_target_id", "hist_target"), ("hist_category_id", "hist_category")):
                arr = np.zeros((len(lens), width), dtype=np.int64)
                arr[owner, place] = np.repeat(b[col].numpy()[index], counts)
                parts[key].append(arr)
        x.update({k: np.concatenate(v) for k, v in parts.items()})
        return x

    sizes = fmap.sizes
    target = SparseFeature("target_id", sizes["target"], embed_dim=e, padding_idx=0)
    category = SparseFeature("target_category_id", sizes["category"], embed_dim=e, padding_idx=0)
    dense = [DenseFeature(name) for name in fmap.dense]
    if model_name == "din":
        history = [SequenceFeature("hist_target_id", sizes["target"], embed_dim=e, pooling="concat",
                                   shared_with="target_id", padding_idx=0),
                   SequenceFeature("hist_category_id", sizes["category"], embed_dim=e, pooling="concat",
                                   shared_with="target_category_id", padding_idx=0)]
        # rechub's DIN takes no dense features (its EmbeddingLayer refuses them beside 3-d embeddings): it gets
        # the ids and the sequences only, which is what its design allows
        model = DIN(features=[target, category], history_features=history, target_features=[target, category],
                    mlp_params={"dims": [256, 128], "dropout": 0.2},
                    attention_mlp_params={"dims": [64, 32]})
    else:
        model = DeepFM(deep_features=[*dense, target, category], fm_features=[target, category],
                       mlp_params={"dims": [256, 128], "dropout": 0.2})
    train_x, valid_x = x_dict(train), x_dict(valid)
    train_dl, valid_dl, _ = DataGenerator(train_x, train.labels[:, 0]).generate_dataloader(
        x_val=valid_x, y_val=valid.labels[:, 0], x_test=valid_x, y_test=valid.labels[:, 0], batch_size=batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCELoss()
    torch.manual_seed(0)
    t0, n = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        for x, y in train_dl:
            loss = loss_fn(model(x), y.float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(y)
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        p = np.concatenate([model(x).numpy() for x, _ in valid_dl])
    return {"samples_per_s": n / seconds, "auc": auc(valid.labels[:, 0], p), "peak_gib": _peak_gib()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dates", type=int, default=3, help="training dates (the last ones before validation)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        side, model, bs, dates = args.child
        fn = run_ours if side == "ours" else run_rechub
        print(json.dumps(fn(model, int(bs), args.epochs, int(dates))))
        return
    torch_threads = torch.get_num_threads()
    print(f"training throughput on {torch_threads} CPU threads, {args.epochs} epoch(s) over {args.dates} dates")
    print(f"{'model':<8} {'batch':>6} | {'ours samples/s':>15} {'AUC':>7} {'peak':>8} | "
          f"{'rechub samples/s':>17} {'AUC':>7} {'peak':>8} | {'speed-up':>8}")
    for bs in args.batch_sizes:
        for model in ("din", "deepfm"):
            res = {}
            for side in ("ours", "rechub"):
                out = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs), "--child", side, model,
                                      str(bs), str(args.dates)], capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{side} {model} failed:\n{out.stderr[-3000:]}")
                res[side] = json.loads(out.stdout.strip().splitlines()[-1])
            o, r = res["ours"], res["rechub"]
            print(f"{model:<8} {bs:>6} | {o['samples_per_s']:>15,.0f} {o['auc']:>7.4f} {o['peak_gib']:>6.2f}Gi | "
                  f"{r['samples_per_s']:>17,.0f} {r['auc']:>7.4f} {r['peak_gib']:>6.2f}Gi | "
                  f"{o['samples_per_s'] / r['samples_per_s']:>7.1f}x", flush=True)
        out = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs), "--child", "ours", "loader",
                              str(bs), str(args.dates)], capture_output=True, text=True, check=True)
        loader = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{'loader':<8} {bs:>6} | {loader['samples_per_s']:>15,.0f}  (our collate alone, no model)")


if __name__ == "__main__":
    main()
