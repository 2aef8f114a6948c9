"""Run the dbt project in-process and fail loudly.

dbt is invoked through dbtRunner rather than a subprocess so that the result of every node is inspected:
a failing model or data test raises WarehouseError naming it (peers that `subprocess.run(["dbt", ...])`
without a check swallow exactly these failures).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ml.config import DBT_DATE_VARS, json_digest, repo_root

log = logging.getLogger(__name__)
# a build's summary: in an Airflow task's log and `crowd -v`; the commands print their own (ml.cli.RESULTS_LOGGER)
results_log = logging.getLogger("ml.results.warehouse")

DBT_PROJECT_DIR = repo_root() / "dbt_project"
PROFILES = "profiles.yml"  # in the project's folder, which every dbt invocation of the project names its profiles dir
_FAILED = {"error", "fail", "runtime error"}


class WarehouseError(RuntimeError):
    """dbt could not build the warehouse: a bad var, a failing model, or a failing data test."""


class ColumnsChanged(WarehouseError, ValueError):
    """The per-date tables hold columns of other settings (columns_changed): a ValueError too, this project's word
    for input that fails the same way every time, so a DAG's task fails at once instead of building again twice."""


@dataclass
class DbtReport:
    command: str
    seconds: float
    statuses: dict[str, str] = field(default_factory=dict)  # node unique_id -> status
    reused_parse: bool = False  # the project as parsed for the same settings before (parse_key), not parsed again

    @property
    def n_models(self) -> int:
        return sum(1 for k in self.statuses if k.startswith("model."))

    @property
    def n_tests(self) -> int:
        return sum(1 for k in self.statuses if k.startswith(("test.", "unit_test.")))


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """The profile and sources read these at parse time; restore the caller's environment afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


SHOWN_FAILURES = 5  # the failed nodes a WarehouseError names; dbt's log has every one


def run_dbt(
    command: str,
    *,
    dataset_dir: Path,
    warehouse: Path,
    dbt_vars: dict | None = None,
    select: Sequence[str] = (),
    project_dir: Path = DBT_PROJECT_DIR,
    quiet: bool = False,
    extra_args: Sequence[str] = (),
    item_subset: Path | None = None,
    engine: str = "duckdb",
    once_per_parse_unit_tests: bool = False,
    full_refresh: bool = False,
) -> DbtReport:
    """Run `dbt <command>` (build, run, test, ...) over one dataset into one warehouse: `warehouse` is the
    DuckDB file, or for engine spark the Spark warehouse directory (ml.warehouse.engine.warehouse_location);
    item_subset: the checked file of item ids a task with target item ranks
    (ml.warehouse.subset.prepare_item_subset). once_per_parse_unit_tests: leave out the unit tests when every one
    of them has passed with this parse of the project (parse_key) already (build_dates). full_refresh: dbt's, the
    incremental (per-date) tables made again with this run's dates alone, for settings that change their columns."""
    from dbt.cli.main import dbtRunner

    warehouse = Path(warehouse).resolve()
    dataset_dir = Path(dataset_dir).resolve()
    if not (dataset_dir / "items.parquet").exists():
        raise WarehouseError(f"{dataset_dir} holds no dataset (no items.parquet): run `crowd generate` or `crowd load`")
    if engine == "spark":
        _check_spark_session(warehouse)
        warehouse.mkdir(parents=True, exist_ok=True)
    warehouse.parent.mkdir(parents=True, exist_ok=True)  # dbt-duckdb does not create it
    work = warehouse.parent / "dbt"
    args = [
        command,
        "--project-dir", str(project_dir),
        "--profiles-dir", str(project_dir),
        "--target-path", str(work / "target"),
        "--log-path", str(work / "logs"),
        "--vars", json.dumps({k: v for k, v in (dbt_vars or {}).items() if v is not None}),
    ]
    if select:
        args += ["--select", *select]
    if quiet:
        args.append("--quiet")
    if full_refresh:
        args.append("--full-refresh")
    # dbt colours its console whatever it writes to: escape codes in a file or pipe (a DBT_USE_COLORS of the user's,
    # or of `crowd run-dags`, decides instead)
    if not sys.stdout.isatty() and "DBT_USE_COLORS" not in os.environ:
        args.append("--no-use-colors")
    args += list(extra_args)
    env = dbt_environment(dataset_dir, warehouse, item_subset, engine)
    parsed = work / "parsed" / f"{parse_key(project_dir, dbt_vars or {}, env)}.msgpack"
    # dbt checks the dates when it parses (macros/crowd_config.sql): one it would refuse is left to its parse
    manifest = _read_parsed(parsed) if _iso_dates(dbt_vars or {}) else None
    passed_units = parsed.with_suffix(".unit_tests.json")
    if once_per_parse_unit_tests and manifest is not None and set(manifest.unit_tests) <= _read_ids(passed_units):
        args += ["--exclude-resource-type", "unit_test"]
    start = time.perf_counter()
    try:
        with _environment(env):
            result = dbtRunner(manifest=manifest).invoke(args)
    finally:
        if engine == "duckdb":
            _close_duckdb_instance()
    if manifest is None and getattr(result.result, "results", None) is not None:  # dbt parsed, then ran nodes
        _keep_parsed(work / "target" / "partial_parse.msgpack", parsed)
    report = DbtReport(command, time.perf_counter() - start, reused_parse=manifest is not None)
    failures: list[str] = []
    for r in result.result or []:
        node = getattr(r, "node", None)
        if node is None:
            continue
        report.statuses[node.unique_id] = str(r.status)
        if str(r.status) in _FAILED:
            # a data test's message is its count of rows ("Got 5 results ..."): its description says what failed
            meaning = (getattr(node, "description", "") or "").strip() if node.resource_type == "test" else ""
            failures.append(f"{node.unique_id} ({r.status}): {(r.message or '').strip()}"
                            + (f" ({meaning})" if meaning else ""))
    passed = {uid for uid, status in report.statuses.items() if uid.startswith("unit_test.") and status == "pass"}
    if passed and parsed.exists():
        _write_ids(passed_units, _read_ids(passed_units) | passed)
    if not result.success:
        said = "; ".join(failures) if failures else str(result.exception or "dbt reported a failure")
        reason = "; ".join(failures[:SHOWN_FAILURES]) if failures else said
        if len(failures) > SHOWN_FAILURES:  # one line, not one per node below a broken one
            reason += f"; and {len(failures) - SHOWN_FAILURES} more in {work / 'logs' / 'dbt.log'}"
        from ml.warehouse.engine import warehouse_in_use

        busy = warehouse_in_use(warehouse, said) if engine == "duckdb" else None
        if busy is not None:  # DuckDB's lock error, whose "IO Error" read like a broken disk
            reason = busy
        error = WarehouseError
        if "out of sync" in said:  # dbt's page of column objects, for settings or models that changed the columns
            error, reason = ColumnsChanged, columns_changed(failures, warehouse)
            others = [f for f in failures if "out of sync" not in f]
            if others:  # what failed besides, mostly for want of those tables
                reason += f"; besides, {len(others)} other node(s) failed (the first: {others[0][:300]})"
        if engine == "spark" and "Connection refused" in said:  # py4j lost the JVM it talks to
            from ml.warehouse.engine import SPARK_LOG

            reason += (" (Spark's driver JVM ended during the build: its own messages, an OutOfMemoryError or a "
                       "fatal error with its hs_err_pid file, are in the output above, its warnings in "
                       f"{Path(warehouse) / SPARK_LOG}; CROWD_SPARK_MEMORY sets its heap)")
        raise error(f"dbt {command} failed: {reason}")
    reused = " (the project as parsed for these settings before)" if report.reused_parse else ""
    results_log.info("dbt %s: %d models, %d tests in %.1fs%s", command, report.n_models, report.n_tests,
                     report.seconds, reused)
    return report


