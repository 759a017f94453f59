"""One ResNet class; ResNet-18/34/50, ResNeXt (with or without SE), Wide-ResNet and Shake-Shake are
configurations of it (conf/model/*.yaml), in the manner of torchvision's resnet.py.

A network is a stem, stages of residual blocks (blocks.py) and a linear head. Stages after the
first halve the resolution; a block whose shape changes gets a projection shortcut.

Parameters for 7 classes and 1 input channel with the CIFAR stem (`python -m src.models` prints them
with MFLOPs and sizes):

    resnet18             11,171,271      resnext3               610,759
    resnet34             21,279,431      resnext4             1,963,207
    resnet50             23,513,543      resnext5             3,576,007
    wrn16_8              10,959,543      se_resnext3            697,895
    wrn28_10             36,476,983      resnext29_32x4d      4,771,527
    shake_shake26_2x32d   2,922,487

In the papers' CIFAR-10 setting (10 classes, RGB) wrn16_8 has 10,961,370, wrn28_10 36,479,194 and
shake_shake26_2x32d 2,923,162: the 11.0M, 36.5M and 2.9M the papers report.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from .blocks import BLOCKS
from .common import Dropout, check_dropout, kaiming_init, make_stem, resolve_stem


class ResNet(nn.Module):
    """Residual network for any input size.

    Args:
        num_classes, in_channels: output classes and input channels.
        block: "basic" (two 3x3), "bottleneck" (1x1, 3x3 grouped, 1x1), "preact" (Wide-ResNet's
            pre-activation block) or "shake" (Shake-Shake's two mixed branches).
        layers: blocks per stage; widths: the base width of each stage.
        num_stages: how many stages to build (default: all of `layers`); more stages than listed
            repeat the last entry, so one config sweeps depth (`model.num_stages=2,3,4,5`).
        expansion: a block's output channels are `width * expansion` (4 in ResNet-50, 1 in ResNet-18).
        mid_ratio: a bottleneck's inner (3x3) channels are `width * mid_ratio`.
        groups / group_width: the 3x3 conv's groups, either a fixed count (ResNeXt-29 32x4d: 32) or a
            fixed number of channels per group (groups = inner channels / group_width).
        stem_width: the stem's output channels (default: the first stage's width).
        se_reduction: squeeze-and-excitation in every basic/bottleneck block with this reduction (0 = off).
        block_dropout: dropout between the two convs of every pre-activation block (Wide-ResNet).
        stage_dropout: dropout rates after the last blocks of every stage, e.g. [0.2, 0.4] puts 0.2
            after the second-to-last block and 0.4 after the last one (the ResNeXt of report 000).
        dropout: dropout before the classifier.
        stem: "cifar" (3x3, stride 1), "imagenet" (7x7/2 + max-pool) or "auto" (by input_size).
        stem_stride: the CIFAR stem's stride; 2 halves the resolution the stages work at, about 4x less
            compute (the CPU recipes, experiment=fer2013_cpu).
        input_size: the training image size, used by stem="auto" only.
        zero_init_residual: start every residual branch's last BN (or conv) at zero.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, block: str = "basic",
                 layers: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                 num_stages: int | None = None, expansion: int = 1, mid_ratio: float = 1.0, groups: int = 1,
                 group_width: int | None = None, stem_width: int | None = None, se_reduction: int = 0,
                 block_dropout: float = 0.0, stage_dropout: Sequence[float] = (), dropout: float = 0.0,
                 stem: str = "auto", stem_stride: int = 1, input_size: int | None = None,
                 zero_init_residual: bool = False):
        super().__init__()
        if block not in BLOCKS:
            raise ConfigError(f"model.block={block} is invalid: use one of {', '.join(BLOCKS)}")
        block_class = BLOCKS[block]
        options = {"se_reduction": se_reduction, "dropout": check_dropout("model.block_dropout", block_dropout)}
        for name, value in options.items():
            if value and name not in block_class.OPTIONS:
                key = "model.block_dropout" if name == "dropout" else f"model.{name}"
                raise ConfigError(f"{key}={value} is not supported by model.block={block}")
        options = {name: value for name, value in options.items() if name in block_class.OPTIONS}
        if len(layers) != len(widths) or not layers:
            raise ConfigError("model.layers and model.widths must be non-empty and of the same length")
        num_stages = len(layers) if num_stages is None else num_stages
        if num_stages < 1:
            raise ConfigError(f"model.num_stages={num_stages} is invalid: it must be at least 1")
        layers = [*layers, *[layers[-1]] * (num_stages - len(layers))][:num_stages]
        widths = [*widths, *[widths[-1]] * (num_stages - len(widths))][:num_stages]
        stage_dropout = [check_dropout("model.stage_dropout", p) for p in stage_dropout]

        channels = stem_width or widths[0]
        kind = resolve_stem(stem, input_size)
        if stem_stride not in (1, 2) or (stem_stride != 1 and kind != "cifar"):
            raise ConfigError(f"model.stem_stride={stem_stride} is invalid: use 1, or 2 with the CIFAR stem")
        self.stem = make_stem(kind, in_channels, channels, block_class.stem_activation, stem_stride)
        stages = []
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
                blocks.append(block_class(channels, out_channels, stride, mid, g, **options))
                channels = out_channels
                from_end = depth - j  # 1 for the last block
                if from_end <= len(stage_dropout) and stage_dropout[-from_end] > 0:
                    blocks.append(Dropout(stage_dropout[-from_end]))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(*block_class.final_layers(channels), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(Dropout(check_dropout("model.dropout", dropout)),
                                  nn.Linear(channels, num_classes))
        self.num_features = channels

        kaiming_init(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, tuple(BLOCKS.values())):
                    m.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The globally pooled features fed to the classifier."""
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
