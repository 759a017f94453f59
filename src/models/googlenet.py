"""GoogLeNet / Inception v1 (Szegedy et al. 2015) with batch norm after every conv, as torchvision
builds it, but with the paper's 5x5 convolutions (torchvision's use 3x3) and a stride-1 stem for small inputs.

Parameters for 7 classes and 1 input channel: 5,979,175 with the CIFAR stem, 5,981,735 with the
ImageNet stem (22.9 MB); with the two auxiliary heads (aux_heads=true, used in training only)
10,326,069 (39.4 MB, ImageNet stem). Report 004's GoogLeNet, which has them too, also measured 39.4 MB
(5 classes, RGB: 10,326,191 parameters here).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from .common import Dropout, check_dropout, kaiming_init, resolve_stem

# The paper's table: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection) of each Inception module.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Four parallel branches, concatenated: 1x1; 1x1 → 3x3; 1x1 → 5x5; 3x3 max-pool → 1x1."""

    def __init__(self, in_channels: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int):
        super().__init__()
        self.branches = nn.ModuleList([
            conv_bn_relu(in_channels, c1, 1),
            nn.Sequential(conv_bn_relu(in_channels, c3_reduce, 1), conv_bn_relu(c3_reduce, c3, 3)),
            nn.Sequential(conv_bn_relu(in_channels, c5_reduce, 1), conv_bn_relu(c5_reduce, c5, 5)),
            nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(in_channels, pool_proj, 1)),
        ])
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class AuxHead(nn.Module):
    """The paper's auxiliary classifier: average pool to 4x4 → 1x1 conv (128) → FC 1024 → dropout 0.7 → FC."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.layers = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), conv_bn_relu(in_channels, 128, 1), nn.Flatten(),
            nn.Linear(128 * 4 * 4, 1024), nn.ReLU(inplace=True), Dropout(dropout), nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GoogLeNet(nn.Module):
    """stem → Inception 3a, 3b → max-pool 3/2 → 4a, 4b, 4c, 4d, 4e → max-pool 3/2 → 5a, 5b → global
    average pool (1024) → dropout → linear.

    The ImageNet stem is the paper's: conv 7x7/2 (64) → max-pool 3/2 → conv 1x1 (64) → conv 3x3 (192)
    → max-pool 3/2, 224 px → 28x28 at 3a. The CIFAR stem (chosen by stem=auto below ~96 px) is conv 3x3
    (64) → conv 1x1 (64) → conv 3x3 (192), stride 1, no max-pool, so a 48x48 face enters 3a at 48x48
    (and 5b at 12x12): the most expensive model of the zoo at 48 px (see `python -m src.models`).

    Auxiliary heads after 4a and 4d (aux_heads=true) only act while training: `forward` then returns
    `(logits, [(aux_weight, aux1_logits), (aux_weight, aux2_logits)])` and the trainer adds each
    weighted auxiliary loss (src/training/trainer.py, `Trainer._loss`). In eval mode, or without them,
    it returns the logits. Their weights stay in the checkpoint, so evaluate with the same config.

    Args:
        num_classes, in_channels: output classes and input channels.
        dropout: head dropout, after the global average pool (0.4 in the paper; torchvision uses 0.2).
        aux_heads: build and train the two auxiliary classifiers.
        aux_weight: each auxiliary loss's weight (0.3 in the paper).
        stem: "cifar" (stride 1, no max-pool), "imagenet" (the paper's) or "auto" (by input_size).
        input_size: the training image size, used by stem="auto" only.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.4, aux_heads: bool = False,
                 aux_weight: float = 0.3, stem: str = "auto", input_size: int | None = None):
        super().__init__()
        if aux_weight < 0:
            raise ConfigError(f"model.aux_weight={aux_weight} is invalid: it must be >= 0")
        if resolve_stem(stem, input_size) == "imagenet":
            self.stem = nn.Sequential(
                conv_bn_relu(in_channels, 64, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1),
                conv_bn_relu(64, 64, 1), conv_bn_relu(64, 192, 3), nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(conv_bn_relu(in_channels, 64, 3), conv_bn_relu(64, 64, 1),
                                      conv_bn_relu(64, 192, 3))
        channels = 192
        modules = {}
        for name, widths in INCEPTION.items():
            modules[name] = Inception(channels, *widths)
            channels = modules[name].out_channels
        self.inception3 = nn.Sequential(modules["3a"], modules["3b"], nn.MaxPool2d(3, stride=2, padding=1))
        self.inception4a = modules["4a"]
        self.inception4bcd = nn.Sequential(modules["4b"], modules["4c"], modules["4d"])
        self.inception4e = nn.Sequential(modules["4e"], nn.MaxPool2d(3, stride=2, padding=1))
        self.inception5 = nn.Sequential(modules["5a"], modules["5b"])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(Dropout(check_dropout("model.dropout", dropout)), nn.Linear(channels, num_classes))
        self.num_features = channels
        self.aux_weight = float(aux_weight)
        self.aux = None
        if aux_heads:
            self.aux = nn.ModuleList([AuxHead(modules["4a"].out_channels, num_classes),
                                      AuxHead(modules["4d"].out_channels, num_classes)])
        kaiming_init(self)

    def _forward(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.inception4a(self.inception3(self.stem(x)))
        aux = [self.aux[0](x)] if with_aux else []
        x = self.inception4bcd(x)
        if with_aux:
            aux.append(self.aux[1](x))
        x = self.inception5(self.inception4e(x))
        return self.pool(x), aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The globally pooled features fed to the classifier (1024 per image)."""
        return self._forward(x, with_aux=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[tuple[float, torch.Tensor]]]:
        if self.aux is None or not self.training:
            return self.head(self.forward_features(x))
        features, aux = self._forward(x, with_aux=True)
        return self.head(features), [(self.aux_weight, logits) for logits in aux]
