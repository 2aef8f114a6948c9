"""Deep models (zoo.py) over shared layers (layers.py)."""
