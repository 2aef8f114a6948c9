"""`crowd`: the command line of the pipeline. Each subcommand is a thin layer over a function in `ml`.

This is an edge: the task (`--task`, with one run's `--set KEY=VALUE` changes) is read and validated here,
once, and handed down; nothing below builds settings of its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ml.config import Paths, parse_date
from ml.task import ENGINES, Task, TaskPaths, load_task, parse_assignments

if TYPE_CHECKING:  # pandas is imported by the commands that use it: `crowd --help` stays fast
    import pandas as pd

    from ml.synth.params import Sizes

log = logging.getLogger("crowd")
# The parent of the library's result loggers (ml.results.train: a training's metrics and verdict; .warehouse: a
# dbt build's counts; .synth: a generated log's size; .load: a loaded file's counts; .crowds: forward features
# reused, the served champion's verdict), whose lines the commands print as their own: logged for Airflow's task
# logs, kept out of a command's output unless -v.
RESULTS_LOGGER = "ml.results"
# the commands whose tasks log into Airflow's task logs, where those lines are the record
TASK_LOG_COMMANDS = ("run-dags", "airflow")


def _task_name(value: str) -> str:
    """A new task's name: a plain name, the file's stem, its DAGs' prefix and its MLflow experiment's part."""
    from ml.task import NAME_PATTERN

    if not re.match(NAME_PATTERN, value):
        raise argparse.ArgumentTypeError(f"{value!r} is no task name: lower-case letters, digits, '_' and '-', "
                                         "starting with a letter or digit")
    return value


def _date(value: str) -> dt.date:
    try:
        return parse_date(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for a whole number of at least `minimum`: a bad value is refused naming the option
    (`--seed -1` failed inside numpy as "expected non-negative integer", `--workers -2` as "max_workers must
    be greater than 0")."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {number}")
        return number

    return parse


def _overrides(args: argparse.Namespace, **more: object) -> dict:
    """This run's changes to the task: --set, then any command-specific flag that was given."""
    overrides = parse_assignments(getattr(args, "set", None))
    overrides.update({k: v for k, v in more.items() if v is not None})
    return overrides


def _task(args: argparse.Namespace, **more: object):  # noqa: ANN202
    """The run's task: the file named by --task with this run's overrides applied, validated once."""
    return load_task(args.task, _overrides(args, **more))


def _check_log_holds_the_task(task: Task, preset_name: str, sizes: Sizes) -> None:
    """The task's own dataset must hold its labelled dates, each with its label window: said before a log that
    cannot serve the task is written over the one it has (the next step, the warehouse, would refuse it)."""
    first, last = task.labelled_dates[0], task.backtest + dt.timedelta(days=task.windows.label_days - 1)
    if sizes.start < first and last < sizes.end:
        return
    own = task.generate.preset if task.generate else None
    hint = (f"--sizes-of {preset_name} keeps the task's own preset ({own}) and takes only the sizes"
            if own and own != preset_name
            else f"--start {first - dt.timedelta(days=1)} or earlier and --end {last + dt.timedelta(days=1)} or later "
                 "hold them")
    raise ValueError(f"preset {preset_name}'s log would run {sizes.start} .. {sizes.end - dt.timedelta(days=1)}, "
                     f"but task {task.name} labels {first} .. {task.backtest} (label windows to {last}), so "
                     f"{task.dataset} could not serve it: {hint}")


