"""The warehouse: run the dbt project (build.py), export per-ds parquet for the trainers (export.py), and
an independent pandas implementation of the ADS features that tests and benchmarks compare with (reference.py)."""
