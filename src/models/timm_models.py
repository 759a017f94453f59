"""timm's backbones (ConvNeXt, EfficientNet, MobileNetV3, RegNet, ViT, ...): `model=timm model.name=<any timm
model>`, or one of the named configs (conf/model/timm_*.yaml). Needs the `timm` extra
(`pip install 'fer-runner[timm]'`).

`TimmNet` builds `timm.create_model(name, num_classes=..., in_chans=...)`: timm adapts the first conv to
`in_channels` itself (for gray input with pretrained weights it sums the RGB kernels), and replaces the head.
Weights: `pretrained=true` reads them from Hugging Face's hub cache ($HF_HOME, by default ~/.cache/huggingface),
downloading them there when missing; `pretrained_file=PATH` reads a local file instead (no network).
Offline without the file in the cache is one sentence saying so.

Small inputs: timm's models were designed for 224 px. Convolutional ones take any size (global pooling), but
most reduce the resolution 32x overall (ConvNeXt's stem alone 4x): at 48 px their last stage sees 2x2 or 1x1.
Vision transformers need `model.img_size=48 model.patch_size=4` (or another patch size that divides the
input), and `model.dynamic_img_size=true` to take other sizes too (conf/model/timm_vit_tiny.yaml).
`python -m src.models timm_convnext_atto ...` prints parameters and MFLOPs at 48 px.
"""
from __future__ import annotations

import difflib

import torch
import torch.nn as nn

from ..errors import ConfigError, UserError
from .common import check_dropout


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("model=timm needs the timm package: pip install 'fer-runner[timm]' (or pip install timm)"
                          ) from None
    return timm


class TimmNet(nn.Module):
    """A timm model for `num_classes` and `in_channels`.

    Args:
        name: a timm model name (`timm.list_models()`), e.g. convnext_atto, efficientnet_b0,
            mobilenetv3_small_100, regnety_002, vit_tiny_patch16_224.
        pretrained: load the model's default pretrained weights (hub cache, downloaded when missing).
        pretrained_file: load pretrained weights from this local file instead (implies pretrained).
        dropout: dropout before the classifier (timm's drop_rate).
        img_size, patch_size: a vision transformer's input and patch size (passed only when set).
        dynamic_img_size: a vision transformer takes any input size (its position embedding interpolated
            from the img_size grid), as the model contract wants: 32 px CIFAR, 48 px faces, 224 px photos.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, *, name: str, pretrained: bool = False,
                 pretrained_file: str | None = None, dropout: float = 0.0, img_size: int | None = None,
                 patch_size: int | None = None, dynamic_img_size: bool = False):
        super().__init__()
        timm = _timm()
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            raise ConfigError(f"model.name={name} is not a timm model" +
                              (f" (did you mean {', '.join(close)}?)" if close else "; timm.list_models() lists them"))
        options = {key: value for key, value in (("img_size", img_size), ("patch_size", patch_size),
                                                 ("dynamic_img_size", dynamic_img_size or None)) if value is not None}
        if pretrained_file is not None:
            options["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
        try:
            self.net = timm.create_model(name, pretrained=pretrained or pretrained_file is not None,
                                         num_classes=num_classes, in_chans=in_channels,
                                         drop_rate=check_dropout("dropout", dropout), **options)
        except TypeError as exc:  # a keyword the model does not take
            raise ConfigError(f"timm's {name} does not take {', '.join(f'model.{k}' for k in options)}: {exc}"
                              ) from None
        except (OSError, RuntimeError) as exc:
            if pretrained_file is not None:
                raise UserError(f"model.pretrained_file={pretrained_file} cannot be loaded into {name}: "
                                f"{str(exc).splitlines()[0]}") from None
            if pretrained:
                raise UserError(f"the pretrained weights of {name} are not in the Hugging Face cache and cannot be "
                                f"downloaded ({type(exc).__name__}); download them where there is a network "
                                "(they go to $HF_HOME) or give model.pretrained_file=PATH") from None
            raise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
