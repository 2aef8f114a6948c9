"""`crowd`: the command line of the pipeline. Each subcommand is a thin layer over a function in `ml`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
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
