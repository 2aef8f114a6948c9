"""One trainer for every deep model: Adam with weight decay, gradient clipping, learning-rate reduction
on a plateau of validation AUC, early stopping with patience, the best checkpoint kept, a checkpoint per
epoch to resume from, fixed seeds, a progress bar and TensorBoard scalars.

A resumed run reproduces the uninterrupted one: each epoch's shuffle is seeded by (seed, epoch) and the
checkpoint carries the torch RNG state (dropout) along with the model, optimiser and scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ml.evaluate.metrics import auc, logloss
from ml.features.dataset import CrowdData
from ml.models.zoo import CrowdModel
from ml.train.calibration import correct_for_sampling
from ml.train.distributed import Rank, all_sum, init_process_group, rank_device
from ml.train.scoring import batch_reads, predict

log = logging.getLogger(__name__)
EPS = 1e-7


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-6
    clip_norm: float = 5.0
    patience: int = 2  # epochs without a better validation AUC before stopping
    lr_patience: int = 0  # epochs without improvement before the learning rate is reduced
    lr_factor: float = 0.5
    loss: str = "bce"  # or "focal"
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    aux_weight: float = 1.0  # weight of the collect-or-cart loss of multi-task models
    negative_rate: float = 1.0  # the share of training negatives kept (undone in the validation logloss)
    seed: int = 42
    device: str = "auto"  # auto: cuda when present, else cpu
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "focal"):
            raise ValueError(f"loss: expected 'bce' or 'focal', got {self.loss!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def hyper_parameters(self, multi_task: bool) -> dict:
        """What decides the weights, as a run logs it: not the device, the progress bar or TensorBoard, nor the
        negative rate (the task's), the focal loss's settings under BCE, or the auxiliary loss's weight for a
        model with one output."""
        skip = {"device", "progress", "tensorboard", "negative_rate"}
        if self.loss != "focal":
            skip |= {"focal_gamma", "focal_alpha"}
        if not multi_task:
            skip.add("aux_weight")
        return {k: v for k, v in self.to_dict().items() if k not in skip}


@dataclass
class TrainResult:
    best_epoch: int
    best_auc: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_second: float = 0.0


def load_weights(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint or state dict: tensors and plain values only (torch's weights-only unpickler). A file that
    holds anything else (objects, code: a crafted file in the data volume) is refused, never run."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} holds more than weights ({first}): refusing to load it; delete it to train "
                         "afresh") from None


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; a device that is not here is an error before any work."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s); use cpu or auto")
    elif device.type != "cpu":
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


def seed_everything(seed: int) -> None:
    """The same seed gives the same weights, and the same metrics to 1e-6 (a test pins it on CPU): every
    generator seeded, and torch asked for its deterministic kernels (warning where one has none on a GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def binary_loss(p: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, weight: torch.Tensor | None = None
                ) -> torch.Tensor:
    """The batch's loss, each row counted with its population weight (the mean over the population)."""
    p = p.clamp(EPS, 1 - EPS)
    if cfg.loss == "bce":
        per_row = F.binary_cross_entropy(p, y, reduction="none")
    else:
        pt = torch.where(y > 0.5, p, 1 - p)
        alpha = torch.where(y > 0.5, torch.full_like(p, cfg.focal_alpha), torch.full_like(p, 1 - cfg.focal_alpha))
        per_row = -alpha * (1 - pt).pow(cfg.focal_gamma) * pt.log()
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum()


def model_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, cfg: TrainConfig,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    loss = binary_loss(out["buy"], labels[:, 0], cfg, weight)
    if "collect_cart" in out:
        loss = loss + cfg.aux_weight * binary_loss(out["collect_cart"], labels[:, 1], cfg, weight)
    return loss


class Trainer:
    """rank: this process's place in a torchrun launch (ml.train.distributed). Distributed, each rank trains on
    batch_size / world rows of its shard per step and DDP averages the gradients; rank 0 alone writes the
    checkpoints, the TensorBoard scalars and calls on_epoch."""

    def __init__(self, model: CrowdModel, cfg: TrainConfig, workdir: Path,
                 on_epoch: Callable[[dict], None] | None = None, rank: Rank | None = None):
        self.cfg, self.workdir = cfg, Path(workdir)
        self.rank = rank or Rank()
        self.on_epoch = on_epoch if self.rank.main else None
        self.device = rank_device(self.rank, resolve_device(cfg.device))
        init_process_group(self.rank, self.device)
        self.model = model.to(self.device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def last_path(self) -> Path:
        return self.workdir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.workdir / "best.pt"

    def _save_last(self, state: dict) -> None:
        if not self.rank.main:
            return
        tmp = self.last_path.with_suffix(".partial")
        torch.save(state, tmp)
        tmp.replace(self.last_path)

    def fit(self, train: CrowdData, valid: CrowdData, stop_after: int | None = None) -> TrainResult:
        """Train until early stopping or cfg.epochs; resume from workdir/last.pt when it exists.
        stop_after simulates an interruption after that many epochs (tests)."""
        cfg = self.cfg
        start_epoch, best_auc, best_epoch, bad, history = 0, -1.0, -1, 0, []
        if self.last_path.exists():
            state = load_weights(self.last_path, self.device)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch, best_auc, best_epoch = state["epoch"] + 1, state["best_auc"], state["best_epoch"]
            bad, history = state["bad_epochs"], state["history"]
            log.info("resuming from %s at epoch %d (best AUC %.4f at epoch %d)", self.last_path, start_epoch,
                     best_auc, best_epoch)
        elif isinstance(self.model, CrowdModel):
            self.model.init_base_rate(train.labels, train.weights)
        net = self._replicated()
        batch_size = max(1, cfg.batch_size // self.rank.world)  # the same global batch, the same steps
        writer = None
        if cfg.tensorboard and self.rank.main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.workdir / "tensorboard"))
        t_start, n_seen = time.perf_counter(), 0
        steps = history[-1].get("steps", 0) if history else 0
        done = bad >= cfg.patience or start_epoch >= cfg.epochs
        epoch = start_epoch
        while not done:
            self.model.train()
            losses = []
            n_batches = (len(train) + batch_size - 1) // batch_size
            batches = train.batches(batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch, device=self.device,
                                    **batch_reads(self.model))
            with self._joined(net):
                # None: a bar on a terminal only; a log (`crowd train > train.log`, a task's) gets no \r frames
                for batch in tqdm(batches, total=n_batches, desc=f"epoch {epoch}",
                                  disable=None if cfg.progress and self.rank.main else True, leave=False):
                    out = net(batch)
                    loss = model_loss(out, batch["labels"], cfg, batch["weight"])
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
                    self.optimizer.step()
                    steps += 1
                    losses.append(loss.item())
                    n_seen += len(batch["labels"])
            # the population's logloss: the training's negative sampling undone, rows at their population weight
            p = correct_for_sampling(predict(self.model, valid, device=self.device), cfg.negative_rate)
            y = valid.labels[:, 0]
            # plain Python numbers: the checkpoint then holds only tensors and builtins (weights_only loading)
            train_loss = all_sum(float(np.mean(losses)) if losses else 0.0, self.rank) / self.rank.world
            row = {"epoch": epoch, "train_loss": train_loss, "valid_auc": float(auc(y, p)),
                   "valid_logloss": float(logloss(y, p, valid.weights)),
                   "lr": float(self.optimizer.param_groups[0]["lr"]), "steps": steps}
            history.append(row)
            self.scheduler.step(row["valid_auc"])
            if row["valid_auc"] > best_auc:
                best_auc, best_epoch, bad = row["valid_auc"], epoch, 0
                if self.rank.main:
                    torch.save(self.model.state_dict(), self.best_path)
            else:
                bad += 1
            if self.rank.main:
                log.info("epoch %d: loss %.4f, valid AUC %.4f, logloss %.4f", epoch, row["train_loss"],
                         row["valid_auc"], row["valid_logloss"])
            if writer:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch)
            if self.on_epoch:
                self.on_epoch(row)
            self._save_last({
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
                "best_auc": best_auc, "best_epoch": best_epoch, "bad_epochs": bad, "history": history,
            })
            epoch += 1
            done = bad >= cfg.patience or epoch >= cfg.epochs
            if stop_after is not None and epoch - start_epoch >= stop_after and not done:
                raise KeyboardInterrupt(f"stopped after epoch {epoch - 1} (simulated interruption)")
        if writer:
            writer.close()
        if self.best_path.exists() and self.rank.main:
            self.model.load_state_dict(load_weights(self.best_path, self.device))
        seconds = time.perf_counter() - t_start
        n_seen = all_sum(n_seen, self.rank)  # every rank's rows: the launch's throughput
        return TrainResult(best_epoch, best_auc, history, seconds, n_seen / seconds if seconds else 0.0)

    def _replicated(self) -> torch.nn.Module:
        """The module the steps run through: DDP over the model when distributed. Made once the weights are
        set (resumed or initialised), since DDP starts every replica from rank 0's."""
        if not self.rank.distributed:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # a model holds embeddings its forward may not use (a DNN has the sequence tables of the shared
        # feature map): DDP must not wait for their gradients
        return DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    def _joined(self, net: torch.nn.Module) -> contextlib.AbstractContextManager:
        """Shards differ by a row, so one rank may run out of batches first: Join lets it shadow the others'
        gradient averaging instead of leaving them waiting forever."""
        if not self.rank.distributed:
            return contextlib.nullcontext()
        from torch.distributed.algorithms.join import Join

        return Join([net])
