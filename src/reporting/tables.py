"""The comparison tables: one row per run and mean ± std per group of repeats, each number in its column's
format, with the time each run took to reach val accuracies; written as summary.csv, summary.md and
aggregate.csv."""
from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from ..evaluation.metrics import BY_NAME, SUMMARY_METRICS
from ..fileio import atomic_write_text
from .run_names import common_overrides, groups, repeat_of
from .run_records import Run, duration

# The summary metrics of the registry (src/evaluation/metrics.py), on val and on test: column -> metrics.json key
SUMMARY_COLUMNS = {f"{split}_{name}": f"{split}/{name}" for split in ("val", "test") for name in SUMMARY_METRICS}
# column -> metrics.json key
METRIC_COLUMNS = {"params": "model/params", "size_mb": "model/size_mb", "conv_layers": "model/conv_layers",
                  "epoch_time_s": "train/epoch_time_s", "images_per_s": "train/images_per_s",
                  "train_time_s": "train/time_s", "best_epoch": "best_epoch", **SUMMARY_COLUMNS}
# How each run was made (run_info.json, metrics.json, .hydra/hydra.yaml): the second table of summary.md.
PROVENANCE_COLUMNS = ("run", "data", "command", "machine", "train_time", "run_time")
# What groups of runs (seeds, folds) show as mean ± std
AGGREGATED = (*SUMMARY_COLUMNS, "epoch_time_s", "images_per_s", "train_time_s")
# One number format per column of summary.md (summary.csv and aggregate.csv keep the values as they are):
# the registry's decimals for metric columns (src/evaluation/metrics.py), counts as integers with thousands
# separators, seconds per epoch and images per second to a tenth, a whole training in seconds as an integer,
# megabytes to a hundredth.
_INTEGER = "{:,.0f}"
COLUMN_FORMATS = {"params": _INTEGER, "conv_layers": _INTEGER, "best_epoch": _INTEGER, "runs": _INTEGER,
                  "size_mb": "{:,.2f}", "epoch_time_s": "{:,.1f}", "images_per_s": "{:,.1f}", "train_time_s": _INTEGER,
                  **{column: f"{{:.{BY_NAME[key.split('/', 1)[1]].decimals}f}}"
                     for column, key in SUMMARY_COLUMNS.items()}}
PER_CLASS_FORMAT = f"{{:.{BY_NAME['per_class'].decimals}f}}"  # the f1_<class> columns


def run_row(run: Run) -> dict:
    row = {"run": run.name, "status": run.status, "error": run.error, "dir": str(run.dir)}
    if run.metrics:
        row |= {column: run.metrics.get(key) for column, key in METRIC_COLUMNS.items()}
        row |= {f"f1_{name}": m["f1"] for name, m in (run.metrics.get("test/per_class") or {}).items()}
    return row


