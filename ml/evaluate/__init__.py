"""Metrics (metrics.py) and plots (plots.py) of a scored evaluation set."""
