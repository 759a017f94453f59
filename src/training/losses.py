"""The loss (the `loss:` node of conf/train.yaml): cross-entropy with optional label smoothing and class
weights. Mixup / CutMix targets (class probabilities) go through the same loss."""
from __future__ import annotations

import torch
import torch.nn as nn
from omegaconf import DictConfig

from ..command_rules import check_loss_config
from ..errors import ConfigError


def make_criterion(loss_cfg: DictConfig, class_counts: torch.Tensor) -> nn.Module:
    """Cross-entropy with optional label smoothing and class weights (`balanced`: n / (k * n_c))."""
    check_loss_config(loss_cfg)
    weights = loss_cfg.get("class_weights")
    if weights == "balanced":
        counts = class_counts.double()
        weights = torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp(min=1)), 0).float()
    elif weights is not None:
        if len(weights) != len(class_counts):
            raise ConfigError(f"loss.class_weights={list(weights)} is invalid: it needs one weight per class "
                              f"({len(class_counts)})")
        weights = torch.tensor(list(weights), dtype=torch.float)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=float(loss_cfg.get("label_smoothing") or 0.0))
