"""Bad configs and run folders through the real commands: a key the runner does not read, a value that cannot be
resolved or would overflow or exhaust memory, a config file that expands without bound, a folder that cannot be
written. Each ends the command with one sentence naming the key, value, file or folder, exit code 2 and no
traceback, before any work."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf, open_dict

import src.training.experiment as experiment
from src.command_rules import EVAL_RULES, TRAIN_RULES, check_known_keys
from src.errors import ConfigError, UserError
from src.registry import register
from tests.helpers import ROOT, compose_entry, quote

QUICK = ["experiment=quickstart", "trainer.fast_dev_run=1", "logger=none"]


def run(command: str, *args: str, timeout: float = 120, limit_memory: int | None = None) -> str:
    """Runs `python -m src.<command> args`, expects the one-sentence refusal (exit 2, no traceback) and returns
    what it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for name in ("HYDRA_FULL_ERROR", "DATA_DIR", "CACHE_DIR", "UNSET_FOR_THE_TEST"):
        env.pop(name, None)
    prefix = ["prlimit", f"--as={limit_memory}"] if limit_memory else []
    result = subprocess.run([*prefix, sys.executable, "-m", f"src.{command}", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    printed = result.stdout + result.stderr
    assert result.returncode == 2, printed[-3000:]
    assert "Traceback" not in printed, printed[-3000:]
    return printed


def outputs(tmp_path: Path) -> list[str]:
    return [f"paths.output_dir={quote(tmp_path / 'outputs')}", f"paths.cache_dir={quote(tmp_path / 'cache')}"]


# --- keys the runner does not read -------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,expected", [
    (["+trainr.max_epochs=1"], "trainr.max_epochs is not a setting this command reads (did you mean "
                               "trainer.max_epochs?)"),
    (["+sed=3"], "sed is not a setting this command reads (did you mean seed?)"),
    (["+loss.smoothing=0.1"], "did you mean loss.label_smoothing?"),
    (["+tta.mod=flip"], "did you mean tta.mode?"),
    (["+logger.flush_sec=3", "logger=tensorboard"], "did you mean logger.flush_secs?"),  # a logger never built
    (["+data.bach_size=3"], "data.bach_size is not a setting of DigitsData (did you mean data.batch_size?"),
    (["+aug.crop.sise=3", "aug=basic"], "aug.crop.sise is not a setting of PadCrop"),
])
def test_a_key_the_command_does_not_read_is_named_with_the_closest_one(compose_cfg, overrides, expected):
    """In-process, the check every command makes first (command_rules.check_values); the CLI tests below show
    the commands run it."""
    cfg = compose_cfg([*QUICK, *overrides])
    with pytest.raises(ConfigError) as refused:
        check_known_keys(cfg, TRAIN_RULES)
        from src.config import build
        build(cfg.data)
        build(cfg.aug)
    assert expected in str(refused.value)


def test_a_key_of_another_command_is_refused_too():
    cfg = compose_entry("eval", ["ckpt_path=x", "+data.splt=val", "+splt=val"])
    with pytest.raises(ConfigError, match=r"data\.splt is not a setting this command reads \(did you mean "
                                          r"data\.split\?\)"):
        check_known_keys(cfg, EVAL_RULES)


def test_every_shipped_config_holds_only_keys_its_command_reads():
    """The check refuses nothing the runner ships: every experiment and group option composes clean."""
    for name in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        cfg = compose_entry("train", [f"experiment={name}"])
        if "root" in cfg.data and cfg.data.root is None:  # data=folder: the user names the folder
            cfg = compose_entry("train", [f"experiment={name}", "data.root=/somewhere"])
        check_known_keys(cfg, TRAIN_RULES)
    for logger in sorted(p.stem for p in (ROOT / "conf" / "logger").glob("*.yaml")):
        check_known_keys(compose_entry("train", [f"logger={logger}"]), TRAIN_RULES)
    check_known_keys(compose_entry("eval", ["ckpt_path=x", "tta=tencrop"]), EVAL_RULES)


def test_a_misspelt_key_in_an_experiment_of_a_config_dir_stops_the_run_before_any_work(tmp_path):
    experiment = tmp_path / "my_conf" / "experiment" / "mine.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text("# @package _global_\ndefaults:\n  - override /model: lenet\ntrainr:\n  max_epochs: 1\n")
    printed = run("train", "--config-dir", str(tmp_path / "my_conf"), "experiment=mine", "data=digits",
                  "logger=none", *outputs(tmp_path))
    assert "trainr.max_epochs is not a setting this command reads (did you mean trainer.max_epochs?)" in printed
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("command,args,expected", [
    ("train", ["+sed=3", *QUICK], "sed is not a setting this command reads (did you mean seed?)"),
    ("evaluate", ["ckpt_path=missing.pt", "+data.splt=val"], "did you mean data.split?"),
    ("predict", ["ckpt_path=missing.pt", "images=x.png", "+detector.nme=haar"], "did you mean detector.name?"),
    ("export", ["ckpt_path=missing.pt", "+fromat=onnx"], "did you mean format?"),
    ("bench", ["+bench.batchs=3", "data=digits"], "did you mean bench.batches?"),
])
def test_every_command_refuses_a_misspelt_key(tmp_path, command, args, expected):
    extra = outputs(tmp_path) if command in ("train", "bench") else []
    assert expected in run(command, *args, *extra)


