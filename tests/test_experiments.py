"""Every `experiment=NAME` composes with the settings its recipe or course report names, and runs as is
(one short epoch on small synthetic data standing in for its dataset)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.training.experiment import train
from tests.helpers import CONF_DIR, FER_CLASSES, compose_train, quote, write_dataset
from tests.test_cifar100 import write_release
from tests.test_cli import output_args, run_train

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
FER_RECIPES = ("fer2013_resnet18", "fer2013_vgg", "fer2013_ensemble")


def composed(name: str, *overrides: str):
    return compose_train([f"experiment={name}", *overrides])


def test_the_experiments_of_the_issue_exist():
    assert {"quickstart", "fer2013_cpu", *FER_RECIPES, "report000_resnext3", "report001_se_resnext",
            "report002_resnet18", "report003_cifar", "report004_zoo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", FER_RECIPES)
def test_fer2013_gpu_recipes(name):
    cfg = composed(name)
    assert cfg.data._target_.endswith("Fer2013Data") and cfg.data.channels == 1 and cfg.data.image_size == 48
    assert cfg.aug.crop.size == 44 and cfg.aug.crop.padding == 0 and cfg.aug.flip.p == 0.5
    assert cfg.aug.affine.degrees > 0 and cfg.aug.erase.p > 0 and cfg.aug.mix.mixup_alpha > 0
    assert cfg.loss.label_smoothing == 0.1 and cfg.trainer.ema_decay == 0.999 and cfg.tta.mode == "tencrop"
    assert cfg.optim.nesterov and cfg.sched._target_.endswith("Cosine") and cfg.sched.warmup_epochs > 0
    assert cfg.model._target_.endswith("VGG" if name == "fer2013_vgg" else "ResNet")


def test_fer2013_ensemble_is_a_seed_sweep():
    with_hydra = OmegaConf.load(CONF_DIR / "experiment" / "fer2013_ensemble.yaml")
    assert with_hydra.hydra.mode == "MULTIRUN" and with_hydra.hydra.sweeper.params.seed == "0,1,2,3,4"


def test_fer2013_cpu_recipe():
    cfg = composed("fer2013_cpu")
    assert cfg.trainer.device == "cpu" and cfg.trainer.precision == "auto"  # bf16 only where native
    assert cfg.model.stem_stride == 2 and list(cfg.model.widths) == [32, 64, 128, 256]
    assert list(cfg.model.layers) == [1, 1, 1, 1] and cfg.trainer.max_epochs == 48  # model=resnet10_cpu
    assert cfg.aug.crop.size == 44 and cfg.tta.mode == "tencrop"


def test_the_6_minute_recipe_is_the_15_minute_one_with_fewer_epochs():
    fifteen, six = composed("fer2013_cpu"), composed("fer2013_cpu_6min")
    assert (fifteen.trainer.max_epochs, six.trainer.max_epochs) == (48, 23)
    six.trainer.max_epochs = fifteen.trainer.max_epochs
    assert OmegaConf.to_container(six) == OmegaConf.to_container(fifteen)


def test_course_report_settings():
    r0 = composed("report000_resnext3")
    assert (r0.data.batch_size, r0.data.balanced, r0.optim._target_, r0.optim.lr) == (32, True, "torch.optim.Adam",
                                                                                       0.005)
    assert list(r0.data.classes) == ["angry", "happy", "neutral", "sad", "surprise"]
    assert r0.model.num_stages == 3 and list(r0.model.stage_dropout) == [0.2, 0.4]
    r2 = composed("report002_resnet18")
    assert (r2.optim.lr, r2.optim.momentum, r2.optim.weight_decay) == (0.1, 0.9, 1.0e-4)
    assert r2.sched._target_.endswith("Cosine") and r2.aug.flip and r2.aug.affine.degrees and r2.aug.resized_crop
    assert r2.data._target_.endswith("Fer2013Data") and r2.data.classes is None  # all seven classes
    r3 = composed("report003_cifar", "data.label_type=coarse")
    assert r3.data._target_.endswith("Cifar100Data") and r3.data.label_type == "coarse"
    assert r3.model.stem == "cifar" and r3.sched._target_.endswith("MultiStep")
    assert r3.aug.erase.value == 0.0 and r3.aug.mix.mixup_alpha > 0  # cutout, mixup
    assert r3.loss.label_smoothing > 0 and r3.loss.class_weights == "balanced"
    r1 = composed("report001_se_resnext", "data.root=/somewhere")
    assert r1.model.se_reduction == 4 and r1.data.channels == 3 and r1.data.image_size == 32
    zoo = OmegaConf.load(CONF_DIR / "experiment" / "report004_zoo.yaml")
    assert zoo.hydra.mode == "MULTIRUN" and zoo.hydra.sweeper.params.model == "alexnet,resnet34,vgg11,googlenet"
    r4 = composed("report004_zoo")
    assert (r4.optim._target_, r4.optim.lr, r4.data.batch_size) == ("torch.optim.Adam", 1.0e-4, 32)


# -- smoke runs ------------------------------------------------------------------------------------------------

SMOKE = ["trainer.device=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.progress_bar=false",
         "data.batch_size=16", "data.eval_batch_size=64", "logger=none"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("experiment_data")
    return {"fer": write_dataset(tmp / "fer2013", splits={"train": 3, "val": 2, "test": 2}, classes=FER_CLASSES,
                                 size=48),
            "cifar": write_release(tmp / "cifar100").parent,
            "folder": write_dataset(tmp / "folder", splits={"train": 4, "val": 2, "test": 2}),
            "cache": tmp / "cache"}


def data_overrides(name: str, datasets: dict[str, Path]) -> list[str]:
    root = {"report003_cifar": datasets["cifar"], "report001_se_resnext": datasets["folder"]}.get(name, datasets["fer"])
    extra = ["data.download=false"] if name == "report003_cifar" else []
    return [f"data.root={quote(root)}", f"paths.cache_dir={quote(datasets['cache'])}", *extra]


# The ResNet-18 / VGG recipes take 5-11 s each on 2 cores: run with -m slow (make test-slow, CI).
HEAVY_EXPERIMENTS = ("fer2013_resnet18", "fer2013_ensemble", "fer2013_vgg", "report002_resnet18", "report003_cifar")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_EXPERIMENTS else n
                                  for n in EXPERIMENTS if n not in ("quickstart", "report004_zoo")])
def test_experiment_runs(name, datasets, tmp_path):
    """One batch of training, validation, and the test evaluation with the experiment's TTA."""
    cfg = composed(name, *SMOKE, *data_overrides(name, datasets))
    metrics = train(cfg, tmp_path / "run")
    assert metrics["epochs"] == 1 and metrics["test/acc"] is not None and metrics["tta"] == cfg.tta.mode
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["model/conv_layers"] > 0
    meta = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["meta"]
    assert meta["input_size"] == cfg.aug.get("crop", {}).get("size")  # the training crop, when there is one


@pytest.mark.slow
def test_report004_zoo_sweep_from_the_command_line(datasets, tmp_path):
    """`python -m src.train experiment=report004_zoo` is a sweep over four models with the report's table."""
    result = run_train("experiment=report004_zoo", *SMOKE, *data_overrides("report004_zoo", datasets)[:1],
                       *output_args(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    summary = (sweep / "summary.md").read_text()
    header = next(line for line in summary.splitlines() if line.startswith("| run |"))
    for column in ("test_acc", "test_macro_f1", "size_mb", "epoch_time_s", "conv_layers"):
        assert f" {column} " in header, column
    for model in ("alexnet", "resnet34", "vgg11", "googlenet"):
        assert f"model={model}" in summary, model