def _cmd_generate(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from ml.synth.generate import generate, oracle_manifest
    from ml.synth.params import PRESETS

    task = _task(args)
    out = args.out or Paths.default().dataset(args.name or task.dataset)
    old = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    if args.skip_if_present and old and old.get("source") != "synthetic":
        # a task made for a loaded log has no preset: make run uses its log (it asked for a preset first)
        print(f"{out} already holds a loaded {old.get('source', '')} log ({old.get('events', 0):,} events): "
              "nothing to do")
        return 0
    preset_name = args.preset or (task.generate.preset if task.generate else None)
    if preset_name is None:
        raise ValueError(f"task {task.name} names no generator preset (generate.preset) and its dataset "
                         f"{args.name or task.dataset} is {'a generated one' if old else 'not there'}: load the log "
                         f"(crowd load --name {args.name or task.dataset}) or pass --preset")
    preset = PRESETS[preset_name]
    sizes = preset.sizes
    if args.sizes_of:
        # `make run PRESET=tiny` on any task: a smaller log of the task's own days and world. It passed the
        # preset itself, so the item and category tasks got the brand task's 2013 log under their name
        other = PRESETS[args.sizes_of].sizes
        sizes = replace(sizes, users=other.users, items=other.items, brands=other.brands)
    changes = {k: getattr(args, k) for k in ("users", "items", "brands", "start", "end")
               if getattr(args, k) is not None}
    sizes = replace(sizes, **changes)
    if args.out is None and (args.name or task.dataset) == task.dataset:
        _check_log_holds_the_task(task, preset_name, sizes)
    seed = args.seed if args.seed is not None else (task.generate.seed if task.generate else None)
    label = task.windows.label_days
    oracle_dates: tuple[dt.date, ...] = ()
    if not args.no_oracle and preset.oracle_target is not None:
        # by default the dates whose ceiling the evaluation reads (the validation dates, for the item task's
        # submission size, and the backtest): on the default task the 11 training dates cost a quarter of
        # the oracle's CPU and nothing reads them
        oracle_dates = tuple(args.oracle_dates or (*task.validation, task.backtest))
        # dates whose label window falls outside the log are skipped when they come from the task
        if not args.oracle_dates:
            oracle_dates = tuple(d for d in oracle_dates
                                 if d > sizes.start and d + dt.timedelta(days=label) <= sizes.end)
    # a tag task's interest tags (a buy in their categories in the label window) get their truth too
    oracle_tags = tuple((i + 1, tuple(t.categories)) for i, t in enumerate(task.tags)
                        if t.min_buys == 1 and t.horizon_days is None) if oracle_dates else ()
    cfg = replace(preset.config(oracle_dates=oracle_dates, oracle_label_days=label, oracle_rollouts=args.rollouts,
                                ceiling_dates=(task.backtest,), ceiling_rollouts=args.ceiling_rollouts,
                                workers=args.workers, oracle_tags=oracle_tags,
                                **({"seed": seed} if seed is not None else {})), sizes=sizes)
    if args.skip_if_present and old:
        wanted = {k: str(v) if isinstance(v, dt.date) else v for k, v in asdict(sizes).items()}
        if old.get("seed") == cfg.seed and old.get("sizes") == wanted and old.get("oracle") == oracle_manifest(cfg):
            print(f"{out} already holds this dataset ({old['events']:,} events): nothing to do")
            return 0
    manifest = generate(cfg, out, progress=not args.quiet)
    print(
        f"wrote {manifest['events']:,} events ({', '.join(f'{k} {v:,}' for k, v in manifest['actions'].items())}) "
        f"for {sizes.users:,} users, {sizes.items:,} items, {sizes.brands:,} brands into {out} "
        f"in {manifest['seconds']:.1f}s ({manifest['events_per_second']:,} events/s)"
    )
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    from ml.loaders.load import load
    from ml.loaders.mapping import CsvMapping, parse_pairs

    out = args.out or Paths.default().dataset(args.name or args.format)
    mapping = CsvMapping(parse_pairs(args.column, "--column"), parse_pairs(args.action, "--action"), args.time_format,
                         args.utc_offset)
    m = load(args.format, args.paths, out, items_paths=args.items, year=args.year, start=args.start, end=args.end,
             mapping=mapping, append=args.append)
    given = len(args.paths) + len(args.items or [])
    for f in m["files"][-given:]:  # this call's files (an append's dataset holds the earlier ones too)
        print(f"{f['path']}: {f['lines']:,} lines: read {f['read']:,} = accepted {f['accepted']:,} + "
              f"rejected {f['rejected']:,}")
        for reason, n in sorted(f["reasons"].items(), key=lambda kv: -kv[1]):
            print(f"    {n:>10,}  {reason}")
    if args.append:
        added = m["appended"][-1]
        print(f"appended {added['events']:,} events to the {len(m['files']) - given} file(s) loaded before "
              f"(their last event at {added['previous_last_ts']})")
        if added["events_up_to_previous_end"]:
            _warn(f"{added['events_up_to_previous_end']:,} of the appended events are at or before "
                  f"{added['previous_last_ts']}, which the dataset held already: late events, or days given "
                  "twice (their events then count twice)")
    print(
        f"{'dataset total' if args.append else 'total'}: read {m['read']:,} = accepted {m['accepted']:,} + "
        f"rejected {m['rejected']:,} "
        f"({'reconciled' if m['reconciled'] else 'NOT RECONCILED'}); {m['events']:,} events, {m['items']:,} items, "
        f"{m['exact_duplicates']:,} identical rows kept; written to {out}"
    )
    if m["events"]:
        # what a task file's dates and windows have to fit
        actions = ", ".join(f"{a} {n:,}" for a, n in m["actions"].items())
        print(f"events from {m['first_ts']} to {m['last_ts']}: {actions}")
    if m["event_items_without_metadata"]:
        _warn(f"items of the log with no category: {m['event_items_without_metadata']:,} (the item table does not "
              "list them): the warehouse rejects their events, each with its reason (ods_event_rejects)")
    if m["item_subset"]:
        print(f"item subset: {m['item_subset']:,} items, {m['item_subset_in_log']:,} of them in the log, "
              f"with {m['events_on_item_subset']:,} of its {m['events']:,} events")
        if m["events"] and not m["events_on_item_subset"]:
            _warn("no event of the log is on an item of the subset: an item task ranks those items only (is the "
                  "item file this log's?)")
    return 0 if m["reconciled"] else 1


def _cmd_warehouse(args: argparse.Namespace) -> int:
    from ml.warehouse.build import build_dates, run_dbt
    from ml.warehouse.export import export_dates
    from ml.warehouse.subset import item_subset_path

    task = _task(args, engine=args.engine)
    paths = TaskPaths.of(task)
    if args.as_of is not None and args.as_of == args.outcome:
        raise ValueError(f"--as-of and --outcome are both {args.as_of}: a forward date has no label window in the "
                         "log yet, an outcome date has")
    if args.as_of is not None:  # refused as `crowd score --as-of` refuses it: past the log, or at its start
        from ml.crowds import forward_date

        forward_date(task, paths, args.as_of)
    if not args.select:  # a date the log does not hold (before it or past it) fails now, not after the build
        from ml.crowds import log_days
        from ml.orchestration import check_date_in_log, check_targets_in_log, short_history

        first_day, last_day = log_days(paths.dataset_dir)
        check_targets_in_log(task, paths.dataset_dir)
        _warn(short_history(task, args.ds or task.labelled_dates, first_day))
        other = sorted(set(args.ds or ()) - set(task.labelled_dates))
        if other:
            _warn(f"{', '.join(map(str, other))}: not a labelled date of task {task.name} (samples every "
                  f"{task.windows.step_days} day(s) {task.samples.first}..{task.samples.last}, validation "
                  f"{', '.join(map(str, task.validation))}, backtest {task.backtest}): training and the backtest "
                  "read only those")
        # every date built here gets labels, a labelled date of the task or not (2014-12-25 on a log ending
        # 12-18 built, then blamed a sparse log for its empty samples)
        for ds in sorted(set(args.ds or task.labelled_dates) | ({args.outcome} if args.outcome else set())):
            check_date_in_log(task, ds, first_day, last_day)
    engine = task.warehouse.engine
    location = paths.warehouse_of(engine)
    common = {"dataset_dir": paths.dataset_dir, "warehouse": location,
              "dbt_vars": task.dbt_vars(ds=args.ds, forward=args.as_of, outcome=args.outcome),
              "item_subset": item_subset_path(task, paths), "engine": engine}
    if args.skip_tests or args.select:  # exactly what was asked: dbt run, or the nodes selected
        report = run_dbt("run" if args.skip_tests else "build", select=args.select or (), quiet=args.quiet,
                         full_refresh=args.full_refresh, **common)
    else:  # ODS, DIM and DW only when not already built from this dataset and these settings
        report = build_dates(quiet=args.quiet, full_refresh=args.full_refresh, **common)
    print(f"dbt {report.command} on {engine}: {report.n_models} models, {report.n_tests} tests passed in "
          f"{report.seconds:.1f}s into {location}")
    if args.as_of or args.outcome:
        _print_crowd_tables(task, engine, location, args.as_of, args.outcome)
    if args.document:
        from ml.warehouse.build import DBT_PROJECT_DIR
        from ml.warehouse.docs import document_warehouse

        unknown = document_warehouse(engine, location, DBT_PROJECT_DIR)
        missing = f"; no description for {', '.join(unknown)} (outside the feature grammar: write one)"
        print(f"described the ADS and samples columns in {DBT_PROJECT_DIR / 'models'}" + (missing if unknown else ""))
    if not args.no_export:
        for e in export_dates(location, paths.exports, args.ds or task.labelled_dates,
                              fingerprint=task.warehouse_fingerprint(), dataset_dir=paths.dataset_dir, engine=engine):
            print(f"exported {e.path}: " + ", ".join(f"{k} {v:,}" for k, v in e.rows.items()))
    return 0


def _print_crowd_tables(task: Task, engine: str, location: Path, as_of: dt.date | None,
                        outcome: dt.date | None) -> None:
    """What a build with a forward or an outcome date holds for it: those dates are not exported, so the build's
    line alone said nothing of their rows (an empty forward population read as a success)."""
    from ml.crowd_outcomes import OUTCOME_TABLES
    from ml.warehouse.engine import open_warehouse

    with open_warehouse(engine, location) as con:
        if as_of:
            n = con.execute("select count(*) from samples.samples_forward where ds = ?", [as_of]).fetchone()[0]
            print(f"forward population as of {as_of}: {n:,} (user, {task.target}) pairs in samples.samples_forward")
        if outcome:
            buyers, targets = (con.execute(f"select count(*) from {table} where ds = ?", [outcome]).fetchone()[0]
                               for table in OUTCOME_TABLES)
            print(f"outcome date {outcome}: {buyers:,} buyer pairs in its label window, {targets:,} targets in its "
                  f"population ({', '.join(OUTCOME_TABLES)})")


def _warn(message: str | None) -> None:
    """A command's warning, as `crowd train` says a model's verdict: one `warning:` line with its results."""
    if message:
        print(f"warning: {message}")


def _cmd_export(args: argparse.Namespace) -> int:
    from ml.warehouse.export import export_dates

    task = _task(args, engine=args.engine)
    paths = TaskPaths.of(task)
    engine = task.warehouse.engine
    for e in export_dates(paths.warehouse_of(engine), paths.exports, args.ds, fingerprint=task.warehouse_fingerprint(),
                          dataset_dir=paths.dataset_dir, engine=engine):
        print(f"exported {e.path}: " + ", ".join(f"{k} {v:,}" for k, v in e.rows.items()))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ml.outputs import check_writable
    from ml.train.distributed import current_rank, launch, without_nproc
    from ml.train.pipeline import train_and_evaluate, train_config
    from ml.train.prepared import prepare
    from ml.train.trainer import resolve_device

    task = _task(args, models=None if not args.model or "all" in args.model else args.model, epochs=args.epochs,
                 nproc=args.nproc)
    paths = TaskPaths.of(task)
    if args.device:
        resolve_device(args.device)  # a device that is not here fails now, not after loading the data
    rank = current_rank()
    if task.training.processes > 1 and not rank.distributed:
        # this process launches the ranks (torchrun) and waits: each runs this command as one process
        return launch(without_nproc(args.argv), task.training.processes)
    check_writable(paths.models, "training")
    if not args.no_track:
        check_writable(paths.shared.mlflow_db.parent, "training")
    data = prepare(task, paths)  # read and encoded once for every model
    for model in task.model_names():
        cfg = train_config(task, model, **({"device": args.device} if args.device else {}))
        o = train_and_evaluate(model, task, paths, train_cfg=cfg, track=not args.no_track, data=data)
        if o is not None:  # rank 0 (or the only process) reports; the other ranks trained beside it
            _print_outcome(o, task)
            _write_outcome(o, args.outcome)
    return 0


def _write_outcome(o, path: Path | None) -> None:  # noqa: ANN001
    """The run's result as JSON for a caller that launched this command (the training DAG under torchrun)."""
    if path is None:
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps({"model": o.model, "run_id": o.run_id, "champion": o.champion, "history": o.history,
                               "train_seconds": o.train_seconds, "samples_per_second": o.samples_per_second,
                               "summary": {k: v for k, v in o.summary.items() if v == v}}))  # NaN left out
    tmp.replace(path)


