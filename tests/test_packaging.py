"""Installable, not only clonable: the wheel carries the configs and the console scripts, and the commands
work from any folder (outputs go to the current one). The real `pip install` into a fresh environment is
slow (torch), so here the built wheel is unpacked and put on PYTHONPATH, which is what installing it does
for the project's own files."""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from tests.helpers import ROOT

PACKAGES = sorted(".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "src").rglob("__init__.py"))


def test_every_package_is_listed_for_installation():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(p for p in listed if p != "src.conf") == PACKAGES


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of what it is made of (setuptools writes build/ into the source tree)."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("fer_runner-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_the_console_scripts(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "src/conf/train.yaml" in names and "src/conf/model/resnet18.yaml" in names
    assert "src/conf/experiment/quickstart.yaml" in names and "src/conf/hydra/help/command.yaml" in names
    entry_points = configparser.ConfigParser()
    (info,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points.read_string(zipfile.ZipFile(wheel).read(info).decode())
    scripts = dict(entry_points["console_scripts"])
    commands = {"fer-train", "fer-evaluate", "fer-predict", "fer-demo", "fer-export", "fer-report", "fer-bench"}
    assert commands <= set(scripts)


@pytest.mark.slow
def test_the_installed_commands_work_from_any_folder(wheel, tmp_path):
    """Installed (the wheel unpacked, nothing of the clone on the path), in an empty folder: the console
    scripts' entry points train the quickstart into ./outputs and evaluate the printed run directory."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "empty"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def run(script: str, *args: str) -> subprocess.CompletedProcess:  # what the fer-* console script runs
        module, function = script.split(":")
        code = f"import sys; sys.argv[0] = 'fer'; from {module} import {function}; {function}()"
        return subprocess.run([sys.executable, "-c", code, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    trained = run(scripts["fer-train"], "experiment=quickstart", "trainer.max_epochs=1", "logger=none")
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run_dir,) = (work / "outputs" / "runs").iterdir()
    where = subprocess.run([sys.executable, "-c", "import src.entry; print(src.entry.CONFIG_DIR)"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    assert where == str(site / "src" / "conf")  # the installed copy of the configs
    evaluated = run(scripts["fer-evaluate"], f"ckpt_path={run_dir.relative_to(work)}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]

    (eval_dir,) = (work / "outputs" / "eval").iterdir()
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, eval_dir))
    assert ours["test/acc"] == theirs["test/acc"] and ours["test/macro_f1"] == theirs["test/macro_f1"]
    assert not (ROOT / "outputs" / "runs" / run_dir.name).exists()  # written here, not in the clone
