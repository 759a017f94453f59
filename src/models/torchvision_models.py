"""torchvision backbones, optionally with ImageNet weights, for transfer learning on small images.

Course report 003 (the course reports: src/models/__init__.py) fine-tunes torchvision's ResNet/ResNeXt/
Wide-ResNet/DenseNet with ImageNet weights on CIFAR-100. `TorchvisionNet` wraps `torchvision.models.get_model`
and adapts the network to this runner:

- the first conv takes `in_channels`: for gray input with pretrained weights its kernel is the sum of the
  RGB kernels, so a gray image gets the response the RGB image with three equal channels would get;
- the CIFAR stem (stem="cifar", or "auto" below ~96 px) replaces the 7x7 stride-2 conv by a 3x3
  stride-1 conv and drops the first max-pool, so a 48x48 face enters the first stage at 48x48, not
  12x12. With pretrained weights the 3x3 kernel is the centre of the pretrained 7x7 one: it keeps each
  filter's colour mix and centre response, which the pretrained batch norm and first stage were trained
  on, where a random kernel would feed them unfamiliar features;
- the classifier (`fc` of the ResNets, `classifier` of DenseNet) becomes Dropout + Linear(num_classes).

Pretrained weights come through torchvision's own mechanism: the architecture's DEFAULT weights, read
from `torch.hub.get_dir()/checkpoints/` ($TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/
checkpoints) and downloaded there when missing. Such weights were trained on ImageNet images normalized
with ImageNet's mean and std, at 224 px.

Parameters for 7 classes, 1 input channel, CIFAR stem: resnet18 11.17M, resnet50 23.51M,
resnext50_32x4d 22.99M, wide_resnet50_2 66.84M, densenet121 6.95M.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, UserError
from .common import Dropout, check_dropout, resolve_stem

if TYPE_CHECKING:
    import torchvision

# torchvision is imported where it is used: importing it costs about 1.5 s (it loads torch._dynamo),
# which every run would otherwise pay before its first training step.

# Where each family keeps its first conv, first max-pool and classifier.
RESNET_LAYOUT = {"conv": "conv1", "pool": "maxpool", "head": "fc"}
DENSENET_LAYOUT = {"conv": "features.conv0", "pool": "features.pool0", "head": "classifier"}
ARCHS = {"resnet18": RESNET_LAYOUT, "resnet34": RESNET_LAYOUT, "resnet50": RESNET_LAYOUT,
         "resnext50_32x4d": RESNET_LAYOUT, "wide_resnet50_2": RESNET_LAYOUT, "densenet121": DENSENET_LAYOUT}


def weights_path(weights: torchvision.models.WeightsEnum) -> Path:
    """The file torchvision reads `weights` from (and downloads it to)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int, cifar: bool, pretrained: bool) -> nn.Conv2d:
    """The first conv for `in_channels` and the stem, initialized from `conv` where that is meaningful."""
    if in_channels == conv.in_channels and not cifar:
        return conv
    kernel, stride, padding = (3, 1, 1) if cifar else (conv.kernel_size, conv.stride, conv.padding)
    new = nn.Conv2d(in_channels, conv.out_channels, kernel, stride=stride, padding=padding, bias=False)
    if pretrained and in_channels in (1, conv.in_channels):
        weight = conv.weight.detach()
        if cifar:
            centre = (weight.shape[-1] - 3) // 2
            weight = weight[..., centre:centre + 3, centre:centre + 3]
        if in_channels == 1:
            weight = weight.sum(dim=1, keepdim=True)
        with torch.no_grad():
            new.weight.copy_(weight)
    else:  # torchvision's initialization for convolutions
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new


class TorchvisionNet(nn.Module):
    """A torchvision classification network adapted to `in_channels`, small inputs and `num_classes`.

    Args:
        num_classes, in_channels: output classes and input channels.
        arch: resnet18, resnet34, resnet50, resnext50_32x4d, wide_resnet50_2 or densenet121.
        pretrained: start from torchvision's DEFAULT ImageNet weights for `arch` (false: random init,
            nothing is read or downloaded). Loading them needs the weights file or the network.
            With in_channels other than 1 and 3 the first conv starts random either way.
        dropout: dropout before the classifier.
        stem: "cifar" (3x3 stride 1, no max-pool), "imagenet" (torchvision's 7x7/2 + max-pool) or
            "auto" (by input_size).
        input_size: the training image size, used by stem="auto" only.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, arch: str = "resnet18", pretrained: bool = False,
                 dropout: float = 0.0, stem: str = "auto", input_size: int | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"model.arch={arch} is invalid: use one of {', '.join(ARCHS)}")
        dropout = check_dropout("model.dropout", dropout)
        cifar = resolve_stem(stem, input_size) == "cifar"
        self.arch, self.layout = arch, ARCHS[arch]

        self.net = self._build(arch, pretrained)
        conv = self.net.get_submodule(self.layout["conv"])
        _set_module(self.net, self.layout["conv"], _adapt_first_conv(conv, in_channels, cifar, pretrained))
        if cifar:
            _set_module(self.net, self.layout["pool"], nn.Identity())
        self.num_features = self.net.get_submodule(self.layout["head"]).in_features
        _set_module(self.net, self.layout["head"],
                    nn.Sequential(Dropout(dropout), nn.Linear(self.num_features, num_classes)))

    @staticmethod
    def _build(arch: str, pretrained: bool) -> nn.Module:
        import torchvision

        if not pretrained:
            return torchvision.models.get_model(arch, weights=None)
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            return torchvision.models.get_model(arch, weights=weights)
        except (URLError, ConnectionError, TimeoutError) as e:  # the download failed: offline or unreachable
            raise UserError(
                f"model.pretrained=true: could not download the ImageNet weights {weights} for {arch} from "
                f"{weights.url} ({getattr(e, 'reason', e)}); to use them offline, put that file at "
                f"{weights_path(weights)}") from e

    @property
    def head(self) -> nn.Module:
        """The classifier: Dropout + Linear (torchvision's `fc` or `classifier`)."""
        return self.net.get_submodule(self.layout["head"])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The globally pooled features fed to the classifier (torchvision's forward up to the head)."""
        net = self.net
        if self.layout is DENSENET_LAYOUT:
            return torch.flatten(F.adaptive_avg_pool2d(F.relu(net.features(x)), 1), 1)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        return torch.flatten(net.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
