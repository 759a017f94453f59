"""Tiny end-to-end trainings in-process: the run directory contract, learning, resuming, config errors."""
from __future__ import annotations

import argparse
import csv
import math
import re
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import src.training.trainer as trainer_module
from src.errors import ConfigError, DataError, UserError
from src.models import LeNet, count_parameters
from src.training.experiment import train
from tests.helpers import CLASSES, TIMING_KEYS, compose_train, fast_overrides, quote, read_metrics, write_dataset

CONTRACT_KEYS = [
    "best_epoch", "epochs", "val/acc", "val/macro_f1", "test/acc", "test/macro_f1", "test/balanced_acc",
    "test/per_class", "test/confusion_matrix", "classes", "model/params", "model/size_mb", "train/epoch_time_s",
    "train/images_per_s", "device", "precision",
]
SPLITS = {"train": 16, "val": 6, "test": 6}  # per class


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


# -- one quickstart-like run, shared by the contract tests --------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, dict]:
    """3 epochs of LeNet with the quickstart recipe (AdamW, cosine with warmup, pad-crop and flip) on a
    learnable train/val/test folder dataset, logging to TensorBoard. Returns (run_dir, metrics)."""
    tmp = tmp_path_factory.mktemp("quick_run")
    root = write_dataset(tmp / "data", splits=SPLITS)
    cfg = compose_train(fast_overrides(root, tmp / "cache", "logger=tensorboard", "aug=basic",
                                       "aug.crop.padding=2", "sched=cosine", "trainer.max_epochs=3"))
    run_dir = tmp / "run"
    metrics = train(cfg, run_dir)
    return run_dir, metrics


def test_metrics_json_has_every_contract_key(quick_run):
    run_dir, returned = quick_run
    metrics = read_metrics(run_dir)
    assert metrics == returned
    missing = [k for k in CONTRACT_KEYS if k not in metrics]
    assert not missing, f"metrics.json lacks {missing}"
    assert all(metrics[k] is not None for k in CONTRACT_KEYS)
    assert metrics["epochs"] == 3 and 1 <= metrics["best_epoch"] <= 3
    assert metrics["classes"] == list(CLASSES)
    assert metrics["device"] == "cpu" and metrics["precision"] == "fp32"
    for key in ("val/acc", "val/macro_f1", "test/acc", "test/macro_f1", "test/balanced_acc"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["train/epoch_time_s"] > 0 and metrics["train/images_per_s"] > 0
    assert math.isfinite(metrics["train/images_per_s"])


def test_metrics_model_size(quick_run):
    metrics = read_metrics(quick_run[0])
    params = count_parameters(LeNet(num_classes=3, in_channels=3))
    assert metrics["model/params"] == params
    assert metrics["model/size_mb"] == pytest.approx(params * 4 / 2**20, abs=1e-3)


def test_per_class_and_confusion_matrix_agree(quick_run):
    metrics = read_metrics(quick_run[0])
    per_class, matrix = metrics["test/per_class"], metrics["test/confusion_matrix"]
    assert list(per_class) == list(CLASSES)
    for row in per_class.values():
        assert set(row) == {"precision", "recall", "f1", "support"}
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    assert [sum(row) for row in matrix] == [per_class[c]["support"] for c in CLASSES] == [SPLITS["test"]] * 3
    diagonal = sum(matrix[i][i] for i in range(3))
    assert metrics["test/acc"] == pytest.approx(diagonal / (3 * SPLITS["test"]))
    for i, name in enumerate(CLASSES):
        assert per_class[name]["recall"] == pytest.approx(matrix[i][i] / SPLITS["test"])


def test_it_learns(quick_run):
    metrics = read_metrics(quick_run[0])
    assert metrics["test/acc"] >= 0.8, metrics["test/acc"]  # chance is 1/3
    assert metrics["val/acc"] >= 0.8
    history = read_history(quick_run[0])
    assert float(history[-1]["train/loss"]) < float(history[0]["train/loss"])


def test_history_and_selection_on_val(quick_run):
    run_dir = quick_run[0]
    metrics, history = read_metrics(run_dir), read_history(run_dir)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    best = history[metrics["best_epoch"] - 1]
    assert float(best["val/acc"]) == metrics["val/acc"]
    assert metrics["val/acc"] == max(float(r["val/acc"]) for r in history)
    # The first epoch that reached the best value is kept (improvement must be strict).
    assert metrics["best_epoch"] == 1 + [float(r["val/acc"]) for r in history].index(metrics["val/acc"])
    # time_s: wall clock of training with validation at each epoch's end (src.report's time to accuracy)
    times = [float(r["time_s"]) for r in history]
    # metrics.json keeps a tenth of a second, history.csv a hundredth: the same clock reading rounded twice
    assert 0 < times[0] < times[1] < times[2] and metrics["train/time_s"] == round(times[-1], 1)
    lrs = [float(r["lr"]) for r in history]  # each epoch's mean lr: what it trained with, never the next's start
    assert lrs[-1] > 1e-6 and max(lrs) <= 3e-3
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine annealed to 0


def test_checkpoints_are_plain_data(quick_run):
    run_dir, metrics = quick_run
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "epoch", "state", "meta", "rng"} <= set(ckpt)
        data = ckpt["meta"]["data"]
        assert data["classes"] == list(CLASSES) and data["channels"] == 3 and data["image_size"] == 32
        assert len(data["mean"]) == len(data["std"]) == 3
        assert ckpt["meta"]["config"]["model"]["_target_"] == "src.models.lenet.LeNet"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3
    assert torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["epoch"] == metrics["best_epoch"]