def _print_outcome(o, task: Task) -> None:  # noqa: ANN001
    from ml.report import ranking_cutoffs

    n = ranking_cutoffs(task)[-1]  # the report's
    select_by = task.evaluate.select_by
    keys = ("f1_at_k", "auc", "auc_per_target", "gauc", "logloss", f"recall_at_{n}", "coverage", f"ndcg_at_{n}")
    print(f"{o.model:<16} valid {select_by} {o.selection[select_by]:.4f} | backtest "
          + "  ".join(f"{k} {o.summary[k]:.4f}" for k in keys if k in o.summary)
          + (f" (K {o.summary['k']:.0f}, chosen on validation)" if "k" in o.summary else "")
          + (f"   | oracle auc {o.oracle['auc']:.4f}" if o.oracle else "")
          + (f" ± {o.oracle_error['auc']:.4f}" if "auc" in o.oracle_error else "")
          + (f"   run {o.run_id}" if o.run_id else "") + ("  (new champion)" if o.champion else ""))
    verdict = o.verdict()
    if verdict:
        print(f"warning: {verdict}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ml.evaluate.intervals import Interval, backtest_intervals
    from ml.evaluate.metrics import evaluate_scores
    from ml.evaluate.pairs import f1_interval, top_k_metrics
    from ml.features.dataset import read_buyers
    from ml.tracking import comparison_key
    from ml.train.bundle import load_bundle
    from ml.train.pipeline import oracle_scores
    from ml.warehouse.export import serving_key

    if args.per_target and args.per_target.suffix != ".csv":
        raise ValueError(f"--per-target {args.per_target}: expected a CSV path (ending .csv)")
    task = _task(args)
    paths = TaskPaths.of(task)
    # the champion that serves the crowds: of this data, or while it has none, of the same features on earlier data
    bundle = load_bundle(args.model, paths, comparison_key(task, paths.exports), serving_key(task, paths.exports))
    raw = bundle.read_population(paths.exports, task.backtest)
    if not args.model and bundle.config.get("build") not in (None, raw.build):
        print(f"note: the champion {bundle.name} (version {bundle.config.get('version')}) was trained on warehouse "
              f"build {bundle.config.get('build')}; the backtest's exports are of build {raw.build}: what it serves "
              "on the new data, measured on it")
    ev = raw.samples
    y, t, u = ev["label_buy"].to_numpy(), ev["target_id"].to_numpy(), ev["user_id"].to_numpy()
    buyers = read_buyers(paths.exports, task.backtest)
    by = task.ranked_by
    scores = bundle.score(raw)
    summary, table = evaluate_scores(y, scores, t, u, task.evaluate.n, buyers=buyers, by=by)
    print(f"{task.name}: {bundle.name} backtested on {task.backtest} ({len(ev):,} rows, {table.shape[0]} {by}s):")
    p_oracle = oracle_scores(paths.dataset_dir, ev, task.backtest, task)
    oracle = (evaluate_scores(y, p_oracle, t, u, task.evaluate.n, buyers=buyers, by=by)[0]
              if p_oracle is not None else {})
    # the next-day item task's own metric: a submission of the model's K (chosen on the validation day when it
    # trained); the ceiling's submission of the same size beside it
    k = bundle.submission_k if task.target == "item" else 0
    if k:
        summary.update(top_k_metrics(y, scores, len(buyers), k))
        if p_oracle is not None:
            oracle.update(top_k_metrics(y, p_oracle, len(buyers), k))
    # each figure with its 95 % interval, as the training recorded it (same resamples, same seed): a difference
    # between two models is read from these, not from the points
    seed = task.training.seed
    intervals = backtest_intervals(y, scores, t, u, table, seed=seed)
    if k:
        intervals["f1_at_k"] = Interval(*f1_interval(y, scores, u, k, buyers["user_id"].to_numpy(), seed=seed))
    width = max(map(len, summary))
    for name, value in summary.items():
        shown = f"{value:.0f}" if name == "k" else f"{value:.4f}"
        ci = intervals.get(name)
        shown += f" ({ci.low:.3f}\u2013{ci.high:.3f})" if ci is not None and math.isfinite(ci.low) else ""
        print((f"  {name:<{width}} {shown:<21}" + (f" oracle {oracle[name]:.4f}"
                                                   if name in oracle and name != "k" else "")).rstrip())
    print(f"  (95 % bootstrap intervals: the ranked {by}s resampled for their means, users for the rest"
          + (f"; k: the submission size {bundle.name} chose on the validation day, the oracle's F1 at the same k)"
             if k else ")"))
    if args.per_target:
        from ml.crowds import write_atomically
        from ml.outputs import check_table_replaceable

        table = table.reset_index()
        check_table_replaceable(args.per_target, table.columns)  # an earlier one, never a file of the user's
        write_atomically(table, args.per_target)
        print(f"per-target metrics written to {args.per_target}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from ml.crowds import (
        build_forward,
        expected_buyers_path,
        forward_date,
        forward_key,
        held_forward,
        log_days,
        score_forward,
        served_on_other_data,
    )
    from ml.orchestration import short_history

    task = _task(args, as_of=args.as_of, crowd_size=args.size)
    paths = TaskPaths.of(task)
    as_of = forward_date(task, paths)
    _warn(short_history(task, [as_of], log_days(paths.dataset_dir)[0]))  # features of fewer days than trained on
    if not args.no_build:
        if not args.model:  # a champion for this data and these settings, before minutes of dbt for none
            from ml.train.bundle import champion_version
            from ml.warehouse.build import project_digest
            from ml.warehouse.export import build_id

            project = project_digest()
            champion_version(paths, task.comparison_fingerprint(build_id(paths.dataset_dir, project)),
                             task.serving_fingerprint(project))
        key = forward_key(task, paths, as_of)
        held = held_forward(paths, as_of, key)
        rows = held or build_forward(task, paths, as_of, key=key)
        done = "already built from this dataset and these settings" if held else "built"
        print(f"{task.name}: features as of {as_of} {done} for {rows['forward']:,} (user, {task.target}) pairs")
    result = score_forward(task, paths, as_of, model=args.model, size=args.size, out=args.out)
    print(f"{task.name}: crowds of {result.targets:,} {task.target} targets for {result.feature_date} .. "
          f"{result.window_end - dt.timedelta(days=1)} by {result.model} ({result.rows:,} rows) -> {result.path}")
    print(f"model: {result.model} version {result.model_version}" + (f", run {result.run_id}" if result.run_id else "")
          + f", trained on build {result.model_build or 'unknown'}; data: dataset {task.dataset}, build "
          f"{result.data_build or 'unknown'}, features as of {result.feature_date}"
          + ("" if result.model_build == result.data_build else " (NOT the build the model was trained on)"))
    print(f"buyers to expect: {result.expected_in_crowds:,.1f} in the crowds, {result.expected_in_population:,.1f} in "
          f"the whole scored population (per target: {expected_buyers_path(result.path)})")
    if result.champion and result.model_build != result.data_build:
        said = served_on_other_data(task.name, result.model, result.model_version, result.model_build,
                                    result.feature_date, result.data_build)
        print(f"warning: {said}")
    if result.submission:
        print(f"submission (the top pairs, as many as the F1 was best at on validation): {result.submission}")
    if result.verdict:
        print(f"warning: {'the champion ' if result.champion else ''}{result.verdict}")
    return 0


def _cmd_outcomes(args: argparse.Namespace) -> int:
    from ml.crowd_outcomes import OUTCOME_COLUMNS, measure_published
    from ml.crowds import write_atomically
    from ml.outputs import check_table_replaceable

    task = _task(args)
    paths = TaskPaths.of(task)
    if args.out is not None:  # the user's path: only an earlier output of this command is replaced, checked first
        check_table_replaceable(args.out, OUTCOME_COLUMNS)
    done, pending = measure_published(task, paths, args.ds, quiet=not args.verbose, track=not args.no_track)
    if not done and not pending:
        raise ValueError(f"{task.name} has published no crowds under {paths.crowds}: publish them first (crowd score)")
    for o in done:
        print(f"{task.name} {o.feature_date} .. {o.window_end - dt.timedelta(days=1)}: " + _outcome_line(o, task))
        if o.submission:
            s = o.submission
            print(f"{task.name} {o.feature_date} submission: {s['bought']:,.0f} of its {s['pairs']:,.0f} pairs bought, "
                  f"of the {s['buyer_pairs']:,.0f} buyer pairs of the item subset: F1 {s['f1']:.4f} (precision "
                  f"{s['precision']:.4f}, recall {s['recall']:.4f})")
        if o.population_differs:
            print(f"warning: {task.name} {o.feature_date}: {o.population_differs}")
    for p in pending:
        print(f"{task.name} {p.feature_date} .. {p.window_end - dt.timedelta(days=1)}: pending, the log ends on "
              f"{p.log_end}")
    if done and args.out is not None:
        import pandas as pd

        write_atomically(pd.concat([o.table for o in done], ignore_index=True), args.out)
    if done:
        where = args.out or (done[-1].path if len(done) == 1 else paths.crowds / "ds=*" / done[-1].path.name)
        print(f"per target: {where}; every date: the warehouse table crowds.crowd_outcomes"
              + ("; the pooled figures are metrics of each model's MLflow run, stepped by the date (outcome_*)"
                 if any(o.logged for o in done) else ""))
    return 0


def _outcome_line(o, task: Task) -> str:  # noqa: ANN001
    """One published date's outcome in one line: the buyers against those expected, then the ratios with their
    intervals over targets."""
    s, f = o.sums, o.pooled

    def figure(name: str, digits: int, suffix: str = "") -> str:
        i = o.intervals.get(name)
        return f"{f[name]:.{digits}f}{suffix}" + (f" ({i.low:.{digits}f}–{i.high:.{digits}f})" if i else "")

    lift = (f", lift {figure('lift', 2, 'x')} over the scored population's rate ({s['buyers_in_population']:,.0f} "
            f"buyers in {s['population']:,.0f} pairs)") if math.isfinite(f["lift"]) else ""
    return (f"{s['buyers_in_crowd']:,.0f} of the crowds' {s['crowd_size']:,.0f} users bought (expected "
            f"{s['expected_buyers_in_crowd']:,.1f}, ratio {figure('buyers_over_expected', 2)}); precision "
            f"{figure('precision', 4)}, recall {figure('recall', 4)} of the {s['buyers']:,.0f} buyers of its "
            f"{o.targets:,} {task.target} targets{lift}; {o.model} version {o.model_version}")


def _cmd_erase(args: argparse.Namespace) -> int:
    from ml.crowds import write_atomically
    from ml.evaluate.erasure import erasure_report

    task = _task(args)
    paths = TaskPaths.of(task)
    models = args.model or [m for m in task.model_names() if (paths.models / m).exists()]
    if not models:
        raise ValueError(f"no trained model of task {task.name}: run `crowd train --task {task.name}` first")
    table = erasure_report(task, paths, models)
    wide = table.pivot_table(index=["tag", "model"], columns="input", values="auc", sort=False)
    wide = wide[[c for c in ("full", "no_buys", "no_rule_categories") if c in wide.columns]]
    print(f"{task.name}: backtest {task.backtest}, each tag's AUC with full inputs, with every buy erased, and "
          "with the tag's own categories erased (labels from the real log):")
    print(wide.round(4).to_string())
    erased = table[table["auc_drop_low"].notna()]
    drops = erased.assign(text=_with_intervals(erased, "auc_drop", digits=4))
    print("the AUC's drop from the full inputs, with its 95 % interval (the same users resampled for both: a drop "
          "is told from none only where it excludes 0):")
    print(drops.pivot_table(index=["tag", "model"], columns="input", values="text", aggfunc="first", sort=False)
          .to_string())
    out = paths.reports / "erasure.csv"
    write_atomically(table, out)
    print(f"every metric: {out}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from ml.crowds import write_atomically
    from ml.evaluate.ablation import GROUPS, ablate, log_ablation
    from ml.train.trainer import resolve_device

    task = _task(args)
    paths = TaskPaths.of(task)
    if args.device:
        resolve_device(args.device)
    table, run_id = ablate(task, paths, args.model, tuple(args.groups or GROUPS), device=args.device or "auto")
    print(f"{task.name}: {table['model'].iloc[0]} on the backtest {task.backtest} with every input, and with each "
          "group of inputs erased at scoring time (drop: what the model loses without it):")
    print(_ablation_text(table).to_string())
    print("drops with their 95 % interval, paired: the same resampled targets (users for a next-day item task; "
          "users for the pooled AUC) with and without the inputs; a drop is told from none only where its "
          "interval excludes 0")
    out = paths.reports / f"ablation-{table['model'].iloc[0]}.csv"
    write_atomically(table, out)
    if run_id and not args.no_track:
        log_ablation(table, run_id, paths)
        print(f"logged to MLflow run {run_id} (ablation_* metrics, ablation.json); table: {out}")
    else:
        print(f"table: {out} (no MLflow run of this model with the task's settings to log it to)"
              if not args.no_track else f"table: {out}")
    return 0


def _with_intervals(table: pd.DataFrame, column: str, digits: int) -> list[str]:
    """Each value of `column` with its interval (`column`_low, `column`_high) where it has one."""
    import numpy as np

    lows, highs = (table.get(f"{column}_{end}", table[column] * np.nan) for end in ("low", "high"))
    return [f"{v:.4f}" + (f" ({low:.{digits}f}–{high:.{digits}f})" if np.isfinite(low) else "")
            for v, low, high in zip(table[column], lows, highs, strict=True)]


def _ablation_text(table: pd.DataFrame) -> pd.DataFrame:
    """The ablation as printed: each metric, then each drop with its interval where it has one."""
    import pandas as pd

    keys = [c.removesuffix("_drop") for c in table.columns if c.endswith("_drop")]
    out = pd.DataFrame(index=table["inputs"].to_numpy())
    for k in keys:
        out[k] = table[k].map("{:.4f}".format).to_numpy()
    for k in keys:
        out[f"{k}_drop"] = _with_intervals(table, f"{k}_drop", digits=3)
    return out


def _cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from ml.report import latest_runs, markdown, write_readme

    task = _task(args)
    paths = TaskPaths.of(task)
    table = latest_runs(paths, task)
    print(table.attrs["settings"])
    print(markdown(table))
    if args.readme:
        select = f"valid_{task.evaluate.select_by}"
        models = table[~table["model"].str.startswith("oracle")].dropna(subset=[select])
        population = ("the candidate pairs (user, item of the subset, touched in the last "
                      f"{task.warehouse.candidate_days or task.windows.history_days} days)" if task.target == "item"
                      else f"every active user x the evaluated {task.targets_word}")
        note = (f"Task {task.name}: `{select}` on the validation dates ({', '.join(map(str, task.validation))}), "
                f"the metric the champion is chosen on; every other column on the backtest {task.backtest}, "
                f"{population}. Written by `crowd report --readme` from the MLflow store.")
        # the registry's champion, not the table's best; an earlier run than the table's may hold it
        champion, row = table.attrs.get("champion"), models[models["champion"]]
        chosen = row.iloc[0] if len(row) else champion
        if chosen is not None:
            earlier = "" if len(row) else f" (version {chosen['version']}, an earlier run than the table's)"
            note += f" Chosen: {chosen['model']}{earlier}, backtest AUC {chosen['auc']:.4f}"
            oracle = table[table["model"].str.startswith("oracle")]
            if len(oracle):
                o = oracle.iloc[0]
                note += f", {o['auc'] - chosen['auc']:.4f} below the oracle's {o['auc']:.4f}"
                if pd.notna(o.get("auc_err")):
                    note += f" (± {o['auc_err']:.4f}, its Monte Carlo error)"
            if "f1_at_k" in table.columns and "f1_at_k" in chosen:  # (a row's; an earlier run's is not read)
                note += f"; F1 {chosen['f1_at_k']:.4f} at K {chosen['k']:.0f}"
                if len(oracle):
                    note += f" (the oracle's {oracle['f1_at_k'].iloc[0]:.4f} at K {oracle['k'].iloc[0]:.0f})"
            note += "."
        write_readme(args.readme, table, note, task.name)
        print(f"comparison written into {args.readme}")
    if args.html:
        from ml.report_html import write_report

        out = write_report(task, paths, None if args.html is True else args.html, table=table)
        print(f"report: {out}")
    return 0


def _cmd_run_dags(args: argparse.Namespace) -> int:
    from ml.local_airflow import run_pipeline
    from ml.report import latest_runs, markdown
    from ml.tracking import configure, tracking_uri, ui_url

    overrides = _overrides(args)
    task = load_task(args.task, overrides)  # validated here; the same overrides go to every DAG run's Params
    _check_has_dags(args.task, task.name)
    paths = TaskPaths.of(task)
    from ml.crowds import log_days
    from ml.orchestration import short_history

    try:
        first_day = log_days(paths.dataset_dir)[0]
    except ValueError:  # no events: run_pipeline says what to do
        pass
    else:
        _warn(short_history(task, args.ds or task.labelled_dates, first_day))
    start = time.perf_counter()
    runs = run_pipeline(task, overrides, dates=args.ds, training=not args.no_training, quiet=args.quiet)
    shared = paths.shared
    print(f"{len(runs)} DAG runs succeeded in {time.perf_counter() - start:.0f} s "
          f"(task logs: {shared.airflow_home / 'local_run.log'})")
    if not args.no_training:
        print(markdown(latest_runs(paths, task)))
        from ml.crowds import latest_published

        crowds = latest_published(paths)
        if crowds:
            import pyarrow.parquet as pq

            made = pq.read_table(crowds, columns=["model", "model_version"]).slice(0, 1).to_pylist()
            by = f"scored by {made[0]['model']} version {made[0]['model_version']}; " if made else ""
            print(f"crowds:  {crowds}  ({by}and the table crowds.forward_crowds in {paths.warehouse})")
        reports = sorted((paths.reports / "runs").glob("*.html"), key=lambda f: f.stat().st_mtime)
        if reports:
            print(f"report:  {reports[-1]}  (open it in a browser)")
        uri = tracking_uri(shared)
        print(f"MLflow:  {uri}  experiment {paths.experiment}  ({ui_url(configure(paths))}"
              f"{'' if uri.startswith('http') else ' after make mlflow'})")
        print(f"Airflow: {shared.airflow_home}  (make airflow shows the runs)")
    return 0


def _check_has_dags(asked: str, name: str) -> None:
    """The DAGs are made from the task files under tasks/ (one pair per file), and their tasks read the task by
    name: a task file elsewhere has none, and one named like a task there would run that other file's settings.
    Refused before any work (it failed in the first DAG run with an AttributeError)."""
    from ml.task import TASKS_DIR, task_file

    own = TASKS_DIR / f"{name}.yaml"
    if task_file(asked).resolve() == own.resolve():
        return
    fix = (f"{own} holds another task of that name: copy it there under another name" if own.exists() else
           f"copy it to {own} and run `crowd run-dags --task {name}`")
    raise ValueError(f"{asked} has no DAGs: Airflow makes them from the task files under {TASKS_DIR} and its tasks "
                     f"read the task by name; {fix} (or run its steps without Airflow: crowd warehouse, train and "
                     "score take a task file)")


def _cmd_airflow(args: argparse.Namespace) -> int:
    from ml.local_airflow import standalone

    return standalone(host=args.host, port=args.port, db=args.db)


def _cmd_paths(args: argparse.Namespace) -> int:
    task = _task(args)
    paths = TaskPaths.of(task)
    if args.mlflow_env:
        from ml.tracking import tracking_uri

        # the mlflow command finds nothing of the project's without them (the local store is a SQLite file
        # under the data directory), and `mlflow models serve` needs the registered model's name
        uri = tracking_uri(paths.shared)
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "MLFLOW_EXPERIMENT_NAME": paths.experiment,
               "CROWD_REGISTERED_MODEL": paths.registered_model}
        return _print_exports(f"the task {task.name}'s MLflow store, experiment and registered model: eval \"$(crowd "
                              f"paths --task {task.name} --mlflow-env)\", then for example mlflow models serve -m "
                              "\"models:/$CROWD_REGISTERED_MODEL@champion\" --env-manager local -h 127.0.0.1 -p 5055",
                              env)
    if not args.dbt_env:
        print(json.dumps(paths.describe(), indent=2))
        return 0

    from ml.warehouse.build import dbt_environment
    from ml.warehouse.subset import item_subset_path

    # what `crowd warehouse` hands dbt, for dbt by hand on the task's own warehouse: the README said "set
    # CROWD_DATASET_DIR and CROWD_WAREHOUSE as `crowd paths` prints them", which printed neither name, nor the vars
    engine = task.warehouse.engine
    env = dbt_environment(paths.dataset_dir, paths.warehouse_of(engine), item_subset_path(task, paths), engine)
    env["CROWD_DBT_VARS"] = json.dumps(task.dbt_vars(), separators=(",", ":"))
    return _print_exports(f"the task {task.name}'s dataset, warehouse and dbt vars: eval \"$(crowd paths --task "
                          f"{task.name} --dbt-env)\", then in dbt_project/: dbt build --profiles-dir . --vars "
                          "\"$CROWD_DBT_VARS\"", env)


def _print_exports(comment: str, env: dict[str, str]) -> int:
    """Shell lines to eval: a comment saying what for, then one quoted export per variable."""
    import shlex

    print(f"# {comment}")
    print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    from ml.task import TaskError, available_tasks

    if args.new and args.fit_dates:
        raise TaskError("--new writes a task and --fit-dates fits one's dates: one at a time")
    if args.new:
        return _new_task(args)
    if args.fit_dates:
        return _fit_dates(args.fit_dates)
    if args.dataset or args.out or args.description:
        raise TaskError("--dataset, --description and --out go with --new NAME (the task file to write)")
    invalid = 0
    for name in available_tasks():
        try:
            t = load_task(name)
        except TaskError as e:  # the others are still listed (as they keep their DAGs)
            invalid += 1
            print(f"{name:<24} does not validate (no DAGs): {e}")
            continue
        print(f"{name:<24} {t.target:<9} dataset {t.dataset:<20} every {t.windows.step_days} day(s), label "
              f"{t.windows.label_days} day(s), backtest {t.backtest}  {t.description}")
    return 2 if invalid else 0


def _fit_dates(name: str) -> int:
    """An existing task's dates moved forward on its cadence to the latest its log labels (after `crowd load
    --append`, say; ml.task_new.moved_dates). Printed, not written, since the task file is the user's: as the
    file's lines, the DAGs' overrides Param and --set overrides for one run."""
    from ml.crowds import log_days
    from ml.task_new import moved_dates

    task = load_task(name)
    first_day, last_day = log_days(TaskPaths.of(task).dataset_dir)
    step = task.windows.step_days
    periods, overrides = moved_dates(task, last_day)
    print(f"{task.name}: the log {task.dataset} runs {first_day} .. {last_day}; samples {task.samples.first} .. "
          f"{task.samples.last}, validation {', '.join(map(str, task.validation))}, backtest {task.backtest}")
    if periods == 0:
        print(f"{task.name}: these are the latest dates the log labels on the task's cadence (every {step} day(s))")
        return 0
    moved = task.override(overrides)  # validated: a moved date that breaks a rule fails here, in one line
    valid = ", ".join(map(str, moved.validation))
    print(f"moved {periods:+d} period(s) of {step} day(s), to the latest the log labels: in the task file")
    print(f"  samples: {{first: {moved.samples.first}, last: {moved.samples.last}}}\n  validation: [{valid}]\n"
          f"  backtest: {moved.backtest}")
    print(f"or for one DAG run, its overrides Param: {json.dumps(overrides)}")
    print("or for one run: " + " ".join(f"--set {k}=" + (f"[{','.join(v)}]" if isinstance(v, list) else v)
                                        for k, v in overrides.items()))
    return 0


def _new_task(args: argparse.Namespace) -> int:
    """A task file for a loaded log, from a template task, with the dates fitted to the log (ml.task_new)."""
    from ml.crowds import log_days
    from ml.task import TASKS_DIR, TaskError
    from ml.task_new import new_task_text, write_new

    if not args.dataset:
        raise TaskError("crowd tasks --new needs --dataset: the name the log was loaded under (crowd load --name)")
    dataset_dir = Paths.default().dataset(args.dataset)
    first_day, last_day = log_days(dataset_dir)
    text, task, notes = new_task_text(args.like, args.new, args.dataset, dataset_dir, first_day, last_day,
                                      args.description)
    path = (args.out or TASKS_DIR) / f"{args.new}.yaml"  # the file's stem is the task's name
    write_new(path, text)
    dates = task.sample_dates
    print(f"wrote {path}: {task.target} of the log {args.dataset} ({first_day} .. {last_day}), every "
          f"{task.windows.step_days} day(s); samples {dates[0]} .. {dates[-1]} ({len(dates)} dates), validation "
          f"{', '.join(map(str, task.validation))}, backtest {task.backtest}; crowds as of "
          f"{last_day + dt.timedelta(days=1)}")
    for note in notes:
        print(f"note: {note}")
    task_arg = args.new if path.parent == TASKS_DIR else str(path)  # the DAGs' and make run's name for it
    print(f"next: crowd warehouse --task {task_arg} && crowd train --task {task_arg} && crowd score --task {task_arg}"
          + (f", or make run TASK={args.new}" if task_arg == args.new else ""))
    return 0


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help (unless the help says it already); examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


# what each command is most often run as: shown under its --help
EXAMPLES = {
    "generate": ["crowd generate --task tmall-2013                 # the task's preset and seed",
                 "crowd generate --task tianchi-mobile-2014 --sizes-of tiny   # a small log of the task's days",
                 "crowd generate --preset tiny --name tiny --no-oracle"],
    "load": ["crowd load --format taobao-userbehavior UserBehavior.csv",
             "crowd load --format tianchi-mobile user.csv --items item.csv --name tianchi-mobile",
             "crowd load --format csv mylog.csv --items myitems.csv --name mylog   # a log of your own",
             "crowd load --format csv day-2024-03-08.csv --name mylog --append     # ... and its new days",
             ("crowd load --format csv events.csv --name retail --column user_id=visitorid,item_id=itemid "
              "--column action=event,time=timestamp --action view=click,addtocart=cart,transaction=buy "
              "--time-format unix_millis")],
    "warehouse": ["crowd warehouse --task tmall-2013                # every labelled date, then the exports",
                  "crowd warehouse --ds 2013-09-23 --select +samples_evaluation",
                  "crowd warehouse --engine spark --no-export",
                  "crowd warehouse --ds 2013-09-16 --outcome 2013-09-16 --as-of 2013-09-30   # + the crowds' tables",
                  "crowd warehouse --task tianchi-mobile-2014 --document   # new feature columns get descriptions"],
    "export": ["crowd export --ds 2013-09-16 2013-09-23"],
    "train": ["crowd train --model lgbm_all_mixed din --epochs 2",
              "crowd train --model all --set training.negative_rate=0.5",
              "crowd train --model din --nproc 2                # DistributedDataParallel over 2 processes"],
    "evaluate": ["crowd evaluate --model din --per-target din.csv"],
    "erase": ["crowd erase --task tmall-2013-tags"],
    "ablate": ["crowd ablate --model din --groups sequence target_history"],
    "score": ["crowd score                                      # the champion's crowds for tomorrow",
              "crowd score --model lgbm_all_mixed --size 500 --as-of 2013-09-30"],
    "outcomes": ["crowd outcomes                                   # every published date the log now covers",
                 "crowd outcomes --ds 2013-09-16 --no-track       # after crowd score --as-of 2013-09-16: a past date",
                 "crowd outcomes --out outcomes.csv               # per target, for a merchant's tools"],
    "report": ["crowd report --readme README.md",
               "crowd report --html                             # reports/report.html, to open in a browser"],
    "run-dags": ["crowd run-dags --task taobao-2017-category",
                 "crowd run-dags --ds 2013-09-16 2013-09-23 --no-training --set label_days=3"],
    "airflow": ["crowd airflow                                    # http://127.0.0.1:8080, SQLite metadata",
                "crowd airflow --db postgres --port 8081"],
    "paths": ["crowd paths --task taobao-2017-category",
              'crowd paths --task taobao-2017-category --dbt-env   # eval "$(...)": dbt by hand on its warehouse',
              'crowd paths --mlflow-env                            # eval "$(...)": the mlflow command on its store'],
    "tasks": ["crowd tasks",
              "crowd tasks --new mine --dataset mylog                       # brand, weekly: like tmall-2013",
              "crowd tasks --new mine-daily --dataset mylog --like taobao-2017-category",
              "crowd tasks --fit-dates mine                                 # after crowd load --append"],
}


def _command(sub: argparse._SubParsersAction, name: str, **kwargs: object) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its defaults and, below its options, its EXAMPLES."""
    examples = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
    return sub.add_parser(name, formatter_class=_Help, epilog=examples, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from ml.evaluate.ablation import GROUPS as ABLATION_GROUPS
    from ml.loaders.formats import FORMATS
    from ml.synth.params import PRESETS
    from ml.task import ALL_MODELS, DEFAULT_TASK, OVERRIDES

    parser = argparse.ArgumentParser(
        prog="crowd", formatter_class=_Help,
        description="Purchase crowd prediction pipeline: which users will buy a brand, category, item or tag.",
        epilog="a task end to end:\n  crowd generate && crowd warehouse && crowd train --model all && crowd score\n"
               "the same through the real Airflow DAGs:\n  crowd run-dags\n"
               "`crowd COMMAND --help` shows a command's options, defaults and examples.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tasked = argparse.ArgumentParser(add_help=False)
    tasked.add_argument("--task", default=DEFAULT_TASK, metavar="NAME|FILE",
                        help=f"a task under tasks/ or a task file (default {DEFAULT_TASK}; `crowd tasks` lists them)")
    tasked.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help=f"change one setting of the task for this run (repeatable): a dotted path such as "
                             f"windows.label_days=2, or one of {', '.join(OVERRIDES)} "
                             f"(models=lgbm_all_mixed,dnn)")

    g = _command(sub, "generate", parents=[tasked], help="write a synthetic log (with its oracle) as canonical parquet")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="a log's sizes, days and world: tiny (tests), default (tmall-2013), taobao "
                        "(taobao-2017-category), tianchi (tianchi-mobile-2014), tianchi-tiny (its tests), large "
                        "(benchmarks, ~100M events); "
                        "default: the task's generate.preset")
    g.add_argument("--sizes-of", choices=sorted(PRESETS), metavar="PRESET",
                   help="the users, items and brands of another preset, in the days and world of --preset (a "
                        "small log of any task: --sizes-of tiny; what `make run PRESET=` does)")
    g.add_argument("--users", type=int, help="users in the log (default: the preset's)")
    g.add_argument("--items", type=int, help="items in the log (default: the preset's)")
    g.add_argument("--brands", type=int, help="brands the items belong to (default: the preset's)")
    g.add_argument("--start", type=_date, help="first day of the log (default: the preset's)")
    g.add_argument("--end", type=_date, help="day after the last day of the log (default: the preset's)")
    g.add_argument("--seed", type=_at_least(0), help="default: the task's generate.seed")
    g.add_argument("--rollouts", type=int, default=32,
                   help="Monte Carlo rollouts of the oracle on its dates other than the backtest (default: 32)")
    g.add_argument("--ceiling-rollouts", type=int, default=1024,
                   help="rollouts on the backtest date, whose ceiling the report prints (default: 1024: a Monte "
                        "Carlo error of its AUC under 0.001)")
    g.add_argument("--oracle-dates", type=_date, nargs="*", help="dates to write the oracle for "
                   "(default: the task's validation dates and backtest, the ones its evaluation reads)")
    g.add_argument("--no-oracle", action="store_true", help="skip the oracle (faster)")
    g.add_argument("--workers", type=_at_least(0), default=0, help="processes (default 0: one per core)")
    g.add_argument("--name", help="dataset name under DATA/raw/ (default: the task's dataset)")
    g.add_argument("--out", type=Path, help="output directory (default DATA/raw/NAME)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--skip-if-present", action="store_true",
                   help="do nothing if the output already holds a loaded log, or a generated one of the same "
                        "sizes and seed")
    g.set_defaults(func=_cmd_generate)

    ld = _command(sub, "load", help=f"convert a log ({', '.join(FORMATS)}) into canonical parquet, with rejects")
    ld.add_argument("--format", required=True, choices=sorted(FORMATS), help="the log's format (one of %(choices)s)")
    ld.add_argument("paths", nargs="+", type=Path,
                    help="log files (parts of one log); .gz, .bz2 and one-file .zip are read as they are")
    ld.add_argument("--items", nargs="*", type=Path, help="item table files (the formats that have one: "
                    f"{', '.join(name for name, fmt in FORMATS.items() if fmt.items is not None)})")
    ld.add_argument("--year", type=int, help="year of mmdd dates (tmall-repeat)")
    ld.add_argument("--start", type=_date, help="reject events before this date")
    ld.add_argument("--end", type=_date, help="reject events on or after this date")
    ld.add_argument("--column", action="append", metavar="NAME=HEADER",
                    help="csv: the header holding one of its columns (repeatable, or comma-separated: "
                         "user_id=visitorid,item_id=itemid; the item table's header too); default: the column's name")
    ld.add_argument("--action", action="append", metavar="VALUE=ACTION",
                    help="csv: what one of the log's action values is, one of click, collect, cart, buy "
                         "(repeatable, or comma-separated: view=click,addtocart=cart,transaction=buy; values not "
                         "named are rejects); default: the values click, collect, cart, buy")
    ld.add_argument("--time-format", metavar="FORMAT",
                    help="csv: iso (YYYY-MM-DD HH:MM:SS, or its T form), unix_seconds or unix_millis (UTC, or "
                         "--utc-offset), or a strptime pattern of %%Y %%m %%d %%H %%M %%S such as "
                         "'%%d/%%m/%%Y %%H:%%M' (default: iso)")
    ld.add_argument("--utc-offset", metavar="OFFSET",
                    help="csv: the log's local time for unix times, as +HH:MM or hours east of UTC (+08:00, -5): "
                         "calendar days are its days (default: UTC)")
    ld.add_argument("--append", action="store_true",
                    help="add the files to the dataset loaded before under this name (the log's new days): the "
                         "earlier files are not read again; the same format and options, and no file given twice")
    ld.add_argument("--name", help="dataset name under DATA/raw/ (default: the format)")
    ld.add_argument("--out", type=Path, help="output directory (default DATA/raw/NAME)")
    ld.set_defaults(func=_cmd_load)

    w = _command(sub, "warehouse", parents=[tasked], help="build the task's dbt warehouse (ODS, DIM, DW, ADS, "
                       "samples) and export each date as parquet for the trainers")
    w.add_argument("--ds", type=_date, nargs="+", help="dates to build (default: every labelled date of the task)")
    w.add_argument("--as-of", type=_date, metavar="DATE", help="also build the forward population as of DATE "
                   "(samples_forward, with its features: what `crowd score --as-of DATE` scores; not exported here)")
    w.add_argument("--outcome", type=_date, metavar="DATE", help="also build how crowds published as of DATE did "
                   "(samples_outcomes, samples_outcome_targets: what `crowd outcomes` reads); its label window must "
                   "be in the log")
    w.add_argument("--select", nargs="+", help="dbt node selection (default: everything)")
    w.add_argument("--skip-tests", action="store_true", help="dbt run instead of dbt build")
    w.add_argument("--full-refresh", action="store_true",
                   help="make the per-date tables (ADS, samples) again with this build's dates alone: what a change "
                        "of target or warehouse.feature_windows needs, which changes their columns (the dates built "
                        "before leave them; their exports stay)")
    w.add_argument("--no-export", action="store_true", help="build only; do not write exports/ds=...")
    w.add_argument("--quiet", action="store_true",
                   help="leave out dbt's console (a line per node; its log under the warehouse's dbt/logs keeps it)")
    w.add_argument("--document", action="store_true", help="after the build, describe every ADS and samples "
                   "column in the dbt project's properties files (from the feature grammar, ml/warehouse/docs.py), "
                   "keeping the hand-written descriptions and tests")
    w.add_argument("--engine", choices=ENGINES, help="what runs the dbt project (default: the task's "
                   "warehouse.engine, duckdb): spark builds the same tables with dbt-spark on a local PySpark")
    w.set_defaults(func=_cmd_warehouse)

    ex = _command(sub, "export", parents=[tasked], help="write the task's exports/ds=YYYY-MM-DD/*.parquet "
                        "from its built warehouse")
    ex.add_argument("--ds", type=_date, nargs="+", help="dates to export (default: every built date)")
    ex.add_argument("--engine", choices=ENGINES, help="which engine's warehouse to read (default: the task's)")
    ex.set_defaults(func=_cmd_export)

    tr = _command(sub, "train", parents=[tasked], help="train the task's models on its exports, backtest them, "
                        "record them in MLflow")
    tr.add_argument("--model", nargs="+", choices=[*ALL_MODELS, "all"], metavar="MODEL",
                    help=f"one or more of: {', '.join(ALL_MODELS)}, or all (default: the task's models)")
    tr.add_argument("--epochs", type=int, help="epochs of every deep model (default: the task's)")
    tr.add_argument("--device", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    tr.add_argument("--no-track", action="store_true", help="do not record the run in MLflow")
    tr.add_argument("--nproc", type=int, metavar="N", help="train each deep model as N processes with torch "
                    "DistributedDataParallel through torchrun (gloo on CPUs, NCCL on GPUs; default: the task's "
                    "training.processes, 1). LightGBM trains in one process.")
    tr.add_argument("--outcome", type=Path, help=argparse.SUPPRESS)  # the launcher's result file (JSON)
    tr.set_defaults(func=_cmd_train)

    ev = _command(sub, "evaluate", parents=[tasked], help="backtest a model on the task's backtest date and "
                        "print every metric")
    ev.add_argument("--model", help="a trained model of the task (default: the task's champion)")
    ev.add_argument("--per-target", type=Path, help="also write the per-target metrics to this CSV")
    ev.set_defaults(func=_cmd_evaluate)
    er = _command(sub, "erase", parents=[tasked], help="a tag task's check of what its models learned beyond "
                        "the rule: the backtest scored with every buy, and with each tag's own categories, erased "
                        "from the inputs")
    er.add_argument("--model", nargs="+", help="trained models of the task (default: every model it trains)")
    er.set_defaults(func=_cmd_erase)
    ab = _command(sub, "ablate", parents=[tasked], help="what a model learned: the backtest scored with each "
                        "group of inputs erased (each action, the sequence, the target's own history), the drop "
                        "in AUC and recall@N logged to the model's MLflow run")
    ab.add_argument("--model", help="a trained model of the task (default: the task's champion)")
    ab.add_argument("--groups", nargs="+", choices=ABLATION_GROUPS,
                    help=f"the input groups to erase, one at a time (default: all: {', '.join(ABLATION_GROUPS)})")
    ab.add_argument("--device", help="auto (cuda when present), cpu, cuda ... (default: auto)")
    ab.add_argument("--no-track", action="store_true", help="do not log the drops to MLflow")
    ab.set_defaults(func=_cmd_ablate)

    sc = _command(sub, "score", parents=[tasked], help="the forward crowds: features as of the day after the "
                        "log's last (or --as-of), scored by the champion, the top users of every target")
    sc.add_argument("--as-of", type=_date, help="feature date (default: the task's crowds.as_of, else the day "
                    "after the log's last day)")
    sc.add_argument("--model", help="a trained model of the task (default: the task's champion)")
    sc.add_argument("--size", type=int, help="users per target, capped by the population (default: the task's "
                    "crowds.size, at most its crowds.share of the scored users)")
    sc.add_argument("--no-build", action="store_true",
                    help="score the forward export as it is, even one made from other inputs; build nothing (by "
                    "default one made from the same dataset and settings is reused, any other is built again)")
    sc.add_argument("--out", type=Path, help="output parquet, or CSV for a name ending .csv (default: the task's "
                    "crowds/ds=DATE/crowds.parquet and the warehouse table crowds.forward_crowds)")
    sc.set_defaults(func=_cmd_score)

    oc = _command(sub, "outcomes", parents=[tasked], help="how published crowds did, once the log holds the days "
                        "they predicted: their buyers against those expected, precision, recall and lift over the "
                        "scored population, logged to the model's MLflow run")
    oc.add_argument("--ds", type=_date, nargs="+", metavar="DATE",
                    help="the crowds' feature dates (default: every date the task published; those whose window "
                         "the log does not hold yet are listed as pending)")
    oc.add_argument("--no-track", action="store_true", help="do not log the outcomes to the models' MLflow runs")
    oc.add_argument("--out", type=Path, help="also write the per-target outcomes of the dates measured to this file, "
                    "parquet or CSV for a name ending .csv (each date's are beside its crowds as "
                    "crowds_outcomes.parquet)")
    oc.set_defaults(func=_cmd_outcomes)

    rp = _command(sub, "report", parents=[tasked], help="the task's model comparison (latest run of each model, "
                        "and the oracle)")
    rp.add_argument("--readme", type=Path, metavar="FILE",
                    help="also write it into this Markdown file between the task's comparison markers (README.md "
                         "for tmall-2013, docs/tasks.md for tianchi-mobile-2014)")
    rp.add_argument("--html", type=Path, nargs="?", const=True, metavar="FILE",
                    help="also write a self-contained HTML report (table, ROC, recall@N, gain and lift, "
                         "calibration, crowd sizes) to FILE (default: the task's reports/report.html)")
    rp.set_defaults(func=_cmd_report)

    rd = _command(sub, "run-dags", parents=[tasked], help="the whole task through its real Airflow DAGs in this "
                        "process (dag.test): every period, then training and the forward crowds; what `make run` does")
    rd.add_argument("--ds", type=_date, nargs="+", help="periods to build (default: every labelled date of the task)")
    rd.add_argument("--no-training", action="store_true", help="only the period runs")
    rd.add_argument("--quiet", action="store_true", help="no progress bar")
    rd.set_defaults(func=_cmd_run_dags)

    af = _command(sub, "airflow", help="a local Airflow over the project's DAGs and metadata DB (api-server, "
                        "scheduler, dag-processor, triggerer) in one process group: Ctrl-C stops all of it; what "
                        "`make airflow` does")
    af.add_argument("--host", default="127.0.0.1", help="the api-server's address (default %(default)s)")
    af.add_argument("--port", type=int, default=8080, help="the api-server's port (default %(default)s)")
    af.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite",
                    help="the metadata DB: SQLite under DATA/airflow, or a real Postgres server (from the pgserver "
                         "wheel, data in DATA/airflow/postgres, a Unix socket only), as deployed (default %(default)s)")
    af.set_defaults(func=_cmd_airflow)

    pa = _command(sub, "paths", parents=[tasked], help="print where a task keeps its outputs")
    exports = pa.add_mutually_exclusive_group()
    exports.add_argument("--dbt-env", action="store_true",
                         help="print instead the shell exports that point dbt by hand at the task's dataset and "
                              "warehouse, and its vars ($CROWD_DBT_VARS)")
    exports.add_argument("--mlflow-env", action="store_true",
                         help="print instead the shell exports that point the mlflow command (models serve, ui) at "
                              "the project's store, the task's experiment and its registered model "
                              "($CROWD_REGISTERED_MODEL)")
    pa.set_defaults(func=_cmd_paths)

    ta = _command(sub, "tasks", help="list the tasks under tasks/, write a new one for a loaded log (--new), or fit "
                                     "one's dates to its log as it is now (--fit-dates)")
    ta.add_argument("--new", metavar="NAME", type=_task_name,
                    help="write tasks/NAME.yaml for the log --dataset: the settings of the task --like, the dates "
                         "fitted to the log (the latest it labels)")
    ta.add_argument("--fit-dates", metavar="TASK",
                    help="print the dates of TASK (a name or a file) fitted to its log as it is now, the latest it "
                         "labels (after crowd load --append): the lines for the task file, and --set overrides")
    ta.add_argument("--dataset", metavar="NAME", help="with --new: the dataset (crowd load --name) the task reads")
    ta.add_argument("--like", metavar="TASK", default=DEFAULT_TASK,
                    help="with --new: the task whose target, cadence, windows, models and settings it takes")
    ta.add_argument("--description", help="with --new: what the task predicts, in one line (default: said from "
                                          "the template's target and windows)")
    ta.add_argument("--out", type=Path, metavar="FOLDER",
                    help="with --new: write NAME.yaml into this folder instead of tasks/ (the DAGs read tasks/ only)")
    ta.set_defaults(func=_cmd_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, with where its settings are (argparse's top level said "crowd")
        command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        hint = ("; every setting of the task takes --set KEY=VALUE (--set training.batch_size=512)"
                if "--set" in command.format_usage() else "")
        command.error(f"unrecognized arguments: {' '.join(unknown)} (`crowd {args.command} --help` lists the "
                      f"options){hint}")
    args.argv = argv  # what a launcher repeats in each process (crowd train --nproc)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # each result is printed once, as the command's own line (its verdict with it)
        if args.command not in TASK_LOG_COMMANDS:
            logging.getLogger(RESULTS_LOGGER).setLevel(logging.ERROR)
        # MLflow's INFO lines (creating tables, validating an input example) are its own progress, not results
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # py4j (Spark's bridge) logs every connection it closes at INFO: dozens of lines at the end of a Spark
        # build, which buried the JVM's own last words when one failed
        logging.getLogger("py4j").setLevel(logging.WARNING)
        # pgserver (crowd airflow --db postgres) logs each command it runs at INFO, with initdb's whole output:
        # 50 lines before Airflow's first; its failures are errors, kept
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        # matplotlib says "generated new fontManager" at INFO the first time a machine draws (crowd train's plots)
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, not at the interpreter's exit, where a reader that left is a traceback
        return code
    except KeyboardInterrupt:
        print(f"crowd {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (one clear line and a non-zero exit; --debug shows where)
        if isinstance(e, BrokenPipeError) and _stdout_gone():
            return 141  # as a command in a pipe whose reader left (crowd warehouse | head) ends: quietly, SIGPIPE's
        if args.debug:
            traceback.print_exc()
        print(f"crowd {args.command}: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1


def _stdout_gone() -> bool:
    """Whether what reads the command's output has gone (a pipe closed by `head`); then the rest of the output
    goes nowhere, so that neither this exit nor the interpreter's last flush says "Broken pipe"."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (a test's capture): not a pipe that closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):  # a pipe without its reader
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return True


def _one_line(e: Exception) -> str:
    """ValueError (FormatError, TaskError, OutputError): the input is wrong, the message says how.
    RuntimeError (WarehouseError...): a real component failed, named. OSError: the file and what the system
    said. Anything else is a bug: its type is named and --debug shows the traceback."""
    if isinstance(e, ValueError):
        text = f"error: {e}"
    elif isinstance(e, RuntimeError):
        text = f"failed: {e}"
    elif isinstance(e, OSError):
        text = f"failed: {e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    else:
        text = f"failed: {type(e).__name__}: {e} (run with --debug for the traceback)"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
