"""Every config group option composes and instantiates; models, optimizers and schedules behave."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from src.data import DigitsData, Fer2013Data, FolderData, ImageData
from src.errors import ConfigError
from src.models import LeNet
from src.training.losses import make_criterion
from src.training.schedules import Constant, Cosine, Linear, MultiStep, Plateau, StepDecay
from src.training.tensorboard_logger import NullLogger, TensorBoardLogger
from src.training.trainer import Trainer
from tests.helpers import CONF_DIR, GROUPS, quote

OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
OPTIMS = sorted(p.stem for p in (CONF_DIR / "optim").glob("*.yaml"))
SCHEDS = sorted(p.stem for p in (CONF_DIR / "sched").glob("*.yaml"))


def test_every_group_has_options():
    for group in GROUPS:
        assert any(g == group for g, _ in OPTIONS), f"conf/{group}/ has no options"
    assert {"lenet", "resnet18", "resnext3"} <= set(MODELS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_option_composes_and_resolves(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    for name in ("data", "model", "aug", "optim", "sched", "trainer", "logger"):
        target = cfg[name]._target_
        assert callable(get_object(target)), f"{name}._target_={target} is not importable"
    if group != "experiment":
        node = container[group]
        assert "_target_" in node, f"conf/{group}/{option}.yaml has no _target_"
        # The chosen option's own keys made it into the composed node.
        own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), resolve=False)
        for key, value in own.items():
            if key != "defaults" and not (isinstance(value, str) and "${" in value):
                assert node[key] == value, f"{group}.{key}"


def test_defaults(compose_cfg):
    cfg = compose_cfg()
    assert cfg.data._target_ == "src.data.Fer2013Data"
    assert cfg.model._target_ == "src.models.resnet.ResNet"
    assert cfg.model.input_size == cfg.data.image_size == 48
    assert cfg.optim._target_ == "torch.optim.SGD" and cfg.optim._partial_
    assert cfg.sched._target_ == "src.training.schedules.Cosine"
    assert cfg.logger._target_ == "src.training.tensorboard_logger.TensorBoardLogger"
    assert cfg.seed == 0 and cfg.ckpt_path is None
    assert "hydra" not in cfg


def test_experiment_quickstart(compose_cfg):
    cfg = compose_cfg(["experiment=quickstart"])
    assert cfg.data._target_ == "src.data.DigitsData"
    assert cfg.model._target_ == "src.models.lenet.LeNet"
    assert cfg.optim._target_ == "torch.optim.AdamW" and cfg.optim.lr == 3e-3
    assert cfg.aug.flip is None  # a mirrored digit is another symbol
    assert cfg.aug.crop == {"padding": 2, "padding_mode": "constant", "p": 1.0, "size": None}  # merged into aug/basic
    assert cfg.trainer.max_epochs == 30
    # Command-line overrides win over the experiment.
    assert compose_cfg(["experiment=quickstart", "trainer.max_epochs=1"]).trainer.max_epochs == 1


def test_trainer_debug_extends_default(compose_cfg):
    debug, default = compose_cfg(["trainer=debug"]).trainer, compose_cfg().trainer
    assert debug.max_epochs == 1 and debug.limit_train_batches == 5
    assert {k: v for k, v in debug.items() if k not in ("max_epochs", "limit_train_batches")} == {
        k: v for k, v in default.items() if k not in ("max_epochs", "limit_train_batches")}


def test_fer5_selects_classes_and_limits(compose_cfg):
    data = compose_cfg(["data=fer5"]).data
    assert data._target_ == "src.data.Fer2013Data"
    assert list(data.classes) == ["angry", "happy", "neutral", "sad", "surprise"]
    assert data.per_class_limit.train.happy == 1500 and data.per_class_limit.val == 100


# -- instantiating the cheap groups ------------------------------------------------------------------


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_data_configs_instantiate(compose_cfg, tmp_path, option):
    cfg = compose_cfg([f"data={option}", f"data.root={quote(tmp_path)}"] if option == "folder" else
                      [f"data={option}"])
    data = instantiate(cfg.data)  # nothing is read before setup()
    assert isinstance(data, ImageData)
    expected = {"folder": FolderData, "digits": DigitsData, "fer2013": Fer2013Data, "fer5": Fer2013Data}
    assert type(data) is expected.get(option, type(data))
    assert data.channels == cfg.data.channels and data.image_size == cfg.data.image_size


def test_folder_data_requires_root(compose_cfg):
    with pytest.raises(ConfigError, match="data.root"):
        FolderData(**{k: v for k, v in compose_cfg(["data=folder"]).data.items() if k != "_target_"})


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "trainer").glob("*.yaml")))
def test_trainer_configs_instantiate(compose_cfg, option):
    trainer = instantiate(compose_cfg([f"trainer={option}", "trainer.device=cpu"]).trainer)
    assert isinstance(trainer, Trainer)
    assert trainer.device == torch.device("cpu")
    assert trainer.precision in ("fp32", "bf16")


def test_logger_configs_instantiate(compose_cfg, tmp_path):
    null = instantiate(compose_cfg(["logger=none"]).logger, log_dir=tmp_path / "none")
    assert isinstance(null, NullLogger)
    null.close()
    tb = instantiate(compose_cfg(["logger=tensorboard"]).logger, log_dir=tmp_path / "tb")
    assert isinstance(tb, TensorBoardLogger)
    tb.log_scalars({"x": 1.0}, 1)
    tb.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


# -- models ------------------------------------------------------------------------------------------


def test_stem_auto_follows_input_size(compose_cfg):
    small = instantiate(compose_cfg(["model=resnet18", "data.image_size=48"]).model, num_classes=3, in_channels=1)
    large = instantiate(compose_cfg(["model=resnet18", "data.image_size=128"]).model, num_classes=3,
                        in_channels=1)
    assert small.stem[0].kernel_size == (3, 3) and len(small.stem) == 3
    assert large.stem[0].kernel_size == (7, 7) and isinstance(large.stem[-1], nn.MaxPool2d)


# -- optimizers and schedules ------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMS)
def test_optim_partial_builds_and_steps(compose_cfg, name):
    cfg = compose_cfg([f"optim={name}"]).optim
    assert cfg._partial_ is True
    factory = instantiate(cfg)
    model = LeNet(3, 1)
    opt = factory(model.parameters())
    assert isinstance(opt, get_object(cfg._target_))
    assert opt.param_groups[0]["lr"] == cfg.lr
    assert opt.param_groups[0]["weight_decay"] == cfg.weight_decay
    before = [p.detach().clone() for p in model.parameters()]
    nn.functional.cross_entropy(model(torch.randn(4, 1, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def lr_curve(sched_overrides: list[str], compose_cfg, max_epochs: int = 5, steps: int = 3) -> list[float]:
    """The lr of every optimizer step (max_epochs * steps of them) and the one after the last step."""
    schedule = instantiate(compose_cfg(sched_overrides).sched)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = schedule.build(opt, max_epochs=max_epochs, steps_per_epoch=steps)
    lrs = []
    for _ in range(max_epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs + [opt.param_groups[0]["lr"]]


@pytest.mark.parametrize("name", SCHEDS)
def test_sched_configs_build(compose_cfg, name):
    schedule = instantiate(compose_cfg([f"sched={name}"]).sched)
    assert isinstance(schedule, Constant | Cosine | Linear | MultiStep | StepDecay | Plateau)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = schedule.build(opt, max_epochs=5, steps_per_epoch=3)
    for _ in range(15):
        opt.step()
        scheduler.step(0.5) if isinstance(schedule, Plateau) else scheduler.step()
    lr = opt.param_groups[0]["lr"]
    assert math.isfinite(lr) and 0 <= lr <= 0.1


def test_cosine_warms_up_then_anneals_to_zero(compose_cfg):
    lrs = lr_curve(["sched=cosine", "sched.warmup_epochs=1"], compose_cfg)
    warmup, rest = lrs[:4], lrs[3:]  # 3 steps per epoch: the warmup ends at step 3
    assert lrs[0] < 0.01
    assert all(a < b for a, b in zip(warmup, warmup[1:])), warmup
    assert lrs[3] == pytest.approx(0.1)
    assert max(lrs) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(rest, rest[1:])), rest
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert lrs[-2] < 0.01  # the last step already runs at a few percent of the lr
    # Halfway through the annealing (epoch 3 of 1..5) the factor is 0.5.
    assert lrs[9] == pytest.approx(0.05)


def test_cosine_min_lr_ratio(compose_cfg):
    lrs = lr_curve(["sched=cosine", "sched.warmup_epochs=0", "sched.min_lr_ratio=0.1"], compose_cfg)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.01)
    assert min(lrs) == pytest.approx(0.01)


def test_linear_decays_in_a_straight_line_to_zero(compose_cfg):
    lrs = lr_curve(["sched=linear", "sched.warmup_epochs=1"], compose_cfg)  # 5 epochs of 3 steps
    assert lrs[0] < 0.01 and lrs[3] == pytest.approx(0.1)
    steps = [a - b for a, b in zip(lrs[3:], lrs[4:])]  # after the warmup: equal decrements down to 0
    assert steps == pytest.approx([0.1 / 12] * 12) and lrs[-1] == pytest.approx(0.0, abs=1e-9)


def test_linear_cooldown_holds_the_lr_until_decay_from(compose_cfg):
    lrs = lr_curve(["sched=linear", "sched.warmup_epochs=0", "sched.decay_from=0.6", "sched.min_lr_ratio=0.1"],
                   compose_cfg)
    assert lrs[:10] == pytest.approx([0.1] * 10)  # epochs 0-3 (60 % of 5 epochs = step 9)
    cooldown = lrs[9:]
    assert all(a > b for a, b in zip(cooldown, cooldown[1:])) and lrs[-1] == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="decay_from"):
        Linear(decay_from=1.0)


def test_multistep_decays_by_gamma_at_milestones(compose_cfg):
    lrs = lr_curve(["sched=multistep", "sched.milestones=[2,4]", "sched.gamma=0.5"], compose_cfg)
    per_epoch = [lrs[e * 3: e * 3 + 3] for e in range(5)]
    expected = [0.1, 0.1, 0.05, 0.05, 0.025]
    for epoch, (values, lr) in enumerate(zip(per_epoch, expected)):
        assert values == pytest.approx([lr] * 3), f"epoch {epoch}"


def test_step_decay(compose_cfg):
    lrs = lr_curve(["sched=step", "sched.step_size=2", "sched.gamma=0.1"], compose_cfg)
    assert lrs[0:6] == pytest.approx([0.1] * 6)
    assert lrs[6:12] == pytest.approx([0.01] * 6)
    assert lrs[12:15] == pytest.approx([0.001] * 3)


def test_constant_with_warmup(compose_cfg):
    lrs = lr_curve(["sched=constant", "sched.warmup_epochs=2"], compose_cfg)
    assert all(a < b for a, b in zip(lrs[:7], lrs[1:7]))
    assert lrs[6:] == pytest.approx([0.1] * 10)


def test_plateau_reduces_after_patience(compose_cfg):
    schedule = instantiate(compose_cfg(["sched=plateau", "sched.patience=2", "sched.factor=0.5"]).sched)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = schedule.build(opt, max_epochs=10, steps_per_epoch=3, monitor_mode="max")
    lrs = []
    for value in [0.5, 0.6, 0.6, 0.6, 0.6]:
        scheduler.step(value)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05])


def test_schedule_rejects_negative_warmup():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        Cosine(warmup_epochs=-1)
    with pytest.raises(ConfigError, match="step_size"):
        StepDecay(step_size=0)


# -- loss --------------------------------------------------------------------------------------------


def test_criterion_balanced_class_weights():
    criterion = make_criterion(OmegaConf.create({"class_weights": "balanced"}), torch.tensor([10, 30, 60]))
    # n / (k * n_c) = 100 / (3 * n_c)
    assert torch.allclose(criterion.weight, torch.tensor([100 / 30, 100 / 90, 100 / 180]))


def test_criterion_explicit_weights_and_smoothing():
    criterion = make_criterion(OmegaConf.create({"class_weights": [1, 2, 3], "label_smoothing": 0.1}),
                               torch.tensor([5, 5, 5]))
    assert criterion.weight.tolist() == [1.0, 2.0, 3.0] and criterion.label_smoothing == 0.1
    assert make_criterion(OmegaConf.create({}), torch.tensor([1, 2])).weight is None


@pytest.mark.parametrize(("loss", "key"), [({"class_weights": [1, 2]}, "class_weights"),
                                           ({"class_weights": "inverse"}, "class_weights"),
                                           ({"label_smoothing": 1.0}, "label_smoothing")])
def test_criterion_rejects_bad_values(loss, key):
    with pytest.raises(ConfigError, match=key):
        make_criterion(OmegaConf.create(loss), torch.tensor([5, 5, 5]))


@pytest.mark.parametrize(("kwargs", "key"), [({"max_epochs": 0}, "max_epochs"), ({"monitor": "val/f1"}, "monitor"),
                                             ({"limit_train_batches": 0}, "limit_train_batches"),
                                             ({"limit_train_batches": 1.5}, "limit_train_batches"),
                                             ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
                                             ({"device": "tpu"}, "trainer.device"),
                                             ({"precision": "fp8"}, "trainer.precision")])
def test_trainer_rejects_bad_values(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Trainer(**{"device": "cpu", **kwargs})


def test_trainer_threads_sets_the_cpu_threads_of_the_process():
    try:
        Trainer(device="cpu", threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # as conftest.py sets it
    with pytest.raises(ConfigError, match="trainer.threads=0"):
        Trainer(device="cpu", threads=0)
