"""From parquet exports to tensors: the fitted feature map (feature_map.py) and the batched dataset (dataset.py)."""
