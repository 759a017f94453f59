"""An exponential moving average of a model's weights (`trainer.ema_decay`), kept as a model of its own.

After every optimizer step, ema = decay * ema + (1 - decay) * weights for every floating-point
parameter and buffer (batch-norm running statistics included); integer buffers (BN's batch counter)
are copied. Early in training the average would be dominated by the random initial weights, so the
decay used is min(decay, (1 + step) / (10 + step)), as in TensorFlow's ExponentialMovingAverage.
The trainer evaluates it on val every epoch like the model itself and checkpoints it separately.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..value_checks import require


def check_ema_decay(decay: float) -> None:
    require(0 < decay < 1, "trainer.ema_decay", decay, "must be in (0, 1), e.g. 0.999, or null (off)")


class ModelEma:
    def __init__(self, model: nn.Module, decay: float):
        check_ema_decay(decay)
        self.decay = decay
        self.steps = 0
        self._paired_with, self._pairs = None, ([], [], [])
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def _tensors(self, model: nn.Module) -> tuple[list, list, list]:
        """(EMA floats, the model's floats, (EMA, model) integer pairs): the state-dict tensors, which share
        storage with the modules and so follow every in-place update. Built once per model, not every step."""
        if self._paired_with is not model:
            ema_state, state = self.module.state_dict(), model.state_dict()
            floats = [(ema_state[k], state[k]) for k in ema_state if ema_state[k].is_floating_point()]
            self._pairs = ([e for e, _ in floats], [m for _, m in floats],
                           [(ema_state[k], state[k]) for k in ema_state if not ema_state[k].is_floating_point()])
            self._paired_with = model
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average; the trainer calls it after every optimizer step that changed the weights."""
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        ema, current, integers = self._tensors(model)
        if ema:
            torch._foreach_lerp_(ema, current, 1 - decay)  # one fused kernel over all tensors
        for e, m in integers:
            e.copy_(m)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
