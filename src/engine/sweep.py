"""The sweep callback (hydra.callbacks.sweep_summary in conf/hydra/default.yaml).

After every job it appends the job's outcome to <sweep dir>/jobs.jsonl (one line per job, safe across
the processes of a parallel launcher) and rewrites summary.csv / summary.md, so a long sweep has an
up-to-date table at any time and a failed job is a row with its error while the other jobs go on.
When the sweep ends it writes the full report (tables and plots, see src/engine/report.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from .report import collect_runs, write_report

log = logging.getLogger(__name__)


def _error_of(job_return: JobReturn) -> str:
    if job_return.status != JobStatus.FAILED:
        return ""
    try:
        _ = job_return.return_value  # re-raises the job's exception
    except Exception as exc:  # noqa: BLE001 - any failure becomes a row of the summary
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "failed"


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        error = _error_of(job_return)
        sweep_dir = Path(config.hydra.sweep.dir)
        record = {"job": int(config.hydra.job.num), "status": "failed" if error else "completed", "error": error,
                  "dir": str(config.hydra.runtime.output_dir)}
        with open(sweep_dir / "jobs.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        write_report(collect_runs([sweep_dir]), sweep_dir, plots=False)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not (sweep_dir / "jobs.jsonl").is_file():  # no job ran (e.g. an empty sweep)
            return
        write_report(collect_runs([sweep_dir]), sweep_dir)
        log.info("Sweep summary: %s (and curves.png, bars.png, best_confusion_matrix.png)",
                 sweep_dir / "summary.md")
