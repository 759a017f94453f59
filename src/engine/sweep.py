"""Sweep summaries: after every job of a multirun, the sweep directory's summary.csv and summary.md
are rewritten with one row per job, so a long sweep has an up-to-date table at any time and a failed
job shows up as a row with its error while the other jobs go on.

Each job appends its outcome to <sweep dir>/jobs.jsonl (one line per job, safe across processes, as
with parallel launchers); the tables are built from those lines and the jobs' metrics.json.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ..fileio import atomic_write_text

log = logging.getLogger(__name__)

COLUMNS = ["job", "overrides", "status", "params", "size_mb", "epoch_time_s", "images_per_s", "best_epoch",
           "val_acc", "val_macro_f1", "test_acc", "test_macro_f1"]
METRIC_KEYS = {"params": "model/params", "size_mb": "model/size_mb", "epoch_time_s": "train/epoch_time_s",
               "images_per_s": "train/images_per_s", "best_epoch": "best_epoch", "val_acc": "val/acc",
               "val_macro_f1": "val/macro_f1", "test_acc": "test/acc", "test_macro_f1": "test/macro_f1"}


class SweepSummary(Callback):
    """Hydra callback (hydra.callbacks.sweep_summary) that keeps the sweep's summary up to date."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        error = ""
        if job_return.status == JobStatus.FAILED:
            try:
                _ = job_return.return_value  # re-raises the job's exception
            except Exception as exc:  # noqa: BLE001 - any failure becomes a row of the summary
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        sweep_dir = Path(config.hydra.sweep.dir)
        record = {"job": int(config.hydra.job.num), "overrides": config.hydra.job.override_dirname,
                  "status": "failed" if error else "completed", "error": error,
                  "dir": str(config.hydra.runtime.output_dir)}
        with open(sweep_dir / "jobs.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        write_summary(sweep_dir)


def _jobs(sweep_dir: Path) -> list[dict]:
    latest = {}
    for line in (sweep_dir / "jobs.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[record["job"]] = record
    return [latest[k] for k in sorted(latest)]


def summary_rows(sweep_dir: Path) -> list[dict]:
    """One row per job: its overrides, status and, when it completed, the metrics of its metrics.json
    (with per-class test F1), sorted by the monitored validation metric, failed jobs last."""
    rows = []
    for job in _jobs(sweep_dir):
        row = {"job": job["job"], "overrides": job["overrides"], "status": job["status"], "error": job["error"]}
        metrics_file = Path(job["dir"]) / "metrics.json"
        if job["status"] == "completed" and metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            row |= {column: metrics.get(key) for column, key in METRIC_KEYS.items()}
            row |= {f"f1_{name}": m["f1"] for name, m in (metrics.get("test/per_class") or {}).items()}
            row["_monitor"] = metrics.get(metrics.get("monitor", "val/acc"))
            row["_minimize"] = str(metrics.get("monitor", "")).endswith("loss")
        rows.append(row)

    def order(row: dict):
        value = row.get("_monitor")
        if value is None:
            return (1, 0.0)
        return (0, value if row.get("_minimize") else -value)

    return sorted(rows, key=order)


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def write_summary(sweep_dir: Path) -> None:
    rows = summary_rows(sweep_dir)
    extra = sorted({k for row in rows for k in row if k.startswith("f1_")})
    columns = [*COLUMNS, *extra, "error"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(table.getvalue(), sweep_dir / "summary.csv")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(c)).replace("|", "\\|") for c in columns) + " |" for row in rows]
    atomic_write_text("\n".join(lines) + "\n", sweep_dir / "summary.md")
