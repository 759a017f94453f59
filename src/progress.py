"""Progress of long phases: a bar on a terminal, a log line every few seconds anywhere else.

Training epochs, evaluation passes (validation, the test pass, TTA, ensembles, `src.evaluate`,
`src.predict`) and `python -m src.models` report through `Progress`:

- on a terminal (the console log and tqdm's stderr both), a tqdm bar that appears after DELAY_S seconds
  and is erased when the phase ends;
- otherwise (SLURM, nohup, CI, `| tee`), or with the bar turned off, one log line every `every_s`
  seconds (0 = none) through the caller's logger, so it reaches the console and the run's log file:
  `epoch 3/30: batch 120/703 (17%), 3.05 batch/s, ETA 03:11 | loss 1.234, acc 0.456, img/s 812`.

A phase shorter than that (DELAY_S for the bar, `every_s` for lines) prints nothing. Under DDP only
rank 0 reports. The caller's extra figures (`figures`, a callable: loss and accuracy summed on the
device) are read only when the bar is refreshed (at most once a second) or a line is due, never per step.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

import torch.distributed as dist
from tqdm import tqdm

log = logging.getLogger(__name__)

DEFAULT_EVERY_S = 30.0  # seconds between progress lines where there is no bar (trainer.log_every_s)
# trainer.log_every_s: (check, what it must be), for the rule tables and the Trainer alike.
LOG_EVERY_S_RULE = (lambda v: v >= 0, ">= 0 seconds (0: no progress lines)")
DELAY_S = 2.0  # a bar appears only once its phase has taken this long
FIGURES_EVERY_S = 1.0  # the bar's extra figures are read at most this often


def is_terminal(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _is_main_process() -> bool:
    """Rank 0 of a torchrun launch (as runtime.distributed.is_main), or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def clock(seconds: float) -> str:
    """MM:SS, or H:MM:SS from an hour on: how progress lines and epoch lines write durations and ETAs."""
    return tqdm.format_interval(max(seconds, 0))


def _rate(per_s: float, unit: str) -> str:
    if per_s >= 1:
        return f"{per_s:.0f} {unit}/s" if per_s >= 100 else f"{per_s:.3g} {unit}/s"
    return f"{1 / per_s:.3g} s/{unit}" if per_s > 0 else f"- {unit}/s"


class Progress:
    """The progress of one phase of `total` units (`done` of them already done, e.g. by a resumed epoch).

    `update(n)` after each unit of work (a batch, n images); `close()` at the end (or use `with`).
    bar: whether a terminal may show the bar (trainer.progress_bar); without it, lines instead.
    console: the stream the caller's log goes to (default sys.stdout, Hydra's console handler); it is
    a terminal or not."""

    def __init__(self, total: int, description: str, unit: str = "batch", done: int = 0,
                 every_s: float = DEFAULT_EVERY_S, bar: bool = True, logger: logging.Logger | None = None,
                 figures: Callable[[], dict[str, str]] | None = None, console: TextIO | None = None):
        main = _is_main_process()
        terminal = is_terminal(sys.stdout if console is None else console)
        self.bar = tqdm(total=total, initial=done, desc=description, unit=unit, leave=False, dynamic_ncols=True,
                        delay=DELAY_S, disable=None if bar and terminal and main else True)
        self.lines = bool(main and every_s > 0 and self.bar.disable)  # tqdm disables itself when stderr is no terminal
        self.total, self.description, self.unit, self.every_s = total, description, unit, every_s
        self.logger, self.figures = logger or log, figures
        self.done = self.start_done = done
        self.start = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        """`n` more units done. Costs a clock read; the figures are read only when a refresh or line is due."""
        if n <= 0:
            return
        self.done += n
        if self.lines:
            now = time.perf_counter()
            if now - self.last >= self.every_s:
                self.last = now
                self.logger.info(self.line(now))
        elif not self.bar.disable:
            self.bar.update(n)
            if self.figures is not None and time.perf_counter() - self.last > FIGURES_EVERY_S:
                self.last = time.perf_counter()
                self.bar.set_postfix(self.figures(), refresh=False)  # no refresh: it would show the bar before DELAY_S

    def line(self, now: float) -> str:
        """`description: unit done/total (percent), rate, ETA | figures`."""
        per_s = (self.done - self.start_done) / max(now - self.start, 1e-9)
        text = f"{self.description}: {self.unit} {self.done}/{self.total}"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        text += f", {_rate(per_s, self.unit)}"
        if per_s > 0 and self.total:
            text += f", ETA {clock((self.total - self.done) / per_s)}"
        if self.figures is not None:
            text += " | " + ", ".join(f"{key} {value}" for key, value in self.figures().items())
        return text

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