# the vars that only reach SQL text rendered when a node or a hook runs, never a node's config or its refs (a
# test parses the project with each and compares the manifests): the run's dates, the forward date (samples_forward
# runs the same query, over no user, without one), and the upstream key, which only the end hook reads
# (build_dates passes it, `dbt run` of the same settings does not). A project parsed for one date serves every
# other date of the same settings, the forward crowds' date among them: before samples_forward read the same
# models with and without a forward date, each forward build (`crowd score`, the training DAG's forward
# features) parsed the whole project again, 3-5 s of CPU.
# The outcome date (samples_outcomes) is one of them for the same reason.
PARSE_FREE_VARS = (*DBT_DATE_VARS, "upstream_key")
PARSED_KEPT = 8  # parsed projects kept per warehouse (one per combination of settings, dataset and engine)


def parse_key(project_dir: Path, dbt_vars: dict, env: dict[str, str]) -> str:
    """What dbt's parse of the project is a function of: its sources and profile, every var but the parse-free ones,
    the environment the profile and the sources read (the dataset, the engine, its warehouse's name), and the versions
    of dbt, its adapters and DuckDB (the unit tests that passed are recorded per key, run_dbt). dbt itself parses
    the whole project again whenever any var changes, so each week of a backfill used to cost a full parse (2.5-3 s
    of a 10-12 s build) for a result that differs only in the SQL the run's dates render."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    settings = {k: v for k, v in dbt_vars.items() if k not in PARSE_FREE_VARS}
    # Where the DuckDB file lies is no part of the parse, its name is (dbt-duckdb names the database after it): a
    # warehouse copied or moved keeps its parsed project. (Two parses with the file in two folders gave manifests
    # equal but for their nodes' created_at, 2026-11-27.)
    env = {k: Path(v).name if k == "CROWD_WAREHOUSE" else v for k, v in env.items()}
    # the adapters' macros are part of the parse
    profile = project_dir / PROFILES
    return _digest([project_digest(project_dir), profile.read_text() if profile.exists() else "", settings, env,
                    *(installed(p) for p in ("dbt-core", "dbt-duckdb", "dbt-spark", "duckdb"))])


def _digest(parts: list) -> str:
    """A short key of JSON-able parts (upstream_key, parse_key)."""
    return json_digest(parts, 16)


def _iso_dates(dbt_vars: dict) -> bool:
    """Whether the run's dates are absent or YYYY-MM-DD dates (a list, or one date, as the vars take them)."""
    import datetime as dt

    value = dbt_vars.get("ds")
    for text in ([] if value is None else value if isinstance(value, list) else str(value).split(",")):
        try:
            dt.date.fromisoformat(str(text).strip())
        except ValueError:
            return False
    return True


