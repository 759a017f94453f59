"""AlexNet (Krizhevsky et al. 2012) as in course report 004: five convolutions and three fully
connected layers, single-tower (96 first-layer filters, not torchvision's 64), no local response norm.

Parameters for 7 classes and 1 input channel: 58,277,575 with the CIFAR stem (inputs below ~96 px),
58,286,791 with the ImageNet stem; 93% of them are the two 4096-wide FC layers. In the report's setting
(5 classes, RGB, 224 px) 58,301,829 parameters, 222.4 MB: its table's 222 MB.
"""
from __future__ import annotations

import torch.nn as nn

from .common import ConvThenFC, kaiming_init, resolve_stem


class AlexNet(ConvThenFC):
    """conv 11x11/4 (96) → max-pool 3/2 → conv 5x5 (256) → max-pool 3/2 → conv 3x3 (384) → conv 3x3 (384)
    → conv 3x3 (256) → max-pool 3/2 → average pool to pool_size² → dropout → FC classifier_width → dropout
    → FC classifier_width → dropout (`dropout`) → FC num_classes; ReLU after every conv and hidden FC.

    At 224 px the last max-pool leaves 6x6, so the default pool_size=6 is the original 9216-input FC.
    The CIFAR stem (chosen by stem=auto below ~96 px) replaces the 11x11/4 first conv by a 5x5 stride-1
    conv: an 11x11/4 conv would shrink a 48x48 face to 11x11 before the first pool.

    Args:
        num_classes, in_channels: output classes and input channels.
        classifier_width: width of the two hidden FC layers (4096 in the paper; their 54M weights are
            93% of the network).
        pool_size: side of the average-pooled map fed to the first FC layer.
        classifier_dropout: dropout before each of the two hidden FC layers (0.5 in the paper).
        dropout: head dropout, before the last FC layer, as in every other model of the zoo. It adds to
            the paper's two dropouts, so the default is 0.
        stem: "cifar" (5x5, stride 1), "imagenet" (11x11, stride 4) or "auto" (by input_size).
        input_size: the training image size, used by stem="auto" only.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, classifier_width: int = 4096, pool_size: int = 6,
                 classifier_dropout: float = 0.5, dropout: float = 0.0, stem: str = "auto",
                 input_size: int | None = None):
        super().__init__()
        if resolve_stem(stem, input_size) == "imagenet":
            conv1 = nn.Conv2d(in_channels, 96, 11, stride=4, padding=2)
        else:
            conv1 = nn.Conv2d(in_channels, 96, 5, padding=2)
        self.features = nn.Sequential(
            conv1, nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2),
        )
        self.build_classifier(256, num_classes, pool_size, classifier_width, classifier_dropout, dropout,
                              dropout_first=True)
        kaiming_init(self)
