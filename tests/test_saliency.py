"""Grad-CAM maps (Captum): where they point, which layer they use, and the saliency.png of src.evaluate."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from PIL import Image

from src.data.inputs import ModelInput
from src.inference.predictor import Predictor
from src.inference.saliency import feature_layer, grad_cam
from src.models import LeNet, ResNet
from tests.helpers import quote
from tests.test_evaluate import evaluate, trained  # noqa: F401 - the module's fixture, reused

pytest.importorskip("captum")


class BrightnessNet(nn.Module):
    """Class 0's score is the mean brightness seen by channel 0, class 1's that of a channel that sees
    darkness: the evidence for class 0 is exactly where the image is bright."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0]))
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(2))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def predictor_for(model: nn.Module, crop: int | None = None) -> Predictor:
    return Predictor(model.eval(), ModelInput([0.0], [1.0], crop))


def test_the_map_is_where_the_evidence_is():
    images = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    images[0, :, 2:6, 9:14] = 255   # a bright patch top right
    images[1, :, 10:15, 1:5] = 255  # bottom left
    cams = grad_cam(predictor_for(BrightnessNet()), images, [0, 0])
    assert cams.shape == (2, 16, 16) and float(cams.min()) >= 0 and float(cams.max()) == pytest.approx(1)
    for cam, (rows, cols) in zip(cams, [(slice(2, 6), slice(9, 14)), (slice(10, 15), slice(1, 5))]):
        inside = cam[rows, cols].mean()
        outside = (cam.sum() - cam[rows, cols].sum()) / (cam.numel() - cam[rows, cols].numel())
        assert inside > 0.9 and outside < 0.05


def test_feature_layer_is_the_last_spatial_map():
    resnet = ResNet(num_classes=3, in_channels=1, layers=[1, 1, 1, 1], widths=[8, 16, 32, 64]).eval()
    assert feature_layer(resnet, torch.zeros(1, 1, 32, 32)) is resnet.stages  # its last stage, before pooling
    lenet = LeNet(num_classes=3, in_channels=1).eval()
    layer = feature_layer(lenet, torch.zeros(1, 1, 32, 32))
    outputs = []
    layer.register_forward_hook(lambda m, i, o: outputs.append(o))
    lenet(torch.zeros(1, 1, 32, 32))
    assert outputs[0].dim() == 4 and max(outputs[0].shape[-2:]) > 1


@pytest.mark.parametrize("model", [
    LeNet(num_classes=3, in_channels=1),
    ResNet(num_classes=3, in_channels=1, layers=[1, 1, 1, 1], widths=[8, 16, 32, 64], stem_stride=2),
])
def test_grad_cam_on_zoo_models_with_a_training_crop(model):
    images = torch.randint(0, 256, (5, 1, 48, 48), dtype=torch.uint8)
    cams = grad_cam(predictor_for(model, crop=44), images, [0, 1, 2, 0, 1])
    assert cams.shape == (5, 44, 44)
    assert torch.isfinite(cams).all() and float(cams.min()) >= 0 and float(cams.max()) <= 1 + 1e-6


def test_evaluate_writes_saliency_png(trained, tmp_path):  # noqa: F811
    evaluate(trained, tmp_path, f"ckpt_path={quote(trained['ckpts'][0])}", "saliency=true", "saliency_per_class=2")
    figure = Image.open(tmp_path / "saliency.png")
    assert figure.size[0] > 200 and figure.size[1] > 200


def test_missing_captum_is_one_sentence_before_anything_is_loaded(monkeypatch, tmp_path):
    import sys

    from src.errors import UserError

    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(UserError, match=r"Captum.*\.\[saliency\]"):
        evaluate({"cache": tmp_path}, tmp_path, f"ckpt_path={quote(tmp_path / 'never_read.pt')}", "saliency=true")
