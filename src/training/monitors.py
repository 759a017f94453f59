"""What watches the training steps without being part of them: the epoch's running sums and throughput,
the non-finite-loss guard, Ctrl-C, the progress (a bar on terminals, a log line every
trainer.log_every_s seconds elsewhere) and the first-step log line.

None of them synchronizes with the device per step: loss and accuracy are summed on the device, the
"loss became NaN or infinite" flag is a device tensor read every CHECK_EVERY steps, and the progress
reads the sums at most once a second (the bar) or once per progress line.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from ..progress import DEFAULT_EVERY_S, Progress
from ..runtime import distributed as ddp
from ..runtime.devices import seconds_since_process_start, synchronize

if TYPE_CHECKING:
    from .run_checkpoints import EpochProgress

log = logging.getLogger(__name__)

CHECK_EVERY = 50  # steps between reads of the device-side "loss became non-finite" flag (one sync each)
NO_BAD_STEP = 2**62  # the first non-finite step when there is none


class Interrupted(UserError):
    """Ctrl-C stopped training; last.pt holds the interrupted epoch."""
    exit_code = 130


class StopOnSigint:
    """While active, the first Ctrl-C asks training to stop after the current batch; a second one
    interrupts at once. (Only in the main thread, where Python delivers signals.)"""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this batch and saving checkpoints/last.pt (again to abort at once)")

    def __enter__(self) -> StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def agreed(self, at_check: bool) -> bool:
        """Whether to stop after this batch. With several processes all must stop after the same batch (one
        that went on would wait forever for the others in its next gradient all-reduce), so they agree at
        the non-finite checks, every CHECK_EVERY batches: no extra sync per step, and stopping takes at most
        CHECK_EVERY batches."""
        if ddp.world_size() == 1:
            return self.requested
        return at_check and ddp.any_rank(self.requested)


class EpochMeter:
    """Loss and accuracy sums of one epoch on the device, the first step whose loss was not finite, and
    the images/s of the steady state (after `warmup` batches, which pay one-time costs).

    `carried` are the sums of an interrupted epoch being resumed (rank 0 alone carries them: they were
    summed over the ranks when it stopped)."""

    def __init__(self, device: torch.device, warmup: int, first_batch: int = 0,
                 carried: tuple[int, float, int, float] = (0, 0.0, 0, 0.0)):
        seen, loss_sum, correct, lr_sum = carried if ddp.is_main() else (0, 0.0, 0, carried[3])
        self.device, self.warmup, self.first_batch = device, warmup, first_batch
        self.loss_sum = torch.tensor(loss_sum, device=device)
        self.correct = torch.tensor(correct, device=device, dtype=torch.long)
        self.first_bad = torch.tensor(NO_BAD_STEP, device=device)
        self.seen = self.carried_seen = self.timed_from = seen
        self.lr_sum, self.steps = lr_sum, first_batch  # the same on every rank: no sum over ranks
        self.start = time.perf_counter()
        self.timed_start: float | None = None

    def update(self, step: int, lr: float, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """After step `step` (0-based in the epoch): the learning rate it used, its loss (detached) and
        predictions."""
        self.lr_sum, self.steps = self.lr_sum + lr, self.steps + 1
        loss = loss.float()
        self.first_bad = torch.where(torch.isfinite(loss), self.first_bad, self.first_bad.clamp(max=step + 1))
        self.loss_sum += loss * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)
        if step + 1 - self.first_batch == self.warmup:  # steady state from here: one sync to start the clock
            synchronize(self.device)
            self.timed_start, self.timed_from = time.perf_counter(), self.seen

    def check_finite(self, epoch: int) -> None:
        # The earliest over the ranks: all of them raise at the same check, none waits for the others.
        step = int(ddp.all_reduce(self.first_bad, "min").item())
        if step != NO_BAD_STEP:
            raise UserError(f"the training loss became NaN or infinite in epoch {epoch} at step {step}; lower "
                            "optim.lr or set trainer.gradient_clip_val (the last good checkpoint is kept)")

    def sums_over_ranks(self) -> tuple[int, float, int, float]:
        """(seen, loss sum, correct) of every rank and the lr sum: what an interrupted epoch carries into its
        resumption."""
        seen, loss_sum, correct = ddp.sum_over_ranks(self.seen, self.loss_sum, self.correct)
        return int(seen), loss_sum, int(correct), self.lr_sum

    def running(self) -> dict:
        """The progress figures (reads the device sums)."""
        seen = max(self.seen, 1)
        return {"loss": f"{self.loss_sum.item() / seen:.3f}", "acc": f"{self.correct.item() / seen:.3f}",
                "img/s": f"{(self.seen - self.carried_seen) / (time.perf_counter() - self.start):.0f}"}

    def result(self) -> dict:
        """The epoch's train/loss, train/acc (over every rank's samples), time and images/s (all ranks)."""
        synchronize(self.device)
        end = time.perf_counter()
        timed_start, timed_from = self.timed_start, self.timed_from
        if timed_start is None or self.seen == timed_from:  # too few batches to leave warm-up out
            timed_start, timed_from = self.start, self.carried_seen
        loss_sum, correct, seen, images_per_s = ddp.sum_over_ranks(
            self.loss_sum, self.correct, self.seen, (self.seen - timed_from) / max(end - timed_start, 1e-9))
        # lr: the mean over the epoch's steps (of a schedule that changes it every step, the last value would
        # be the next epoch's start: 0 at the end of a cosine schedule)
        return {"lr": self.lr_sum / max(self.steps, 1), "train/loss": loss_sum / seen, "train/acc": correct / seen,
                "train/epoch_time_s": end - self.start, "train/images_per_s": images_per_s}


class ProgressBar:
    """The progress of an epoch of `total` batches from where `epoch` stands (a resumed epoch: mid-way),
    rank 0 only (src/progress.py): a bar on terminals (`enabled`), elsewhere a log line every `every_s`
    seconds with the batch, rate, ETA, loss, accuracy and images/s. The meter's device sums are read at
    most once a second (the bar) or once per line."""

    def __init__(self, total: int, epoch: EpochProgress, epochs: int, enabled: bool,
                 every_s: float = DEFAULT_EVERY_S):
        self.meter: EpochMeter | None = None
        self.progress = Progress(total, f"epoch {epoch.epoch}/{epochs}", "batch", epoch.batches_done, every_s,
                                 enabled, log, self._figures)

    def _figures(self) -> dict:
        return self.meter.running() if self.meter is not None else {}

    def step(self, meter: EpochMeter) -> None:
        self.meter = meter
        self.progress.update(1)

    def close(self) -> None:
        self.progress.close()


class FirstStepLog:
    """Logs once how long the process took to start training (the startup budget) and its first step."""

    def __init__(self):
        self.done = False
        self.started_at: float | None = None

    def before_step(self) -> None:
        if not self.done:
            self.started_at = seconds_since_process_start()

    def after_step(self, device: torch.device) -> None:
        if self.done:
            return
        self.done = True
        synchronize(device)
        finished = seconds_since_process_start()
        if self.started_at is not None and finished is not None:
            log.info("First training step started %.1f s after the process started (done at %.1f s)",
                     self.started_at, finished)