def aggregate_row(name: str, members: list[Run]) -> dict:
    """Mean and sample standard deviation of each figure over the group's seeds and folds (`runs`: how
    many); runs that repeat a seed and fold are averaged first, so that each seed or fold counts once."""
    repeats: dict[tuple, list[dict]] = {}
    for member in members:
        repeats.setdefault(repeat_of(member), []).append(run_row(member))
    row = {"group": name, "runs": len(repeats)}
    for column in AGGREGATED:
        per_repeat = [[r[column] for r in rows if r.get(column) is not None] for rows in repeats.values()]
        values = [statistics.mean(v) for v in per_repeat if v]
        row[column] = statistics.mean(values) if values else None
        row[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return row


def _format(column: str, value) -> str:
    """`value` in `column`'s format (COLUMN_FORMATS); text as it is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if column.startswith("time_to_"):
        return duration(value)
    spec = COLUMN_FORMATS.get(column) or (PER_CLASS_FORMAT if column.startswith("f1_") else "{}")
    return spec.format(value)


def _mean_std(column: str, mean, std) -> str:
    return f"{_format(column, mean)} ± {_format(column, std)}" if std is not None else _format(column, mean)


def _markdown(columns: list[str], rows: list[dict]) -> list[str]:
    text = ("run", "group", "status", "error", *PROVENANCE_COLUMNS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if c in text else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(_format(c, row.get(c)).replace("|", "\\|") for c in columns) + " |" for row in rows]
    return lines


def _csv(columns: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# -- time to accuracy ----------------------------------------------------------------------------------------
# history.csv's time_s is the wall clock of training with validation at each epoch's end: the time a run
# took to reach a validation accuracy is the time_s of its first epoch at or above it.

def time_to(history: list[dict], accuracy: float) -> float | None:
    """Seconds of training (with validation) until val/acc first reached `accuracy`; None if it never did
    (or history.csv has no time_s: a run from before it was recorded)."""
    for record in history:
        if record.get("time_s") not in (None, "") and record.get("val/acc") not in (None, "") \
                and float(record["val/acc"]) >= accuracy:
            return float(record["time_s"])
    return None


def time_targets(runs: list[Run]) -> list[float]:
    """The default accuracy for "time to": the best val accuracy that every timed run reached (the lowest
    best, rounded down to a whole percent), so that each run of the comparison has a time."""
    bests = [max(float(r["val/acc"]) for r in history if r.get("val/acc") not in (None, ""))
             for history in (run.history() for run in runs if run.status == "completed")
             if any(r.get("time_s") not in (None, "") and r.get("val/acc") not in (None, "") for r in history)]
    return [math.floor(min(bests) * 100) / 100] if bests else []


def time_column(accuracy: float) -> str:
    return f"time_to_val_acc_{accuracy:g}"


def write_tables(runs: list[Run], out_dir: Path, targets: list[float] = ()) -> str:
    """summary.csv, summary.md and (when runs repeat with other seeds or folds) aggregate.csv; returns the
    Markdown. `targets`: val accuracies whose time to reach each run's row gives (time_to_val_acc_<target>,
    seconds in summary.csv)."""
    rows = [run_row(run) for run in runs]
    histories = [run.history() if run.status == "completed" else [] for run in runs]
    for row, history in zip(rows, histories):
        row |= {time_column(target): time_to(history, target) for target in targets}
    per_class = sorted({k for row in rows for k in row if k.startswith("f1_")})
    columns = ["run", "status", *METRIC_COLUMNS, *map(time_column, targets), *per_class, "error"]
    atomic_write_text(_csv([*columns, "dir"], rows), out_dir / "summary.csv")
    shared = common_overrides(runs)
    lines = [f"{len(runs)} runs" + (f"; every run: `{' '.join(shared)}`" if shared else ""), "",
             *_markdown([c for c in columns if c != "error" or any(r["error"] for r in rows)], rows)]
    made = [run.provenance() for run in runs]
    made = [{**row, "command": ", resumed by ".join(f"`{command}`" for command in row["command"])} for row in made]
    lines += ["", "How each run was made (train time: all epochs with their validation; run time: data loading, "
              "training and the test evaluation):", "", *_markdown(list(PROVENANCE_COLUMNS), made)]
    grouped = [aggregate_row(name, members) for name, members in groups(runs)]
    if grouped:
        mean_std = [{"group": g["group"], "runs": g["runs"],
                     **{c: _mean_std(c, g[c], g[f"{c}_std"]) for c in AGGREGATED}} for g in grouped]
        lines += ["", "Mean ± sample standard deviation over runs that differ only in seed or data.fold (runs: "
                  "the seeds and folds; runs that repeat a seed and fold count once, averaged):", "",
                  *_markdown(["group", "runs", *AGGREGATED], mean_std)]
        atomic_write_text(_csv(["group", "runs", *[k for c in AGGREGATED for k in (c, f"{c}_std")]], grouped),
                          out_dir / "aggregate.csv")
    markdown = "\n".join(lines) + "\n"
    atomic_write_text(markdown, out_dir / "summary.md")
    return markdown
