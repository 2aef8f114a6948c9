"""Training: the one trainer of the deep models (trainer.py), the LightGBM baselines (gbdt.py), and the
pipeline that reads exports, trains, evaluates and records to MLflow (pipeline.py)."""