def test_best_checkpoint_reproduces_test_metrics(quick_run):
    """Everything evaluate/predict need is in the checkpoint: config, classes and normalization."""
    run_dir, metrics = quick_run
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    cfg, meta = OmegaConf.create(ckpt["meta"]["config"]), ckpt["meta"]["data"]
    model = instantiate(cfg.model, num_classes=len(meta["classes"]), in_channels=meta["channels"])
    model.load_state_dict(ckpt["model"])
    test = instantiate(cfg.data).setup().splits["test"]
    x = (test.images.float() / 255 - torch.tensor(meta["mean"]).view(1, -1, 1, 1)) / torch.tensor(
        meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        predictions = model.eval()(x).argmax(1)
    assert (predictions == test.labels).float().mean().item() == pytest.approx(metrics["test/acc"])


def test_run_directory_files(quick_run):
    run_dir = quick_run[0]
    assert (run_dir / "confusion_matrix.png").stat().st_size > 0
    assert not list(run_dir.rglob("*.tmp"))  # atomic writes leave no temporaries behind


def test_tensorboard_events(quick_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = quick_run[0]
    assert list(run_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/acc", "val/acc", "val/loss", "val/macro_f1", "train/lr"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("val/acc")] == [1, 2, 3]
    history = read_history(run_dir)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([float(r["lr"]) for r in history])
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(
        [float(r["train/loss"]) for r in history])
    assert "val/confusion_matrix" in tags["images"]
    assert "test/confusion_matrix" in tags["images"]

    hparams = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(3e-3)
    assert start.session_start_info.hparams["data.image_size"].number_value == 32
    # the test metrics of the selected epoch, once, at its step (HParams' test columns)
    metrics = read_metrics(run_dir)
    (test_acc,) = events.Scalars("test/acc")
    assert (test_acc.step, test_acc.value) == (metrics["best_epoch"], pytest.approx(metrics["test/acc"]))


# -- other run shapes --------------------------------------------------------------------------------------


def test_without_val_split_the_last_epoch_is_kept(tmp_path, make_folder, train_cfg):
    root = make_folder(per_class=10)
    metrics = train(train_cfg(root, "data.val_split=0", "data.test_split=0.3", "trainer.max_epochs=2"),
                    tmp_path / "run")
    assert metrics["best_epoch"] == metrics["epochs"] == 2
    assert metrics["val/acc"] is None
    assert metrics["test/acc"] is not None and sum(map(sum, metrics["test/confusion_matrix"])) == 9
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])


def test_test_false_designs_on_val_without_looking_at_test(tmp_path, make_folder, train_cfg):
    """test=false: the run selects on val and never evaluates the test split (a recipe being designed);
    src.evaluate tests it later."""
    root = make_folder(splits={"train": 8, "val": 4, "test": 4})
    metrics = train(train_cfg(root, "test=false"), tmp_path / "run")
    assert metrics["val/acc"] is not None and metrics["test/acc"] is None and metrics["test/per_class"] is None
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert not written & {"predictions.csv", "per_class.md", "confusion_matrix.png", "roc.png"}, written
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_without_test_split_metrics_are_still_written(tmp_path, make_folder, train_cfg):
    root = make_folder(splits={"train": 8})
    metrics = train(train_cfg(root, "data.val_split=0.25"), tmp_path / "run")
    assert metrics["test/acc"] is None and metrics["val/acc"] is not None
    assert read_metrics(tmp_path / "run") == metrics


def test_early_stopping(tmp_path, make_folder, train_cfg):
    # lr 1e-30 changes no float32 weight: val/acc never improves after epoch 1.
    root = make_folder(splits={"train": 8, "val": 2})
    metrics = train(train_cfg(root, "optim.lr=1e-30", "trainer.max_epochs=5", "trainer.early_stopping_patience=2"),
                    tmp_path / "run")
    assert metrics["epochs"] == 3 and metrics["best_epoch"] == 1


def test_early_stopping_patience_zero_stops_at_the_first_non_improving_epoch(tmp_path, make_folder, train_cfg):
    root = make_folder(splits={"train": 8, "val": 2})
    metrics = train(train_cfg(root, "trainer.max_epochs=3", "trainer.early_stopping_patience=0",
                              "trainer.monitor=val/loss"), tmp_path / "run")
    losses = [float(r["val/loss"]) for r in read_history(tmp_path / "run")]
    if metrics["epochs"] < 3:  # it stopped early: the last epoch must not have improved
        assert len(losses) > 1 and losses[-1] >= min(losses[:-1]), f"stopped while improving: {losses}"
    assert all(b < a for a, b in zip(losses[:-1], losses[1:-1]))  # every epoch before the last improved


@pytest.mark.parametrize(("limit", "steps_per_epoch"), [("2", 2), ("0.5", 3), ("100", 6)])
def test_limit_train_batches(tmp_path, make_folder, train_cfg, limit, steps_per_epoch):
    root = make_folder(splits={"train": 16, "val": 1})  # 48 images: 6 batches of 8
    train(train_cfg(root, "trainer.max_epochs=2", f"trainer.limit_train_batches={limit}"), tmp_path / "run")
    optimizer = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert {float(state["step"]) for state in optimizer["state"].values()} == {2.0 * steps_per_epoch}


def test_plateau_without_val_is_a_config_error(tmp_path, make_folder, train_cfg):
    root = make_folder(per_class=6)
    with pytest.raises(ConfigError, match="plateau"):
        train(train_cfg(root, "sched=plateau", "data.val_split=0"), tmp_path / "run")


def test_data_errors_surface_from_train(tmp_path, train_cfg):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "missing"))):
        train(train_cfg(tmp_path / "missing"), tmp_path / "run")


