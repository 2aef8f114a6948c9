"""Plots of an evaluation: ROC, recall@N, gain and lift, calibration (from a curves table, ml.evaluate.curves),
training curves, importances; PNG files for a run's artifacts, SVG text for the HTML report."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Figures are made with the object API, never pyplot: pyplot's global state breaks when two trainings of one
# process (threads) plot at once. The lock keeps the drawing of one figure whole: Matplotlib's text layout
# and renderer caches are shared by every figure of the process.
_DRAWING = threading.Lock()


def _figure(*shape: int, figsize: tuple[float, float]) -> tuple[Figure, object]:
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*shape)


def _save(fig: Figure, path: Path) -> Path:
    with _DRAWING:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    return path


def svg(fig: Figure) -> str:
    """The figure as SVG text (for a self-contained HTML page)."""
    out = io.StringIO()
    with _DRAWING:
        fig.tight_layout()
        fig.savefig(out, format="svg")
    return out.getvalue()


def _style(series: str, models: list[str]) -> dict:
    """Learned models in colour, solid; the heuristic floors grey and dashed; the ceiling black and dotted."""
    if series == "oracle":
        return {"color": "black", "ls": ":", "lw": 1.6, "label": "oracle (ceiling)"}
    if series.startswith("floor: "):
        return {"color": "0.55", "ls": "--", "lw": 1.0, "label": series}
    return {"color": matplotlib.colormaps["tab10"](models.index(series) % 10), "ls": "-", "lw": 1.3, "label": series}


def curve_figures(curves: pd.DataFrame, by: str = "target") -> dict[str, Figure]:
    """ROC, recall@N, cumulative gain, lift and reliability, each series of `curves` (ml.evaluate.curves)
    one line: every model of a comparison on one chart, against the floors and the ceiling."""
    from ml.evaluate.curves import lift

    names = list(dict.fromkeys(curves["series"]))
    models = [n for n in names if n != "oracle" and not n.startswith("floor: ")]
    ordered = models + [n for n in names if n not in models]
    ranked = "users targeted per target" if by == "target" else "items per user"

    def lines(ax: Axes, curve: str, transform=None) -> None:  # noqa: ANN001
        for name in ordered:
            part = curves[(curves["series"] == name) & (curves["curve"] == curve)]
            if transform is not None:
                part = transform(part)
            if len(part):
                ax.plot(part["x"], part["y"], **_style(name, models))

    figures = {}
    fig, ax = _figure(figsize=(5.5, 5))
    lines(ax, "roc")
    ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(fontsize=7)
    figures["roc"] = fig

    fig, ax = _figure(figsize=(6, 4.5))
    lines(ax, "recall_at_n")
    ax.set(xscale="log", xlabel=f"N ({ranked})", ylabel="mean recall@N", title="recall@N")
    ax.legend(fontsize=7)
    figures["recall_at_n"] = fig

    fig, ax = _figure(figsize=(6, 4.5))
    lines(ax, "gain")
    ax.plot([1e-5, 1], [1e-5, 1], color="0.8", lw=0.8)
    ax.set(xscale="log", xlim=(1e-4, 1), xlabel="share of the scored pairs targeted, highest scores first",
           ylabel="share of the buyers found", title="cumulative gain")
    ax.legend(fontsize=7)
    figures["gain"] = fig

    fig, ax = _figure(figsize=(6, 4.5))
    lines(ax, "gain", lambda gain: _positive(lift(gain)))  # no buyer in the top few pairs: lift 0, off the log axis
    ax.axhline(1.0, color="0.8", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), xlabel="share of the scored pairs targeted",
           ylabel="lift (share found / share targeted)", title="lift")
    ax.legend(fontsize=7)
    figures["lift"] = fig

    fig, ax = _figure(figsize=(5.5, 5))
    ece = curves[curves["curve"] == "ece"].set_index("series")["y"]

    # a bin with no buyer (a sparse task's low bins) has an observed share of 0, which a log axis cannot show:
    # drawn as a line to the axis' foot it read as a share of one in a million; it is marked there instead
    no_buyer = []
    for name in ordered:
        part = curves[(curves["series"] == name) & (curves["curve"] == "reliability")]
        part = part[part["x"] > 0]  # a bin of scores of exactly 0 has no place on the log axis either
        if len(part):
            style = _style(name, models)
            style["label"] += f" (ECE {ece.get(name, float('nan')):.2g})"
            shown = _positive(part)
            ax.plot(shown["x"], shown["y"], marker=".", **style)
            no_buyer.append((part.loc[shown["y"].isna(), "x"], style["color"]))
    predicted = curves.loc[curves["curve"] == "reliability", "x"]
    if (predicted > 0).any():
        span = [predicted[predicted > 0].min(), predicted.max()]
        ax.plot(span, span, color="0.8", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="mean predicted P(buy) (20 bins of equal rows)",
           ylabel="observed share", title="reliability")
    if any(len(x) for x, _ in no_buyer):
        foot = ax.get_ylim()[0]
        for x, color in no_buyer:
            ax.plot(x, np.full(len(x), foot), ls="none", marker="v", ms=5, color=color, clip_on=False)
        ax.set_ylim(bottom=foot)
        ax.set_ylabel("observed share (\u25bc: a bin with no buyer)")
    ax.legend(fontsize=7)
    figures["calibration"] = fig
    return figures


def _positive(part: pd.DataFrame) -> pd.DataFrame:
    """The points a log axis can draw; a share of 0 left as a gap in the line, not a drop to the axis."""
    return part.assign(y=part["y"].where(part["y"] > 0))


def evaluation_plots(curves: pd.DataFrame, out: Path, by: str = "target") -> list[Path]:
    """A run's PNG plots of its backtest curves (its model against the floors and the ceiling)."""
    out.mkdir(parents=True, exist_ok=True)
    return [_save(fig, out / f"{name}.png") for name, fig in curve_figures(curves, by).items()]


def training_curves(history: list[dict], out: Path) -> Path:
    frame = pd.DataFrame(history)
    fig, ax = _figure(1, 2, figsize=(9, 3.5))
    ax[0].plot(frame["epoch"], frame["train_loss"], marker="o")
    ax[0].set(xlabel="epoch", ylabel="training loss")
    ax[1].plot(frame["epoch"], frame["valid_auc"], marker="o")
    ax[1].set(xlabel="epoch", ylabel="validation AUC")
    return _save(fig, out / "training_curves.png")


def importance_plot(names: list[str], values: np.ndarray, out: Path, title: str, top: int = 30) -> Path:
    order = np.argsort(values)[::-1][:top][::-1]
    fig, ax = _figure(figsize=(7, 0.25 * len(order) + 1))
    ax.barh([names[i] for i in order], np.asarray(values)[order])
    ax.set(title=title)
    return _save(fig, out)
