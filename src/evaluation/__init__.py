"""Scoring a model: the metric registry and the evaluation of a split (its metrics.json, per-class table and
figures), for the validation of every epoch, the final test and src.evaluate."""
