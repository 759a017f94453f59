"""Batched data augmentation on the device, with independent random parameters for every sample.

Each op takes a float batch (B, C, H, W) in [0, 1] and a torch.Generator on the batch's device,
draws B sets of parameters at once and transforms the whole batch with a handful of tensor ops.
(torchvision's v2 transforms applied to a batch draw one set of parameters for all of it.)

All geometric ops that need resampling (random resized crop, rotation/scale/translation) are
composed into one affine matrix per sample and applied with a single grid_sample; pad-and-crop and
flips are exact pixel moves done by gathering.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..config import check_arguments
from ..errors import ConfigError
from ..value_checks import check_value, show
from .mixing import BatchMix


def _uniform(low: float, high: float, n: int, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _applied(p: float, n: int, g: torch.Generator, device) -> torch.Tensor:
    """A (n,) bool mask: which samples the op applies to."""
    return torch.rand(n, generator=g, device=device) < p


# The ops run on the batch's device with no host synchronisation: no boolean-mask indexing (its output
# size is data-dependent, so the host waits for the device), no host-made tensors per batch, no .item().

def _identity_where_not(applied: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The (B, 3, 3) sampling matrices `m`, with the identity for the samples the op does not apply to."""
    return torch.where(applied.view(-1, 1, 1), m, torch.eye(3, device=m.device, dtype=m.dtype))


# RGB <-> YIQ (the hue rotation's colour space), as constants moved to each device once.
_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ_MATRICES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _yiq_matrices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device not in _YIQ_MATRICES:
        _YIQ_MATRICES[device] = (_TO_YIQ.float().to(device), torch.linalg.inv(_TO_YIQ).float().to(device))
    return _YIQ_MATRICES[device]


class PadCrop:
    """Pads by `padding` pixels and crops `size` x `size` (default: the input's size) at a random offset
    per sample. `size` below the image size is the FER2013 papers' training crop (random 44 of 48); the
    model then sees `size` inputs, and evaluation crops the centre (or ten crops with tta=tencrop) to match.
    Where the op is not applied (p < 1) the crop is the centre one."""

    def __init__(self, padding: int = 4, padding_mode: str = "reflect", p: float = 1.0, size: int | None = None):
        if padding_mode not in ("reflect", "constant", "replicate"):
            raise ConfigError(f"aug.crop.padding_mode={padding_mode} is invalid: use reflect, constant or replicate")
        if padding < 0 or (size is not None and size < 1):
            raise ConfigError(f"aug.crop (padding={padding}, size={size}) is invalid: padding >= 0 and size >= 1")
        self.padding, self.padding_mode, self.p, self.size = int(padding), padding_mode, p, size

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        pad = self.padding
        size = self.size or min(h, w)
        if size > min(h, w) + 2 * pad:
            raise ConfigError(f"aug.crop.size={size} is larger than the {h}x{w} images padded by {pad}")
        padded = F.pad(x, (pad, pad, pad, pad), mode=self.padding_mode) if pad else x
        # Offsets in [0, free]; the centre offset is used where the op is not applied.
        free_y, free_x = h + 2 * pad - size, w + 2 * pad - size
        dy = torch.randint(0, free_y + 1, (b,), generator=g, device=x.device)
        dx = torch.randint(0, free_x + 1, (b,), generator=g, device=x.device)
        keep = ~_applied(self.p, b, g, x.device)
        dy, dx = dy.masked_fill(keep, free_y // 2), dx.masked_fill(keep, free_x // 2)
        rows = (dy[:, None] + torch.arange(size, device=x.device))[:, :, None]  # (B, S, 1)
        cols = (dx[:, None] + torch.arange(size, device=x.device))[:, None, :]  # (B, 1, S)
        batch = torch.arange(b, device=x.device)[:, None, None]
        return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # gathered as (B, S, S, C)


class Flip:
    """Horizontal flip with probability p, per sample."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flip = _applied(self.p, x.shape[0], g, x.device)
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


class ResizedCrop:
    """Random resized crop: a box of `scale` of the area and `ratio` aspect, resized to the full size."""

    def __init__(self, scale: Sequence[float] = (0.8, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 p: float = 1.0):
        self.scale, self.ratio, self.p = tuple(scale), tuple(ratio), p

    def matrix(self, b: int, g: torch.Generator, device) -> torch.Tensor:
        area = _uniform(*self.scale, b, g, device)
        aspect = torch.exp(_uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), b, g, device))
        w = torch.sqrt(area * aspect).clamp(max=1.0)  # box size as a fraction of the side
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        cx = (1 - w) * _uniform(-1, 1, b, g, device)  # box centre in [-1, 1] coordinates
        cy = (1 - h) * _uniform(-1, 1, b, g, device)
        zero, one = torch.zeros_like(w), torch.ones_like(w)
        m = torch.stack([w, zero, cx, zero, h, cy, zero, zero, one], 1).view(b, 3, 3)
        return _identity_where_not(_applied(self.p, b, g, device), m)


class Affine:
    """Rotation by up to ±`degrees`, translation by up to ±`translate` of the size, zoom in `scale`."""

    def __init__(self, degrees: float = 0.0, translate: float = 0.0, scale: Sequence[float] = (1.0, 1.0),
                 p: float = 1.0):
        self.degrees, self.translate, self.scale, self.p = degrees, translate, tuple(scale), p

    def matrix(self, b: int, g: torch.Generator, device) -> torch.Tensor:
        angle = torch.deg2rad(_uniform(-self.degrees, self.degrees, b, g, device))
        zoom = _uniform(*self.scale, b, g, device)
        shift = 2 * self.translate * (2 * torch.rand(b, 2, generator=g, device=device) - 1)
        applied = _applied(self.p, b, g, device)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        m = torch.stack([cos, -sin, shift[:, 0], sin, cos, shift[:, 1], zero, zero, one], 1).view(b, 3, 3)
        return _identity_where_not(applied, m)


class ColorJitter:
    """Per-sample brightness, contrast, saturation and hue factors (saturation and hue need RGB)."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0, p: float = 1.0):
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p

    @staticmethod
    def _gray(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x
        return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])

    def _factor(self, amount: float, b: int, g, device, applied) -> torch.Tensor:
        f = _uniform(1 - amount, 1 + amount, b, g, device).clamp(min=0)
        return torch.where(applied, f, torch.ones_like(f)).view(b, 1, 1, 1)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c = x.shape[:2]
        applied = _applied(self.p, b, g, x.device)
        if self.brightness:
            x = x * self._factor(self.brightness, b, g, x.device, applied)
        if self.contrast:
            mean = self._gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * self._factor(self.contrast, b, g, x.device, applied) + mean
        if c == 3 and self.saturation:
            gray = self._gray(x)
            x = gray + (x - gray) * self._factor(self.saturation, b, g, x.device, applied)
        if c == 3 and self.hue:
            x = self._rotate_hue(x, _uniform(-self.hue, self.hue, b, g, x.device) * applied)
        return x.clamp(0, 1)

    @staticmethod
    def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        """Rotates the chroma plane of YIQ space by `turns` of a full circle."""
        to_yiq, from_yiq = _yiq_matrices(x.device)
        theta = 2 * math.pi * turns
        cos, sin = torch.cos(theta), torch.sin(theta)
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).view(-1, 3, 3)
        full = from_yiq @ rot @ to_yiq  # (B, 3, 3)
        return torch.einsum("bij,bjhw->bihw", full, x)


