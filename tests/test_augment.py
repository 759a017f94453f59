"""Batched augmentation: shapes and ranges kept, per-sample randomness, seeding, exact special cases."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from src.data import Augment
from src.data.augment import ColorJitter, Erase, Flip, PadCrop
from src.errors import ConfigError

# Every op, configured strongly enough that it visibly changes every sample it is applied to.
OPS = {
    "crop": {"padding": 4, "padding_mode": "reflect", "p": 1.0},
    "flip": {"p": 0.5},
    "affine": {"degrees": 30, "translate": 0.1, "scale": [0.8, 1.2], "p": 1.0},
    "resized_crop": {"scale": [0.3, 0.9], "ratio": [0.75, 1.333], "p": 1.0},
    "jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 1.0},
    "erase": {"p": 1.0, "scale": [0.05, 0.3], "ratio": [0.3, 3.3], "value": "random"},
}
AUG_CONFIGS = ["none", "basic", "fer", "strong"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int = 16, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=gen(seed))


def identical_batch(b: int = 16, c: int = 3, size: int = 32) -> torch.Tensor:
    """b copies of one asymmetric image (so that a flip or a shift changes it)."""
    return batch(1, c, size, seed=123).expand(b, -1, -1, -1).clone()


def distinct_outputs(y: torch.Tensor) -> int:
    return len({tuple(t.flatten().tolist()) for t in y})


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", OPS)
def test_each_op_keeps_shape_dtype_and_range(op, channels):
    x = batch(c=channels)
    y = Augment(**{op: OPS[op]})(x.clone(), gen())
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    assert torch.isfinite(y).all()
    assert not torch.equal(y, x), f"{op} changed nothing"


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", OPS)
def test_each_op_draws_parameters_per_sample(op, channels):
    y = Augment(**{op: OPS[op]})(identical_batch(c=channels), gen())
    assert distinct_outputs(y) > 1, f"{op} gave every sample of the batch the same transform"
    if op != "flip":  # a flip has only two outcomes
        assert distinct_outputs(y) >= 8


@pytest.mark.parametrize("op", OPS)
def test_same_seed_same_output_other_seed_other_output(op):
    aug = Augment(**{op: OPS[op]})
    x = batch()
    a, b, c = aug(x.clone(), gen(7)), aug(x.clone(), gen(7)), aug(x.clone(), gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("op", OPS)
def test_p_zero_is_identity(op):
    cfg = dict(OPS[op], p=0.0)
    x = batch()
    assert torch.allclose(Augment(**{op: cfg})(x.clone(), gen()), x, atol=1e-5)


def test_flip_p1_equals_torch_flip():
    x = batch()
    assert torch.equal(Flip(p=1.0)(x, gen()), torch.flip(x, dims=[-1]))


def test_flip_p_half_flips_some_samples_and_leaves_the_others():
    x = batch(b=64)
    y = Flip(p=0.5)(x, gen())
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(64)])
    assert (flipped | kept).all()
    assert 16 <= flipped.sum() <= 48


@pytest.mark.parametrize("mode", ["reflect", "constant", "replicate"])
def test_padcrop_without_padding_is_identity(mode):
    x = batch()
    assert torch.equal(PadCrop(padding=0, padding_mode=mode)(x, gen()), x)


def test_padcrop_is_a_shift_within_the_padding():
    """With constant padding every output is its input shifted by some (dy, dx) in [-pad, pad]², zero-filled."""
    pad, x = 3, batch(b=12) + 0.1  # no zeros in the input: zero-filled borders are recognisable
    y = PadCrop(padding=pad, padding_mode="constant")(x, gen())
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    shifts = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(y[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert matches, f"sample {i} is not a shifted crop of its input"
        shifts.add(matches[0])
    assert len(shifts) > 1


def test_sized_crop_is_a_random_window_of_that_size():
    """aug.crop.size=44 without padding: the FER2013 training crop, a 44x44 window anywhere in the 48x48 image."""
    x = torch.rand(16, 1, 48, 48, generator=gen())
    y = PadCrop(padding=0, size=44)(x, gen())
    assert y.shape == (16, 1, 44, 44)
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(y[i], x[i, :, dy:dy + 44, dx:dx + 44])]
        assert found, f"sample {i} is not a 44x44 window of its image"
        offsets.add(found[0])
    assert len(offsets) > 4
    assert torch.equal(PadCrop(padding=0, size=44, p=0.0)(x, gen()), x[..., 2:46, 2:46])  # not applied: centre
    assert Augment(crop={"padding": 0, "size": 44}).crop_size == 44
    assert Augment(crop={"padding": 4}).crop_size is None


def test_sized_crop_larger_than_the_padded_image_is_a_config_error():
    with pytest.raises(ConfigError, match="aug.crop.size=40"):
        PadCrop(padding=2, size=40)(batch(), gen())  # 32 + 2*2 < 40


def test_padcrop_rejects_unknown_padding_mode():
    with pytest.raises(ConfigError, match="padding_mode"):
        PadCrop(padding=4, padding_mode="wrap")


def test_identity_warps_are_identity():
    x = batch()
    aug = Augment(resized_crop={"scale": [1.0, 1.0], "ratio": [1.0, 1.0]},
                  affine={"degrees": 0, "translate": 0.0, "scale": [1.0, 1.0]})
    assert torch.allclose(aug(x.clone(), gen()), x, atol=1e-5)


def test_brightness_scales_each_sample_by_its_own_factor():
    x = torch.full((32, 1, 8, 8), 0.5)
    y = ColorJitter(brightness=0.5)(x, gen())
    per_sample = y.flatten(1)
    assert (per_sample == per_sample[:, :1]).all(), "brightness must be uniform within an image"
    assert per_sample[:, 0].min() >= 0.25 - 1e-6 and per_sample[:, 0].max() <= 0.75 + 1e-6
    assert per_sample[:, 0].unique().numel() > 16


def test_saturation_and_hue_leave_gray_rgb_images_unchanged():
    gray = torch.rand(8, 1, 16, 16, generator=gen()).expand(-1, 3, -1, -1).clone()
    y = ColorJitter(saturation=0.9, hue=0.5)(gray, gen())
    assert torch.allclose(y, gray, atol=1e-4)


def test_jitter_on_grayscale_skips_saturation_and_hue():
    x = batch(c=1)
    assert torch.equal(ColorJitter(saturation=0.9, hue=0.5)(x.clone(), gen()), x)


def test_erase_fills_one_rectangle_per_sample():
    x = torch.ones(32, 1, 32, 32)
    y = Erase(p=1.0, scale=(0.05, 0.2), ratio=(0.5, 2.0), value=0.0)(x, gen())
    areas = []
    for i in range(len(y)):
        erased = y[i, 0] == 0
        rows, cols = erased.any(1).nonzero().flatten(), erased.any(0).nonzero().flatten()
        assert len(rows) and len(cols), f"sample {i}: nothing erased with p=1"
        box = erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all(), f"sample {i}: the erased region is not a rectangle"
        assert erased.sum() == box.numel()
        areas.append(erased.sum().item() / (32 * 32))
    assert 0.03 <= min(areas) and max(areas) <= 0.3  # scale (0.05, 0.2), with rounding of the sides
    assert len(set(areas)) > 4


def test_erase_random_value_stays_in_range():
    y = Erase(p=1.0, scale=(0.3, 0.3), value="random")(torch.zeros(8, 3, 16, 16), gen())
    assert y.max() <= 1 and y.min() >= 0 and (y > 0).any()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", AUG_CONFIGS)
def test_aug_configs_instantiate_and_keep_shape(compose_cfg, name, channels):
    aug = instantiate(compose_cfg([f"aug={name}"]).aug)
    assert isinstance(aug, Augment)
    x = batch(c=channels)
    y = aug(x.clone(), gen())
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    if name != "none":
        assert not torch.equal(y, x)
        assert distinct_outputs(aug(identical_batch(c=channels), gen())) > 1


def test_aug_none_is_identity_and_falsy(compose_cfg):
    aug = instantiate(compose_cfg(["aug=none"]).aug)
    assert not aug  # the trainer skips augmentation entirely
    x = batch()
    assert torch.equal(aug(x.clone(), gen()), x)


def test_aug_config_inheritance(compose_cfg):
    """fer = basic + affine + erase; strong = fer + resized_crop + jitter."""
    basic = compose_cfg(["aug=basic"]).aug
    fer = compose_cfg(["aug=fer"]).aug
    strong = compose_cfg(["aug=strong"]).aug
    off_unless_asked = {"_target_", "mix", "progressive"}
    assert set(basic) - off_unless_asked == {"crop", "flip"}
    assert set(fer) - off_unless_asked == {"crop", "flip", "affine", "erase"}
    assert set(strong) - off_unless_asked == {"crop", "flip", "affine", "erase", "resized_crop", "jitter"}
    assert basic.mix is None and strong.mix is None  # mixup / CutMix are off unless asked for
    assert basic.progressive is None and strong.progressive is None
    assert fer.crop == basic.crop and strong.affine == fer.affine


# -- progressive resizing ------------------------------------------------------------------------------------


def test_progressive_side_grows_to_the_full_size_by_until():
    from src.data.augment import ProgressiveResize

    resize = ProgressiveResize(start=32, until=0.5)
    sides = [resize.side(44, epoch, 10) for epoch in range(1, 11)]
    assert sides[0] == 32 and sides[4:] == [44] * 6  # epoch 5 of 10 is the first at the full size
    assert all(a <= b for a, b in zip(sides, sides[1:])) and all(s % 2 == 0 for s in sides)
    assert resize.side(28, 1, 10) == 28  # never larger than the images
    for bad in ({"start": 4}, {"until": 1.0}, {"until": 0}):
        with pytest.raises(ConfigError, match="aug.progressive"):
            Augment(progressive=bad)


def test_progressive_resize_scales_the_batch_down_and_then_leaves_it():
    augment = Augment(crop={"padding": 0, "size": 44}, progressive={"start": 32, "until": 0.5})
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 48, 48)
    assert augment.start_epoch(1, 10, 44) == 32
    small = augment(x, g)
    assert small.shape == (4, 1, 32, 32) and 0 <= small.min() and small.max() <= 1
    assert augment.start_epoch(5, 10, 44) == 44
    assert augment(x, g).shape == (4, 1, 44, 44)


def test_progressive_training_evaluates_at_the_full_size(tmp_path, make_folder, train_cfg, caplog):
    """A short run with progressive resizing: the first epoch trains on smaller inputs (logged), validation
    and the checkpoint's input size are the full crop."""
    import logging

    import torch as th

    from src.training.experiment import train

    root = make_folder(splits={"train": 8, "val": 4, "test": 4}, size=32)
    cfg = train_cfg(root, "aug=basic", "aug.crop={padding: 0, size: 28}", "aug.progressive={start: 16, until: 0.5}",
                    "trainer.max_epochs=4")
    with caplog.at_level(logging.INFO, logger="src.training.trainer"):
        metrics = train(cfg, tmp_path / "run")
    assert "Epoch 1 trains on 16x16 inputs (aug.progressive)" in caplog.text
    assert "Epoch 2 trains on" not in caplog.text  # until 0.5 of 4 epochs: full size from epoch 2
    assert metrics["test/acc"] is not None
    assert th.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["meta"]["input_size"] == 28