# --- values that cannot be resolved, overflow or cannot fit in memory ---------------------------------------

@pytest.mark.parametrize("args,expected", [
    (["+a=${b}", "+b=${a}"], "cannot be resolved: Recursive interpolation detected"),
    pytest.param(["trainer.max_epochs=${trainer.max_epochs}"],
                 "trainer.max_epochs cannot be resolved: Recursive interpolation", marks=pytest.mark.slow),
    (["seed=${oc.env:UNSET_FOR_THE_TEST}"], "seed cannot be resolved: "),
    (["seed=99999999999999999999"], "seed=99999999999999999999 is invalid: its integers must fit 64 bits"),
    pytest.param(["data.split_seed=-99999999999999999999"],
                 "data.split_seed=-99999999999999999999 is invalid: its integers", marks=pytest.mark.slow),
    pytest.param(["data.image_size=1000000"], "data.image_size=1000000 is invalid: it must be in [8, 4096]",
                 marks=pytest.mark.slow),
])
def test_values_that_reach_the_library_are_checked_first(tmp_path, args, expected):
    assert expected in run("train", *QUICK, *args, *outputs(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["hydra.run.dir=${hydra.run.dir}"], "hydra.run.dir cannot be resolved: Recursive interpolation detected"),
    (["hydra.run.dir=${oc.env:UNSET_FOR_THE_TEST}"], "hydra.run.dir cannot be resolved: "),
    (["data=folder", "data.root=${oc.env:UNSET_FOR_THE_TEST}"], "data.root cannot be resolved: "),
    (["data.image_size=4096"], "needs 28.1 GiB"),  # digits at 4096 px: refused before a byte is allocated
])
def test_more_values_that_cannot_be_resolved_or_held(tmp_path, args, expected):
    if expected.startswith("needs"):
        from src.data.memory import HOST_FRACTION, available_host_bytes

        if HOST_FRACTION * available_host_bytes() > 28.1 * 2**30:
            pytest.skip("this machine has the memory for it")
        expected = "from scikit-learn's digits needs"
    assert expected in run("train", *QUICK, *args, *outputs(tmp_path))


@pytest.mark.slow
def test_running_out_of_memory_is_one_sentence(tmp_path):
    """A batch the machine cannot hold (here: an address space capped at 6 GB; batches of 1024 images of 512 px)
    ends with the sizes to lower, not an allocator traceback."""
    printed = run("train", "experiment=quickstart", "logger=none", "data.image_size=512", "data.batch_size=1024",
                  "trainer.max_epochs=1", "trainer.limit_train_batches=1", *outputs(tmp_path),
                  limit_memory=6 * 10**9)
    assert "out of memory (tried to allocate" in printed and "lower data.batch_size" in printed