class Erase:
    """Random erasing (Zhong et al. 2017): a box of `scale` of the area and `ratio` aspect is filled
    with uniform noise (value="random") or a constant."""

    def __init__(self, p: float = 0.5, scale: Sequence[float] = (0.02, 0.33),
                 ratio: Sequence[float] = (0.3, 3.3), value: float | str = "random"):
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device
        area = _uniform(*self.scale, b, g, dev) * h * w
        aspect = torch.exp(_uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), b, g, dev))
        eh = torch.sqrt(area * aspect).round().clamp(1, h)
        ew = torch.sqrt(area / aspect).round().clamp(1, w)
        top = (torch.rand(b, generator=g, device=dev) * (h - eh + 1)).floor()
        left = (torch.rand(b, generator=g, device=dev) * (w - ew + 1)).floor()
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        box = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
               & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)))
        box &= _applied(self.p, b, g, dev).view(b, 1, 1)
        fill = torch.rand(x.shape, generator=g, device=dev) if self.value == "random" else float(self.value)
        return torch.where(box[:, None], fill, x)


class ProgressiveResize:
    """Trains on smaller images first (progressive resizing): in epoch 1 the augmented batch is scaled down
    to `start` x `start` pixels, the side grows linearly over the epochs until the one at `until` (a
    fraction of the epochs), which and every later epoch train at the full size. Convolutions cost about
    the square of the side (a 32 px batch about half of a 44 px one), and evaluation always sees the full
    size, so the last epochs must train at it (until < 1). The side depends on the epoch only: a resumed
    run trains at the same sides."""

    def __init__(self, start: int = 32, until: float = 0.5):
        if start < 8:
            raise ConfigError(f"aug.progressive.start={start} is invalid: it must be at least 8 (pixels)")
        if not 0 < until < 1:
            raise ConfigError(f"aug.progressive.until={until} is invalid: it must be in (0, 1), the fraction "
                              "of the epochs after which training sees the full size")
        self.start, self.until = start, until

    def side(self, full: int, epoch: int, max_epochs: int) -> int:
        """The training side in `epoch` (1-based) of `max_epochs`, for images whose full side is `full`;
        even, so that stride-2 layers halve it exactly."""
        reach = max(1, round(self.until * max_epochs))  # the first epoch at the full size
        if epoch >= reach or self.start >= full:
            return full
        grown = self.start + (full - self.start) * (epoch - 1) / max(reach - 1, 1)
        return min(full, 2 * round(grown / 2))


