"""What every command-line entrypoint (train, evaluate, predict, export) shares.

- the `${run_id:}`, `${start_time:}` and `${job_dirname:}` resolvers used in run and sweep directory names;
- `run_or_exit`: a UserError (bad data, config or file) ends the command with its one-sentence
  message and exit code 2, instead of a traceback.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import secrets
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from .errors import UserError

T = TypeVar("T")

# A short random id per process, in every run and sweep directory name: two runs started in the
# same second (or on two machines sharing a disk) never write into the same directory. Cached in the
# config like Hydra's ${now:}: jobs of a parallel launcher (other processes) receive the sweep config
# with its resolved values and so share the sweep directory.
# The processes of one torchrun launch (trainer=ddp) are one run: they all take rank 0's id and start
# time (`${start_time:}` replaces Hydra's per-process `${now:}` in the run directory's name).
_PROCESS_ID = secrets.token_hex(3)
_start: datetime.datetime | None = None


def _run_id() -> str:
    from .engine.distributed import rank_zero_value  # torch: imported when a directory is named, not before

    return rank_zero_value("run_id", _PROCESS_ID)


def _start_time(pattern: str) -> str:
    """The time of the first call in this process (rank 0's under torchrun), formatted with `pattern`."""
    global _start
    if _start is None:
        from .engine.distributed import rank_zero_value

        _start = datetime.datetime.fromisoformat(rank_zero_value("start_time", datetime.datetime.now().isoformat()))
    return _start.strftime(pattern)


def _job_dirname(overrides: str) -> str:
    """A sweep job's directory name from its overrides (`<n>_<this>`): shortened, with a hash of the whole
    text, when it would not fit in a file name (255 bytes), as an Optuna trial's float values easily do.
    A '/' in a value would make a sub-directory: it becomes '_'."""
    name = overrides.replace("/", "_")
    if len(name.encode()) <= MAX_JOB_DIRNAME_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return name.encode()[:MAX_JOB_DIRNAME_BYTES - 9].decode(errors="ignore") + "_" + digest


MAX_JOB_DIRNAME_BYTES = 200  # 255 on most file systems, less the job number
OmegaConf.register_new_resolver("run_id", _run_id, replace=True, use_cache=True)
OmegaConf.register_new_resolver("start_time", _start_time, replace=True, use_cache=True)
OmegaConf.register_new_resolver("job_dirname", _job_dirname, replace=True)


def run_or_exit(work: Callable[[], T], logger: logging.Logger) -> T:
    """Runs `work`; a UserError is logged as its one sentence and ends the process with its exit code
    (2, or 130 for Ctrl-C). In a multirun it is re-raised instead, so that Hydra records the job as
    failed and goes on with the other jobs."""
    try:
        return work()
    except UserError as exc:
        logger.error("%s", exc)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(exc.exit_code)
