"""The trainer's debugging modes (src/training/debugging.py, profiling.py): limit_val/test_batches,
fast_dev_run, overfit_batches and the profiler, each on a tiny LeNet training."""
from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import src.training.experiment as experiment_module
import src.training.trainer as trainer_module
from src.config import build
from src.errors import ConfigError
from src.training.debugging import DEV_RUN_BATCH_SIZE, DebugModes, batch_count
from src.training.experiment import train
from src.training.profiling import profile_schedule
from src.training.trainer import Trainer
from tests.helpers import CLASSES, compose_train, fast_overrides

SPLITS = {"train": 16, "val": 6, "test": 6}  # per class: 48 / 18 / 18 images


@pytest.fixture
def spy_evaluations(monkeypatch) -> list[int]:
    """The number of images of every split evaluated (per-epoch validation, then the test)."""
    sizes = []
    for module in (trainer_module, experiment_module):
        real = module.evaluate_split

        def spy(predictor, split, *args, _real=real, **kwargs):
            sizes.append(len(split))
            return _real(predictor, split, *args, **kwargs)

        monkeypatch.setattr(module, "evaluate_split", spy)
    return sizes


@pytest.fixture
def spy_train_batches(monkeypatch) -> list[int]:
    """The size of every training batch stepped."""
    sizes = []

    class CountingMeter(trainer_module.EpochMeter):
        def update(self, step, lr, loss, logits, labels):
            sizes.append(len(labels))
            super().update(step, lr, loss, logits, labels)

    monkeypatch.setattr(trainer_module, "EpochMeter", CountingMeter)
    return sizes


def optimizer_steps(run_dir: Path) -> int:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["state"]
    return {int(s["step"]) for s in state.values()}.pop()


# -- limit_val_batches / limit_test_batches -----------------------------------------------------------------


def test_limit_val_and_test_batches_score_fewer_images_of_every_class(tmp_path, make_folder, train_cfg,
                                                                     spy_evaluations):
    root = make_folder(splits=SPLITS)
    metrics = train(train_cfg(root, "trainer.max_epochs=2", "data.eval_batch_size=4", "trainer.limit_val_batches=2",
                              "trainer.limit_test_batches=0.5"), tmp_path / "run")
    # val: 2 batches of 4 in both epochs; test: half of its 5 batches (2) of 4
    assert spy_evaluations == [8, 8, 8]
    matrix = np.array(metrics["test/confusion_matrix"])
    assert matrix.sum() == 8
    assert (matrix.sum(axis=1) > 0).all(), "the images kept are spread over the class-ordered split"


def test_without_limits_whole_splits_are_scored(tmp_path, make_folder, train_cfg, spy_evaluations):
    root = make_folder(splits=SPLITS)
    metrics = train(train_cfg(root, "data.eval_batch_size=4"), tmp_path / "run")
    assert spy_evaluations == [18, 18]
    assert np.array(metrics["test/confusion_matrix"]).sum() == 18


@pytest.mark.parametrize(("limit", "total", "expected"), [(None, 5, 5), (2, 5, 2), (9, 5, 5), (0.5, 5, 2),
                                                          (0.01, 5, 1), (1.0, 5, 5)])
def test_batch_count(limit, total, expected):
    assert batch_count(limit, total) == expected


# -- fast_dev_run ------------------------------------------------------------------------------------------------


def test_fast_dev_run_runs_2_2_2_batches_and_writes_no_results(tmp_path, make_folder, train_cfg, spy_evaluations,
                                                                spy_train_batches, caplog):
    root = make_folder(splits=SPLITS)
    run_dir = tmp_path / "run"
    cfg = train_cfg(root, "trainer=fast_dev_run", "trainer.device=cpu", "trainer.precision=fp32",
                    "logger=tensorboard", "trainer.max_epochs=5", "data.batch_size=16", "data.eval_batch_size=4")
    with caplog.at_level(logging.WARNING, logger="src.training.experiment"):
        metrics = train(cfg, run_dir)
    assert spy_train_batches == [DEV_RUN_BATCH_SIZE] * 2  # one epoch of 2 batches, of at most 8 images
    assert spy_evaluations == [8, 8]  # val and test: 2 batches of 4
    assert metrics["epochs"] == 1
    # Only what every run writes before it trains (Hydra adds .hydra/ and the log): no metrics.json,
    # history.csv, checkpoints/, test report, TensorBoard events.
    assert sorted(p.name for p in run_dir.iterdir()) == ["run_info.json"]
    assert "fast_dev_run=2: a smoke test" in caplog.text and "it saved no results" in caplog.text


