"""One ResNet class; ResNet-18/34/50, the course reports' ResNeXt and its variants are configurations.

In the manner of torchvision's resnet.py: a block type (basic: two 3x3 convs; bottleneck: 1x1
reduce, 3x3 grouped, 1x1 expand), blocks per stage, widths per stage, and for bottlenecks the
inner width and the grouping. Stages after the first halve the resolution; a block whose shape
changes gets a 1x1 projection shortcut.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from .common import check_dropout, kaiming_init, make_stem, resolve_stem


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """3x3 conv → BN → ReLU → 3x3 conv → BN, plus the shortcut, → ReLU (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, mid_channels: int, groups: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = _projection(in_channels, out_channels, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce → 3x3 grouped (stride here) → 1x1 expand, each with BN, plus the shortcut, → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, mid_channels: int, groups: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, mid_channels, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = _projection(in_channels, out_channels, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Residual network for any input size.

    Args:
        num_classes, in_channels: output classes and input channels.
        block: "basic" or "bottleneck".
        layers: blocks per stage; widths: the base width of each stage.
        num_stages: how many stages to build (default: all of `layers`); more stages than listed
            repeat the last entry, so one config sweeps depth (`model.num_stages=2,3,4,5`).
        expansion: a block's output channels are `width * expansion` (4 in ResNet-50, 1 in ResNet-18).
        mid_ratio: a bottleneck's inner (3x3) channels are `width * mid_ratio`.
        groups / group_width: the 3x3 conv's groups, either a fixed count per conv or a fixed number
            of channels per group (groups = inner channels / group_width).
        stage_dropout: dropout rates after the last blocks of every stage, e.g. [0.2, 0.4] puts 0.2
            after the second-to-last block and 0.4 after the last one.
        dropout: dropout before the classifier.
        stem: "cifar" (3x3, stride 1), "imagenet" (7x7/2 + max-pool) or "auto" (by input_size).
        input_size: the training image size, used by stem="auto" only.
        zero_init_residual: start every residual branch's last BN at zero (each block = identity).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, block: str = "basic",
                 layers: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                 num_stages: int | None = None, expansion: int = 1, mid_ratio: float = 1.0, groups: int = 1,
                 group_width: int | None = None, stage_dropout: Sequence[float] = (), dropout: float = 0.0,
                 stem: str = "auto", input_size: int | None = None, zero_init_residual: bool = False):
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"model.block={block} is invalid: use {' or '.join(BLOCKS)}")
        if len(layers) != len(widths) or not layers:
            raise ConfigError("model.layers and model.widths must be non-empty and of the same length")
        num_stages = len(layers) if num_stages is None else num_stages
        if num_stages < 1:
            raise ConfigError(f"model.num_stages={num_stages} is invalid: it must be at least 1")
        layers = [*layers, *[layers[-1]] * (num_stages - len(layers))][:num_stages]
        widths = [*widths, *[widths[-1]] * (num_stages - len(widths))][:num_stages]
        stage_dropout = [check_dropout("model.stage_dropout", p) for p in stage_dropout]

        self.stem = make_stem(resolve_stem(stem, input_size), in_channels, widths[0])
        stages, channels = [], widths[0]
        for i, (depth, width) in enumerate(zip(layers, widths)):
            out_channels = width * expansion
            mid = int(width * mid_ratio) if block == "bottleneck" else out_channels
            g = mid // group_width if group_width else groups
            if g < 1 or mid % g:
                raise ConfigError(f"stage {i + 1}: {mid} inner channels cannot be split into groups "
                                  f"(groups={groups}, group_width={group_width})")
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BLOCKS[block](channels, out_channels, stride, mid, g))
                channels = out_channels
                from_end = depth - j  # 1 for the last block
                if from_end <= len(stage_dropout) and stage_dropout[-from_end] > 0:
                    blocks.append(nn.Dropout(stage_dropout[-from_end]))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(check_dropout("model.dropout", dropout)),
                                  nn.Linear(channels, num_classes))
        self.num_features = channels

        kaiming_init(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.residual[-1].weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The globally pooled features fed to the classifier."""
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