def _read_ids(path: Path) -> set[str]:
    """The unit tests that passed with one parse of the project (its inputs are fixtures, not the warehouse's
    rows: with the same SQL, vars and versions, the same outcome)."""
    try:
        return set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def _write_ids(path: Path, ids: set[str]) -> None:
    try:
        _write_whole(path, json.dumps(sorted(ids)).encode())
    except OSError as e:
        log.debug("dbt: could not record the unit tests that passed (%s)", e)


def _write_whole(path: Path, data: bytes) -> None:
    """Written beside and swapped in: a process reading the work folder meanwhile sees the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_parsed(path: Path):  # noqa: ANN202
    """The project parsed for these settings (dbt's own partial-parse file of that invocation), or None: then dbt
    parses it. A file another dbt version wrote, or one that does not load, is not used."""
    if not path.exists():
        return None
    from dbt.contracts.graph.manifest import Manifest
    from dbt.parser.manifest import extended_mashumuro_decoder
    from dbt.version import __version__

    try:
        manifest = Manifest.from_msgpack(path.read_bytes(), decoder=extended_mashumuro_decoder)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: parse again, as dbt itself does
        log.debug("dbt: %s does not load (%s); parsing the project", path, e)
        return None
    if manifest.metadata.dbt_version != __version__:
        return None
    manifest.build_flat_graph()
    return manifest


def _keep_parsed(written: Path, path: Path) -> None:
    """Keep the project as the invocation that just ran nodes parsed it, under its key, published whole: dbt's
    partial-parse file, which it wrote for these vars or found valid for them (unchanged, it is not rewritten).
    The least recently kept beyond PARSED_KEPT are removed."""
    try:
        _write_whole(path, written.read_bytes())
    except OSError as e:
        log.debug("dbt: could not keep the parsed project (%s)", e)
        return

    def written_at(f: Path) -> int:
        try:
            return f.stat().st_mtime_ns
        except OSError:  # removed meanwhile by another process
            return 0

    for old in sorted(path.parent.glob("*.msgpack"), key=written_at, reverse=True)[PARSED_KEPT:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".unit_tests.json").unlink(missing_ok=True)


# ODS, DIM and DW read the dataset and the task's settings, never the run's dates: a date's build selects only
# these layers when the warehouse already holds the others from the same inputs
# (macros/crowd_record_upstream.sql records which)
DATE_LAYERS = ("path:models/ads", "path:models/samples")
UPSTREAM_LAYERS = ("ods", "dim", "dw")  # the other folders of models/, as crowd_is_upstream names them


def upstream_models(manifest: Path) -> list[str]:
    """The models of ODS, DIM and DW in a parsed project (ensure_manifest): the layers a date's build leaves out
    when they are held (and their ephemeral models, which dbt inlines where they are read)."""
    nodes = json.loads(Path(manifest).read_text())["nodes"].values()
    return sorted(n["unique_id"] for n in nodes if n["resource_type"] == "model" and n["fqn"][1] in UPSTREAM_LAYERS)


def upstream_key(dataset_dir: Path, dbt_vars: dict, item_subset: Path | None = None,
                 project_dir: Path = DBT_PROJECT_DIR) -> str:
    """What the upstream layers are a function of: the dataset's files and the item subset (name, size,
    modification time: `crowd generate` and `crowd load` replace them, never edit them in place), every var but
    the run's dates, the project's sources, and the versions of dbt and DuckDB."""
    from importlib.metadata import version

    files = sorted([*Path(dataset_dir).glob("events/*.parquet"), Path(dataset_dir) / "items.parquet",
                    *([Path(item_subset)] if item_subset is not None else [])])
    stats = [(str(f.resolve()), st.st_size, st.st_mtime_ns) for f in files if f.exists() for st in [f.stat()]]
    settings = {k: v for k, v in dbt_vars.items() if k not in DBT_DATE_VARS}
    return _digest([stats, settings, project_digest(project_dir), version("dbt-core"), version("duckdb")])


def recorded_upstream(warehouse: Path) -> str | None:
    """The key the warehouse's last complete build of the upstream layers recorded, or None (no warehouse, no
    record, or the file held by a writer: then everything is built, as before there was a record)."""
    import duckdb

    from ml.warehouse.engine import open_warehouse

    if not Path(warehouse).exists():
        return None
    try:
        with open_warehouse("duckdb", warehouse) as con:
            row = con.execute("select upstream_key from crowd_meta.upstream").fetchone()
    except duckdb.Error:
        return None
    return row[0] if row else None


@dataclass(frozen=True)
class DateSelection:
    """What a date's `dbt build` selects and the vars it passes: `upstream_held` when the warehouse already holds
    ODS, DIM and DW from the same inputs (then `select` names the date's layers only)."""
    select: list[str]
    dbt_vars: dict
    upstream_held: bool


def date_selection(*, dataset_dir: Path, warehouse: Path, dbt_vars: dict, select: Sequence[str] = (),
                   project_dir: Path = DBT_PROJECT_DIR, item_subset: Path | None = None,
                   engine: str = "duckdb") -> DateSelection:
    """The one decision of what a date's build leaves out (build_dates, and the per_model producer of the periods
    DAG): on DuckDB the vars carry the upstream key, which the project's end hook records after a complete build
    of the upstream layers; a warehouse holding the same key has them left out. Spark records nothing (the
    hook's layers are DuckDB's only) and builds every layer."""
    if engine != "duckdb":
        return DateSelection(list(select), dict(dbt_vars), False)
    key = upstream_key(dataset_dir, dbt_vars, item_subset, project_dir)
    held = recorded_upstream(warehouse) == key
    if held:
        # each selector intersected with each date layer (dbt's `a,b`); none: the date layers themselves
        select = [f"{s},{layer}" for s in select for layer in DATE_LAYERS] if select else list(DATE_LAYERS)
        log.info("dbt build: ODS, DIM and DW are already built from this dataset and these settings: left out")
    return DateSelection(list(select), {**dbt_vars, "upstream_key": key}, held)


def columns_changed(failures: Sequence[str], warehouse: Path) -> str:
    """dbt's "out of sync" failure of an incremental table, in one line: which tables, which columns came and went,
    and the two ways out. It was dbt's page of column objects (DuckDBColumn(column='u_click_day1', dtype=...)
    thirty times over) and a guess that the models' version had changed, where a task's target or feature windows
    (`--set warehouse.feature_windows=[1,2]` for one run) change the per-date tables' columns as well."""
    import re

    tables, came, went = [], [], []
    for failure in sorted(failures):  # the tables in their names' order, not the order their threads failed in
        if "out of sync" not in failure:
            continue
        tables.append(failure.split(" ", 1)[0].rsplit(".", 1)[-1])
        new, _, rest = failure.partition("Source columns not in target:")[2].partition("Target columns not in source:")
        came += [c for c in re.findall(r"column='([^']+)'", new) if c not in came]
        went += [c for c in re.findall(r"column='([^']+)'", rest.partition("New column types:")[0]) if c not in went]

    def some(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    change = "; ".join(part for part in (f"{len(came)} new: {some(came)}" if came else "",
                                         f"{len(went)} gone: {some(went)}" if went else "") if part)
    return (f"{', '.join(tables)} in the warehouse {'have' if len(tables) > 1 else 'has'} other columns than this "
            f"build gives {'them' if len(tables) > 1 else 'it'}{f' ({change})' if change else ''}: its dates were "
            "built with another target or warehouse.feature_windows, or by another version of the models. `crowd "
            "warehouse --full-refresh` makes the per-date tables (ADS, samples) again from these settings with this "
            "build's dates alone (the dates built before leave them; their exports stay), or delete "
            f"{warehouse}, this project's own output, and build again")


def build_dates(*, dataset_dir: Path, warehouse: Path, dbt_vars: dict, select: Sequence[str] = (),
                project_dir: Path = DBT_PROJECT_DIR, quiet: bool = False, item_subset: Path | None = None,
                engine: str = "duckdb", full_refresh: bool = False) -> DbtReport:
    """`dbt build` of the run's dates (every layer, or `select`), leaving out ODS, DIM and DW and their own tests
    when a DuckDB warehouse holds them built from the same inputs (upstream_key, date_selection): a week's
    build then reads the daily tables, not the whole log again. The date's layers are selected (not the others
    excluded), so every test that reads a date's model still runs, the leakage tests that also read DW among
    them. The unit tests, which read only their fixtures, run until each has passed once with the same parse
    of the project (its SQL, vars but the dates, and versions: parse_key), not again every date."""
    chosen = date_selection(dataset_dir=dataset_dir, warehouse=warehouse, dbt_vars=dbt_vars, select=select,
                            project_dir=project_dir, item_subset=item_subset, engine=engine)
    select, dbt_vars = chosen.select, chosen.dbt_vars
    return run_dbt("build", dataset_dir=dataset_dir, warehouse=warehouse, dbt_vars=dbt_vars, select=select,
                   project_dir=project_dir, quiet=quiet, item_subset=item_subset, engine=engine,
                   once_per_parse_unit_tests=True, full_refresh=full_refresh)


def _close_duckdb_instance() -> None:
    """dbt-duckdb keeps its DuckDB instance open in the process after an invocation, with its buffer pool (up to
    CROWD_DUCKDB_MEMORY of the warehouse's pages) and the file's lock: a process that goes on afterwards (the
    DAG runs of `crowd run-dags`, then their training) would carry both. Closed here; the next invocation opens
    the file again in milliseconds."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    environment = getattr(DuckDBConnectionManager, "_ENV", None)  # no public accessor in dbt-duckdb 1.x
    if environment is not None:
        with contextlib.suppress(Exception):  # already closed, or never opened a handle
            environment.close()
    DuckDBConnectionManager.close_all_connections()


def dbt_environment(dataset_dir: Path, warehouse: Path, item_subset: Path | None = None,
                    engine: str = "duckdb") -> dict[str, str]:
    """What the profile and the sources read: the dataset, the engine and its warehouse (file or directory),
    and the item subset if any."""
    from ml.warehouse.engine import dbt_target_environment

    env = {"CROWD_DATASET_DIR": str(Path(dataset_dir).resolve()), **dbt_target_environment(engine, warehouse)}
    if item_subset is not None:
        env["CROWD_ITEM_SUBSET"] = str(Path(item_subset).resolve())
    return env


def _check_spark_session(location: Path) -> None:
    """A Spark session's warehouse and metastore are fixed when it starts, and dbt-spark reuses the process's
    session: building another warehouse in the same process would write into the first one."""
    import sys

    if "pyspark" not in sys.modules:
        return
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is None:
        return
    from urllib.parse import urlparse

    configured = active.conf.get("spark.sql.warehouse.dir")
    current = Path(urlparse(configured).path if configured.startswith("file:") else configured).resolve()
    if current != location:
        raise WarehouseError(f"this process's Spark session serves the warehouse {current}; build {location} "
                             "in another process (crowd warehouse --engine spark)")


def project_digest(project_dir: Path = DBT_PROJECT_DIR) -> str:
    """A digest of the dbt project's sources (models, macros, tests, yml), the manifest's cache key, and part of
    what the build id, the upstream key and a champion's fingerprint follow. Not the profile: where a target
    writes, with how much memory or on which cluster, computes the same tables (an edit of the Spark output
    used to mark every DuckDB champion as trained on other dbt models). dbt's parse reads it: parse_key."""
    import hashlib

    h = hashlib.sha1(usedforsecurity=False)
    for path in sorted(project_dir.rglob("*")):
        rel = path.relative_to(project_dir)
        if rel == Path(PROFILES):
            continue
        sources = path.suffix in (".sql", ".yml", ".yaml", ".md") and rel.parts[0] not in ("target", "logs")
        if path.is_file() and sources:
            h.update(str(rel).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ensure_manifest(cache_root: Path, project_dir: Path = DBT_PROJECT_DIR) -> Path:
    """The dbt manifest of the project, parsed once per version of its sources (`dbt parse`) and cached under
    cache_root: the DAG file reads it (Cosmos LoadMode.DBT_MANIFEST) instead of running `dbt ls` at every
    parse, which took longer than Airflow's 30 s parse timeout."""
    digest = project_digest(project_dir)
    target = Path(cache_root) / digest
    manifest = target / "manifest.json"
    if manifest.exists():
        return manifest
    from dbt.cli.main import dbtRunner

    partial = Path(cache_root) / f".{digest}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    args = ["parse", "--project-dir", str(project_dir), "--profiles-dir", str(project_dir),
            "--target-path", str(partial), "--log-path", str(partial / "logs"), "--quiet"]
    with _environment({"CROWD_WAREHOUSE": str(partial / "parse.duckdb"), "CROWD_DATASET_DIR": str(partial)}):
        result = dbtRunner().invoke(args)
    if not result.success or not (partial / "manifest.json").exists():
        raise WarehouseError(f"dbt parse of {project_dir} failed: {result.exception or 'see ' + str(partial / 'logs')}")
    import os
    import shutil

    try:
        os.replace(partial, target)
    except OSError:  # another process published the same digest first
        shutil.rmtree(partial, ignore_errors=True)
    return manifest
