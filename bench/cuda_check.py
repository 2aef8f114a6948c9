"""Every deep model on a CUDA device against the CPU: a check for a machine with a GPU (CI has none).

    python bench/cuda_check.py                       # the check, then scoring throughput at 8192 and 32768 rows
    python bench/cuda_check.py --batch-sizes 2048

Checked, with torch.use_deterministic_algorithms(True) (a nondeterministic CUDA op raises): each model's
output and gradients on one batch, in training mode without dropout, equal on two CUDA runs bit for bit and
within float rounding of the CPU's. Then the models' forward passes alone on the GPU (pairs/s, no collate).
The batches are made up here in the collate's packed layout (ml.features.dataset.CrowdData.batch: each user's
rows together, each user's behaviours and series once), from a feature map fitted on random samples, so the
check needs no exports and runs where only torch, numpy and pandas are installed. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's deterministic mode needs a fixed workspace

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ml.features.feature_map import FeatureMap
from ml.models.zoo import MODELS, ModelConfig, build_model

N_DENSE, N_TARGETS, N_CATEGORIES = 117, 50, 10


def feature_map() -> FeatureMap:
    rng = np.random.default_rng(0)
    n = 5000
    samples = pd.DataFrame({"user_id": rng.integers(0, 2000, n), "target_id": rng.integers(0, N_TARGETS, n),
                            "target_category_id": rng.integers(0, N_CATEGORIES, n),
                            **{f"f{i}": rng.gamma(1.0, 2.0, n) for i in range(N_DENSE)}})
    return FeatureMap.fit(samples, rng.integers(0, N_TARGETS, 100), rng.integers(0, N_CATEGORIES, 100),
                          dense=[f"f{i}" for i in range(N_DENSE)], sequence_length=50, max_age=30,
                          series_shape={"month": (6, 21), "day": (30, 21)})


def make_batch(fmap: FeatureMap, rows: int, users: int, device: str) -> dict[str, torch.Tensor]:
    """`rows` rows of `users` users, a user's rows together, up to 17 distinct behaviours each, packed."""
    g = np.random.default_rng(1)
    seq_of = np.sort(g.integers(0, users, rows))
    lens = g.integers(0, 18, users)
    packed_at = np.cumsum(lens) - lens
    n_behaviours = int(lens.sum())
    row_lens = lens[seq_of]
    owner = np.repeat(np.arange(rows), row_lens)
    index = np.arange(len(owner)) + np.repeat(packed_at[seq_of] - (np.cumsum(row_lens) - row_lens), row_lens)
    arrays = {
        "ids": np.stack([g.integers(2, fmap.sizes[v], rows) for v in fmap.id_fields.values()], axis=1),
        "dense": g.standard_normal((rows, N_DENSE)).astype(np.float32),
        "labels": (g.random((rows, 2)) < 0.05).astype(np.float32), "weight": np.ones(rows, np.float32),
        "hist_row": owner, "hist_index": index,
        "hist_target": g.integers(2, fmap.sizes["target"], n_behaviours),
        "hist_category": g.integers(2, fmap.sizes["category"], n_behaviours),
        "hist_action": g.integers(1, 5, n_behaviours), "hist_age": g.integers(1, fmap.max_age + 1, n_behaviours),
        "hist_count": g.integers(1, 4, n_behaviours).astype(np.float32),
        "series_index": seq_of, "month": g.random((users, 6, 21)).astype(np.float32),
        "day": g.random((users, 30, 21)).astype(np.float32),
    }
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def output_and_gradients(fmap: FeatureMap, name: str, device: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    # training mode (cuDNN's LSTM backward needs it) without dropout: the CPU and the GPU compute one function
    model = build_model(name, fmap, ModelConfig(dropout=0.0)).to(device).train()
    out = model(make_batch(fmap, 512, 40, device))["buy"]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
    grads = [torch.zeros_like(p).cpu() if g is None else g.cpu() for p, g in zip(params, grads, strict=True)]
    return out.detach().cpu(), grads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[8192, 32768],
                    help="rows per batch of the throughput part (default 8192 32768; 50 rows per user)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: this check is for a machine with a GPU")
        return 1
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    torch.use_deterministic_algorithms(True)
    fmap, failed = feature_map(), []
    for name in sorted(MODELS):
        cpu, cpu_grads = output_and_gradients(fmap, name, "cpu")
        first, first_grads = output_and_gradients(fmap, name, "cuda")
        second, second_grads = output_and_gradients(fmap, name, "cuda")
        repeatable = torch.equal(first, second) and all(map(torch.equal, first_grads, second_grads))
        out_diff = (first - cpu).abs().max().item()
        largest = max(g.abs().max().item() for g in cpu_grads)
        grad_diff = max((a - b).abs().max().item() for a, b in zip(first_grads, cpu_grads, strict=True)) / largest
        good = repeatable and out_diff < 1e-4 and grad_diff < 1e-3
        failed += [] if good else [name]
        print(f"{name:<7} two CUDA runs equal bit for bit: {repeatable}; |CUDA - CPU|: output {out_diff:.1e}, "
              f"gradients {grad_diff:.1e} of the largest  {'ok' if good else 'FAILED'}", flush=True)
    torch.use_deterministic_algorithms(False)
    for name in sorted(MODELS):
        model = build_model(name, fmap, ModelConfig()).cuda().eval()
        for rows in args.batch_sizes:
            batch = make_batch(fmap, rows, max(1, rows // 50), "cuda")
            with torch.no_grad():
                for _ in range(3):
                    model(batch)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(20):
                    model(batch)
                torch.cuda.synchronize()
            print(f"{name:<7} {rows:>6} rows a batch: {20 * rows / (time.perf_counter() - start):>13,.0f} pairs/s "
                  "(forward passes alone)", flush=True)
    print("every check passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
