"""Progress of long phases (src/progress.py): a bar on terminals, a log line every N seconds elsewhere."""
from __future__ import annotations

import io
import logging
import re
import sys

import pytest
import torch

import src.progress as progress_module
from src.command_rules import EVAL_RULES, PREDICT_RULES, check_values
from src.data.inputs import ModelInput
from src.errors import ConfigError
from src.inference.predictor import Ensemble, Predictor, load_predictors
from src.models import LeNet
from src.progress import Progress
from src.training.experiment import train
from tests.helpers import compose_entry, compose_train, fast_overrides, quote

ETA = r"ETA \d\d:\d\d"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def console(monkeypatch, stdout: bool, stderr: bool) -> io.StringIO:
    """stdout and stderr as a terminal (True) or a file or pipe (False: SLURM, nohup, CI, `| tee`), however
    pytest was started; returns stderr, where a bar is drawn (at once: no delay). Called in the test itself:
    pytest swaps its own capture in after the fixtures are set up."""
    err = Terminal() if stderr else io.StringIO()
    monkeypatch.setattr(sys, "stdout", Terminal() if stdout else io.StringIO())
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(progress_module, "DELAY_S", 0.0)
    return err


def messages(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def done(lines: list[str]) -> list[str]:
    """What each progress line says is done: `description: unit n/total (percent)`."""
    return [line[:line.index("%)") + 2] for line in lines]


def test_lines_off_a_terminal_say_what_is_done_the_rate_and_the_eta(monkeypatch, caplog):
    console(monkeypatch, stdout=False, stderr=False)
    caplog.set_level(logging.INFO)
    read = []
    with Progress(10, "phase", "img", every_s=1e-9, figures=lambda: read.append(1) or {"loss": "0.5"}) as p:
        for _ in range(10):
            p.update(1)
    lines = messages(caplog, "src.progress")
    assert len(lines) == 10 and len(read) == 10
    assert re.fullmatch(rf"phase: img 3/10 \(30%\), [\d.,]+ (img/s|s/img), {ETA} \| loss 0.5", lines[2])


def test_short_phases_and_interval_zero_print_nothing(monkeypatch, caplog):
    console(monkeypatch, stdout=False, stderr=False)
    caplog.set_level(logging.INFO)
    read = []
    for every_s in (3600.0, 0.0):
        with Progress(100, "phase", every_s=every_s, bar=False, figures=lambda: read.append(1) or {}) as p:
            for _ in range(100):
                p.update(1)
    assert read == []  # the figures (device sums) are read only when a line or a refresh is due
    assert messages(caplog, "src.progress") == []


def run_phase(steps: int) -> None:
    """A phase of `steps` updates, with a line or a refresh due at every one."""
    with Progress(steps, "phase", every_s=1e-9) as p:
        for _ in range(steps):
            p.update(1)


def test_a_terminal_gets_a_bar_and_no_lines(monkeypatch, caplog):
    terminal = console(monkeypatch, stdout=True, stderr=True)
    caplog.set_level(logging.INFO)
    run_phase(10)
    assert "phase: " in terminal.getvalue() and "/10 [" in terminal.getvalue()  # tqdm's bar
    assert messages(caplog, "src.progress") == []


def test_a_terminal_with_its_stdout_piped_gets_lines_not_a_bar(monkeypatch, caplog):
    """`python -m src.train | tee log`: what tee writes to the file (stdout) must show progress."""
    terminal = console(monkeypatch, stdout=False, stderr=True)
    caplog.set_level(logging.INFO)
    run_phase(4)
    assert terminal.getvalue() == ""
    assert len(messages(caplog, "src.progress")) == 4


def test_training_off_a_terminal_logs_epoch_validation_and_test_progress(tmp_path, make_folder, monkeypatch, caplog):
    console(monkeypatch, stdout=False, stderr=False)
    caplog.set_level(logging.INFO)
    root = make_folder(splits={"train": 8, "val": 4, "test": 4})  # 24 train images: 3 steps of 8
    cfg = compose_train(fast_overrides(root, tmp_path / "cache", "trainer.log_every_s=0.000001",
                                       "data.eval_batch_size=4", "trainer.progress_bar=true"))
    train(cfg, tmp_path / "run")
    epoch = messages(caplog, "src.training.monitors")
    steps = [m for m in epoch if m.startswith("epoch 1/1: batch ")]
    assert len(steps) == 3, epoch
    assert re.fullmatch(rf"epoch 1/1: batch 2/3 \(67%\), [\d.,]+ (batch/s|s/batch), {ETA} \| "
                        r"loss [\d.]+, acc [\d.]+, img/s \d+", steps[1])
    evaluation = messages(caplog, "src.inference.predictor")
    assert done(evaluation) == ["val: img 4/12 (33%)", "val: img 8/12 (67%)",
                                                     "val: img 12/12 (100%)", "test: img 4/12 (33%)",
                                                     "test: img 8/12 (67%)", "test: img 12/12 (100%)"]
    assert all(re.search(ETA, m) for m in evaluation)
    # src.evaluate and src.predict take the interval from their trainer.log_every_s
    eval_cfg = compose_entry("eval", [f"ckpt_path={quote(tmp_path / 'run')}", "trainer.log_every_s=5"])
    predictors, _ = load_predictors([str(tmp_path / "run" / "checkpoints" / "best.pt")], eval_cfg.trainer, eval_cfg.tta)
    assert predictors[0].log_every_s == 5


def test_evaluation_passes_count_images_by_view_and_name_ensemble_members(monkeypatch, caplog):
    console(monkeypatch, stdout=False, stderr=False)
    caplog.set_level(logging.INFO)
    images = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    model = LeNet(num_classes=3, in_channels=1)
    tencrop = Predictor(model, ModelInput([0.5], [0.25], crop=28), tta="tencrop", batch_size=6, log_every_s=1e-9)
    tencrop.log_probs(images, "test")
    lines = messages(caplog, "src.inference.predictor")
    # one batch, ten views: the pass advances during the batch (6 images over 10 forward passes)
    assert done(lines) == [f"test (tta=tencrop): img {n}/6 ({100 * n / 6:.0f}%)"
                                                for n in range(1, 7)]
    caplog.clear()
    plain = Predictor(model, ModelInput([0.5], [0.25]), batch_size=4, log_every_s=1e-9)
    Ensemble([plain, plain]).log_probs(images)
    assert done(messages(caplog, "src.inference.predictor")) == [
        "predicting, model 1/2: img 4/6 (67%)", "predicting, model 1/2: img 6/6 (100%)",
        "predicting, model 2/2: img 4/6 (67%)", "predicting, model 2/2: img 6/6 (100%)"]


def test_the_models_table_shows_progress(monkeypatch, caplog):
    from src.models.__main__ import table

    console(monkeypatch, stdout=True, stderr=False)  # `python -m src.models 2>log`: its progress goes to stderr
    caplog.set_level(logging.INFO)
    table(["lenet", "lenet"], log_every_s=1e-9)
    assert done(messages(caplog, "src.models")) == ["models table: model 1/2 (50%)",
                                                                        "models table: model 2/2 (100%)"]


@pytest.mark.parametrize("value", ["-1", "fast"])
def test_log_every_s_is_checked_before_reading_the_dataset(tmp_path, value):
    cfg = compose_train(fast_overrides(tmp_path / "missing", tmp_path / "cache", f"trainer.log_every_s={value}"))
    with pytest.raises(ConfigError, match=re.escape(f"trainer.log_every_s={value}")):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    for command, rules, required in (("eval", EVAL_RULES, ["ckpt_path=x"]),
                                     ("predict", PREDICT_RULES, ["ckpt_path=x", "images=x"])):
        cfg = compose_entry(command, [*required, f"trainer.log_every_s={value}"])
        with pytest.raises(ConfigError, match=re.escape(f"trainer.log_every_s={value}")):
            check_values(cfg, rules)


def test_the_epoch_line_gives_the_run_time_and_what_is_left_of_the_run(caplog):
    """A 70-epoch run on a CPU takes hours: every epoch line says how long the run has trained and, from
    the mean epoch so far (resumed epochs included), about how long the rest will take."""
    from src.training.trainer import Trainer

    caplog.set_level(logging.INFO)
    trainer = Trainer(device="cpu", max_epochs=10)
    record = {"epoch": 3, "train/loss": 1.0, "train/acc": 0.5, "val/loss": 1.1, "val/acc": 0.4, "val/macro_f1": 0.3,
              "lr": 0.005, "train/epoch_time_s": 250.0, "train/images_per_s": 20.0, "time_s": 754.0}
    trainer._log_epoch(record, best=True)
    trainer._log_epoch({**record, "epoch": 10, "time_s": 3725.0}, best=False)
    first, last = messages(caplog, "src.training.trainer")
    assert first.endswith("| 250.0 s, 20 img/s | run 12:34, about 29:19 left  *")  # 7 epochs of 754 / 3 s
    assert last.endswith("| 250.0 s, 20 img/s | run 1:02:05")  # the last epoch: nothing left