def test_fast_dev_run_true_is_one_batch():
    modes = DebugModes(limit_val_batches=0.5, fast_dev_run=True)
    assert modes.fast_dev_run == 1
    assert (modes.limit_train_batches, modes.limit_val_batches, modes.limit_test_batches) == (1, 1, 1)
    assert Trainer(device="cpu", max_epochs=7, fast_dev_run=3).max_epochs == 1


# -- overfit_batches -------------------------------------------------------------------------------------------


def write_noise(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """root/<split>/<class>/<n>.png of uniform noise: labels a model can only learn by heart."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(noise).save(root / split / name / f"{i}.png")
    return root


def test_overfit_batches_learns_a_few_batches_by_heart(tmp_path, train_cfg):
    """LeNet memorizes 3 batches of noise: a working model, loss and input pipeline reach train acc 1."""
    root = write_noise(tmp_path / "data", {"train": 16, "val": 2})
    run_dir = tmp_path / "run"
    epochs = 30
    train(train_cfg(root, "trainer.overfit_batches=3", f"trainer.max_epochs={epochs}"), run_dir)
    assert optimizer_steps(run_dir) == 3 * epochs  # 3 batches of 8 per epoch
    with open(run_dir / "history.csv", newline="") as f:
        accs = [float(row["train/acc"]) for row in csv.DictReader(f)]
    assert min(accs[-3:]) >= 0.99, accs


def test_overfit_batches_trains_the_same_images_of_every_class_every_epoch(tmp_path, make_folder, compose_cfg):
    root = make_folder(splits=SPLITS)
    data = build(compose_cfg(fast_overrides(root, tmp_path / "cache")).data).setup()
    loader = DebugModes(overfit_batches=3).train_loader(data, torch.device("cpu"), seed=0)
    epochs = [[(bytes(image.numpy()), int(label)) for images, labels in loader for image, label in zip(images, labels)]
              for _ in range(2)]
    assert len(loader) == 3 and len(epochs[0]) == 24
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])  # reshuffled, the same images
    assert {label for _, label in epochs[0]} == {0, 1, 2}


# -- profile ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("steps", "expected"), [(1, (0, 0, 1)), (2, (0, 1, 1)), (3, (1, 1, 1)), (4, (1, 1, 2)),
                                                 (5, (1, 1, 3)), (100, (1, 1, 3))])
def test_profile_schedule(steps, expected):
    assert profile_schedule(steps) == expected


def test_profile_writes_a_trace_and_logs_the_top_ops(tmp_path, make_folder, train_cfg, caplog):
    root = make_folder(splits={"train": 16, "val": 1})  # 6 batches of 8
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="src.training.profiling"):
        train(train_cfg(root, "trainer.profile=true", "trainer.max_epochs=2"), run_dir)
    traces = list((run_dir / "profile").glob("train.*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert sum(1 for e in events if re.fullmatch(r"ProfilerStep#\d+", str(e.get("name")))) == 3
    assert "Profiled 3 training steps" in caplog.text and "Self CPU" in caplog.text


def test_without_profile_nothing_is_profiled(tmp_path, make_folder, train_cfg):
    root = make_folder(splits={"train": 8, "val": 1})
    train(train_cfg(root), tmp_path / "run")
    assert not (tmp_path / "run" / "profile").exists()


# -- bad values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("limit_val_batches", 0), ("limit_val_batches", 1.5),
                                            ("limit_test_batches", -2), ("limit_test_batches", 0.0),
                                            ("overfit_batches", -1), ("overfit_batches", 2.5),
                                            ("fast_dev_run", -1)])
def test_bad_range_is_a_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"trainer.{key}={value} is invalid")):
        Trainer(device="cpu", **{key: value})


@pytest.mark.parametrize("override", ["trainer.limit_val_batches=all", "trainer.limit_test_batches=true",
                                      "trainer.overfit_batches=null", "trainer.fast_dev_run=1.5",
                                      "trainer.profile=yes"])
def test_bad_type_is_a_config_error_naming_the_key(override):
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0])):
        build(compose_train([override]).trainer)
