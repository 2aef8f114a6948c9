"""`crowd`: the command line of the pipeline. Each subcommand is a thin layer over a function in `ml`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

from ml.config import Paths, Schedule, parse_date

log = logging.getLogger("crowd")


def _date(value: str) -> dt.date:
    try:
        return parse_date(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cmd_generate(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from ml.synth.generate import generate
    from ml.synth.params import PRESETS, GeneratorConfig

    sizes = PRESETS[args.preset]
    changes = {k: getattr(args, k) for k in ("users", "items", "brands", "start", "end") if getattr(args, k) is not None}
    sizes = replace(sizes, **changes)
    oracle_dates: tuple[dt.date, ...] = ()
    if not args.no_oracle:
        schedule = Schedule()
        oracle_dates = tuple(args.oracle_dates or schedule.all_dates)
        # dates whose label window falls outside the log are skipped when they come from the defaults
        if not args.oracle_dates:
            label = schedule.windows.label_days
            oracle_dates = tuple(d for d in oracle_dates
                                 if d > sizes.start and d + dt.timedelta(days=label) <= sizes.end)
    cfg = GeneratorConfig(
        sizes=sizes, seed=args.seed, oracle_dates=oracle_dates, oracle_rollouts=args.rollouts, workers=args.workers
    )
    out = args.out or Paths.default().dataset(args.name)
    if args.skip_if_present and (out / "manifest.json").exists():
        old = json.loads((out / "manifest.json").read_text())
        wanted = {k: str(v) if isinstance(v, dt.date) else v for k, v in asdict(sizes).items()}
        if old.get("seed") == cfg.seed and old.get("sizes") == wanted:
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

    out = args.out or Paths.default().dataset(args.name or args.format)
    m = load(args.format, args.paths, out, items_paths=args.items, year=args.year, start=args.start, end=args.end)
    for f in m["files"]:
        print(f"{f['path']}: read {f['read']:,} = accepted {f['accepted']:,} + rejected {f['rejected']:,}")
        for reason, n in sorted(f["reasons"].items(), key=lambda kv: -kv[1]):
            print(f"    {n:>10,}  {reason}")
    print(
        f"total: read {m['read']:,} = accepted {m['accepted']:,} + rejected {m['rejected']:,} "
        f"({'reconciled' if m['reconciled'] else 'NOT RECONCILED'}); {m['events']:,} events, {m['items']:,} items, "
        f"{m['exact_duplicates']:,} identical rows kept; written to {out}"
    )
    return 0 if m["reconciled"] else 1


def _warehouse_settings(args: argparse.Namespace) -> dict:
    from ml.config import WarehouseSettings, dbt_vars

    schedule = Schedule(target=args.target)
    return dbt_vars(schedule, WarehouseSettings(), ds=args.ds)


def _cmd_warehouse(args: argparse.Namespace) -> int:
    from ml.warehouse.build import run_dbt
    from ml.warehouse.export import export_dates

    paths = Paths.default()
    dataset = args.dataset_dir or paths.dataset(args.dataset)
    report = run_dbt("run" if args.skip_tests else "build", dataset_dir=dataset, warehouse=paths.warehouse,
                     dbt_vars=_warehouse_settings(args), select=args.select or ())
    print(f"dbt {report.command}: {report.n_models} models, {report.n_tests} tests passed in {report.seconds:.1f}s "
          f"into {paths.warehouse}")
    if not args.no_export:
        for e in export_dates(paths.warehouse, paths.exports, args.ds):
            print(f"exported {e.path}: " + ", ".join(f"{k} {v:,}" for k, v in e.rows.items()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ml.warehouse.export import export_dates

    paths = Paths.default()
    for e in export_dates(paths.warehouse, paths.exports, args.ds):
        print(f"exported {e.path}: " + ", ".join(f"{k} {v:,}" for k, v in e.rows.items()))
    return 0


def _train_config(args: argparse.Namespace):  # noqa: ANN202
    from ml.train.trainer import TrainConfig

    changes = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "loss", "device", "seed")
               if getattr(args, k, None) is not None}
    return TrainConfig(**changes)


def _cmd_train(args: argparse.Namespace) -> int:
    from ml.train.pipeline import train_and_evaluate

    from ml.train.pipeline import ALL_MODELS

    models = list(ALL_MODELS) if "all" in args.model else args.model
    for model in models:
        o = train_and_evaluate(model, train_cfg=_train_config(args), negative_rate=args.negative_rate,
                               dataset_dir=args.dataset_dir, track=not args.no_track)
        _print_outcome(o)
    return 0


def _print_outcome(o) -> None:  # noqa: ANN001
    keys = ("auc", "gauc", "logloss", "recall_at_100", "ndcg_at_100")
    print(f"{o.model:<16} " + "  ".join(f"{k} {o.summary[k]:.4f}" for k in keys)
          + (f"   | oracle auc {o.oracle['auc']:.4f} recall_at_100 {o.oracle['recall_at_100']:.4f}" if o.oracle else "")
          + (f"   run {o.run_id}" if o.run_id else "") + ("  (new champion)" if o.champion else ""))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ml.evaluate.metrics import evaluate_scores
    from ml.train.bundle import load_bundle
    from ml.train.pipeline import oracle_scores

    bundle = load_bundle(args.model)
    schedule, paths = Schedule(), Paths.default()
    raw = bundle.read_population(paths.exports, schedule.evaluation)
    ev = raw.samples
    y, t, u = ev["label_buy"].to_numpy(), ev["target_id"].to_numpy(), ev["user_id"].to_numpy()
    summary, table = evaluate_scores(y, bundle.score(raw), t, u)
    print(f"{bundle.name} on {schedule.evaluation} ({len(ev):,} rows, {table.shape[0]} targets):")
    p_oracle = oracle_scores(args.dataset_dir or paths.dataset("synthetic"), ev, schedule.evaluation)
    oracle = evaluate_scores(y, p_oracle, t, u)[0] if p_oracle is not None else {}
    for k, v in summary.items():
        print(f"  {k:<18} {v:.4f}" + (f"   oracle {oracle[k]:.4f}" if k in oracle else ""))
    if args.per_target:
        table.to_csv(args.per_target)
        print(f"per-target metrics written to {args.per_target}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from ml.train.bundle import crowd_table, load_bundle

    bundle = load_bundle(args.model)
    schedule, paths = Schedule(), Paths.default()
    ds = args.ds or schedule.evaluation
    raw = bundle.read_population(paths.exports, ds)
    if args.brand:
        known = set(raw.samples["target_id"].unique().tolist())
        unknown = [b for b in args.brand if b not in known]
        if unknown:
            raise ValueError(f"brand(s) {unknown} are not among the evaluated targets of {ds}")
        raw.samples = raw.samples[raw.samples["target_id"].isin(args.brand)].reset_index(drop=True)
    crowd = crowd_table(raw.samples, bundle.score(raw), args.top)
    out = args.out or paths.crowds / f"ds={ds}" / f"{bundle.name}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    crowd.rename(columns={"target_id": "brand_id" if schedule.target == "brand" else "category_id"}).to_parquet(out)
    print(f"{bundle.name}: top {args.top} users for {crowd['target_id'].nunique()} targets "
          f"({len(crowd):,} rows) written to {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ml.report import latest_runs, markdown, write_readme

    table = latest_runs()
    print(markdown(table))
    if args.readme:
        models = table[~table["model"].str.startswith("oracle")]
        best = models.loc[models["auc"].idxmax()]
        note = (f"Evaluation date {Schedule().evaluation}: every active user x the evaluated brands; "
                f"written by `crowd report --readme` from the MLflow store. Best AUC: {best['model']} "
                f"({best['auc']:.4f})")
        if table["model"].str.startswith("oracle").any():
            oracle_auc = float(table.loc[table["model"].str.startswith("oracle"), "auc"].iloc[0])
            note += f", {oracle_auc - best['auc']:.4f} below the oracle's {oracle_auc:.4f}"
        note += "."
        write_readme(args.readme, table, note)
        print(f"comparison written into {args.readme}")
    return 0


def _cmd_run_dags(args: argparse.Namespace) -> int:
    from ml.local_airflow import run_pipeline
    from ml.report import latest_runs, markdown
    from ml.train.pipeline import ALL_MODELS

    conf = None if args.no_training else {
        "models": list(ALL_MODELS) if "all" in args.model else args.model, "epochs": args.epochs,
        "negative_rate": args.negative_rate, "top_n": args.top}
    start = time.perf_counter()
    runs = run_pipeline(conf, weeks=args.ds, quiet=args.quiet)
    p = Paths.default()
    print(f"{len(runs)} DAG runs succeeded in {time.perf_counter() - start:.0f} s "
          f"(task logs: {p.airflow_home / 'local_run.log'})")
    if conf is not None:
        print(markdown(latest_runs(p)))
        crowds = p.crowds / f"ds={Schedule().evaluation}" / "crowds.parquet"
        print(f"crowds:  {crowds}  (and the warehouse table crowds.crowd_list in {p.warehouse})")
        print(f"MLflow:  sqlite:///{p.mlflow_db}  (make mlflow shows it)")
        print(f"Airflow: {p.airflow_home}  (make airflow shows the runs)")
    return 0


def _cmd_airflow(args: argparse.Namespace) -> int:
    from ml.local_airflow import standalone

    return standalone(host=args.host, port=args.port)


def _cmd_paths(args: argparse.Namespace) -> int:
    p = Paths.default()
    print(json.dumps({"data": str(p.root), "warehouse": str(p.warehouse), "exports": str(p.exports),
                      "models": str(p.models), "mlflow": str(p.mlflow_db), "airflow": str(p.airflow_home)}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ml.loaders.formats import FORMATS
    from ml.synth.params import PRESETS

    parser = argparse.ArgumentParser(prog="crowd", description="Purchase crowd prediction pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="write a synthetic Tmall-like log (with its oracle) as canonical parquet")
    g.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="sizes: tiny (tests), default (make run), large (benchmarks, ~100M events)")
    g.add_argument("--users", type=int)
    g.add_argument("--items", type=int)
    g.add_argument("--brands", type=int)
    g.add_argument("--start", type=_date, help="first day of the log (default 2013-04-01)")
    g.add_argument("--end", type=_date, help="day after the last day of the log (default 2013-10-01)")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--rollouts", type=int, default=32, help="Monte Carlo rollouts of the oracle per date")
    g.add_argument("--oracle-dates", type=_date, nargs="*", help="dates to write the oracle for "
                   "(default: the sample and evaluation dates)")
    g.add_argument("--no-oracle", action="store_true", help="skip the oracle (faster)")
    g.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    g.add_argument("--name", default="synthetic", help="dataset name under DATA/raw/ (default synthetic)")
    g.add_argument("--out", type=Path, help="output directory (default DATA/raw/NAME)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--skip-if-present", action="store_true",
                   help="do nothing if the output already holds a dataset of the same sizes and seed")
    g.set_defaults(func=_cmd_generate)

    ld = sub.add_parser("load", help="convert a real log (tmall, tianchi-mobile, taobao-userbehavior, "
                        "tmall-repeat) into canonical parquet, with rejects")
    ld.add_argument("--format", required=True, choices=sorted(FORMATS))
    ld.add_argument("paths", nargs="+", type=Path, help="log files (parts of one log)")
    ld.add_argument("--items", nargs="*", type=Path, help="item table files (tmall, tianchi-mobile)")
    ld.add_argument("--year", type=int, help="year of mmdd dates (tmall-repeat)")
    ld.add_argument("--start", type=_date, help="reject events before this date")
    ld.add_argument("--end", type=_date, help="reject events on or after this date")
    ld.add_argument("--name", help="dataset name under DATA/raw/ (default: the format)")
    ld.add_argument("--out", type=Path, help="output directory (default DATA/raw/NAME)")
    ld.set_defaults(func=_cmd_load)

    w = sub.add_parser("warehouse", help="build the dbt warehouse (ODS, DIM, DW, ADS, samples) and export "
                       "each ds as parquet for the trainers")
    w.add_argument("--ds", type=_date, nargs="+", help="sample dates to build (default: the whole weekly "
                   "schedule and the evaluation date)")
    w.add_argument("--target", choices=["brand", "category"], default="brand",
                   help="the entity to rank users for (category for data with no brand)")
    w.add_argument("--dataset", default="synthetic", help="dataset name under DATA/raw/ (default synthetic)")
    w.add_argument("--dataset-dir", type=Path, help="dataset directory (default DATA/raw/DATASET)")
    w.add_argument("--select", nargs="+", help="dbt node selection (default: everything)")
    w.add_argument("--skip-tests", action="store_true", help="dbt run instead of dbt build")
    w.add_argument("--no-export", action="store_true", help="build only; do not write exports/ds=...")
    w.set_defaults(func=_cmd_warehouse)

    ex = sub.add_parser("export", help="write exports/ds=YYYY-MM-DD/*.parquet from the built warehouse")
    ex.add_argument("--ds", type=_date, nargs="+", help="dates to export (default: every built date)")
    ex.set_defaults(func=_cmd_export)

    from ml.train.pipeline import ALL_MODELS

    tr = sub.add_parser("train", help="train models on the exports, evaluate them, record them in MLflow")
    tr.add_argument("--model", nargs="+", required=True, choices=[*ALL_MODELS, "all"], metavar="MODEL",
                    help=f"one or more of: {', '.join(ALL_MODELS)}, or all")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--loss", choices=["bce", "focal"])
    tr.add_argument("--device", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--negative-rate", type=float, default=0.2,
                    help="share of training negatives kept (scores are corrected for it; default 0.2)")
    tr.add_argument("--dataset-dir", type=Path, help="the dataset, for the oracle (default DATA/raw/synthetic)")
    tr.add_argument("--no-track", action="store_true", help="do not record the run in MLflow")
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="score the evaluation set with a model and print every metric")
    ev.add_argument("--model", help="a trained model under DATA/models (default: the MLflow champion)")
    ev.add_argument("--dataset-dir", type=Path, help="the dataset, for the oracle (default DATA/raw/synthetic)")
    ev.add_argument("--per-target", type=Path, help="also write the per-target metrics to this CSV")
    ev.set_defaults(func=_cmd_evaluate)

    sc = sub.add_parser("score", help="write the crowds: the top N users per brand (brand, rank, user, score)")
    sc.add_argument("--model", help="a trained model under DATA/models (default: the MLflow champion)")
    sc.add_argument("--brand", type=int, nargs="+", help="only these brands (default: every evaluated one)")
    sc.add_argument("--top", type=int, default=1000, help="users per brand (default 1000)")
    sc.add_argument("--ds", type=_date, help="the date whose evaluation export is scored (default: evaluation date)")
    sc.add_argument("--out", type=Path, help="output parquet (default DATA/crowds/ds=DS/MODEL.parquet)")
    sc.set_defaults(func=_cmd_score)

    rp = sub.add_parser("report", help="the model comparison (latest run of each model, and the oracle)")
    rp.add_argument("--readme", type=Path, help="also write it into this README between its comparison markers")
    rp.set_defaults(func=_cmd_report)

    rd = sub.add_parser("run-dags", help="the whole pipeline through the real Airflow DAGs in this process "
                        "(dag.test): every week of crowd_weekly, then crowd_training; what `make run` does")
    rd.add_argument("--ds", type=_date, nargs="+", help="sample dates to run crowd_weekly for (default: every "
                    "weekly sample date and the evaluation date)")
    rd.add_argument("--model", nargs="+", default=["all"], choices=[*ALL_MODELS, "all"], metavar="MODEL",
                    help="models crowd_training trains (default all)")
    rd.add_argument("--epochs", type=int, default=4)
    rd.add_argument("--negative-rate", type=float, default=0.2)
    rd.add_argument("--top", type=int, default=1000, help="users per brand in the crowds (default 1000)")
    rd.add_argument("--no-training", action="store_true", help="only the weekly runs")
    rd.add_argument("--quiet", action="store_true", help="no progress bar")
    rd.set_defaults(func=_cmd_run_dags)

    af = sub.add_parser("airflow", help="airflow standalone over the project's DAGs and metadata DB, in its "
                        "own process group (Ctrl-C stops all of it); what `make airflow` does")
    af.add_argument("--host", default="127.0.0.1")
    af.add_argument("--port", type=int, default=8080)
    af.set_defaults(func=_cmd_airflow)

    pa = sub.add_parser("paths", help="print where the project keeps its state")
    pa.set_defaults(func=_cmd_paths)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as e:  # includes FormatError: a clear message, no traceback
        print(f"crowd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # WarehouseError and other failures of a real component, named
        print(f"crowd {args.command}: failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