# -- resuming ----------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def compare_runs(a: Path, b: Path) -> None:
    assert without_timings(read_history(b)) == without_timings(read_history(a))
    ma, mb = read_metrics(a), read_metrics(b)
    for key in ("epochs", "best_epoch", "val/acc", "val/loss", "test/acc", "test/loss", "test/macro_f1",
                "test/confusion_matrix"):
        assert mb[key] == ma[key], key
    last_a = torch.load(a / "checkpoints" / "last.pt", weights_only=True)
    last_b = torch.load(b / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in last_a["model"].items():
        assert torch.equal(last_b["model"][name], tensor), name


@pytest.fixture
def resume_setup(tmp_path, make_folder, cache_dir):
    """Overrides that exercise every random stream a resume must restore: batch order, augmentation
    (pad-crop, flip) and dropout. val/loss is monitored so that epoch 2 improves on epoch 1."""
    root = make_folder(splits={"train": 12, "val": 4, "test": 4})

    def cfg(*overrides):
        return compose_train(fast_overrides(root, cache_dir, "aug=basic", "model.dropout=0.3",
                                            "trainer.monitor=val/loss", *overrides))

    return cfg


MIX = "aug.mix={mixup_alpha: 0.4, cutmix_alpha: 1.0, prob: 0.8}"


@pytest.mark.parametrize("extra", [[], [MIX], ["trainer.ema_decay=0.9"]], ids=["plain", "mixup_cutmix", "ema"])
def test_resume_gives_the_uninterrupted_run(tmp_path, resume_setup, extra):
    """Run A: 2 epochs. Run B: 1 epoch. Run C: B's last.pt continued to 2 epochs. C == A exactly (CPU, fp32)."""
    train(resume_setup("trainer.max_epochs=2", *extra), tmp_path / "A")
    train(resume_setup("trainer.max_epochs=1", *extra), tmp_path / "B")
    ckpt = tmp_path / "B" / "checkpoints" / "last.pt"
    metrics = train(resume_setup("trainer.max_epochs=2", f"ckpt_path={quote(ckpt)}", *extra), tmp_path / "C")
    assert metrics["epochs"] == 2
    assert len(read_history(tmp_path / "C")) == 2  # epoch 1 comes from B's checkpoint
    compare_runs(tmp_path / "A", tmp_path / "C")
    # the wall clock goes on from where B stopped: epoch 1's time is B's, epoch 2's comes after it
    (b_epoch1,), (c_epoch1, c_epoch2) = read_history(tmp_path / "B"), read_history(tmp_path / "C")
    assert c_epoch1["time_s"] == b_epoch1["time_s"] and float(c_epoch2["time_s"]) > float(b_epoch1["time_s"])


def test_mixup_and_cutmix_train_on_mixed_targets(tmp_path, resume_setup):
    train(resume_setup("trainer.max_epochs=1"), tmp_path / "plain")
    mixed = train(resume_setup("trainer.max_epochs=1", MIX), tmp_path / "mixed")
    plain_loss, mixed_loss = (float(read_history(tmp_path / d)[0]["train/loss"]) for d in ("plain", "mixed"))
    assert mixed_loss != plain_loss and math.isfinite(mixed_loss)
    assert mixed["test/acc"] is not None
    last = torch.load(tmp_path / "mixed" / "checkpoints" / "last.pt", weights_only=True)
    assert last["rng"]["mix"] is not None and last["meta"]["config"]["aug"]["mix"]["cutmix_alpha"] == 1.0


def test_ema_is_validated_selected_and_checkpointed_as_its_own_model(tmp_path, resume_setup):
    metrics = train(resume_setup("trainer.max_epochs=2", "trainer.ema_decay=0.9"), tmp_path / "run")
    history = read_history(tmp_path / "run")
    assert all(r["val_raw/acc"] != "" and r["val/acc"] != "" for r in history)
    assert any(r["val_raw/loss"] != r["val/loss"] for r in history)  # two models, two sets of val metrics
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    if best["epoch"] == last["epoch"]:
        for name, tensor in last["ema"]["module"].items():  # best.pt's model is the EMA
            assert torch.equal(best["model"][name], tensor), name
    assert metrics["val/loss"] == pytest.approx(float(history[metrics["best_epoch"] - 1]["val/loss"]))


def test_resume_after_a_crash_mid_schedule(tmp_path, resume_setup, monkeypatch):
    """With a cosine schedule over 2 epochs, a run that dies after epoch 1 and is resumed equals one that
    did not die (the schedule depends on max_epochs, so B must be configured like A)."""
    overrides = ["sched=cosine", "sched.warmup_epochs=0.5", "trainer.max_epochs=2"]
    train(resume_setup(*overrides), tmp_path / "A")

    real_log_epoch = trainer_module.Trainer._log_epoch

    def crash_after_epoch_1(self, record, best):
        real_log_epoch(self, record, best)
        if record["epoch"] == 1:
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module.Trainer, "_log_epoch", crash_after_epoch_1)
        with pytest.raises(Interrupted):
            train(resume_setup(*overrides), tmp_path / "B")
    assert not (tmp_path / "B" / "metrics.json").exists()
    ckpt = tmp_path / "B" / "checkpoints" / "last.pt"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    train(resume_setup(*overrides, f"ckpt_path={quote(ckpt)}"), tmp_path / "C")
    compare_runs(tmp_path / "A", tmp_path / "C")


