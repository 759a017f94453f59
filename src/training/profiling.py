"""trainer.profile: torch.profiler over a few training steps, its trace in the run directory.

The profiler records `active` steps after skipping `wait` (the first step pays one-time costs: memory
allocation, cuDNN's autotuning, torch.compile) and `warmup` more (recorded, then discarded: the profiler's
own start-up). The trace is written by torch.profiler.tensorboard_trace_handler into `<run>/profile/` as
`train.<time>.pt.trace.json`, a Chrome trace: it opens in Perfetto (https://ui.perfetto.dev, drag the file
in) or chrome://tracing, and in TensorBoard with the torch-tb-profiler plugin (`tensorboard --logdir
<run>/profile`). The ops that took the most time are logged as a table.

Without trainer.profile the loop steps a `NoProfiler`: one empty method call per step.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, tensorboard_trace_handler

log = logging.getLogger(__name__)

TOP_OPS = 15  # rows of the logged table


def profile_schedule(steps: int) -> tuple[int, int, int]:
    """(wait, warmup, active) for an epoch of `steps` steps: (1, 1, 3) when it has 5 or more, shrunk
    so that at least one step is recorded in shorter ones."""
    wait = 1 if steps >= 3 else 0
    warmup = 1 if steps >= 2 else 0
    return wait, warmup, max(1, min(3, steps - wait - warmup))


class NoProfiler:
    """The profiler when trainer.profile is off."""

    def __enter__(self) -> NoProfiler:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def step(self) -> None:
        pass


class StepProfiler(NoProfiler):
    """torch.profiler over the first training steps of the run (see profile_schedule); call step() after
    every training step. Stops by itself once the active steps are recorded, or when the block ends."""

    def __init__(self, out_dir: str | Path, device: torch.device, steps: int):
        self.out_dir = Path(out_dir)
        self.device = device
        wait, warmup, active = profile_schedule(steps)
        self.remaining = wait + warmup + active
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.profiler: torch.profiler.profile | None = torch.profiler.profile(
            activities=activities, schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=self._write, record_shapes=True, profile_memory=True)
        self.recorded = active

    def __enter__(self) -> StepProfiler:
        self.profiler.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop()  # training ended (or was interrupted) before the schedule did

    def step(self) -> None:
        if self.profiler is None:
            return
        self.profiler.step()
        self.remaining -= 1
        if self.remaining == 0:
            self._stop()

    def _stop(self) -> None:
        if self.profiler is not None:
            profiler, self.profiler = self.profiler, None
            profiler.stop()

    def _write(self, profiler: torch.profiler.profile) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tensorboard_trace_handler(str(self.out_dir), worker_name="train")(profiler)
        sort_by = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=TOP_OPS)
        log.info("Profiled %d training steps: the trace is in %s (Perfetto, chrome://tracing, or TensorBoard with "
                 "torch-tb-profiler); the ops that took the most time:\n%s", self.recorded, self.out_dir, table)
