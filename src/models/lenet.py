"""LeNet-5 (LeCun et al. 1998), with ReLU and max-pooling as it is usually built today."""
from __future__ import annotations

import torch
import torch.nn as nn

from .common import Dropout, check_dropout


class LeNet(nn.Module):
    """conv 5x5 (6) → pool → conv 5x5 (16) → pool → FC 120 → FC 84 → FC num_classes.

    At 32x32 the second pool leaves the classic 16x5x5 map. Larger inputs are average-pooled to
    5x5 there, so one set of weights (61.7k parameters for 10 classes) serves any input size >= 16.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5), nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(Dropout(check_dropout("model.dropout", dropout)), nn.Linear(84, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate-layer features (84 per image)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