def _make(op: type, cfg: Mapping, key: str):
    """An op from its config mapping, every setting checked against the op's constructor first (types)
    and its probability p in [0, 1]."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{key}={show(cfg)} is invalid: it must be a mapping of the op's settings, or null (off)")
    check_arguments(op, cfg, key)
    for name, value in cfg.items():
        if name in _OP_RANGES:
            rule, rule_text = _OP_RANGES[name]
            check_value(f"{key}.{name}", _plain_list(value), Any, rule, rule_text)
    return op(**cfg)


def _plain_list(value):
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def _interval(low_limit: float, high_limit: float):
    """[a, b] with low_limit <= a <= b <= high_limit: the range a random factor is drawn from."""
    return lambda v: len(v) == 2 and low_limit <= v[0] <= v[1] <= high_limit


# The settings of the ops that have a range (one meaning wherever they occur).
_OP_RANGES = {
    "p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "scale": (_interval(1e-6, 10), "two numbers [low, high] with 0 < low <= high"),
    "ratio": (_interval(1e-6, 1e6), "two numbers [low, high] with 0 < low <= high"),
    "degrees": (lambda v: 0 <= v <= 360, "in [0, 360]"),
    "translate": (lambda v: 0 <= v <= 1, "in [0, 1] (a fraction of the size)"),
    "brightness": (lambda v: v >= 0, ">= 0"), "contrast": (lambda v: v >= 0, ">= 0"),
    "saturation": (lambda v: v >= 0, ">= 0"), "hue": (lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
    "value": (lambda v: v == "random" or 0 <= v <= 1, "random or a number in [0, 1]"),
}


class Augment:
    """The `aug=` config group: each op is configured by a mapping of its parameters, or null for off.

    Order: resampling warp (resized_crop, then affine) → pad-and-crop → flip → colour → erasing → the
    epoch's progressive resize (`progressive`, ProgressiveResize; the trainer tells the epoch through
    `start_epoch`). `mix` (mixup / CutMix, src/data/mixing.py) is applied after these and the
    normalization, since it also changes the targets (ModelInput.training_batch, src/data/inputs.py).
    """

    def __init__(self, resized_crop: Mapping | None = None, affine: Mapping | None = None,
                 crop: Mapping | None = None, flip: Mapping | None = None, jitter: Mapping | None = None,
                 erase: Mapping | None = None, mix: Mapping | None = None, progressive: Mapping | None = None):
        self.progressive = _make(ProgressiveResize, progressive, "aug.progressive") if progressive is not None else None
        self.side: int | None = None  # this epoch's training side (progressive); None: the full size
        mixing = _make(BatchMix, mix, "aug.mix") if mix is not None else None
        self.mix = mixing if mixing is not None and mixing.enabled else None
        self.warps = [_make(op, cfg, f"aug.{key}") for op, cfg, key in
                      ((ResizedCrop, resized_crop, "resized_crop"), (Affine, affine, "affine")) if cfg is not None]
        self.ops = [_make(op, cfg, f"aug.{key}") for op, cfg, key in
                    ((PadCrop, crop, "crop"), (Flip, flip, "flip"), (ColorJitter, jitter, "jitter"),
                     (Erase, erase, "erase")) if cfg is not None]

    def __bool__(self) -> bool:
        return bool(self.warps or self.ops or self.progressive)

    def start_epoch(self, epoch: int, max_epochs: int, full_side: int) -> int:
        """Sets and returns the training side of `epoch` (1-based) for inputs of `full_side` pixels: smaller
        in the first epochs with aug.progressive, else the full side."""
        self.side = self.progressive.side(full_side, epoch, max_epochs) if self.progressive else full_side
        return self.side

    @property
    def crop_size(self) -> int | None:
        """aug.crop.size: the side of the training crop, or None (the crop keeps the image's size).
        ModelInput (src/data/inputs.py) makes evaluation see inputs of the same size."""
        crop = next((op for op in self.ops if isinstance(op, PadCrop)), None)
        return crop.size if crop is not None else None

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.warps:
            b = x.shape[0]
            # Sampling matrices compose in op order: output coords -> ... -> input coords.
            m = self.warps[0].matrix(b, generator, x.device)
            for op in self.warps[1:]:
                m = m @ op.matrix(b, generator, x.device)
            grid = F.affine_grid(m[:, :2], list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        for op in self.ops:
            x = op(x, generator)
        if self.side is not None and self.side < x.shape[-1]:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False)
        return x
