"""torchvision backbones: the tv_* configs, first-conv and stem adaptation, pretrained weights offline.

Nothing here touches the network or the real torch hub cache: TORCH_HOME points into tmp_path and the
download function raises as it would offline.
"""
from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
import torch.nn as nn
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.errors import ConfigError, UserError
from src.models.torchvision_models import TorchvisionNet, weights_path
from tests.helpers import CONF_DIR

TV_MODELS = ["tv_resnet18", "tv_resnet50", "tv_resnext50_32x4d", "tv_wide_resnet50_2", "tv_densenet121"]
FIRST_CONV = {"resnet18": "conv1", "densenet121": "features.conv0"}
HEAD = {"resnet18": "fc", "densenet121": "classifier"}


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub under tmp_path, and downloads that fail as they do without a network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, *args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def weights_file(arch: str):
    return weights_path(torchvision.models.get_model_weights(arch).DEFAULT)


@pytest.mark.parametrize("name", TV_MODELS)
def test_defaults_are_not_pretrained_and_features_match_torchvision(name):
    """Shapes and gradients of every config are checked in test_models.py; here what is tv-specific."""
    cfg = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    assert cfg.pretrained is False  # the FER protocol forbids pretrained weights
    model = instantiate(cfg, num_classes=5, in_channels=1).eval()
    assert isinstance(model, TorchvisionNet)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features)
        assert torch.allclose(model(x), model.net(x), atol=1e-5)  # forward_features matches torchvision's forward


def test_tv_configs_differ_only_in_arch():
    base = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "tv_resnet18.yaml"))
    for name in TV_MODELS[1:]:
        cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))
        assert cfg.pop("arch") == name.removeprefix("tv_")
        assert cfg == {k: v for k, v in base.items() if k != "arch"}


def test_pretrained_offline_without_file_names_the_path():
    expected = weights_file("resnet18")
    with pytest.raises(UserError) as info:
        TorchvisionNet(5, 1, arch="resnet18", pretrained=True)
    message = str(info.value)
    assert str(expected) in message
    assert torchvision.models.ResNet18_Weights.DEFAULT.url in message
    assert not expected.exists()


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_pretrained_loads_the_cached_file(arch):
    torch.manual_seed(0)
    saved = torchvision.models.get_model(arch, weights=None).state_dict()
    path = weights_file(arch)
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    conv_key, head = f"{FIRST_CONV[arch]}.weight", HEAD[arch]
    rgb = saved[conv_key]

    gray = TorchvisionNet(5, 1, arch=arch, pretrained=True, stem="imagenet").net.state_dict()
    for key, value in saved.items():
        if key != conv_key and not key.startswith(head + "."):
            assert torch.equal(gray[key], value), key
    assert torch.allclose(gray[conv_key], rgb.sum(1, keepdim=True))
    assert gray[f"{head}.1.weight"].shape == (5, saved[f"{head}.weight"].shape[1])

    # a gray image gets the response of the RGB image with three equal channels
    model = TorchvisionNet(5, 1, arch=arch, pretrained=True, stem="imagenet")
    conv = model.net.get_submodule(FIRST_CONV[arch])
    image = torch.rand(1, 1, 16, 16)
    expected = nn.functional.conv2d(image.expand(1, 3, 16, 16), rgb, stride=2, padding=3)
    assert torch.allclose(conv(image), expected, atol=1e-5)

    color = TorchvisionNet(5, 3, arch=arch, pretrained=True, stem="imagenet").net.state_dict()
    assert torch.equal(color[conv_key], rgb)
    small = TorchvisionNet(5, 1, arch=arch, pretrained=True, stem="cifar").net.state_dict()
    assert torch.allclose(small[conv_key], rgb[..., 2:5, 2:5].sum(1, keepdim=True))


@pytest.mark.parametrize(("arch", "pool"), [("resnet18", "maxpool"), ("densenet121", "features.pool0")])
def test_cifar_stem(arch, pool):
    cifar = TorchvisionNet(3, 1, arch=arch, stem="cifar").net
    conv = cifar.get_submodule(FIRST_CONV[arch])
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (1, 64, (3, 3), (1, 1))
    assert isinstance(cifar.get_submodule(pool), nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.modules())

    imagenet = TorchvisionNet(3, 1, arch=arch, stem="imagenet").net
    conv = imagenet.get_submodule(FIRST_CONV[arch])
    assert (conv.in_channels, conv.kernel_size, conv.stride) == (1, (7, 7), (2, 2))
    assert isinstance(imagenet.get_submodule(pool), nn.MaxPool2d)

    assert isinstance(TorchvisionNet(3, 1, arch=arch, input_size=48).net.get_submodule(pool), nn.Identity)
    assert isinstance(TorchvisionNet(3, 1, arch=arch, input_size=224).net.get_submodule(pool), nn.MaxPool2d)


def test_other_channel_counts_and_bad_values():
    assert TorchvisionNet(4, 5, stem="cifar")(torch.randn(1, 5, 32, 32)).shape == (1, 4)
    with pytest.raises(ConfigError, match="resnet18, resnet34, resnet50, resnext50_32x4d, wide_resnet50_2"):
        TorchvisionNet(3, arch="vgg16")
    with pytest.raises(ConfigError, match="model.dropout"):
        TorchvisionNet(3, dropout=1.0)
    with pytest.raises(ConfigError, match="model.stem"):
        TorchvisionNet(3, stem="tiny")
