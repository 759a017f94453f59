"""What every command-line entrypoint (train, evaluate, predict, export) shares.

- the `${run_id:}` resolver used in run and sweep directory names;
- `run_or_exit`: a UserError (bad data, config or file) ends the command with its one-sentence
  message and exit code 2, instead of a traceback.
"""
from __future__ import annotations

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
# same second (or on two machines sharing a disk) never write into the same directory.
_PROCESS_ID = secrets.token_hex(3)
OmegaConf.register_new_resolver("run_id", lambda: _PROCESS_ID, replace=True)


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