def test_resume_when_no_later_epoch_improves(tmp_path, resume_setup):
    # lr 1e-30 changes no float32 weight: epoch 2 cannot improve on epoch 1 (the best stays in run B).
    train(resume_setup("optim.lr=1e-30", "trainer.max_epochs=1"), tmp_path / "B")
    ckpt = tmp_path / "B" / "checkpoints" / "last.pt"
    metrics = train(resume_setup("optim.lr=1e-30", "trainer.max_epochs=2", f"ckpt_path={quote(ckpt)}"),
                    tmp_path / "C")
    assert metrics["epochs"] == 2 and metrics["best_epoch"] == 1
    assert metrics["test/acc"] == read_metrics(tmp_path / "B")["test/acc"]


def test_resume_refuses_other_classes(tmp_path, resume_setup):
    train(resume_setup(), tmp_path / "B")
    ckpt = tmp_path / "B" / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match=r"trained with other settings \(data.classes: None → \[.top., .bottom.\]"):
        train(resume_setup("trainer.max_epochs=2", "data.classes=[top,bottom]", f"ckpt_path={quote(ckpt)}"),
              tmp_path / "C")


def test_a_resume_mismatch_lists_every_difference_and_the_command_to_resume_with(tmp_path, resume_setup):
    """Every difference at once (model and data), no noise from defaults, and the command of the run that
    wrote the checkpoint (its .hydra/overrides.yaml, as Hydra records it for every run and sweep job)."""
    train(resume_setup(), tmp_path / "B")
    (tmp_path / "B" / ".hydra").mkdir()
    (tmp_path / "B" / ".hydra" / "overrides.yaml").write_text("- model=lenet\n- model.dropout=0.3\n- seed=4\n")
    ckpt = tmp_path / "B" / "checkpoints" / "last.pt"
    with pytest.raises(UserError) as info:
        train(resume_setup("model.dropout=0.1", "data.classes=[top,bottom]", f"ckpt_path={quote(ckpt)}"),
              tmp_path / "C")
    message = str(info.value)
    assert "data.classes: None → ['top', 'bottom']" in message and "model.dropout: 0.3 → 0.1" in message
    assert message.count("→") == 2  # nothing else: defaults and paths are no difference
    assert f"python -m src.train model=lenet model.dropout=0.3 seed=4 ckpt_path={ckpt}" in message


