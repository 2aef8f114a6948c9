"""Training across processes: torch DistributedDataParallel under torchrun.

`crowd train --nproc N` starts N copies of the same command through torchrun (`python -m torch.distributed.run
--standalone`). Every rank reads the exports and fits the same feature map (the vocabularies must be equal
for the replicas' embeddings to be), then keeps its shard of the training rows (every N-th row from its
rank) and encodes only that. Each step, each rank trains on batch_size / N rows and DDP averages the
gradients: the same global batch and the same number of optimiser steps as one process. Every rank scores
the whole validation set with the same weights, so every rank takes the same early-stopping decision.
Rank 0 alone writes checkpoints, logs to MLflow and writes the bundle; the others leave after training.

The backend is gloo on CPUs and NCCL on GPUs (each rank its own device, LOCAL_RANK).

LightGBM stays in one process: at our sizes (up to a few million rows) it trains in seconds to minutes on
one machine with every core (its own threads), and its distributed mode needs a machine list and open ports
between the hosts, for a gain only past what one machine holds. Under --nproc, rank 0 trains it alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def current_rank() -> Rank:
    """This process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Rank()
    return Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(rank: Rank, device: torch.device) -> None:
    """Join the launch's process group once (gloo on CPUs, NCCL on GPUs)."""
    if not rank.distributed or torch_dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(rank.local_rank)
    torch_dist.init_process_group(backend=backend, timeout=dt.timedelta(minutes=30))
    log.info("rank %d of %d joined the %s process group", rank.rank, rank.world, backend)


def rank_device(rank: Rank, device: torch.device) -> torch.device:
    """Each rank its own GPU; every rank shares the CPU."""
    if rank.distributed and device.type == "cuda":
        return torch.device("cuda", rank.local_rank)
    return device


def shard(rows: int, rank: Rank) -> np.ndarray:
    """This rank's rows of `rows`: every world-th row from its rank (shards differ by at most one row; the
    trainer joins uneven ends)."""
    return np.arange(rank.rank, rows, rank.world)


def all_sum(value: float, rank: Rank) -> float:
    """A number summed over the ranks (the samples seen, the losses)."""
    if not rank.distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if torch_dist.get_backend() == "nccl":
        t = t.cuda()
    torch_dist.all_reduce(t)
    return float(t.item())


def share_of_cores(ways: int, cores: int | None = None) -> int:
    """Threads for one of `ways` processes sharing `cores` (default: every core this process may use), so that
    they do not oversubscribe them (OpenMP's threads spin while they wait)."""
    return max(1, (cores or len(os.sched_getaffinity(0))) // ways)


def launch(argv: list[str], nproc: int, cores: int | None = None) -> int:
    """Run `crowd <argv>` as nproc ranks on this machine through torchrun; returns its exit status. The ranks
    share `cores` (default: every core this process may use); OMP_NUM_THREADS, where set, is each rank's."""
    if nproc < 1:
        raise ValueError(f"--nproc: expected at least 1 process, got {nproc}")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(share_of_cores(nproc, cores)))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", str(nproc), "-m", "ml.cli", *argv]
    log.info("launching %d ranks: %s", nproc, " ".join(cmd))
    # torchrun makes a torchelastic_* folder in the temporary directory at every launch and leaves it there:
    # its and the ranks' temporary files go into a folder of this launch's own, removed when it ends
    with tempfile.TemporaryDirectory(prefix="crowd-torchrun-") as scratch:
        return subprocess.run(cmd, env={**env, "TMPDIR": scratch}).returncode


def without_nproc(argv: list[str]) -> list[str]:
    """The command line a rank runs: the launcher's, less --nproc (each rank is one process)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out
