"""The trainer's debugging modes, as Lightning names them: limits on the train, val and test batches, a fast
dev run, overfitting a few batches, and the profiler (profiling.py).

- `limit_train_batches` / `limit_val_batches` / `limit_test_batches`: N batches (int), a fraction of them
  (float), or all (null). Val and test batches are of data.eval_batch_size images.
- `fast_dev_run=N` (true = 1): a smoke test of the whole run: one epoch of N train, N val and N test batches
  of at most DEV_RUN_BATCH_SIZE images, that saves nothing that looks like a result (no metrics.json,
  history.csv, checkpoints, test report or TensorBoard events; see experiment.py): `src.report` passes it over
  when it searches a folder for runs. It checks that the run goes through, in seconds on a CPU; whether full
  batches fit in memory is trainer=debug's question (5 training batches of data.batch_size, results written).
- `overfit_batches=N` (or a fraction): every epoch trains on the same N batches' worth of training images,
  which a working model and pipeline learn by heart (train accuracy near 1).
- `profile=true`: torch.profiler over a few steps of the first epoch, its trace in `<run>/profile/`.

Where a split is cut to fewer images, the images kept are spread evenly over it (every k-th, in the split's
fixed order) rather than its first ones: splits stored class by class (FER2013's are) would otherwise keep
the first classes only. They are the same images every epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import DeviceLoader, ImageData, Split
from ..runtime import distributed as ddp
from ..value_checks import require
from .monitors import Interrupted
from .profiling import NoProfiler, StepProfiler
from .run_checkpoints import EpochProgress, FitState, Resumable, RunCheckpoints

log = logging.getLogger(__name__)

DEV_RUN_BATCH_SIZE = 8  # the largest batch of a fast_dev_run (train, val and test)


def batch_count(limit: int | float | None, total: int) -> int:
    """How many of `total` batches to run: all (None), `limit` of them (int), or that fraction, at least one
    (float)."""
    if limit is None:
        return total
    if isinstance(limit, float):
        return max(1, int(total * limit))
    return min(limit, total)


def spread_subset(split: Split, n: int) -> Split:
    """`n` images of `split` spread evenly over it (every len/n-th, in order); the split itself if n >= len."""
    if n >= len(split):
        return split
    return split.subset(torch.arange(n) * len(split) // n)


@dataclass
class DebugModes:
    """The debugging keys of the `trainer=` group (see the module docstring), checked."""
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    overfit_batches: int | float = 0
    fast_dev_run: bool | int = 0
    profile: bool = False
    _announced: set = field(default_factory=set, repr=False)

    def __post_init__(self):
        limit_rule = "must be a number of batches >= 1, a fraction in (0, 1], or null (all)"
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            require(_is_limit(getattr(self, key)), f"trainer.{key}", getattr(self, key), limit_rule)
        require(self.overfit_batches == 0 or _is_limit(self.overfit_batches), "trainer.overfit_batches",
                self.overfit_batches, "must be a number of batches >= 1, a fraction in (0, 1], or 0 (off)")
        require(self.fast_dev_run >= 0, "trainer.fast_dev_run", self.fast_dev_run,
                "must be a number of batches >= 1, true (1), or false / 0 (off)")
        self.fast_dev_run = int(self.fast_dev_run)  # true is 1 batch, as in Lightning
        if self.fast_dev_run:
            self.limit_train_batches = self.limit_val_batches = self.limit_test_batches = self.fast_dev_run

    def shrink_batches(self, data: ImageData) -> None:
        """fast_dev_run: batches of at most DEV_RUN_BATCH_SIZE images (data.batch_size, data.eval_batch_size)."""
        if self.fast_dev_run:
            data.batch_size = min(data.batch_size, DEV_RUN_BATCH_SIZE)
            data.eval_batch_size = min(data.eval_batch_size, DEV_RUN_BATCH_SIZE)

    def train_steps(self, batches: int) -> int:
        """Steps per epoch for a training loader of `batches` batches."""
        return batch_count(self.limit_train_batches, batches)

    def train_loader(self, data: ImageData, device: torch.device, seed: int) -> DeviceLoader:
        """The training batches: of the whole train split, or with overfit_batches of the same few batches'
        worth of its images every epoch (spread over the split, shuffled into batches anew each epoch)."""
        if not self.overfit_batches:
            return data.train_loader(device, seed)
        train = data.splits["train"]
        batches = batch_count(self.overfit_batches, max(1, len(train) // data.batch_size))
        subset = spread_subset(train, batches * data.batch_size)
        log.info("overfit_batches=%s: every epoch trains on the same %d training images (%d batches)",
                 self.overfit_batches, len(subset), batches)
        return data.train_loader(device, seed, subset)

    def split(self, data: ImageData, name: str) -> Split | None:
        """data.splits[name] (None when the data has no such split); val and test cut to limit_val_batches /
        limit_test_batches batches of data.eval_batch_size images, spread over the split."""
        split = data.splits.get(name)
        limit = {"val": self.limit_val_batches, "test": self.limit_test_batches}.get(name)
        if split is None or limit is None:
            return split
        batches = batch_count(limit, -(-len(split) // data.eval_batch_size))
        subset = spread_subset(split, batches * data.eval_batch_size)
        if name not in self._announced and len(subset) < len(split):
            self._announced.add(name)
            log.info("limit_%s_batches=%s: %s is evaluated on %d of its %d images", name, limit, name, len(subset),
                     len(split))
        return subset

    def profiler(self, out_dir: str | Path | None, device: torch.device, steps: int) -> NoProfiler:
        """With `profile` (and a directory to write to), a StepProfiler on the main process; else a NoProfiler."""
        if self.profile and out_dir is not None and ddp.is_main():
            return StepProfiler(out_dir, device, steps)
        return NoProfiler()


def _is_limit(value: int | float | None) -> bool:
    if value is None or isinstance(value, bool):
        return value is None
    return value >= 1 if isinstance(value, int) else 0 < value <= 1


class DevRunCheckpoints(RunCheckpoints):
    """The checkpoints of a fast_dev_run: nothing is written; the selected epoch's weights (the EMA's, when
    there is one, as in best.pt) are kept in memory for the test evaluation at the end."""

    def __init__(self):
        super().__init__(Path("fast_dev_run-saves-no-checkpoints"))
        self._best: dict | None = None

    def save(self, parts: Resumable, state: FitState, improved: bool) -> None:
        if improved:
            model = parts.ema.module if parts.ema else parts.model
            self._best = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save_interrupted(self, parts: Resumable, state: FitState, progress: EpochProgress) -> None:
        raise Interrupted(f"interrupted in epoch {progress.epoch}: a fast_dev_run saves nothing to resume from")

    def best_weights(self) -> dict:
        return self._best
