"""The sweep callback (hydra.callbacks.sweep_summary in conf/hydra/default.yaml).

After every job it appends the job's outcome to <sweep dir>/jobs.jsonl (one line per job, safe across
the processes of a parallel launcher) and rewrites summary.csv / summary.md, so a long sweep has an
up-to-date table at any time and a failed job is a row with its error while the other jobs go on.
When the sweep ends it writes the full report (tables and plots, see src/reporting/comparison.py).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ..runtime.distributed import launched_rank
from ..runtime.sweep_jobs import error_line, take_job_error
from .comparison import write_comparison
from .run_names import collect_runs
from .run_records import read_job_records

log = logging.getLogger(__name__)


def _error_of(job_return: JobReturn) -> str:
    """The job's error: kept by run_or_exit (which lets the job end normally, so that Hydra goes on with the
    sweep), or an exception that escaped it."""
    recorded = take_job_error()
    if recorded or job_return.status != JobStatus.FAILED:
        return recorded or ""
    # The exception, read from the private field on purpose: Hydra's public `return_value` (hydra 1.3,
    # core/utils.py) re-raises it and writes "Error executing job with overrides ..." to stderr, which would end
    # the callback and repeat a line the job's log already has.
    exc = job_return._return_value
    return error_line(exc) if exc else "failed"


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        # A job run as several processes (submitit tasks of one DDP run) is recorded once, by rank 0.
        if config.hydra.mode != RunMode.MULTIRUN or launched_rank() != 0:
            return
        error = _error_of(job_return)
        sweep_dir = Path(config.hydra.sweep.dir)
        record = {"job": int(config.hydra.job.num), "status": "failed" if error else "completed", "error": error,
                  "dir": str(config.hydra.runtime.output_dir)}
        with open(sweep_dir / "jobs.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        write_comparison(collect_runs([sweep_dir]), sweep_dir, plots=False)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not (sweep_dir / "jobs.jsonl").is_file():  # no job ran (e.g. an empty sweep)
            return
        write_comparison(collect_runs([sweep_dir]), sweep_dir)
        log.info("Sweep summary: %s (and curves.png, bars.png, best_confusion_matrix.png)",
                 sweep_dir / "summary.md")
        records = read_job_records(sweep_dir)
        failed = [r for r in records if r["status"] == "failed"]
        if failed:  # the sweep did not do all it was asked: say so once, and exit non-zero
            log.error("%d of %d jobs failed (job %d: %s); every job's outcome is in %s and each job's log in its "
                      "directory", len(failed), len(records), failed[0]["job"], failed[0]["error"],
                      sweep_dir / "summary.md")
            sys.exit(1)
