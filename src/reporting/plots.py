"""The comparison plots: curves.png, time_to_accuracy.png, bars.png and best_confusion_matrix.png."""
from __future__ import annotations

from pathlib import Path

from ..evaluation.metrics import BY_NAME, SUMMARY_METRICS
from .run_names import groups
from .run_records import Run
from .tables import SUMMARY_COLUMNS, aggregate_row


def write_plots(runs: list[Run], out_dir: Path, targets: list[float] = ()) -> list[Path]:
    """curves.png, time_to_accuracy.png, bars.png and best_confusion_matrix.png (each only when the runs
    have what it shows)."""
    from ..figures import (
        comparison_bars_figure,
        confusion_matrix_figure,
        curves_by_epoch_figure,
        save_figure,
        time_to_accuracy_figure,
    )

    written = []
    completed = [run for run in runs if run.status == "completed"]
    histories = {run.name: run.history() for run in completed}
    if any(histories.values()):
        save_figure(curves_by_epoch_figure(histories, ("val/acc", "val/loss")), out_dir / "curves.png")
        written.append(out_dir / "curves.png")
    if any(r.get("time_s") not in (None, "") for history in histories.values() for r in history):
        save_figure(time_to_accuracy_figure(histories, tuple(targets)), out_dir / "time_to_accuracy.png")
        written.append(out_dir / "time_to_accuracy.png")
    grouped = [aggregate_row(name, members) for name, members in groups(runs)]
    shown = [f"test_{name}" for name in SUMMARY_METRICS]  # the summary metrics on test
    if grouped:  # one bar per group, its standard deviation as the error bar
        bars = {g["group"]: [g[c] for c in shown] for g in grouped}
        errors = {g["group"]: [g[f"{c}_std"] for c in shown] for g in grouped}
    else:
        bars = {run.name: [run.metrics.get(SUMMARY_COLUMNS[c]) for c in shown] for run in completed}
        errors = None
    bars = {name: values for name, values in bars.items() if None not in values}
    if bars:
        labels = [f"test {BY_NAME[name].label}" for name in SUMMARY_METRICS]
        save_figure(comparison_bars_figure(bars, labels, errors), out_dir / "bars.png")
        written.append(out_dir / "bars.png")
    best = next((run for run in completed if run.metrics.get("test/confusion_matrix")), None)
    if best:
        figure = confusion_matrix_figure(best.metrics["test/confusion_matrix"], best.metrics["classes"],
                                         f"best: {best.name}, test")
        save_figure(figure, out_dir / "best_confusion_matrix.png")
        written.append(out_dir / "best_confusion_matrix.png")
    return written
