"""Training tricks as units: mixup / CutMix targets and boxes, the EMA of weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from src.data.mixing import BatchMix
from src.errors import ConfigError
from src.training.ema import ModelEma


def batch(n: int = 6, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.arange(n, dtype=torch.float).view(n, 1, 1, 1).expand(n, 1, size, size).clone()
    return images, torch.arange(n) % 3


def test_mix_off_gives_one_hot_targets_and_the_same_images():
    images, labels = batch()
    out, targets = BatchMix()(images, labels, 3)
    assert out is images and torch.equal(targets, nn.functional.one_hot(labels, 3).float())


def test_mixup_blends_images_and_targets_with_the_same_weight():
    images, labels = batch()
    mix = BatchMix(mixup_alpha=0.4)
    mix.seed(3)
    out, targets = mix(images, labels, 3)
    lam = (out[0, 0, 0, 0] - images[-1, 0, 0, 0]) / (images[0, 0, 0, 0] - images[-1, 0, 0, 0])  # partner of 0 is n-1
    assert 0 < lam < 1
    assert torch.allclose(out, lam * images + (1 - lam) * images.flip(0))
    expected = lam * nn.functional.one_hot(labels, 3) + (1 - lam) * nn.functional.one_hot(labels.flip(0), 3)
    assert torch.allclose(targets, expected.float()) and torch.allclose(targets.sum(1), torch.ones(6))


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    images, labels = batch(size=16)
    mix = BatchMix(cutmix_alpha=1.0)
    for seed in range(20):
        mix.seed(seed)
        out, targets = mix(images, labels, 3)
        from_partner = (out[0] == images[-1, 0, 0, 0]).float().mean()  # share of image 0 now from image n-1
        assert targets[0, labels[0]] == pytest.approx(1 - from_partner.item(), abs=1e-6)
        assert set(out[0].unique().tolist()) <= {images[0, 0, 0, 0].item(), images[-1, 0, 0, 0].item()}


def test_mix_probability_and_resume_state():
    images, labels = batch()
    never = BatchMix(mixup_alpha=1.0, prob=0.0)
    assert torch.equal(never(images, labels, 3)[0], images)
    mix = BatchMix(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.5)
    mix.seed(1)
    mix(images, labels, 3)
    state = mix.state()
    first = [mix(images, labels, 3)[1] for _ in range(5)]
    mix.set_state(state)
    again = [mix(images, labels, 3)[1] for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(torch.equal(t, nn.functional.one_hot(labels, 3).float()) for t in first)  # some batches unmixed
    assert not all(torch.equal(t, nn.functional.one_hot(labels, 3).float()) for t in first)


@pytest.mark.parametrize("kwargs", [{"mixup_alpha": -1}, {"cutmix_alpha": -0.5}, {"prob": 1.5}, {"switch_prob": -1}])
def test_bad_mix_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="is invalid"):
        BatchMix(**kwargs)


def test_ema_follows_the_weights_with_warmup_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update(model)
    decay = min(0.9, 2 / 11)  # warm-up: the first update keeps only 2/11 of the old average
    assert torch.allclose(ema.module[0].weight, decay * start + (1 - decay) * model[0].weight)
    assert ema.module[1].num_batches_tracked == 5
    assert not any(p.requires_grad for p in ema.module.parameters())
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.module[0].weight, model[0].weight, atol=1e-6)
    restored = ModelEma(model, 0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.steps == 201 and torch.equal(restored.module[0].weight, ema.module[0].weight)


@pytest.mark.parametrize("decay", [0, 1, 1.5])
def test_bad_ema_decay_is_a_config_error(decay):
    with pytest.raises(ConfigError, match="trainer.ema_decay"):
        ModelEma(nn.Linear(2, 2), decay)