def alias_bomb(path: Path, levels: int = 12) -> Path:
    """A config of a few lines whose aliases expand to 10**levels values."""
    lines = ["# @package _global_", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\nseed: 1\n")
    return path


@pytest.mark.parametrize("command,flag", [("train", "--config-dir"),
                                          pytest.param("evaluate", "-cd", marks=pytest.mark.slow)])
def test_a_yaml_alias_bomb_in_a_config_dir_is_refused_in_seconds(tmp_path, command, flag):
    bomb = alias_bomb(tmp_path / "my_conf" / "experiment" / "bomb.yaml")
    started = time.monotonic()
    args = ["experiment=bomb", *outputs(tmp_path)] if command == "train" else ["ckpt_path=x.pt"]
    printed = run(command, flag, str(tmp_path / "my_conf"), *args, timeout=60)
    assert time.monotonic() - started < 30
    assert f"{bomb} was refused: its YAML aliases (*name) expand to more than 100,000 values" in printed


def test_aliases_of_an_ordinary_config_are_counted_once(tmp_path):
    from src.entry import check_config_files

    config = tmp_path / "conf" / "experiment" / "shared.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("base: &base {lr: 0.1, momentum: 0.9}\noptim: *base\nother: *base\nself: &me [1, *me]\n")
    check_config_files(["--config-dir", str(tmp_path / "conf")])  # no SystemExit
    alias_bomb(tmp_path / "conf" / "experiment" / "bomb.yaml", levels=6)  # 10**6 values
    with pytest.raises(SystemExit):
        check_config_files([f"--config-dir={tmp_path / 'conf'}"])


# --- run folders that cannot be written ---------------------------------------------------------------------

@pytest.mark.parametrize("folder,expected", [
    ("{file}", "cannot be used as a folder: a file is there"),
    pytest.param("{file}/run", "cannot be created: Not a directory", marks=pytest.mark.slow),
    ("/proc/fer-runner-test", "cannot be created"),
])
def test_a_run_folder_that_cannot_be_written_is_named(tmp_path, folder, expected):
    (tmp_path / "file").write_text("not a folder")
    folder = folder.format(file=tmp_path / "file")
    printed = run("train", *QUICK, f"hydra.run.dir={quote(folder)}")
    assert f"hydra.run.dir={folder} {expected}" in printed


@pytest.mark.slow
@pytest.mark.parametrize("command,args,key", [
    ("train", ["-m", *QUICK, "seed=0,1", "hydra.sweep.dir={bad}"], "hydra.sweep.dir"),
    ("evaluate", ["ckpt_path=x.pt", "hydra.run.dir={bad}"], "hydra.run.dir"),
    ("predict", ["ckpt_path=x.pt", "images=x.png", "out_dir={bad}"], "out_dir"),
    ("predict", ["ckpt_path=x.pt", "images=x.png", "faces=false", "output={bad}/p.csv"], "output"),
])
def test_every_command_names_the_folder_it_cannot_write(tmp_path, command, args, key):
    (tmp_path / "file").write_text("not a folder")
    bad = tmp_path / "file"
    printed = run(command, *[a.split("=", 1)[0] + "=" + quote(a.split("=", 1)[1].replace("{bad}", str(bad)))
                             if "{bad}" in a else a for a in args])
    assert f"{key}={bad} cannot be used as a folder: a file is there" in printed


@pytest.mark.slow
def test_a_read_only_file_system_is_named(tmp_path):
    mount = tmp_path / "read_only"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a read-only file system needs root")
    try:
        printed = run("train", *QUICK, f"hydra.run.dir={quote(mount / 'run')}")
        assert f"hydra.run.dir={mount / 'run'} cannot be created: Read-only file system" in printed
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_report_names_an_out_folder_it_cannot_write(tmp_path, caplog):
    from src.report import main

    (tmp_path / "file").write_text("not a folder")
    assert main([str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    assert f"--out={tmp_path / 'file'} cannot be used as a folder: a file is there" in caplog.text


# --- a run whose own checkpoint the runner would refuse ---------------------------------------------------------

class ActivatedNet(torch.nn.Module):
    """A user's model whose config takes a module built by Hydra (`act: {_target_: torch.nn.ReLU}`): training
    could build it, but a checkpoint's stored config may name no nested class (config.build_stored)."""

    def __init__(self, num_classes: int, in_channels: int, act: Any = None):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                       torch.nn.Linear(16 * in_channels, num_classes))
        self.act = act or torch.nn.Identity()

    def forward(self, x):
        return self.net(self.act(x))


def test_duplicate_class_names_stop_the_run_before_it_trains(tmp_path):
    """data.classes=[3,3] trained to the end and wrote a best.pt that src.evaluate refused."""
    printed = run("train", *QUICK, "data.classes=['3','3']", *outputs(tmp_path))
    assert "data.classes=[3,3] is invalid: it must be a non-empty list of distinct, non-empty class names" in printed


def test_a_model_config_a_checkpoint_cannot_hold_stops_the_run_before_it_trains(make_folder, train_cfg, tmp_path):
    register("model", ActivatedNet)
    cfg = train_cfg(make_folder())
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"_target_": f"{__name__}.ActivatedNet", "act": {"_target_": "torch.nn.ReLU"}})
    with pytest.raises(UserError, match=r"this run's checkpoint was refused: its stored config has the key "
                                        r"model\.act\._target_"):
        experiment.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first epoch


def test_classes_named_alike_by_a_dataset_reader_stop_the_run_before_it_trains(make_folder, train_cfg, tmp_path,
                                                                              monkeypatch):
    """A reader of the user's may name two classes alike; the real meta is checked once the data is read."""
    from src.data.datasets import ImageData

    describe = ImageData.describe
    monkeypatch.setattr(ImageData, "describe", lambda self: {**describe(self), "classes": ["a", "a", "b"]})
    with pytest.raises(UserError, match=r"this run's checkpoint would be refused: its meta\.data\.classes=\[a,a,b\]"):
        experiment.train(train_cfg(make_folder()), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_user_model_whose_config_a_checkpoint_cannot_hold_is_refused_by_the_cli(tmp_path, monkeypatch):
    """The same through the command line: the model in a module of the user's (plugins), its config in a
    --config-dir, a nested `_target_` in it."""
    (tmp_path / "usernets.py").write_text(
        "import torch\n\n\nclass ActivatedNet(torch.nn.Module):\n"
        "    def __init__(self, num_classes: int, in_channels: int, act: object = None):\n"
        "        super().__init__()\n        self.act = act\n"
        "        self.net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),\n"
        "                                       torch.nn.Linear(16 * in_channels, num_classes))\n\n"
        "    def forward(self, x):\n        return self.net(self.act(x))\n")
    model = tmp_path / "my_conf" / "model" / "activated.yaml"
    model.parent.mkdir(parents=True)
    model.write_text("_target_: usernets.ActivatedNet\nact: {_target_: torch.nn.ReLU}\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    printed = run("train", "--config-dir", str(tmp_path / "my_conf"), *QUICK, "model=activated", "plugins=[usernets]",
                  *outputs(tmp_path))
    assert "this run's checkpoint was refused: its stored config has the key model.act._target_" in printed
