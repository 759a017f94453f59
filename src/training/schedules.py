"""Learning-rate schedules (the `sched=` config group).

Every schedule except `Plateau` is a multiplier of the optimizer's lr as a function of the
(fractional) epoch, applied after every optimizer step through torch's LambdaLR; all of them
share an optional linear warmup. `Plateau` reacts to the monitored validation metric once per epoch.
Each says which with `per_batch`: the trainer steps it after every batch, or once per epoch with the
monitored metric.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from ..errors import ConfigError
from ..value_checks import require


class Schedule:
    """Base: linear warmup from ~0 to 1 over `warmup_epochs`, then `decay(epoch)`."""

    per_batch = True  # stepped after every optimizer step

    def __init__(self, warmup_epochs: float = 0.0):
        if warmup_epochs < 0:
            raise ConfigError(f"sched.warmup_epochs={warmup_epochs} is invalid: it must be >= 0")
        self.warmup_epochs = warmup_epochs
        self.max_epochs = 1

    def decay(self, epoch: float) -> float:
        raise NotImplementedError

    def factor(self, epoch: float) -> float:
        warm = min(1.0, (epoch + 1e-3) / self.warmup_epochs) if self.warmup_epochs else 1.0
        return warm * self.decay(epoch)

    def build(self, optimizer: torch.optim.Optimizer, max_epochs: int, steps_per_epoch: int,
              monitor_mode: str = "max") -> LambdaLR:
        """A per-step LambdaLR for this optimizer; the trainer calls .step() after every optimizer step."""
        self.max_epochs = max_epochs
        return LambdaLR(optimizer, lambda step: self.factor(step / steps_per_epoch))


def _check_gamma(gamma: float) -> None:
    if gamma <= 0:
        raise ConfigError(f"sched.gamma={gamma} is invalid: it must be > 0 (the factor the lr is multiplied by)")


class Constant(Schedule):
    def decay(self, epoch: float) -> float:
        return 1.0


class Cosine(Schedule):
    """Cosine annealing from the base lr to `min_lr_ratio` times it at the last epoch."""

    def __init__(self, warmup_epochs: float = 0.0, min_lr_ratio: float = 0.0):
        super().__init__(warmup_epochs)
        if not 0 <= min_lr_ratio <= 1:
            raise ConfigError(f"sched.min_lr_ratio={min_lr_ratio} is invalid: it must be in [0, 1]")
        self.min_lr_ratio = min_lr_ratio

    def decay(self, epoch: float) -> float:
        span = max(self.max_epochs - self.warmup_epochs, 1e-8)
        progress = min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Linear(Schedule):
    """Warmup, then the base lr held until `decay_from` (a fraction of the epochs), then a straight line to
    `min_lr_ratio` times it at the last epoch. decay_from=0: linear decay from the warmup's end (the
    schedule of the CIFAR-10 speed records); e.g. 0.6: constant then a cooldown over the last 40 %, which
    can be cut short without losing the decay."""

    def __init__(self, warmup_epochs: float = 0.0, decay_from: float = 0.0, min_lr_ratio: float = 0.0):
        super().__init__(warmup_epochs)
        if not 0 <= decay_from < 1:
            raise ConfigError(f"sched.decay_from={decay_from} is invalid: it must be in [0, 1) (a fraction of "
                              "the epochs)")
        if not 0 <= min_lr_ratio <= 1:
            raise ConfigError(f"sched.min_lr_ratio={min_lr_ratio} is invalid: it must be in [0, 1]")
        self.decay_from, self.min_lr_ratio = decay_from, min_lr_ratio

    def decay(self, epoch: float) -> float:
        start = max(self.decay_from * self.max_epochs, self.warmup_epochs)
        progress = min(max((epoch - start) / max(self.max_epochs - start, 1e-8), 0.0), 1.0)
        return 1 - (1 - self.min_lr_ratio) * progress


class MultiStep(Schedule):
    """Multiply the lr by `gamma` at each epoch in `milestones`."""

    def __init__(self, milestones: Sequence[int] = (30, 60, 90), gamma: float = 0.1, warmup_epochs: float = 0.0):
        super().__init__(warmup_epochs)
        _check_gamma(gamma)
        if any(m < 0 for m in milestones):
            raise ConfigError(f"sched.milestones={list(milestones)} is invalid: epochs must be >= 0")
        self.milestones, self.gamma = sorted(milestones), gamma

    def decay(self, epoch: float) -> float:
        return self.gamma ** sum(epoch >= m for m in self.milestones)


class StepDecay(Schedule):
    """Multiply the lr by `gamma` every `step_size` epochs."""

    def __init__(self, step_size: int = 30, gamma: float = 0.1, warmup_epochs: float = 0.0):
        super().__init__(warmup_epochs)
        if step_size < 1:
            raise ConfigError(f"sched.step_size={step_size} is invalid: it must be at least 1")
        _check_gamma(gamma)
        self.step_size, self.gamma = step_size, gamma

    def decay(self, epoch: float) -> float:
        return self.gamma ** math.floor(epoch / self.step_size)


class Plateau:
    """Multiply the lr by `factor` when the monitored val metric has not improved for `patience` epochs."""

    per_batch = False  # stepped once per epoch, with the monitored validation metric

    def __init__(self, factor: float = 0.1, patience: int = 5, min_lr: float = 0.0, threshold: float = 1e-4):
        require(0 < factor < 1, "sched.factor", factor, "must be in (0, 1)")
        require(patience >= 0, "sched.patience", patience, "must be >= 0")
        require(min_lr >= 0, "sched.min_lr", min_lr, "must be >= 0")
        require(threshold >= 0, "sched.threshold", threshold, "must be >= 0")
        self.factor, self.patience, self.min_lr, self.threshold = factor, patience, min_lr, threshold

    def build(self, optimizer: torch.optim.Optimizer, max_epochs: int, steps_per_epoch: int,
              monitor_mode: str = "max") -> ReduceLROnPlateau:
        """Stepped once per epoch with the monitored metric (`monitor_mode`: max for accuracy, min for loss)."""
        return ReduceLROnPlateau(optimizer, mode=monitor_mode, factor=self.factor, patience=self.patience,
                                 min_lr=self.min_lr, threshold=self.threshold)
