"""The model zoo: one file per family; every class takes num_classes and in_channels.

Each `conf/model/NAME.yaml` instantiates standalone:
    hydra.utils.instantiate(OmegaConf.load("conf/model/NAME.yaml"), num_classes=K, in_channels=C)
"""
import torch.nn as nn

from .lenet import LeNet
from .resnet import ResNet


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Size of the weights and buffers in MiB, as saved in a state_dict."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


__all__ = ["LeNet", "ResNet", "count_parameters", "size_mb"]
