"""Comparison tables and plots over runs: what `python -m src.report` and the sweep callback write.

A run is a directory with metrics.json (and history.csv, .hydra/overrides.yaml); a sweep is a
directory with jobs.jsonl, which the sweep callback appends to after every job (so failed jobs, which
have no metrics.json, still get a row). From any mix of them this module builds:

- summary.csv / summary.md: one row per run, sorted by the monitored validation metric (failed runs
  last), with the overrides that vary between the runs as the row's name (runs with equal overrides,
  re-runs, are told apart by their directory's name); one number format per column of summary.md;
- when runs differ only in `seed` or `data.fold`: the same figures as mean ± std per group, over its
  seeds and folds (aggregate.csv and a second table in summary.md); re-runs with the same seed and fold
  are no such group, and within a group they count once (averaged);
- time to accuracy: per run, the wall-clock time of training (with validation) until val accuracy first
  reached a target (time_to_val_acc_<target>; by default the best accuracy every run reached);
- curves.png (validation accuracy and loss per epoch of every run), time_to_accuracy.png (validation
  accuracy against wall-clock minutes), bars.png (test accuracy and macro-F1 per run or group) and
  best_confusion_matrix.png (the best run's test confusion matrix).

The parts: run_records.py reads the runs, run_names.py names and groups them, tables.py and plots.py write
the above; documents.py puts summary.md into a README (`src.report --readme`).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..fileio import atomic_write_text
from .plots import write_plots
from .run_records import Run
from .tables import time_targets, write_tables

log = logging.getLogger(__name__)


def write_comparison(runs: list[Run], out_dir: str | Path, plots: bool = True,
                     targets: list[float] | None = None) -> str:
    """Tables and plots of `runs` into out_dir; `targets`: the val accuracies to give the time to (default:
    time_targets, the best accuracy every run reached)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = time_targets(runs) if targets is None else targets
    markdown = write_tables(runs, out_dir, targets)
    if plots:
        names = [p.name for p in write_plots(runs, out_dir, targets)]
        if names:
            markdown += "\n" + "\n".join(f"![{Path(n).stem}]({n})" for n in names) + "\n"
            atomic_write_text(markdown, out_dir / "summary.md")
    return markdown
