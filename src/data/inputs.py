"""From stored uint8 pixels to the model's input, in training and in evaluation.

`ModelInput` is the one object that knows how a batch of decoded images becomes what the model sees:
scaled to [0, 1], augmented and mixed (training), normalized per channel, in the memory format of the
run, and cropped to the model's input size. That size is the training crop when the augmentation crops
(`aug.crop.size`, e.g. random 44x44 windows of 48x48 faces), else the image size: validation, the test
evaluation, `src.evaluate`, `src.predict` and `src.export` all take it from here (a checkpoint stores
the crop as `meta.input_size`).

Evaluation sees the centre crop of that size, or with test-time augmentation several views whose
logits are averaged: the image and its mirror (`flip`), or the four corner and the centre crops, each
also mirrored (`tencrop`, as the FER2013 papers evaluate).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from .augment import Augment

TTA_MODES = ("none", "flip", "tencrop")


def default_crop_size(image_size: int) -> int:
    """The ten-crop size when none is given: 44 of 48, as the FER2013 papers use (11/12 of the side)."""
    return image_size * 11 // 12


def center_crop(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The centre size x size crop (x itself when size is None or not smaller)."""
    h, w = x.shape[-2:]
    if size is None or size >= min(h, w):
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def tta_views(x: torch.Tensor, mode: str, crop_size: int | None = None, input_size: int | None = None
              ) -> list[torch.Tensor]:
    """The views whose logits are averaged: the image (none); and its mirror (flip); or the four corner
    and the centre crops of crop_size, each also mirrored (tencrop).

    `input_size` is the side the model was trained on when training cropped: none and flip then see the
    centre crop, and tencrop's crops default to that size."""
    h, w = x.shape[-2:]
    if input_size is not None and input_size >= min(h, w):
        input_size = None  # trained on whole images
    if mode == "none":
        return [center_crop(x, input_size)]
    if mode == "flip":
        view = center_crop(x, input_size)
        return [view, view.flip(-1)]
    if mode != "tencrop":
        raise ConfigError(f"tta.mode={mode} is invalid: use one of {', '.join(TTA_MODES)}")
    c = crop_size or input_size or default_crop_size(min(h, w))
    if not 0 < c <= min(h, w):
        raise ConfigError(f"tta.crop_size={c} is invalid for {h}x{w} images")
    corners = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2)]
    crops = [x[..., top:top + c, left:left + c] for top, left in corners]
    return crops + [crop.flip(-1) for crop in crops]


class ModelInput:
    """Normalization, memory format, input size and (for training) augmentation and mixing.

    Args:
        mean, std: per-channel normalization of pixels in [0, 1].
        crop: the side of the training crop when training cropped (None: whole images).
        augment: the training augmentation (`aug=`), with its mixup / CutMix; None for evaluation only.
        channels_last: NHWC inputs (with a channels_last model: faster convolutions).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], crop: int | None = None,
                 augment: Augment | None = None, channels_last: bool = False):
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.crop, self.augment, self.channels_last = crop, augment, channels_last
        self.mix = augment.mix if augment is not None else None
        self._generator: torch.Generator | None = None
        self._normalization: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def for_training(cls, mean: Sequence[float], std: Sequence[float], augment: Augment,
                     channels_last: bool = False) -> ModelInput:
        """The training crop is the augmentation's (aug.crop.size), when it crops."""
        return cls(mean, std, augment.crop_size, augment, channels_last)

    def input_size(self, image_size: int) -> int:
        """The side of what the model sees for images of `image_size`."""
        return min(self.crop, image_size) if self.crop else image_size

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) → float, (pixel / 255 - mean) / std, in the run's memory format."""
        return self._normalized(images.float().div_(255))

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._normalization:
            self._normalization[x.device] = tuple(torch.tensor(v, device=x.device).view(1, -1, 1, 1)
                                                  for v in (self.mean, self.std))
        mean, std = self._normalization[x.device]
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- training --------------------------------------------------------------------------------------------

    def seed(self, seed: int, device: torch.device) -> None:
        """The random streams of training: the augmentation's parameters (on the batch's device) and
        mixing (on the host)."""
        self._generator = torch.Generator(device).manual_seed(seed + 1)
        if self.mix is not None:
            self.mix.seed(seed + 2)

    def start_epoch(self, epoch: int, max_epochs: int, image_size: int) -> int:
        """The side training batches have in `epoch` (1-based) of `max_epochs`: the input size, or less in
        the first epochs with progressive resizing (aug.progressive)."""
        full = self.input_size(image_size)
        return self.augment.start_epoch(epoch, max_epochs, full) if self.augment is not None else full

    def training_batch(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(model input, loss targets, labels to count accuracy against) for a uint8 batch: augmented,
        normalized, then mixed (mixup / CutMix: the targets are the blended one-hot labels and accuracy
        counts the dominant one); without mixing the targets are the labels."""
        x = images.float().div_(255)
        if self.augment:
            x = self.augment(x, self._generator)
        x = self._normalized(x)
        if self.mix is None:
            return x, labels, labels
        x, targets = self.mix(x, labels, num_classes)
        return x, targets, targets.argmax(1)

    def state(self) -> dict:
        """The random streams as plain data and tensors, for checkpoints."""
        return {"augment": self._generator.get_state(), "mix": self.mix.state() if self.mix else None}

    def set_state(self, state: dict) -> None:
        """The streams of a checkpoint (`augment` None: keep the freshly seeded augmentation stream)."""
        if state.get("augment") is not None:
            self._generator.set_state(state["augment"].cpu())
        if state.get("mix") and self.mix is not None:
            self.mix.set_state(state["mix"])

    # -- evaluation ------------------------------------------------------------------------------------------

    def views(self, images: torch.Tensor, tta: str = "none", crop_size: int | None = None) -> list[torch.Tensor]:
        """The normalized evaluation views of a uint8 batch (see tta_views)."""
        return tta_views(self.normalize(images), tta, crop_size, self.crop)

    def centre(self, images: torch.Tensor) -> torch.Tensor:
        """The single evaluation view: the centre crop of the input size."""
        return center_crop(self.normalize(images), self.crop)
