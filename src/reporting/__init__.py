"""Across runs: comparison tables and plots (python -m src.report) and the sweep callback that writes them."""
