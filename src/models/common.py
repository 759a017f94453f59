"""Pieces every model family shares: stems sized for the input, initialization, argument checks."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError

# Below this input size the ImageNet stem (7x7 stride 2 + max-pool) throws away most of the image:
# a 48x48 face would enter the first stage at 12x12.
SMALL_INPUT_MAX = 96


def resolve_stem(stem: str, input_size: int | None) -> str:
    """`auto` picks the CIFAR stem for small (or unknown) inputs and the ImageNet stem above ~96 px."""
    if stem not in ("auto", "cifar", "imagenet"):
        raise ConfigError(f"model.stem={stem} is invalid: use auto, cifar or imagenet")
    if stem == "auto":
        return "imagenet" if input_size is not None and input_size > SMALL_INPUT_MAX else "cifar"
    return stem


def make_stem(kind: str, in_channels: int, out_channels: int, activation: str = "bn_relu",
              cifar_stride: int = 1) -> nn.Sequential:
    """CIFAR stem: 3x3 conv, stride `cifar_stride` (1), no pooling. ImageNet stem: 7x7 conv stride 2, 3x3
    max-pool stride 2.

    `activation` is what follows the conv: "bn_relu", "bn" or "none" (pre-activation networks).
    """
    if kind == "cifar":
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, stride=cifar_stride, padding=1,
                                             bias=False)]
    else:
        layers = [nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False)]
    if activation in ("bn_relu", "bn"):
        layers.append(nn.BatchNorm2d(out_channels))
    if activation == "bn_relu":
        layers.append(nn.ReLU(inplace=True))
    if kind == "imagenet":
        layers.append(nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*layers)


class Dropout(nn.Dropout):
    """nn.Dropout with a CPU fast path: the keep mask is drawn as 16-bit random integers, four per 64-bit draw.

    On the CPU, `torch.bernoulli_` costs ~16 ns per element; it was 17 % of a training step of the
    report-000 ResNeXt (stage dropout on 64x48x48 activations). Drawing 16 random bits per element
    and comparing them with p * 2**16 is 4x faster (measured: 16 ms instead of 65 ms for 32x64x48x48)
    and keeps each element with probability 1 - p to within 2**-16. Seeded by torch's CPU generator as
    before. Other devices use the fused kernel of nn.Dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        # random_ over the whole signed range: its default range leaves the top bit of each draw at 0.
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, 2**63 - 1)
        lanes = bits.view(torch.int16)[:n]
        # Lay the (i.i.d.) mask out like x, so channels_last activations are not reordered.
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        lanes = lanes.as_strided(x.shape, x.stride()) if channels_last else lanes.view(x.shape)
        keep = lanes >= round(self.p * 65536) - 32768
        return x.mul(keep).mul_(1.0 / (1.0 - self.p))


def check_dropout(name: str, p: float) -> float:
    if not 0 <= p < 1:
        raise ConfigError(f"{name}={p} is invalid: dropout must be in [0, 1)")
    return float(p)


def kaiming_init(model: nn.Module) -> None:
    """He initialization for convolutions (fan-out, ReLU), unit/zero batch-norm affine parameters."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ConvThenFC(nn.Module):
    """AlexNet and VGG: a conv stack (`features`, built by the subclass), an average pool to pool_size²,
    two hidden fully connected layers of classifier_width (`classifier`) and the head (dropout, FC)."""

    def build_classifier(self, channels: int, num_classes: int, pool_size: int, classifier_width: int,
                         classifier_dropout: float, dropout: float, dropout_first: bool) -> None:
        """dropout_first: dropout before each hidden FC (AlexNet, as torchvision) or after its ReLU (VGG)."""
        for key, value in (("classifier_width", classifier_width), ("pool_size", pool_size)):
            if value < 1:
                raise ConfigError(f"model.{key}={value} is invalid: it must be at least 1")
        p = check_dropout("model.classifier_dropout", classifier_dropout)

        def hidden(inputs: int) -> list[nn.Module]:
            fc = [nn.Linear(inputs, classifier_width), nn.ReLU(inplace=True)]
            return [Dropout(p), *fc] if dropout_first else [*fc, Dropout(p)]

        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(pool_size), nn.Flatten())
        self.classifier = nn.Sequential(*hidden(channels * pool_size**2), *hidden(classifier_width))
        self.head = nn.Sequential(Dropout(check_dropout("model.dropout", dropout)),
                                  nn.Linear(classifier_width, num_classes))
        self.num_features = classifier_width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate-layer features: the second hidden FC layer's output (classifier_width per image)."""
        return self.classifier(self.pool(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