def test_resume_ignores_defaults_written_out_and_moved_modules(tmp_path, resume_setup, monkeypatch):
    """A checkpoint whose stored config repeats class defaults (as model files did before they were
    trimmed) or names its class by another module path the registry knows it by (src/registry.py: aliases)
    resumes: the settings are the same. A module path the registry does not know is another class."""
    from src import registry
    from src.models import LeNet

    monkeypatch.setitem(registry._classes["model"], "src.engine.lenet.LeNet", LeNet)  # an alias of a moved class
    train(resume_setup(), tmp_path / "B")
    ckpt = torch.load(tmp_path / "B" / "checkpoints" / "last.pt", weights_only=True)
    stored = ckpt["meta"]["config"]
    stored["model"]["_target_"] = "src.engine.lenet.LeNet"  # the class lived in another module then
    assert stored["data"].pop("balanced") is False  # a config that left the class default out
    torch.save(ckpt, tmp_path / "old.pt")
    metrics = train(resume_setup("trainer.max_epochs=2", f"ckpt_path={quote(tmp_path / 'old.pt')}"), tmp_path / "C")
    assert metrics["epochs"] == 2
    stored["model"]["_target_"] = "usernet.LeNet"  # a class of the same name in another module: not the same
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"model._target_: usernet.LeNet → src.models.lenet.LeNet"):
        train(resume_setup("trainer.max_epochs=2", f"ckpt_path={quote(tmp_path / 'other.pt')}"), tmp_path / "D")


def write_bad_checkpoint(path: Path, kind: str) -> None:
    if kind == "foreign":  # a loadable file, but not one of ours
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "pickled_code":  # an object that weights_only=True must refuse to unpickle
        torch.save({"model": {}, "meta": {}, "args": argparse.Namespace(lr=1)}, path)
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(10_000)}, "meta": {}}, path)
        path.write_bytes(path.read_bytes()[:20_000])
    elif kind == "garbage":
        path.write_bytes(b"this is not a checkpoint")


@pytest.mark.parametrize(("kind", "problem"), [
    ("missing", "does not exist"),
    ("foreign", "was not written by this runner"),
    ("pickled_code", "was refused"),
    ("truncated", "is not a readable PyTorch checkpoint"),
    ("garbage", "is not a readable PyTorch checkpoint"),
])
def test_resume_from_missing_or_bad_checkpoint(tmp_path, resume_setup, kind, problem):
    ckpt = tmp_path / "bad.pt"
    write_bad_checkpoint(ckpt, kind)
    with pytest.raises(UserError, match=re.escape(str(ckpt)) + " " + problem):
        train(resume_setup(f"ckpt_path={quote(ckpt)}"), tmp_path / "C")


