"""Scores as probabilities of the whole population, not of the training sample.

Two samplings stand between the training rows and the population a crowd is drawn from:
- the warehouse keeps every candidate pair but only about negatives_per_target of the other users per target
  and date, drawn without looking at labels; each carries its inclusion probability (`inclusion_prob`). The
  deep models' loss weighs each row by its inverse (population_weights), so their expected buyers are the
  population's (Horvitz-Thompson); LightGBM fits the rows as drawn (the draw depends on candidacy alone,
  which its features see; at these weights its early rounds followed a few heavy rows: ml.train.gbdt);
  validation metrics weigh every model's rows by it;
- the trainers keep a share `negative_rate` of the negatives, which shifts every odds by that rate: undone
  exactly afterwards (correct_for_sampling).
What remains (a few epochs, early stopping, a focal loss, which reshapes the output beyond both) is mapped
back by Platt scaling fitted on the validation dates' whole population (the evaluation set a week before the
backtest), one mapping for the pairs with history together and one for the others (stratified_platt_fit):
a model can be off in opposite directions on the two, which one mapping would trade against each other.
The whole population, not the sampled negatives: their few rare high scores, each standing for a hundred
users and more, left the untouched level off by a factor of two.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-7
# the metrics of calibration_summary: meaningless for scores that are an order, not probabilities (the floors)
CALIBRATION_METRICS = ("expected_over_actual", "expected_over_actual_untouched", "ece")


def population_weights(samples: pd.DataFrame) -> np.ndarray:
    """Each row's weight in the population: 1 / its inclusion probability (1 where the export has none)."""
    if "inclusion_prob" not in samples:
        return np.ones(len(samples), np.float32)
    p = samples["inclusion_prob"].to_numpy(np.float64)
    if not np.all((p > 0) & (p <= 1)):
        raise ValueError("inclusion_prob must lie in (0, 1]: the exports are damaged or of another build")
    return (1.0 / p).astype(np.float32)