# -- no host synchronisation ---------------------------------------------------------------------------------


def test_a_training_batch_of_aug_strong_never_waits_for_the_device(compose_cfg):
    """On a GPU, boolean-mask indexing (aten::nonzero), .item() (aten::_local_scalar_dense) and tensors made on
    the host per batch stall the pipeline every step. The CPU profiler sees the same ops: none may appear while
    an RGB batch goes through aug=strong with mixup/CutMix, the model and the optimizer."""
    from torch.profiler import ProfilerActivity, profile

    from src.data.inputs import ModelInput
    from src.models.lenet import LeNet

    cfg = compose_cfg(["aug=strong", "aug.mix={mixup_alpha: 0.2, cutmix_alpha: 1.0, prob: 1.0}",
                       "aug.jitter.p=0.5", "aug.affine.p=0.5", "aug.resized_crop.p=0.5",
                       "aug.progressive={start: 16, until: 0.5}"]).aug
    inputs = ModelInput.for_training([0.5] * 3, [0.25] * 3, instantiate(cfg))
    inputs.seed(0, torch.device("cpu"))
    inputs.start_epoch(1, 4, 32)
    model = LeNet(num_classes=3, in_channels=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8) % 3
    inputs.training_batch(images, labels, 3)  # first call: constants moved to the device once
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            x, targets, _ = inputs.training_batch(images, labels, 3)
            loss = torch.nn.functional.cross_entropy(model(x), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    ops = {event.key for event in prof.key_averages()}
    assert x.shape[-1] == 16  # progressive resizing was on
    assert not ops & {"aten::nonzero", "aten::_local_scalar_dense", "aten::item"}, sorted(ops)
