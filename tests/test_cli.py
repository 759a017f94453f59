"""`python -m src.train` as a user runs it: a subprocess smoke run, --help, --cfg job, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import GROUPS, ROOT, quote, write_dataset


def run_train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}  # see conftest.py
    for name in ("HYDRA_FULL_ERROR", "DATA_DIR", "CACHE_DIR"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def output_args(tmp_path: Path) -> list[str]:
    return [f"paths.output_dir={quote(tmp_path / 'outputs')}", f"paths.cache_dir={quote(tmp_path / 'cache')}"]


def test_quickstart_smoke_run(tmp_path):
    result = run_train("experiment=quickstart", "trainer.max_epochs=1", *output_args(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert "_lenet_" in run_dir.name  # <date>_<time>_<model>_<id>
    for path in ("metrics.json", "history.csv", ".hydra/config.yaml", ".hydra/overrides.yaml",
                 ".hydra/hydra.yaml", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / path).is_file(), path
    assert list(run_dir.glob("events.out.tfevents.*"))  # logger=tensorboard by default
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["classes"] == [str(d) for d in range(10)]
    assert metrics["test/acc"] > 0.2  # 10 classes: chance is 0.1
    from sklearn.datasets import load_digits

    per_digit = np.bincount(load_digits().target)  # test_split=0.2, stratified: round(0.2 * n) of each digit
    assert [sum(row) for row in metrics["test/confusion_matrix"]] == [round(0.2 * n) for n in per_digit]
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["meta"]["config"]["trainer"]["max_epochs"] == 1
    assert str(run_dir) in result.stdout + result.stderr  # the run directory is printed at the end


def test_help_lists_the_groups():
    result = run_train("--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "python -m src.train" in result.stdout
    for group in GROUPS:
        line = next((ln for ln in result.stdout.splitlines() if ln.strip().startswith(f"{group}:")), None)
        assert line is not None, f"--help does not list the {group} group"
        for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
            assert option in line, f"--help does not list {group}={option}"


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "keys"), [("evaluate", ["ckpt_path:", "split:", "embed:", "tta:"]),
                                             ("predict", ["ckpt_path:", "images:", "top_k:", "output:"]),
                                             ("export", ["ckpt_path:", "format:", "output:"])])
def test_help_of_the_other_commands_lists_only_what_they_take(entry, keys):
    result = run_entry(entry, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"python -m src.{entry} ckpt_path=" in result.stdout  # a header with examples
    assert all(key in result.stdout for key in keys)
    assert "Configuration groups" not in result.stdout and "model:" not in result.stdout  # no training groups


def test_a_user_config_dir_adds_an_option_without_editing_the_package(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_lenet.yaml").write_text("_target_: src.models.lenet.LeNet\ndropout: 0.25\n")
    result = run_train("--config-dir", str(tmp_path), "model=my_lenet", "--cfg", "job", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "_target_: src.models.lenet.LeNet" in result.stdout and "dropout: 0.25" in result.stdout


def test_cfg_job_prints_the_composed_config():
    result = run_train("--cfg", "job", "model=resnext3", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "num_stages: 3" in result.stdout
    assert "block: bottleneck" in result.stdout
    assert "group_width: 32" in result.stdout


@pytest.mark.slow  # in-process in tests/test_trust.py; here as a real process
def test_data_error_exits_2_with_one_sentence(tmp_path):
    missing = tmp_path / "no_such_dataset"
    result = run_train("data=folder", f"data.root={quote(missing)}", "logger=none", *output_args(tmp_path),
                       timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert f"dataset folder {missing} does not exist" in output
    assert "Traceback" not in output


@pytest.mark.slow  # in-process in tests/test_trust.py; here as a real process
def test_config_error_exits_2_with_one_sentence(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=2, size=16)
    result = run_train("data=folder", f"data.root={quote(data)}", "data.val_split=1.5", "logger=none",
                       *output_args(tmp_path), timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "data.val_split=1.5 is invalid" in output
    assert "Traceback" not in output and "InstantiationException" not in output


def run_entry(entry: str, *args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", f"src.{entry}", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow  # the same code in-process: tests/test_evaluate.py, tests/test_trust.py
def test_evaluate_and_predict_commands(tmp_path):
    """The evaluate and predict entrypoints as a user runs them, on a checkpoint of a tiny training."""
    from src.training.experiment import train
    from tests.helpers import compose_train, fast_overrides

    root = write_dataset(tmp_path / "data", splits={"train": 8, "val": 2, "test": 3})
    train(compose_train(fast_overrides(root, tmp_path / "cache")), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"

    result = run_entry("evaluate", f"ckpt_path={quote(ckpt)}", "tta=flip", *output_args(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    (eval_dir,) = (tmp_path / "outputs" / "eval").iterdir()
    assert (eval_dir / "metrics.json").is_file() and (eval_dir / ".hydra" / "config.yaml").is_file()
    assert json.loads((eval_dir / "metrics.json").read_text())["tta"] == "flip"

    workdir = tmp_path / "elsewhere"  # predict writes nothing but its output, from any folder
    workdir.mkdir()
    result = run_entry("predict", f"ckpt_path={quote(ckpt)}", f"images=[{quote(root / 'test')}]", "faces=false",
                       "output=p.csv", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in workdir.iterdir()) == ["p.csv"]
    assert result.stdout.count(".png: ") == 9

    result = run_entry("evaluate", f"ckpt_path={quote(tmp_path / 'missing.pt')}", *output_args(tmp_path))
    assert result.returncode == 2 and "does not exist" in result.stdout + result.stderr
