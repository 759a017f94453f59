"""Crashes lose nothing, runs are reproducible and recorded, disk and memory limits give clear errors,
and a failing job does not stop a sweep."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException

import src.fileio as fileio
import src.training.trainer as trainer_module
from src.data import Split
from src.data.decoding import read_folder
from src.data.loader import DeviceLoader
from src.entry import run_or_exit
from src.errors import DataError, UserError
from src.training.experiment import train
from src.training.monitors import Interrupted
from tests.helpers import CONF_DIR, ROOT, TIMING_KEYS, compose_train, fast_overrides, quote, write_dataset


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def history(run_dir: Path) -> list[dict]:
    return [without_timing(r) for r in torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
            ["state"]["history"]]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "faces", splits={"train": 16, "val": 4, "test": 4})


def setup(root: Path, cache: Path, *overrides: str):
    """Every random stream a resume must restore: batch order, augmentation, dropout; 6 batches an epoch."""
    return compose_train(fast_overrides(root, cache, "aug=fer", "model.dropout=0.3", "sched=cosine",
                                        "trainer.monitor=val/loss", *overrides))


# -- Ctrl-C ---------------------------------------------------------------------------------------------------


def test_ctrl_c_saves_a_mid_epoch_checkpoint_that_resumes_exactly(tmp_path, data_root, monkeypatch):
    cache = tmp_path / "cache"
    reference = train(setup(data_root, cache, "trainer.max_epochs=3"), tmp_path / "A")

    calls = {"n": 0}
    original = trainer_module.Trainer._loss

    def loss_then_ctrl_c(output, labels, criterion):
        calls["n"] += 1
        if calls["n"] == 9:  # epoch 2, batch 3 of 6: as if the user pressed Ctrl-C during this step
            signal.raise_signal(signal.SIGINT)
        return original(output, labels, criterion)

    monkeypatch.setattr(trainer_module.Trainer, "_loss", staticmethod(loss_then_ctrl_c))
    # the handler the run found (a shell starts background jobs with SIGINT ignored) comes back afterwards
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="interrupted in epoch 2 after batch 3 of 6") as info:
        train(setup(data_root, cache, "trainer.max_epochs=3"), tmp_path / "B")
    assert info.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before
    saved = torch.load(tmp_path / "B" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["progress"]["epoch"] == 2 and saved["progress"]["batches_done"] == 3
    # the interrupted epoch's seconds so far are kept, so that history's wall clock goes on after the resume
    assert saved["progress"]["seconds"] > 0

    monkeypatch.undo()
    resumed = train(setup(data_root, cache, "trainer.max_epochs=3",
                          f"ckpt_path={quote(tmp_path / 'B' / 'checkpoints' / 'last.pt')}"), tmp_path / "C")
    assert without_timing(resumed) == without_timing(reference)
    assert history(tmp_path / "C") == history(tmp_path / "A")
    epoch_1, epoch_2 = torch.load(tmp_path / "C" / "checkpoints" / "last.pt", weights_only=True)["state"]["history"][:2]
    assert epoch_2["time_s"] > epoch_1["time_s"] + saved["progress"]["seconds"]


def test_ctrl_c_during_the_last_validation_still_stops_the_run(tmp_path, data_root, monkeypatch):
    """No batch is left to notice a Ctrl-C pressed while the epoch validates: the run stops after saving
    the epoch (a sweep stops instead of starting its next job), and resuming it trains nothing more."""
    original = trainer_module.Trainer._validate

    def validate_then_ctrl_c(self, run, data, record):
        signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C while epoch 1 validated
        return original(self, run, data, record)

    monkeypatch.setattr(trainer_module.Trainer, "_validate", validate_then_ctrl_c)
    with pytest.raises(Interrupted, match="interrupted after epoch 1;") as info:
        train(setup(data_root, tmp_path / "cache", "trainer.max_epochs=1"), tmp_path / "B")
    assert info.value.exit_code == 130
    assert torch.load(tmp_path / "B" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "B" / "metrics.json").exists()  # not tested: the user stopped it


# -- SIGKILL --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint_and_resume_matches(tmp_path, data_root):
    cache = tmp_path / "cache"
    overrides = ["trainer.max_epochs=40"]
    reference = train(setup(data_root, cache, *overrides), tmp_path / "A")
    killed = tmp_path / "B"
    command = [sys.executable, "-m", "src.train",
               *[o for o in fast_overrides(data_root, cache, "aug=fer", "model.dropout=0.3", "sched=cosine",
                                           "trainer.monitor=val/loss", *overrides)],
               f"hydra.run.dir={quote(killed)}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pt"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # kill as soon as epoch 3 is saved: mid-run, maybe mid-write
            if last.exists() and torch.load(last, weights_only=True)["epoch"] >= 3:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    saved = torch.load(last, weights_only=True)  # atomic writes: the previous or the new file, never a torn one
    assert 3 <= saved["epoch"] < 40
    resumed = train(setup(data_root, cache, *overrides, f"ckpt_path={quote(last)}"), tmp_path / "C")
    assert without_timing(resumed) == without_timing(reference)


def test_resume_true_continues_in_the_same_run_directory(tmp_path, data_root):
    cache = tmp_path / "cache"  # a constant lr: a 2-epoch run is the first 2 epochs of a 3-epoch one
    reference = train(setup(data_root, cache, "sched=constant", "trainer.max_epochs=3"), tmp_path / "A")
    train(setup(data_root, cache, "sched=constant", "trainer.max_epochs=2"), tmp_path / "B")
    first = json.loads((tmp_path / "B" / "run_info.json").read_text())
    resumed = train(setup(data_root, cache, "sched=constant", "trainer.max_epochs=3", "resume=true"), tmp_path / "B")
    assert resumed["epochs"] == 3 and history(tmp_path / "B") == history(tmp_path / "A")
    assert without_timing(resumed)["test/acc"] == reference["test/acc"]
    # the record says how all of its epochs were made: the command of the first process is kept
    assert "earlier_commands" not in first
    assert json.loads((tmp_path / "B" / "run_info.json").read_text())["earlier_commands"] == [first["command"]]


def test_resume_true_without_a_checkpoint_is_a_clear_error(tmp_path, data_root):
    with pytest.raises(UserError, match="resume=true but .*last.pt does not exist"):
        train(setup(data_root, tmp_path / "cache", "resume=true"), tmp_path / "new")


# -- non-finite loss ------------------------------------------------------------------------------------------


def test_non_finite_loss_names_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, data_root, monkeypatch):
    calls = {"n": 0}
    original = trainer_module.Trainer._loss

    def nan_at_step_9(output, labels, criterion):
        calls["n"] += 1
        logits, loss = original(output, labels, criterion)
        return logits, loss * float("nan") if calls["n"] == 9 else loss

    monkeypatch.setattr(trainer_module.Trainer, "_loss", staticmethod(nan_at_step_9))
    with pytest.raises(UserError, match="NaN or infinite in epoch 2 at step 3;"):
        train(setup(data_root, tmp_path / "cache", "trainer.max_epochs=3"), tmp_path / "run")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["model"].values())


# -- reproducibility and provenance -----------------------------------------------------------------------------


def test_same_seed_and_config_give_identical_metrics(tmp_path, data_root):
    first = train(setup(data_root, tmp_path / "cache", "trainer.max_epochs=2"), tmp_path / "one")
    second = train(setup(data_root, tmp_path / "cache", "trainer.max_epochs=2"), tmp_path / "two")
    assert without_timing(first) == without_timing(second)
    other_seed = train(setup(data_root, tmp_path / "cache", "trainer.max_epochs=2", "seed=1"), tmp_path / "three")
    assert history(tmp_path / "three") != history(tmp_path / "one")
    assert other_seed["classes"] == first["classes"]


def test_run_directory_records_code_packages_device_and_command(tmp_path, data_root):
    train(setup(data_root, tmp_path / "cache", "trainer.max_epochs=1"), tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["device"] == "cpu" and info["precision"] == "fp32" and info["device_name"]
    assert info["packages"]["torch"] == torch.__version__.split("+")[0] or info["packages"]["torch"]
    assert {"torch", "torchvision", "hydra-core", "numpy", "scikit-learn"} <= set(info["packages"])
    assert info["command"].startswith("python") and info["started"]
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert info["git"]["commit"] == head.stdout.strip() and isinstance(info["git"]["dirty"], bool)


# -- disk and memory --------------------------------------------------------------------------------------------


def test_full_disk_while_writing_a_checkpoint_keeps_the_old_one(tmp_path, data_root, monkeypatch):
    original = fileio._atomic_write
    writes = {"last.pt": 0}

    def disk_full_on_second_last(path, mode, write):
        if Path(path).name == "last.pt":
            writes["last.pt"] += 1
            if writes["last.pt"] == 2:
                def failing(f):
                    f.write(b"partial")
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return original(path, mode, failing)
        return original(path, mode, write)

    monkeypatch.setattr(fileio, "_atomic_write", disk_full_on_second_last)
    with pytest.raises(UserError, match=r"could not write checkpoint .*last.pt: No space left on device; "
                                        r"the previous one is kept"):
        train(setup(data_root, tmp_path / "cache", "trainer.max_epochs=3"), tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(checkpoints.glob("*.tmp"))


def test_a_dataset_larger_than_host_memory_is_refused_before_decoding(tmp_path, data_root, monkeypatch):
    import src.data.decoding as decoding
    import src.data.memory as memory

    monkeypatch.setattr(memory, "available_host_bytes", lambda: 100_000)  # 100 kB "free"
    decoded = []
    monkeypatch.setattr(decoding, "decode_image", lambda *a: decoded.append(a))
    with pytest.raises(DataError, match=r"decoding 72 images of 3x32x32 .* needs .* GiB, more than 60% of the"):
        read_folder(data_root, 3, 32, cache_dir=None)
    assert decoded == []


def test_a_split_over_the_device_budget_stays_in_host_memory(caplog):
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    split = Split(images, torch.arange(50) % 5, [str(i) for i in range(50)])
    within = DeviceLoader(split, 8, "cpu", shuffle=True, seed=3, budget_bytes=None)
    over = DeviceLoader(split, 8, "cpu", shuffle=True, seed=3, budget_bytes=images.nbytes - 1)
    assert within.on_device and not over.on_device
    for (a, la), (b, lb) in zip(within, over, strict=True):  # the same batches either way
        assert torch.equal(a, b) and torch.equal(la, lb)


# -- errors and exit codes -------------------------------------------------------------------------------------


def test_user_errors_exit_with_their_code_and_one_line(caplog):
    log = logging.getLogger("test")
    for error, code in ((UserError("the sentence"), 2), (Interrupted("stopped"), 130)):
        def fail(error=error):
            raise error
        with pytest.raises(SystemExit) as exit_info, caplog.at_level(logging.ERROR):
            run_or_exit(fail, log)
        assert exit_info.value.code == code
    assert "the sentence" in caplog.text


def test_unknown_key_and_option_are_hydra_errors_listing_what_exists():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(MissingConfigException) as missing:
            compose(config_name="train", overrides=["model=resnet19"])
        assert "resnet18" in str(missing.value.options) and "vgg19" in str(missing.value.options)
        with pytest.raises(ConfigCompositionException, match="Could not override 'trainer.max_epoch'"):
            compose(config_name="train", overrides=["trainer.max_epoch=3"])


# -- sweeps ---------------------------------------------------------------------------------------------------


def test_a_failing_job_is_a_row_of_the_sweep_summary_and_the_others_complete(tmp_path, data_root):
    overrides = fast_overrides(data_root, tmp_path / "cache", "trainer.max_epochs=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "src.train", "-m", *overrides, "optim.lr=0.003,-1,0.001",
                             f"paths.output_dir={quote(tmp_path / 'out')}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=180)
    (sweep,) = (tmp_path / "out" / "sweeps").iterdir()
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert len(rows) == 4, result.stderr[-2000:]
    failed = [r for r in rows if ",failed," in r]
    assert len(failed) == 1 and "optim.lr=-1" in failed[0] and "ConfigError: optim.lr=-1 is invalid" in failed[0]
    completed = [r for r in rows if ",completed," in r]
    assert len(completed) == 2 and rows[-1] == failed[0]  # failed jobs sort last
    assert sum((sweep / d / "metrics.json").is_file() for d in os.listdir(sweep) if d[0].isdigit()) == 2
    assert "| failed |" in (sweep / "summary.md").read_text()
    assert all((sweep / name).is_file() for name in ("curves.png", "bars.png"))  # the sweep's end still ran
    # The sweep still reports that a job failed: one sentence pointing at the table, no traceback.
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output and "Error executing job" not in output, output[-3000:]
    assert "1 of 3 jobs failed (job 1: ConfigError: optim.lr=-1 is invalid: it must be > 0)" in output
    assert str(sweep / "summary.md") in output


# -- checkpoints are data --------------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("entry", ["resume", "evaluate"])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, data_root, entry):
    from src.inference.predictor import load_model

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": {"config": {}}, "payload": _Exploit(marker)}, path)
    assert not marker.exists()
    with pytest.raises(UserError, match=r"evil.pt was refused: it holds objects other than plain data"):
        if entry == "resume":
            train(setup(data_root, tmp_path / "cache", f"ckpt_path={quote(path)}"), tmp_path / "run")
        else:
            load_model(path)
    assert not marker.exists()
