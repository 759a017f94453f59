"""VGG (Simonyan & Zisserman 2015): stacks of 3x3 convolutions between 2x2 max-pools, then three FC layers.
One class; VGG-11/13/16/19 (the paper's configurations A/B/D/E) are its `depth`.

Parameters for 7 classes and 1 input channel, batch norm, default 512-wide head: vgg11 9,750,983
(37.2 MB); vgg13 9,935,687; vgg16 15,246,663; vgg19 20,557,639. With the original head (pool_size=7,
classifier_width=4096) vgg11 has 128,796,615 (491.3 MB); without batch norm, for 5 classes and RGB,
128,786,821: the 491 MB of report 004's table.
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError
from .common import ConvThenFC, kaiming_init

# Output channels of each 3x3 conv; "M" is a 2x2 max-pool.
LAYERS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # A
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # B
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # D
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],  # E
}


class VGG(ConvThenFC):
    """The conv stack of LAYERS[depth] → average pool to pool_size² → FC classifier_width → dropout
    → FC classifier_width → dropout → dropout (`dropout`) → FC num_classes; ReLU after every conv and
    hidden FC, as in the paper and torchvision.

    The head is smaller than the paper's by default. The original flattens a 7x7x512 map into two
    4096-wide layers: 119.5M of VGG-11's 128.8M weights (491 MB). At 48x48 the five max-pools already
    leave a 1x1 map, so averaging to 1x1 and a 512-wide head lose nothing and keep VGG-11 at 37 MB.
    pool_size=7, classifier_width=4096 restore the original (torchvision's vgg*_bn with bias-free
    convs before batch norm, or exactly torchvision's vgg* with batch_norm=false).

    No stem option: every conv is 3x3 with stride 1 and the five max-pools halve any input of at
    least 32 px (32 → 1x1, 48 → 1x1, 224 → 7x7); there is no strided first layer to adapt.

    Args:
        num_classes, in_channels: output classes and input channels.
        depth: 11, 13, 16 or 19 (configurations A, B, D, E).
        batch_norm: batch norm after every conv (VGG-*_bn; the paper has none).
        pool_size: side of the average-pooled map fed to the first FC layer.
        classifier_width: width of the two hidden FC layers.
        classifier_dropout: dropout after each of the two hidden FC layers (0.5 in the paper).
        dropout: head dropout, before the last FC layer, as in every other model of the zoo; it adds to
            the second classifier dropout, so the default is 0.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 11, batch_norm: bool = True,
                 pool_size: int = 1, classifier_width: int = 512, classifier_dropout: float = 0.5,
                 dropout: float = 0.0):
        super().__init__()
        if depth not in LAYERS:
            raise ConfigError(f"model.depth={depth} is invalid: use one of {', '.join(map(str, LAYERS))}")
        layers: list[nn.Module] = []
        channels = in_channels
        for v in LAYERS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(channels, v, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            channels = v
        self.features = nn.Sequential(*layers)
        self.build_classifier(channels, num_classes, pool_size, classifier_width, classifier_dropout, dropout,
                              dropout_first=False)
        kaiming_init(self)