def correct_for_sampling(p: np.ndarray, negative_rate: float) -> np.ndarray:
    """Undo negative down-sampling: the model saw negatives at rate r, so its odds are the true odds / r."""
    if negative_rate >= 1.0:
        return p
    return negative_rate * p / (negative_rate * p + 1.0 - p)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def platt_fit(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """(a, b) of P(buy) = sigmoid(a * logit(p) + b), by weighted maximum likelihood on held-out rows.

    Newton's method on the two parameters, to convergence: at the optimum the scores' weighted sum equals
    the buyers' exactly (the intercept's score equation), which a general-purpose solver stopped early on
    rare events (logits near -14, a buyer in thousands) leaves off by half."""
    z = _logit(p)
    y = (np.asarray(y) > 0).astype(np.float64)
    w = np.ones(len(z)) if weights is None else np.asarray(weights, np.float64)
    theta = np.array([1.0, 0.0])
    x = np.column_stack([z, np.ones_like(z)])

    def loss(t: np.ndarray) -> float:
        u = x @ t
        return float(np.sum(w * (np.logaddexp(0.0, u) - y * u)))

    current = loss(theta)
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-(x @ theta)))
        grad = x.T @ (w * (q - y))
        hess = (x * (w * q * (1 - q))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and loss(theta - scale * step) > current:  # halve the step until the loss falls
            scale /= 2
        theta = theta - scale * step
        previous, current = current, loss(theta)
        if np.max(np.abs(scale * step)) < 1e-10 or previous - current < 1e-12 * max(abs(current), 1.0):
            break
    return float(theta[0]), float(theta[1])


def platt_apply(p: np.ndarray, ab: tuple[float, float] | list[float] | None) -> np.ndarray:
    if ab is None:
        return p
    a, b = ab
    return 1.0 / (1.0 + np.exp(-(a * _logit(p) + b)))


# below this many buyers (at their weights, rounded) a stratum's slope is noise: only its level is fitted
MIN_BUYERS_FOR_SLOPE = 30
STRATA = ("touched", "untouched")


def level_fit(p: np.ndarray, weights: np.ndarray, target: float) -> tuple[float, float]:
    """(1, b): the shift of the logits that makes the weighted sum of scores `target` (the buyers)."""
    z = _logit(p)
    lo, hi = -20.0, 20.0
    for _ in range(60):  # the sum is increasing in b: bisection
        b = (lo + hi) / 2
        if np.sum(weights / (1 + np.exp(-(z + b)))) < target:
            lo = b
        else:
            hi = b
    return 1.0, (lo + hi) / 2


def stratified_platt_fit(y: np.ndarray, p: np.ndarray, weights: np.ndarray, touched: np.ndarray
                         ) -> dict[str, list[float]]:
    """{stratum: [a, b]} for the pairs with history together and the others, each from its own rows (a
    stratum with no buyer keeps the model's output; one with few, only its level)."""
    y, touched = np.asarray(y) > 0, np.asarray(touched, bool)
    out = {}
    for name, rows in zip(STRATA, (touched, ~touched), strict=True):
        if not y[rows].any() or y[rows].all():
            continue
        if y[rows].sum() >= MIN_BUYERS_FOR_SLOPE:
            out[name] = list(platt_fit(y[rows], p[rows], weights[rows]))
        else:
            out[name] = list(level_fit(p[rows], weights[rows], float(np.sum(weights[rows] * y[rows]))))
    return out


def stratified_platt_apply(p: np.ndarray, touched: np.ndarray, params: dict[str, list[float]] | None
                           ) -> np.ndarray:
    if not params:
        return p
    out = np.array(p, dtype=np.float64, copy=True)
    touched = np.asarray(touched, bool)
    for name, rows in zip(STRATA, (touched, ~touched), strict=True):
        if name in params and rows.any():
            out[rows] = platt_apply(out[rows], params[name])
    return out


def reliability_bins(p: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each row's bin: rows sorted by score into `bins` groups of equal size."""
    order = np.argsort(p, kind="stable")
    group = np.empty(len(p), np.int64)
    group[order] = np.arange(len(p)) * bins // max(len(p), 1)
    return group


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 20) -> pd.DataFrame:
    """Rows sorted by score into `bins` groups of equal size (rare events put nearly every row in the lowest
    of equal-width bins): per group the mean score, the observed rate and the rows."""
    group = reliability_bins(p, bins)
    rows = np.bincount(group, minlength=bins)
    kept = rows > 0  # fewer rows than bins leave some empty
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(group, weights=np.asarray(p, np.float64), minlength=bins) / rows
        observed = np.bincount(group, weights=np.asarray(y, np.float64), minlength=bins) / rows
    return pd.DataFrame({"mean_score": mean_score[kept], "observed": observed[kept], "rows": rows[kept]})


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 20) -> float:
    """Mean over the rows of |mean score - observed rate| of their reliability bin."""
    return ece_of(reliability(y, p, bins))


def ece_of(table: pd.DataFrame) -> float:
    """The expected calibration error of a reliability table (ml.train.calibration.reliability)."""
    return float(np.average((table["mean_score"] - table["observed"]).abs(), weights=table["rows"]))


def calibration_summary(y: np.ndarray, p: np.ndarray, touched: np.ndarray) -> dict[str, float]:
    """Expected buyers (the sum of scores) over actual, over every row and over the rows with no history
    together (where the sampled negatives stood for everyone), and the expected calibration error."""
    y = np.asarray(y, np.float64)
    untouched = ~np.asarray(touched, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"expected_over_actual": float(p.sum() / y.sum()), "ece": expected_calibration_error(y, p)}
        if untouched.any():  # the next-day item task scores candidates only
            out["expected_over_actual_untouched"] = float(p[untouched].sum() / y[untouched].sum())
    return out
