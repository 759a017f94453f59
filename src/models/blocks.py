"""Residual blocks for `ResNet` (resnet.py): post-activation basic and bottleneck blocks (ResNet,
ResNeXt, optionally with squeeze-and-excitation), pre-activation blocks (Wide-ResNet) and Shake-Shake.

Every block takes (in_channels, out_channels, stride, mid_channels, groups) plus the options it
lists in OPTIONS, and declares what the network around it needs: the layers after the stem conv
(`stem_activation`) and before global pooling (`final_layers`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import Dropout


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """1x1 conv + BN shortcut where the shape changes, identity elsewhere."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel weights from globally pooled features."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class _PostActivationBlock(nn.Module):
    """Shared by BasicBlock and Bottleneck: residual (+ SE) + shortcut, then ReLU."""
    OPTIONS = ("se_reduction",)
    stem_activation = "bn_relu"

    def __init__(self, residual: list[nn.Module], out_channels: int, shortcut: nn.Module, se_reduction: int):
        super().__init__()
        self.residual = nn.Sequential(*residual)
        self.se = SqueezeExcite(out_channels, se_reduction) if se_reduction else nn.Identity()
        self.shortcut = shortcut
        self.act = nn.ReLU(inplace=True)

    @staticmethod
    def final_layers(channels: int) -> list[nn.Module]:
        return []

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.residual[-1].weight)  # the branch's last BN: the block starts as identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.residual(x)) + self.shortcut(x))


class BasicBlock(_PostActivationBlock):
    """3x3 conv → BN → ReLU → 3x3 conv → BN (ResNet-18/34)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, mid_channels: int, groups: int,
                 se_reduction: int = 0):
        super().__init__([
            nn.Conv2d(in_channels, mid_channels, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        ], out_channels, _projection(in_channels, out_channels, stride), se_reduction)


class Bottleneck(_PostActivationBlock):
    """1x1 reduce → 3x3 grouped (stride here) → 1x1 expand, each with BN (ResNet-50, ResNeXt)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, mid_channels: int, groups: int,
                 se_reduction: int = 0):
        super().__init__([
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, mid_channels, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
        ], out_channels, _projection(in_channels, out_channels, stride), se_reduction)


class PreActBlock(nn.Module):
    """Wide-ResNet's pre-activation block (Zagoruyko & Komodakis 2016): BN → ReLU → 3x3 conv → BN →
    ReLU → dropout → 3x3 conv; where the shape changes, the shortcut is a 1x1 conv of the activated input."""
    OPTIONS = ("dropout",)
    stem_activation = "none"  # every block starts with BN → ReLU

    def __init__(self, in_channels: int, out_channels: int, stride: int, mid_channels: int, groups: int,
                 dropout: float = 0.0):
        super().__init__()
        self.preact = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True), Dropout(dropout),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False))
        self.projection = (None if stride == 1 and in_channels == out_channels
                           else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))

    @staticmethod
    def final_layers(channels: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.residual[-1].weight)  # no BN ends the branch: zero its last conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.preact(x)
        shortcut = x if self.projection is None else self.projection(activated)
        return self.residual(activated) + shortcut


class _ShakeMix(torch.autograd.Function):
    """alpha * a + (1 - alpha) * b forward; the gradient is split by an independent beta backward."""

    @staticmethod
    def forward(ctx, a, b, alpha, beta):
        ctx.save_for_backward(beta)
        return alpha * a + (1 - alpha) * b

    @staticmethod
    def backward(ctx, grad):
        (beta,) = ctx.saved_tensors
        return beta * grad, (1 - beta) * grad, None, None


class _ShakeShortcut(nn.Module):
    """Shake-Shake's downsampling shortcut: ReLU, then two 1x1 convs on stride-2 samples offset by one
    pixel, concatenated, then BN (Gastaldi 2017)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv_a = nn.Conv2d(in_channels, out_channels // 2, 1, bias=False)
        self.conv_b = nn.Conv2d(in_channels, out_channels - out_channels // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        a = x[:, :, ::self.stride, ::self.stride]
        b = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))[:, :, ::self.stride, ::self.stride]
        return self.bn(torch.cat([self.conv_a(a), self.conv_b(b)], dim=1))


class ShakeBlock(nn.Module):
    """Two residual branches (ReLU → 3x3 conv → BN → ReLU → 3x3 conv → BN) mixed per sample by a random
    alpha in the forward pass and an independent beta in the backward pass while training, and by
    0.5/0.5 at evaluation (Shake-Shake-Image, Gastaldi 2017)."""
    OPTIONS = ()
    stem_activation = "bn"  # the branches start with ReLU

    def __init__(self, in_channels: int, out_channels: int, stride: int, mid_channels: int, groups: int):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, mid_channels, 3, stride=stride, padding=1, groups=groups, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        ) for _ in range(2))
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels
                         else _ShakeShortcut(in_channels, out_channels, stride))

    @staticmethod
    def final_layers(channels: int) -> list[nn.Module]:
        return [nn.ReLU(inplace=True)]

    def zero_init_last(self) -> None:
        for branch in self.branches:
            nn.init.zeros_(branch[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.branches[0](x), self.branches[1](x)
        if self.training:
            shape = (x.shape[0], 1, 1, 1)
            alpha = torch.rand(shape, device=x.device, dtype=a.dtype)
            beta = torch.rand(shape, device=x.device, dtype=a.dtype)
            mixed = _ShakeMix.apply(a, b, alpha, beta)
        else:
            mixed = 0.5 * (a + b)
        return self.shortcut(x) + mixed


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "preact": PreActBlock, "shake": ShakeBlock}
