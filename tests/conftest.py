"""Shared fixtures: one tiny generated dataset (with its oracle) for the whole session."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from ml.config import Schedule
from ml.synth.generate import generate
from ml.synth.params import PRESETS, GeneratorConfig

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Nothing a test writes may land in the developer's data/ directory."""
    mp = pytest.MonkeyPatch()
    data = tmp_path_factory.mktemp("data")
    mp.setenv("CROWD_DATA_DIR", str(data))
    # Airflow reads its home when first imported: point it at this session's data directory before that
    mp.setenv("AIRFLOW_HOME", str(data / "airflow"))
    mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
    mp.setenv("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
    mp.setenv("DO_NOT_TRACK", "true")
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_config() -> GeneratorConfig:
    return GeneratorConfig(sizes=PRESETS["tiny"], seed=11, oracle_dates=tuple(Schedule().all_dates), workers=1)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_config: GeneratorConfig) -> Path:
    out = tmp_path_factory.mktemp("gen") / "synthetic"
    generate(tiny_config, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_db(tiny_dataset: Path) -> duckdb.DuckDBPyConnection:
    """Views over the tiny dataset: events (with brand), items, oracle, truth tables."""
    con = duckdb.connect()
    d = tiny_dataset
    con.execute(f"create view items as select * from read_parquet('{d}/items.parquet')")
    con.execute(
        f"create view events as select e.*, i.brand_id, i.category_id "
        f"from read_parquet('{d}/events/*.parquet') e join items i using (item_id)"
    )
    con.execute(f"create view oracle as select * from read_parquet('{d}/oracle/*.parquet')")
    con.execute(f"create view brands_truth as select * from read_parquet('{d}/truth/brands.parquet')")
    con.execute(f"create view users_truth as select * from read_parquet('{d}/truth/users/*.parquet')")
    return con


@pytest.fixture(scope="session")
def tiny_warehouse(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real dbt build of every layer and date over the tiny dataset: (warehouse path, dbt report)."""
    from ml.config import WarehouseSettings, dbt_vars
    from ml.warehouse.build import run_dbt

    warehouse = tmp_path_factory.mktemp("wh") / "crowd.duckdb"
    report = run_dbt("build", dataset_dir=tiny_dataset, warehouse=warehouse,
                     dbt_vars=dbt_vars(Schedule(), WarehouseSettings()), quiet=True)
    return warehouse, report


@pytest.fixture(scope="session")
def tiny_exports(tiny_warehouse) -> Path:
    """The tiny warehouse exported where the trainers look by default (the session's data directory)."""
    from ml.config import Paths
    from ml.warehouse.export import export_dates

    paths = Paths.default()
    export_dates(tiny_warehouse[0], paths.exports)
    return paths.exports


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A real, migrated Airflow metadata DB in the session's AIRFLOW_HOME, with the DuckDB pool."""
    from ml.config import Paths
    from ml.local_airflow import prepare_metadata_db

    prepare_metadata_db(Paths.default())
