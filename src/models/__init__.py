"""The model zoo: one file per family; every class takes num_classes and in_channels.

Each `conf/model/NAME.yaml` instantiates standalone:
    hydra.utils.instantiate(OmegaConf.load("conf/model/NAME.yaml"), num_classes=K, in_channels=C)
`python -m src.models` prints every config's parameters, MFLOPs and size.

    lenet.py               LeNet-5
    alexnet.py             AlexNet (report 004), small-input variant
    vgg.py                 VGG-11/13/16/19
    googlenet.py           GoogLeNet / Inception v1, optional auxiliary heads
    resnet.py, blocks.py   ResNet-18/34/50, ResNeXt (+SE), Wide-ResNet, Shake-Shake: one class
    torchvision_models.py  torchvision backbones with optional ImageNet weights (transfer learning)
    timm_models.py         any of timm's models (the timm extra), with optional pretrained weights

"Report 000" ... "report 004" in this package are the five course-project reports whose recipes the
`experiment=report00N_*` configs repeat (not in this repository; docs/models.md says what each one is).
"""
import torch.nn as nn

from ..registry import register
from .alexnet import AlexNet
from .googlenet import GoogLeNet
from .lenet import LeNet
from .resnet import ResNet
from .timm_models import TimmNet
from .torchvision_models import TorchvisionNet
from .vgg import VGG

# The runner's own model classes: what a checkpoint's stored model config may name (src/registry.py), by the
# full names the model configs use.
for _cls in (AlexNet, GoogLeNet, LeNet, ResNet, TimmNet, TorchvisionNet, VGG):
    register("model", _cls)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_conv_layers(model: nn.Module) -> int:
    """Convolutions (of any dimension, grouped and 1x1 ones included), the "conv layers" of report 004."""
    return sum(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def size_mb(model: nn.Module) -> float:
    """Size of the weights and buffers in MiB, as saved in a state_dict."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


__all__ = ["VGG", "AlexNet", "GoogLeNet", "LeNet", "ResNet", "TimmNet", "TorchvisionNet",
           "count_conv_layers", "count_parameters", "size_mb"]
