"""PNG plots of an evaluation: ROC, recall@N against N, calibration, training curves, importances."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ml.evaluate.metrics import ranking_metrics  # noqa: E402
from ml.train.calibration import expected_calibration_error, reliability  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evaluation_plots(y: np.ndarray, p: np.ndarray, target: np.ndarray, user: np.ndarray, out: Path,
                     label: str, reference: dict[str, np.ndarray] | None = None,
                     buyers: pd.Series | None = None) -> list[Path]:
    """ROC, recall@N for N up to 1000 (of every buyer per target when `buyers` is given), calibration;
    `reference` adds curves (the oracle) for comparison."""
    out.mkdir(parents=True, exist_ok=True)
    curves = {label: p, **(reference or {})}
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, score in curves.items():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend()
    paths = [_save(fig, out / "roc.png")]

    ns = tuple(int(n) for n in np.unique(np.geomspace(1, 1000, 25).astype(int)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, score in curves.items():
        mean = ranking_metrics(y, score, target, ns, tie_break=user, buyers=buyers).mean
        ax.plot(ns, [mean[f"recall_at_{n}"] for n in ns], label=name)
    ax.set(xscale="log", xlabel="N (users targeted per brand)", ylabel="mean recall@N", title="recall@N")
    ax.legend()
    paths.append(_save(fig, out / "recall_at_n.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, score in curves.items():
        table = reliability(y, np.clip(score, 0, 1))
        ax.plot(table["mean_score"], table["observed"], marker=".",
                label=f"{name} (ECE {expected_calibration_error(y, np.clip(score, 0, 1)):.2g})")
    ax.plot([1e-6, 1], [1e-6, 1], "k:", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="mean predicted P(buy) (20 bins of equal rows)",
           ylabel="observed share", title="reliability")
    ax.legend()
    paths.append(_save(fig, out / "calibration.png"))
    return paths


def training_curves(history: list[dict], out: Path) -> Path:
    frame = pd.DataFrame(history)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(frame["epoch"], frame["train_loss"], marker="o")
    ax[0].set(xlabel="epoch", ylabel="training loss")
    ax[1].plot(frame["epoch"], frame["valid_auc"], marker="o")
    ax[1].set(xlabel="epoch", ylabel="validation AUC")
    return _save(fig, out / "training_curves.png")


def importance_plot(names: list[str], values: np.ndarray, out: Path, title: str, top: int = 30) -> Path:
    order = np.argsort(values)[::-1][:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(order) + 1))
    ax.barh([names[i] for i in order], np.asarray(values)[order])
    ax.set(title=title)
    return _save(fig, out)