# -- invalid config values -----------------------------------------------------------------------------------

BAD_VALUES = [
    pytest.param("data.val_split=1.5", "data.val_split=1.5", id="val_split"),
    pytest.param("data.channels=2", "data.channels=2", id="channels"),
    pytest.param("trainer.device=cuda", "trainer.device=cuda", id="device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    pytest.param("trainer.precision=fp16", "trainer.precision=fp16", id="fp16_on_cpu"),
    pytest.param("model.dropout=1.5", "model.dropout=1.5", id="dropout"),
    pytest.param("model=resnext3 model.num_stages=0", "model.num_stages=0", id="num_stages"),
    pytest.param("sched=step sched.step_size=0", "sched.step_size=0", id="step_size"),
    pytest.param("loss.label_smoothing=1.0", "loss.label_smoothing=1.0", id="label_smoothing"),
    pytest.param("optim.lr=0", "optim.lr=0", id="lr_zero"),
    pytest.param("optim.lr=-1", "optim.lr=-1", id="lr_negative"),
    pytest.param("data.batch_size=0", "data.batch_size=0", id="batch_size"),
    pytest.param("data.image_size=4", "data.image_size=4", id="image_size"),
]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", per_class=4, size=16)


@pytest.mark.parametrize(("override", "message"), BAD_VALUES)
def test_invalid_config_value_raises_config_error(tmp_path, tiny_root, override, message):
    """The ConfigError itself reaches the caller (not Hydra's InstantiationException wrapping it), so
    src/train.py reports its one sentence and exits 2."""
    cfg = compose_train(fast_overrides(tiny_root, tmp_path / "cache", *override.split()))
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


CHECKED_BEFORE_DATA = [
    "trainer.precision=fp16", "aug.crop.padding_mode=wrap", "sched=step sched.step_size=0", "optim.lr=0",
    "optim.lr=-0.1", "data.batch_size=0", "data.val_split=1.0", "data.val_split=-0.1", "data.image_size=4",
    "data.channels=2", "model=resnext3 model.num_stages=0", "model.dropout=1.0", "model.dropout=-0.5",
    "loss.class_weights=sometimes",
    *([] if torch.cuda.is_available() else ["trainer.device=cuda"]),
]


@pytest.mark.parametrize("override", CHECKED_BEFORE_DATA)
def test_config_checks_come_before_reading_the_dataset(tmp_path, override):
    """A bad value is reported as a ConfigError even when the dataset is missing: nothing was read."""
    cfg = compose_train(fast_overrides(tmp_path / "missing", tmp_path / "cache", "aug=basic", *override.split()))
    with pytest.raises(ConfigError, match=re.escape(override.split()[-1].split("=")[0])):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, make_folder, train_cfg):
    # Epoch 1 trains normally; from epoch 2 on the lr is multiplied by 1e30 and the loss overflows.
    root = make_folder(splits={"train": 8, "val": 2})
    cfg = train_cfg(root, "trainer.max_epochs=3", "sched=multistep", "sched.milestones=[1]", "sched.gamma=1e30")
    with pytest.raises(UserError, match="training loss became .* in epoch 2"):
        train(cfg, tmp_path / "run")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("optimizer, device, expected", [
    (torch.optim.SGD, "cuda", {"fused": True}),
    (torch.optim.AdamW, "cuda", {"fused": True}),
    (torch.optim.AdamW, "cpu", {}),
    (torch.optim.RMSprop, "cuda", {}),  # no fused kernel: nothing to ask for
])
def test_fused_optimizer_only_on_cuda(optimizer, device, expected):
    assert trainer_module.fused_on_cuda(partial(optimizer, lr=0.1), torch.device(device)) == expected


def test_fused_choice_in_the_config_is_kept():
    chosen = partial(torch.optim.Adam, lr=0.1, fused=False)
    assert trainer_module.fused_on_cuda(chosen, torch.device("cuda")) == {}
    # foreach=true with fused=True added is a RuntimeError in torch: the config's foreach choice is kept
    assert trainer_module.fused_on_cuda(partial(torch.optim.SGD, lr=0.1, foreach=True), torch.device("cuda")) == {}
