"""Train one model of a task on its exports, backtest it, record it in MLflow.

Dates come from the task: its sample dates train, its validation dates validate (early stopping on their
samples; calibration and the metric the champion is chosen on over their evaluation set, the population the
backtest measures), and the backtest date's evaluation set (every active user x every evaluated target) is
where AUC, GAUC and recall@N are reported.
Training rows count at their population weight (1 / inclusion probability of the warehouse's sampled
negatives), and negatives of the training dates are down-sampled (negative_rate) for speed, corrected back
afterwards; every model's scores are then Platt-scaled on the validation dates' population, per stratum
(ml.train.calibration). So logloss, calibration and expected buyers refer to the whole population.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ml.evaluate.curves import CURVES_ARTIFACT, series_curves
from ml.evaluate.floors import floor_scores, verdict
from ml.evaluate.intervals import Interval, auc_interval, backtest_intervals, ratio_interval
from ml.evaluate.metrics import auc, buyer_totals, evaluate_scores, ranking_groups
from ml.evaluate.pairs import choose_k, f1_interval, top_k_metrics
from ml.evaluate.plots import evaluation_plots, importance_plot, training_curves
from ml.features.dataset import CrowdData, read_buyers
from ml.models.zoo import ModelConfig, build_model, model_hyper_parameters
from ml.task import ALL_MODELS, GBDT_MODELS, Task, TaskPaths
from ml.train.bundle import Bundle, save_deep_bundle, save_gbdt_bundle
from ml.train.calibration import (
    CALIBRATION_METRICS,
    calibration_summary,
    correct_for_sampling,
    population_weights,
    stratified_platt_apply,
    stratified_platt_fit,
)
from ml.train.distributed import Rank, current_rank, shard
from ml.train.gbdt import GbdtConfig, predict_gbdt, train_gbdt
from ml.train.memory import freed_when_done
from ml.train.prepared import Prepared, evaluation_code_version, fingerprint, prepare
from ml.train.scoring import predict
from ml.train.trainer import TrainConfig, Trainer, TrainResult, seed_everything
from ml.warehouse.export import serving_key

log = logging.getLogger(__name__)
# a model's result and its verdict: a task's log keeps them; the CLI prints its own summary line instead
results_log = logging.getLogger("ml.results.train")  # (ml.cli.RESULTS_LOGGER)


@dataclass
class Outcome:
    model: str
    summary: dict[str, float]
    per_target: pd.DataFrame
    bundle: Path
    run_id: str | None = None
    champion: bool = False
    oracle: dict[str, float] = field(default_factory=dict)
    oracle_error: dict[str, float] = field(default_factory=dict)  # the ceiling's Monte Carlo error, per metric
    train_seconds: float = 0.0
    intervals: dict[str, Interval] = field(default_factory=dict)  # 95 % bootstrap, of the backtest's summary
    selection: dict[str, float] = field(default_factory=dict)  # on the validation dates: what the champion is chosen on
    floors: dict[str, dict[str, float]] = field(default_factory=dict)  # heuristic floor -> its backtest summary
    history: list[dict] = field(default_factory=list)  # a deep model's epochs (ml.train.trainer)
    samples_per_second: float = 0.0  # a deep model's training throughput, every rank together
    # the backtest's curves (ml.evaluate.curves): the model's, the floors' and the ceiling's
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)

    def below_floor(self) -> tuple[str, float] | None:
        """The best floor by AUC when this model does not beat it by more than its interval, else None."""
        if not self.floors or "auc" not in self.intervals:
            return None
        name, best = max(((n, s["auc"]) for n, s in self.floors.items()), key=lambda x: x[1])
        return (name, best) if self.intervals["auc"].low <= best else None

    def verdict(self) -> str | None:
        """One line when the model is not worth its training: no better than random ranking (its AUC interval
        reaches 0.5), or no better than the best heuristic floor. None when it clears both."""
        auc, ci = self.summary.get("auc"), self.intervals.get("auc")
        if auc is None or ci is None:
            return None
        return verdict(self.model, auc, ci.low, ci.high, self.below_floor())

    def description(self, select_by: str) -> str:
        """The run's and its registered version's description in the MLflow UI (both were blank): what it was
        chosen on and what it scored, read without opening 200 metrics."""
        text = f"{self.model}: validation {select_by} {self.selection.get(select_by, float('nan')):.4f}"
        auc, ci = self.summary.get("auc"), self.intervals.get("auc")
        if auc is not None:
            text += f"; backtest AUC {auc:.4f}" + (f" ({ci.low:.3f}–{ci.high:.3f})" if ci is not None else "")
        warning = self.verdict()
        return text + (f". Warning: {warning}" if warning else "")


def train_config(task: Task, model: str, **runtime: object) -> TrainConfig:
    """The trainer's settings for one model of a task: the model's budget over the task's training block,
    plus what only the caller knows (progress bars, device)."""
    return TrainConfig(**task.budget(model), seed=task.training.seed, negative_rate=task.training.negative_rate,
                       **runtime)


def oracle_scores(dataset_dir: Path, frame: pd.DataFrame, ds: dt.date, task: Task, estimate: str = "p_buy"
                  ) -> np.ndarray | None:
    """The generator's P(buy) for the rows (0 for a pair it never considers); None without an oracle of this
    date and target (the generator writes one per brand, or per item for a log whose items have memory, and
    per tag for the interest tags it was given: a tag task's ceiling needs every one of its tags).
    estimate `p_buy_half` is the same from the first half of the rollouts (the ceiling's Monte Carlo error)."""
    if task.target == "tag":
        p = tag_truth(dataset_dir, frame, ds, task, estimate)
        return None if p is None or np.isnan(p).any() else p
    return _join_oracle(Path(dataset_dir) / "oracle", f"{task.target}_id", frame, ds, estimate)


def tag_truth(dataset_dir: Path, frame: pd.DataFrame, ds: dt.date, task: Task, estimate: str = "p_buy"
              ) -> np.ndarray | None:
    """P(the user takes the tag) per row, for the task's interest tags whose truth the generator wrote as the
    task defines them (same id, same categories); NaN on the other tags' rows; None when it knows none."""
    manifest_path = Path(dataset_dir) / "manifest.json"
    folder = Path(dataset_dir) / "oracle_tags"
    if not manifest_path.exists() or not any(folder.glob("*.parquet")):
        return None
    known = {t["tag_id"]: tuple(t["categories"])
             for t in json.loads(manifest_path.read_text()).get("oracle", {}).get("tags", [])}
    ids = [i + 1 for i, t in enumerate(task.tags)
           if t.min_buys == 1 and t.horizon_days is None and known.get(i + 1) == tuple(t.categories)]
    if not ids:
        return None
    p = _join_oracle(folder, "tag_id", frame, ds, estimate)
    if p is not None:
        p[~frame["target_id"].isin(ids).to_numpy()] = np.nan
    return p


def _join_oracle(folder: Path, column: str, frame: pd.DataFrame, ds: dt.date, estimate: str) -> np.ndarray | None:
    """The estimate of P(buy) of an oracle table (keyed by user and `column`) for each row of frame, 0 where
    it has none; None when the table has no such key or estimate (an older dataset) or nothing for ds."""
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    if not files or not {column, estimate} <= set(pq.read_schema(files[0]).names):
        return None
    oracle = pd.read_parquet(folder, filters=[("ds", "==", pd.Timestamp(ds))], columns=["user_id", column, estimate])
    if oracle.empty:
        return None
    merged = frame[["user_id", "target_id"]].merge(
        oracle.rename(columns={column: "target_id"}), on=["user_id", "target_id"], how="left")
    return merged[estimate].fillna(0.0).to_numpy(dtype=np.float64)


def train_and_evaluate(
    model: str,
    task: Task,
    paths: TaskPaths,
    *,
    train_cfg: TrainConfig | None = None,
    model_cfg: ModelConfig | None = None,
    gbdt_cfg: GbdtConfig | None = None,
    track: bool = True,
    data: Prepared | None = None,
) -> Outcome | None:
    """train_cfg defaults to train_config(task, model); model_cfg and gbdt_cfg are the models' own
    hyper-parameters (their dataclass defaults). data: the task's prepared rows (ml.train.prepared), which a
    caller training several models passes to each; prepared, or found on disk, when not given. Tracked, the
    MLflow run is open from the model's first step to its last artifact (a kill leaves it RUNNING until the
    next training marks it FAILED: ml.tracking), and the
    model is written into a folder of its own run, published as models/MODEL once it is logged: two trainings
    of one model at once never log each other's files.

    Under torchrun (ml.train.distributed), rank 0 does all of that; the other ranks train their shard of a
    deep model alongside it and return None (and skip LightGBM, which rank 0 trains alone)."""
    if model not in ALL_MODELS:
        raise ValueError(f"unknown model {model!r}: expected one of {', '.join(ALL_MODELS)}")
    rank = current_rank()
    if not rank.main:
        if model not in GBDT_MODELS:
            train_cfg = train_cfg or train_config(task, model)
            _fit_deep(model, task, paths, data or prepare(task, paths), train_cfg, model_cfg or ModelConfig(), None,
                      rank)
        return None
    sweep_abandoned_run_folders(paths)
    data = data or prepare(task, paths)
    if not track:
        return _cleaned_up(model, task, paths, f"local-{uuid.uuid4().hex[:12]}", data, train_cfg, model_cfg,
                           gbdt_cfg, track=False)
    import mlflow

    from ml.tracking import PROCESS_TAG, abandoned_runs_failed, configure, process_token, source_tags

    experiment = f"Task {task.name} on dataset {paths.dataset}: one run per trained model."
    abandoned_runs_failed(configure(paths, " ".join(filter(None, (task.about(), experiment)))))
    tags = {"task": paths.task, "dataset": paths.dataset, "model": model, PROCESS_TAG: process_token(),
            **source_tags()}
    # a name that says which model, task and backtest, and when: reruns stay apart in the runs table (the
    # `model` tag is what the report and the ablation select by)
    name = f"{model} {paths.task} {task.backtest} {dt.datetime.now():%m%d-%H%M%S}"
    with mlflow.start_run(run_name=name, tags=tags) as run:
        return _cleaned_up(model, task, paths, run.info.run_id, data, train_cfg, model_cfg, gbdt_cfg, track=True)


def _cleaned_up(model: str, task: Task, paths: TaskPaths, run_key: str, *args: object, track: bool) -> Outcome:
    """The training, its run folder removed when it fails (a kill leaves it to sweep_abandoned_run_folders)."""
    try:
        with freed_when_done():  # this model's scores, activations and frames: the next starts from the data alone
            return _train_and_evaluate(model, task, paths, run_key, *args, track=track)
    except BaseException:
        shutil.rmtree(_run_path(paths, model, run_key), ignore_errors=True)
        raise


def _run_path(paths: TaskPaths, model: str, run_key: str) -> Path:
    return paths.models / "runs" / f"{model}-{run_key}"


OWNER = "owner"  # in a run folder: the process writing it (ml.tracking.process_token)


def run_folder(paths: TaskPaths, model: str, run_key: str) -> Path:
    """A new folder for one training (runs/MODEL-RUN), marked with the process that writes it; the bundle is
    written into its bundle/."""
    from ml.outputs import mark
    from ml.tracking import process_token

    folder = _run_path(paths, model, run_key)
    (folder / "bundle").mkdir(parents=True)
    (folder / OWNER).write_text(process_token())
    mark(folder / "bundle")
    return folder


def sweep_abandoned_run_folders(paths: TaskPaths) -> list[Path]:
    """Remove the run folders whose training process ended without publishing them (a kill, a crash)."""
    from ml.tracking import process_alive

    gone = []
    for folder in sorted((paths.models / "runs").glob("*/")):
        owner = folder / OWNER
        if owner.is_file() and not process_alive(owner.read_text().strip()):
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    return gone


def _train_and_evaluate(model: str, task: Task, paths: TaskPaths, run_key: str, data: Prepared,
                        train_cfg: TrainConfig | None, model_cfg: ModelConfig | None, gbdt_cfg: GbdtConfig | None,
                        track: bool) -> Outcome:
    negative_rate = task.training.negative_rate
    train_cfg, model_cfg = train_cfg or train_config(task, model), model_cfg or ModelConfig()
    train_dates, valid_dates, backtest = task.sample_dates, list(task.validation), task.backtest
    fp = task.warehouse_fingerprint()
    ev = data.frame("evaluation")
    buyers = data.buyers
    # the validation dates' population, scored after training: calibration and the champion's metric
    v = data.frame("valid_population")
    valid_buyers = data.valid_buyers
    rows = data.rows
    log.info("%s/%s: %s rows (negatives of training kept at rate %.2f)", task.name, model, rows, negative_rate)
    key = task.comparison_fingerprint(data.build)
    features_key = serving_key(task, paths.exports)
    extra = {"task": task.name, "dataset": task.dataset, "target": task.target, "negative_rate": negative_rate,
             "dense": data.dense, "series_shape": task.series_shape(), "warehouse_fingerprint": fp,
             "build": data.build, "comparison": key, "serving": features_key,
             "train_dates": [str(d) for d in train_dates],
             "valid_dates": [str(d) for d in valid_dates], "evaluation_date": str(backtest),
             **({"run_id": run_key} if track else {})}
    if track:
        import mlflow

        from ml.tracking import BUILD_TAG, COMPARISON_TAG, log_dataset_inputs

        mlflow.set_tags({COMPARISON_TAG: key, BUILD_TAG: data.build})
        log_dataset_inputs(paths.exports, paths.task, data.folder.name, rows)
    folder = run_folder(paths, model, run_key)
    bundle_dir = folder / "bundle"
    history: list[dict] = []
    extra_plots: list[Path] = []
    samples_per_second = 0.0
    plots_dir = folder / "plots"  # in the run's folder: a failed training's are swept with it, not left in /tmp
    plots_dir.mkdir()

    seconds: dict[str, float] = {}  # each stage's wall time, logged as metrics (seconds_STAGE)
    sizes: dict[str, float] = {}  # what was trained, as metrics
    t0 = time.perf_counter()
    if model in GBDT_MODELS:
        cfg = gbdt_cfg or GbdtConfig(mode=model.removeprefix("lgbm_"), seed=task.training.seed)
        train_frame = data.frame("train")
        targets = _evaluated_targets(ev, train_frame)
        result = train_gbdt(cfg, train_frame, data.frame("valid"), ev, data.dense, targets)
        scores = correct_for_sampling(result.scores, negative_rate)
        valid_scores = predict_gbdt(result, v, data.dense)
        seconds |= {"train": result.seconds, "score": time.perf_counter() - t0 - result.seconds}
        params = {"model": model, **{f"gbdt_{k}": v for k, v in cfg.hyper_parameters().items()}}
        sizes = {"boosters": len(result.boosters), "boosting_rounds": sum(result.best_iterations.values())}
        save_gbdt_bundle(bundle_dir, model, result, extra)
        if result.importance is not None and len(result.importance):
            extra_plots.append(importance_plot(list(result.importance.index), result.importance.to_numpy(),
                                               plots_dir / "feature_importance.png", f"{model}: total gain"))
        train_seconds = result.seconds
    else:
        trainer, fit = _fit_deep(model, task, paths, data, train_cfg, model_cfg, _log_epoch if track else None,
                                 current_rank())
        fmap, valid_data = data.fmap, data.splits["valid"]
        history, train_seconds, samples_per_second = fit.history, fit.seconds, fit.samples_per_second
        t1 = time.perf_counter()
        valid_scores = predict(trainer.model, data.splits["valid_population"])
        scores = correct_for_sampling(predict(trainer.model, data.splits["evaluation"]), negative_rate)
        seconds |= {"train": fit.seconds, "score": time.perf_counter() - t1}
        multi_task = len(getattr(trainer.model, "tasks", ("buy",))) > 1
        params = {"model": model,
                  **{f"train_{k}": v for k, v in train_cfg.hyper_parameters(multi_task).items()},
                  **{f"model_{k}": v for k, v in model_hyper_parameters(model, model_cfg).items()},
                  "train_processes": trainer.rank.world}
        sizes = {"best_epoch": fit.best_epoch, "samples_per_second": fit.samples_per_second,
                 "parameters": sum(p.numel() for p in trainer.model.parameters())}
        save_deep_bundle(bundle_dir, model, trainer.model, fmap, model_cfg, extra)
        if history:
            extra_plots.append(training_curves(history, plots_dir))
        if model == "ple":
            # on the validation week: held-out rows, a quarter of the evaluation set's forward passes
            extra_plots.append(_se_importance(trainer.model, valid_data, fmap, plots_dir))

    t_evaluate = time.perf_counter()
    ns, by = task.evaluate.n, task.ranked_by
    valid_scores = correct_for_sampling(valid_scores, negative_rate)
    # a few epochs or early stopping leave a model's level off (and a focal loss's output is no probability
    # at all): every model's output is mapped by Platt scaling per stratum (ml.train.calibration), fitted on
    # the validation dates' population (never the backtest's), every row of it: a sample of the untouched
    # pairs holds too few of the rare high scores to pin their level (LightGBM's came out 0.65x the buyers)
    valid_touched = v["is_candidate"].to_numpy(dtype=bool)
    platt = stratified_platt_fit(v["label_buy"].to_numpy(), valid_scores, population_weights(v), valid_touched)
    valid_scores = stratified_platt_apply(valid_scores, valid_touched, platt)
    scores = stratified_platt_apply(scores, ev["is_candidate"].to_numpy(dtype=bool), platt)
    _add_to_bundle_config(bundle_dir, platt=platt)
    selection = _selection_metrics(v, valid_scores, valid_buyers, task)
    y, target, user = ev["label_buy"].to_numpy(), ev["target_id"].to_numpy(), ev["user_id"].to_numpy()
    # the pairs with history together (is_candidate) are the hard part: the untouched pairs of the full
    # population are mostly easy negatives that flatter every AUC
    touched = ev["is_candidate"].to_numpy(dtype=bool)
    # the next-day pair task: F1 of a top-K submission, K chosen on the validation days' candidates
    validation_pairs = _validation_pairs(v, paths, valid_dates) if task.target == "item" else None

    def evaluate(p: np.ndarray, p_valid: np.ndarray | None) -> tuple[dict[str, float], pd.DataFrame]:
        s, table = evaluate_scores(y, p, target, user, ns, buyers=buyers, by=by)
        s["auc_touched"] = auc(y[touched], p[touched])
        s.update(calibration_summary(y, p, touched))
        if validation_pairs is not None and p_valid is not None:
            k = choose_k([(vy, p_valid[rows], n) for rows, vy, n in validation_pairs])
            s.update(top_k_metrics(y, p, len(buyers), k))
        return s, table

    summary, per_target = evaluate(scores, valid_scores)
    intervals = backtest_intervals(y, scores, target, user, per_target, seed=task.training.seed)
    intervals["auc_touched"] = auc_interval(y[touched], scores[touched], user[touched], n_boot=100,
                                            seed=task.training.seed)
    if (~touched).any():
        intervals["expected_over_actual_untouched"] = ratio_interval(scores[~touched], y[~touched], user[~touched],
                                                                     seed=task.training.seed)
    if "f1_at_k" in summary:
        intervals["f1_at_k"] = Interval(*f1_interval(y, scores, user, int(summary["k"]),
                                                     buyers["user_id"].to_numpy(), seed=task.training.seed))

    group = ranking_groups(target, user, by)
    group_buyers = buyer_totals(buyers, by)["buyers"]

    def references() -> tuple[dict, dict, pd.DataFrame, dict]:
        oracle, oracle_error, curves = {}, {}, []
        p_oracle = oracle_scores(paths.dataset_dir, ev, backtest, task)
        if p_oracle is not None:
            oracle_valid = (_oracle_validation(paths, v, valid_dates, task)
                            if validation_pairs is not None else None)
            oracle, _ = evaluate(p_oracle, oracle_valid)
            curves.append(series_curves("oracle", y, p_oracle, group, group_buyers))
            p_half = oracle_scores(paths.dataset_dir, ev, backtest, task, estimate="p_buy_half")
            if p_half is not None:
                # how far the ceiling still moves from half its rollouts to all of them: its Monte Carlo error
                half, _ = evaluate(p_half, oracle_valid)
                oracle_error = {k: abs(v - half[k]) for k, v in oracle.items() if k in half}
        # each floor's own K, chosen on the validation days like the model's
        floors_valid = floor_scores(v, task.target) if validation_pairs is not None else {}
        floors = {}
        for name, s in floor_scores(ev, task.target).items():
            floors[name] = evaluate(s, floors_valid.get(name))[0]
            curves.append(series_curves(f"floor: {name}", y, s, group, group_buyers, probabilities=False))
        return oracle, oracle_error, pd.concat(curves, ignore_index=True) if curves else None, floors

    # the ceiling and the floors are the same for every model of the data: evaluated once for the prepared rows
    # (each model's task of the training DAG is a process of its own) and kept beside them; a dataset generated
    # again (its oracle's rollouts, say) writes a new manifest, and so makes another key; so does a change of
    # the code that evaluates them
    manifest = Path(paths.dataset_dir) / "manifest.json"
    references_key = fingerprint(list(ns), by, task.target, str(backtest), [str(d) for d in valid_dates],
                                 manifest.stat().st_mtime_ns if manifest.exists() else None,
                                 evaluation_code_version())
    oracle, oracle_error, reference_curves, floors = data.stored(f"references-{references_key}", references,
                                                                 _write_references, _read_references)
    curves = pd.concat([series_curves(model, y, scores, group, group_buyers), reference_curves],
                       ignore_index=True)
    plot_paths = [*evaluation_plots(curves, plots_dir, by), *extra_plots]
    if "k" in summary:  # the next-day item task: the submission size chosen on validation goes with the model
        _add_to_bundle_config(bundle_dir, submission_k=int(summary["k"]))
    outcome = Outcome(model, summary, per_target, bundle_dir, oracle=oracle, oracle_error=oracle_error,
                      train_seconds=train_seconds,
                      selection=selection, intervals=intervals, floors=floors, history=history,
                      samples_per_second=samples_per_second, curves=curves)
    results_log.info("%s: validation %s %.4f | backtest %s: %s", model, task.evaluate.select_by,
                     selection[task.evaluate.select_by], backtest,
                     ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
    verdict = outcome.verdict()
    if verdict:
        results_log.warning("%s", verdict)
    seconds["evaluate"] = time.perf_counter() - t_evaluate
    if track:
        from ml.tracking import BUILD_TAG, COMPARISON_TAG

        task_params = {f"task.{k}": v for k, v in task.flat().items()}
        # threads: what the timings were measured on (a task's share of the cores under an executor)
        metrics = ({f"rows_{k}": n for k, n in rows.items()} | {f"seconds_{k}": t for k, t in seconds.items()}
                   | sizes | {"threads": torch.get_num_threads()})
        tags = {"task": paths.task, "dataset": paths.dataset, "target": task.target, "model": model,
                "model_kind": "lightgbm" if model in GBDT_MODELS else "pytorch", COMPARISON_TAG: key,
                BUILD_TAG: data.build}
        _record(outcome, params | task_params, metrics, tags, plot_paths, paths, task.evaluate.select_by, key,
                features_key, data, _registry_description(task, paths))
    from ml.outputs import publish

    # the run's own bundle, logged as it is, becomes the model's local bundle (the latest trained wins)
    outcome.bundle = publish(bundle_dir, paths.models / model)
    shutil.rmtree(folder, ignore_errors=True)
    data.release_pages()
    return outcome


def _write_references(references: tuple[dict, dict, pd.DataFrame | None, dict], folder: Path) -> None:
    oracle, oracle_error, curves, floors = references
    (folder / "metrics.json").write_text(json.dumps({"oracle": oracle, "oracle_error": oracle_error,
                                                     "floors": floors}, default=float))
    if curves is not None:
        curves.to_parquet(folder / "curves.parquet")


def _read_references(folder: Path) -> tuple[dict, dict, pd.DataFrame | None, dict]:
    metrics = json.loads((folder / "metrics.json").read_text())
    curves = folder / "curves.parquet"
    return (metrics["oracle"], metrics["oracle_error"], pd.read_parquet(curves) if curves.exists() else None,
            metrics["floors"])


def _fit_deep(model: str, task: Task, paths: TaskPaths, data: Prepared, train_cfg: TrainConfig,
              model_cfg: ModelConfig, on_epoch, rank: Rank  # noqa: ANN001
              ) -> tuple[Trainer, TrainResult]:
    """A deep model trained on this rank's shard of the training rows (all of them in one process), with the
    feature map of all of them (every rank's embeddings the same)."""
    seed_everything(train_cfg.seed)
    net = build_model(model, data.fmap, model_cfg)
    # a checkpoint is resumed only by the same data, settings, code and number of processes
    resume = fingerprint(task.name, model, train_cfg.to_dict(), model_cfg.to_dict(), data.folder.name, rank.world)
    workdir = paths.models / "checkpoints" / f"{model}-{resume}"
    stale = [d.name for d in workdir.parent.glob(f"{model}-*") if d != workdir]
    if stale and not workdir.exists() and rank.main:
        log.info("%s: checkpoints %s are of other data, settings or code: not resumed; training afresh",
                 model, ", ".join(sorted(stale)))
    trainer = Trainer(net, train_cfg, workdir, on_epoch=on_epoch, rank=rank)
    train = data.splits["train"]
    if rank.distributed:
        train = train.take(shard(len(train), rank))
    return trainer, trainer.fit(train, data.splits["valid"])


def _log_epoch(row: dict) -> None:
    """An epoch's metrics into the open run as they come (the MLflow UI follows training)."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _add_to_bundle_config(bundle_dir: Path, **values: object) -> None:
    path = bundle_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}, indent=2))


def _selection_metrics(valid: pd.DataFrame, scores: np.ndarray, buyers: pd.DataFrame, task: Task
                       ) -> dict[str, float]:
    """The metrics the champion is chosen on: the validation dates' evaluation set (the backtest's population,
    a week earlier), so that no label of the backtest decides anything. It holds a buyer
    (ml.train.prepared.check_buyers)."""
    summary, _ = evaluate_scores(valid["label_buy"].to_numpy(), scores, valid["target_id"].to_numpy(),
                                 valid["user_id"].to_numpy(), task.evaluate.n, buyers=buyers, by=task.ranked_by)
    return summary


def _validation_pairs(valid: pd.DataFrame, paths: TaskPaths, dates: list[dt.date]
                      ) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per validation day: its candidate rows, their labels, and every buyer pair of the day (the F1's
    denominator, candidates or not)."""
    days = []
    ds = _dates(valid)
    candidate = valid["is_candidate"].to_numpy(dtype=bool)
    for d in dates:
        rows = np.flatnonzero(candidate & (ds == d))
        days.append((rows, valid["label_buy"].to_numpy()[rows], len(read_buyers(paths.exports, d))))
    return days


def _dates(frame: pd.DataFrame) -> np.ndarray:
    return pd.to_datetime(frame["ds"]).dt.date.to_numpy()


def _oracle_validation(paths: TaskPaths, valid: pd.DataFrame, dates: list[dt.date], task: Task) -> np.ndarray | None:
    """The oracle's P(buy) for the validation rows (for its own K), or None when a date has no oracle."""
    out = np.zeros(len(valid))
    ds = _dates(valid)
    for d in dates:
        rows = np.flatnonzero(ds == d)
        p = oracle_scores(paths.dataset_dir, valid.iloc[rows], d, task)
        if p is None:
            return None
        out[rows] = p
    return out


def _evaluated_targets(ev: pd.DataFrame, train: pd.DataFrame) -> list[int]:
    """The evaluated targets, most training buyers first (so few_mixed groups targets of similar size)."""
    evaluated = np.unique(ev["target_id"].to_numpy())
    buyers = train[train["label_buy"] > 0].groupby("target_id").size().reindex(evaluated, fill_value=0)
    return buyers.sort_values(ascending=False, kind="stable").index.astype("int64").tolist()


def _se_importance(model, data: CrowdData, fmap, out: Path) -> Path:  # noqa: ANN001
    """Mean SE weight per field over held-out rows: PLE's own view of which fields matter."""
    sums, n = None, 0
    model.eval()
    with torch.no_grad():
        for b in data.batches(8192, device=next(model.parameters()).device, **model.reads):
            model(b)
            w = model.last_se_weights.sum(dim=0).cpu().numpy()
            sums, n = (w if sums is None else sums + w), n + len(b["labels"])
    names = [c for c, v in fmap.id_fields.items() if v != "user" or model.cfg.user_embedding] + list(fmap.dense)
    return importance_plot(names, sums / n, out / "se_field_importance.png", "PLE: mean SE weight per field")


def _registry_description(task: Task, paths: TaskPaths) -> str:
    """The registered model's description: what its versions predict and which one serves."""
    versions = (f"One version per trained model of task {task.name} on dataset {paths.dataset}, tagged with what "
                "it is and the comparison fingerprint of its settings. The alias champion-<comparison> serves the "
                "crowds of those settings and moves only to a version with a better validation "
                f"{task.evaluate.select_by}; `champion` follows the latest promotion; champion-features-<key> names "
                "the champion of the settings trained last, which serves new data of the same features until a "
                "model is trained on it.")
    return " ".join(filter(None, (task.about(), versions)))


def _record(outcome: Outcome, params: dict, metrics: dict, tags: dict, plots: list[Path], paths: TaskPaths,
            select_by: str, key: str, features_key: str | None, data: Prepared, registry_description: str) -> None:
    """Into the open run: its metrics and artifacts, its model registered with `tags` (what it is and what it
    was trained on), and the champion of its comparison fingerprint `key` moved if it wins."""
    import mlflow

    from ml.tracking import NOTE_TAG, promote_if_better, register_version, selection_metric

    run = mlflow.active_run()
    mlflow.set_tags(tags)
    mlflow.log_params({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in params.items()})
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.log_metrics({f"eval_{k}": v for k, v in outcome.summary.items() if np.isfinite(v)})
    mlflow.log_metrics({f"eval_{k}_ci_{end}": getattr(iv, end) for k, iv in outcome.intervals.items()
                        for end in ("low", "high") if np.isfinite(getattr(iv, end))})
    mlflow.log_metrics({f"oracle_{k}": v for k, v in outcome.oracle.items() if np.isfinite(v)})
    mlflow.log_metrics({f"oracle_{k}_mc_error": v for k, v in outcome.oracle_error.items() if np.isfinite(v)})
    mlflow.log_metrics({selection_metric(k): v for k, v in outcome.selection.items() if np.isfinite(v)})
    mlflow.log_metrics({f"floor_{name}_{k}": v for name, s in outcome.floors.items() for k, v in s.items()
                        if np.isfinite(v) and k not in ("logloss", *CALIBRATION_METRICS)})  # no probabilities
    mlflow.set_tag("above_floor", str(outcome.below_floor() is None).lower())
    mlflow.set_tag("selected_by", selection_metric(select_by))
    table = outcome.per_target.reset_index()
    mlflow.log_table(table, artifact_file="per_target_metrics.json")
    mlflow.log_table(outcome.curves, artifact_file=CURVES_ARTIFACT)
    for p in plots:
        mlflow.log_artifact(str(p), artifact_path="plots")
    mlflow.log_artifacts(str(outcome.bundle), artifact_path="bundle")
    info = _log_model(outcome, data)
    outcome.run_id = run.info.run_id
    described = outcome.description(select_by)
    mlflow.set_tag(NOTE_TAG, described)  # the run's description in the UI
    version = register_version(paths.registered_model, info,
                               {**tags, selection_metric(select_by): outcome.selection[select_by]},
                               description=described, model_description=registry_description)
    outcome.champion = promote_if_better(paths, version, selection_metric(select_by), outcome.selection[select_by], key,
                                         features_key)
    mlflow.set_tag("registered_version", version)
    mlflow.set_tag("champion_at_training", str(outcome.champion).lower())


def _log_model(outcome: Outcome, data: Prepared, example_rows: int = 3):  # noqa: ANN202
    """The model as a pyfunc over its bundle (ml.train.serving), with its signature and an input example (the
    first rows of the backtest as the model reads them), logged from its code file: every family serves P(buy)
    in the population, as the crowds score it."""
    import mlflow

    bundle = Bundle.load(outcome.bundle)
    rows = np.arange(min(example_rows, len(data.splits["evaluation"])))
    if outcome.model in GBDT_MODELS:
        keys = ["target_id", "target_category_id", "is_candidate"]
        example = _as_double(data.frame("evaluation").iloc[rows][[*keys, *bundle.config["dense"]]])
        output, requirements = bundle.score_frame(example), ["lightgbm==4.7.0", "mlflow==3.17.2"]
    else:
        _, net = bundle.network("cpu")  # the one score_batch serves with: what its batch holds (reads)
        batch = data.splits["evaluation"].batch(rows, **net.reads)
        example = {k: v.numpy() for k, v in batch.items() if k not in ("labels", "weight")}
        example["is_candidate"] = np.asarray(data.splits["evaluation"].is_candidate[rows], dtype=bool)
        output, requirements = bundle.score_batch(example), ["torch==2.13.0", "mlflow==3.17.2"]
    return mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("serving.py")),
                                   artifacts={"bundle": str(outcome.bundle)},
                                   signature=_signature(example, output), input_example=example,
                                   pip_requirements=requirements)


def _as_double(frame: pd.DataFrame) -> pd.DataFrame:
    """The example's features as float64: the signature then takes the exports' int32 counts, float32 and double
    features alike (MLflow converts an input to the signature's type only when that loses nothing)."""
    floats = frame.select_dtypes("float").columns
    return pd.concat([frame.drop(columns=floats), frame[floats].astype("float64")], axis=1)[list(frame.columns)]


def _signature(inputs: object, output: np.ndarray):  # noqa: ANN202
    """MLflow's signature of a model's input example and its output. MLflow hints that an integer column cannot
    hold a missing value: known here (ids and codes are never missing), so the hint is not shown."""
    import warnings

    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        return infer_signature(inputs, output)
