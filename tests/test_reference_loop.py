"""The in-repo yardstick (tools/reference_loop.py): it runs, counts what it times as documented,
and, given another copy of the yardstick in $BENCH_REFERENCE (the development machines have one),
counts exactly what that one counts.

Each run is a subprocess on a tiny synthetic folder: one intra-op thread, no DataLoader workers, the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_dataset

pytestmark = pytest.mark.slow  # subprocesses that import torchvision (tests/test_bench.py runs the loop once)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "reference_loop.py"
# Another copy of the yardstick to agree with, when the environment names one (src.bench reads it too).
OTHER = Path(os.environ.get("BENCH_REFERENCE", "")).expanduser()
HAS_OTHER = bool(os.environ.get("BENCH_REFERENCE")) and OTHER.is_file()

# 3 classes x 8 images: 6 batches of 4 per epoch, of which 4 run; 2 epochs; the first batch untimed.
BATCH, LIMIT, EPOCHS, WARMUP = 4, 4, 2, 1
TIMED_IMAGES = (EPOCHS * LIMIT - WARMUP) * BATCH
ARGS = ("--device", "cpu", "--workers", "0", "--size", "16", "--batch-size", str(BATCH),
        "--limit-batches", str(LIMIT), "--epochs", str(EPOCHS), "--warmup-batches", str(WARMUP))
KEYS = {"mode", "model", "device", "images", "train_s", "images_per_s"}


def start(command: list[str], root: Path, *args: str) -> subprocess.Popen:
    """`python COMMAND --root ROOT ARGS...`, started from the repository's root."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *command, "--root", str(root), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def json_line(process: subprocess.Popen) -> dict:
    """The JSON line a started loop prints, once it has finished."""
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[tuple[str, str], dict]:
    """{(loop, mode): JSON line} for loop "ours" (and "other" where it exists) in modes seed and bare.

    Every run pays seconds of imports (torchvision imports torch._dynamo), so all of them start at
    once and share the cores. Seed mode: the built-in LeNet, the script run by its path. Bare mode:
    the project's LeNet config, the script run as a module.
    """
    folder = write_dataset(tmp_path_factory.mktemp("reference") / "train", per_class=8, size=16)
    args = {"seed": ("--mode", "seed", *ARGS),
            "bare": ("--mode", "bare", "--model-yaml", "conf/model/lenet.yaml", *ARGS)}
    commands = {("ours", "seed"): [str(SCRIPT)], ("ours", "bare"): ["-m", "tools.reference_loop"]}
    if HAS_OTHER:
        commands.update({("other", mode): [str(OTHER)] for mode in args})
    processes = {key: start(command, folder, *args[key[1]]) for key, command in commands.items()}
    try:
        return {key: json_line(process) for key, process in processes.items()}
    finally:  # after a failure, no run is left behind
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.parametrize("mode", ["seed", "bare"])
def test_counts_the_timed_images(results, mode):
    result = results["ours", mode]
    assert set(result) == KEYS
    assert (result["mode"], result["device"]) == (mode, "cpu")
    # warm-up batches are counted over the run, not per epoch
    assert result["images"] == TIMED_IMAGES
    assert result["train_s"] > 0 and result["images_per_s"] > 0


def test_builtin_and_yaml_models(results):
    """Seed mode ran the built-in LeNet; bare mode conf/model/lenet.yaml, as `python -m tools.reference_loop`."""
    assert results["ours", "seed"]["model"] == "lenet"
    assert results["ours", "bare"]["model"] == "lenet.yaml"


@pytest.mark.skipif(not HAS_OTHER, reason="no other copy of the yardstick in $BENCH_REFERENCE")
@pytest.mark.parametrize("mode", ["seed", "bare"])
def test_counts_what_the_other_yardstick_counts(results, mode):
    ours, other = results["ours", mode], results["other", mode]
    assert set(other) == set(ours)
    assert {k: other[k] for k in ("mode", "model", "device", "images")} == \
        {k: ours[k] for k in ("mode", "model", "device", "images")}
