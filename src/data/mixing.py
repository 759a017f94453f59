"""Mixup and CutMix on a training batch (the `aug.mix` setting of conf/aug/*.yaml).

Per batch, with probability `prob`: mixup blends every image with its partner, `lam * x + (1 - lam) *
x_partner`; CutMix pastes a box of the partner covering 1 - lam of the image. The targets become the
same blend of the two one-hot labels, and the loss is the cross-entropy against them (label smoothing
and class weights apply as usual). lam ~ Beta(alpha, alpha), one per batch as in both papers.

The partner of sample i is sample n-1-i of the same batch (the batch is already a random draw), so no
extra permutation is needed; lam and the box come from a host-side generator whose state is saved in
checkpoints, so nothing waits for the device and a resumed run mixes exactly as an uninterrupted one.
"""
from __future__ import annotations

import math
import random

import torch

from ..value_checks import require


class BatchMix:
    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5):
        require(mixup_alpha >= 0, "mix.mixup_alpha", mixup_alpha, "must be >= 0 (0: off)")
        require(cutmix_alpha >= 0, "mix.cutmix_alpha", cutmix_alpha, "must be >= 0 (0: off)")
        require(0 <= prob <= 1, "mix.prob", prob, "must be in [0, 1]")
        require(0 <= switch_prob <= 1, "mix.switch_prob", switch_prob, "must be in [0, 1]")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.rng = random.Random(0)

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def seed(self, seed: int) -> None:
        self.rng.seed(seed)

    def state(self) -> list:
        """The generator's state as plain lists and ints (checkpoints hold plain data only)."""
        version, internal, gauss = self.rng.getstate()
        return [version, list(internal), gauss]

    def set_state(self, state: list) -> None:
        version, internal, gauss = state
        self.rng.setstate((version, tuple(internal), gauss))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets): targets are class probabilities (N, num_classes), mixed or one-hot."""
        # one-hot by scatter: F.one_hot checks the labels' range with a host synchronisation (on the CPU)
        dtype = images.dtype if images.is_floating_point() else torch.float
        targets = torch.zeros(len(labels), num_classes, dtype=dtype, device=labels.device)
        targets.scatter_(1, labels.view(-1, 1), 1.0)
        if not self.enabled or self.rng.random() >= self.prob:
            return images, targets
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or self.rng.random() < self.switch_prob)
        lam = self.rng.betavariate(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha]))
        partner = images.flip(0)
        if use_cutmix:
            images, lam = self._paste_box(images, partner, lam)
        else:
            images = images * lam + partner * (1 - lam)
        return images, targets * lam + targets.flip(0) * (1 - lam)

    def _paste_box(self, images: torch.Tensor, partner: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        """A box of area (1 - lam) of the image, centred anywhere (clipped at the borders), taken from
        the partner; lam is then the share of the image left, as the clipping may shrink the box."""
        height, width = images.shape[-2:]
        cut = math.sqrt(1 - lam)
        box_h, box_w = int(height * cut), int(width * cut)
        cy, cx = self.rng.randrange(height), self.rng.randrange(width)
        y0, y1 = max(cy - box_h // 2, 0), min(cy + box_h - box_h // 2, height)
        x0, x1 = max(cx - box_w // 2, 0), min(cx + box_w - box_w // 2, width)
        mixed = images.clone()
        mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        return mixed, 1 - (y1 - y0) * (x1 - x0) / (height * width)
