"""The first warehouse layer: a real dbt build on DuckDB over the tiny generated dataset."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from dbt.cli.main import dbtRunner

from ml.config import repo_root

DBT_DIR = repo_root() / "dbt_project"


@pytest.fixture(scope="module")
def warehouse(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wh") / "crowd.duckdb"
    mp = pytest.MonkeyPatch()
    mp.setenv("CROWD_DATASET_DIR", str(tiny_dataset))
    mp.setenv("CROWD_WAREHOUSE", str(path))
    result = dbtRunner().invoke(
        ["build", "--project-dir", str(DBT_DIR), "--profiles-dir", str(DBT_DIR),
         "--target-path", str(path.parent / "target"), "--log-path", str(path.parent / "logs"), "--quiet"]
    )
    mp.undo()
    assert result.success, result.exception
    return path


def test_ods_folds_identical_events_without_losing_any(warehouse, tiny_dataset):
    # dbt-duckdb keeps its connection open in this process: open the file with the same (default) config
    con = duckdb.connect(str(warehouse))
    raw = duckdb.sql(f"select count(*) from read_parquet('{tiny_dataset}/events/*.parquet')").fetchall()[0][0]
    rows, folded = con.execute("select count(*), sum(n_raw) from main_ods.ods_events").fetchall()[0]
    assert folded == raw
    assert rows <= raw
    distinct = con.execute(
        "select count(*) from (select distinct user_id, item_id, action, ts from main_ods.ods_events)").fetchall()[0][0]
    assert distinct == rows
