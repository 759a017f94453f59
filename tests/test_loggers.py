"""The `logger=` backends: a short training with each, read back with the backend's own reader.

Every training runs 2 epochs at lr 1e-30, so that nothing is learnt, both epochs score the same and the first
is selected: the test/* metrics then come at step 1, after step 2 (what W&B's ever-growing step would drop).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import build
from src.errors import ConfigError, UserError
from src.training.experiment import train
from src.training.loggers import CsvLogger, Logger, ManyLoggers, MlflowLogger, NullLogger, WandbLogger
from src.training.tensorboard_logger import TensorBoardLogger, flat_hparams
from tests.helpers import quote, read_metrics

SPLITS = {"train": 8, "val": 4, "test": 4}  # per class
CHOICES = {"data": "folder", "model": "lenet"}  # for flat_hparams, as Hydra would pass them


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No backend goes online or writes outside tmp_path; the variables are restored after each test."""
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    # unset, so that MlflowLogger sets it itself, and removed again after the test
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


@pytest.fixture
def trained(make_folder, train_cfg, tmp_path):
    """trained(*overrides) -> (run_dir, metrics.json, history.csv's two rows, the expected hparams)."""

    def run(*overrides: str):
        overrides = ("trainer.max_epochs=2", "optim.lr=1e-30", f"paths.output_dir={quote(tmp_path / 'outputs')}",
                     *overrides)
        cfg = train_cfg(make_folder(splits=SPLITS), *overrides)
        run_dir = tmp_path / "run"
        train(cfg, run_dir, CHOICES, list(overrides))
        with open(run_dir / "history.csv", newline="") as f:
            history = list(csv.DictReader(f))
        metrics = read_metrics(run_dir)
        assert metrics["best_epoch"] == 1 and len(history) == 2  # the test metrics come after the last step
        return run_dir, metrics, history, flat_hparams(cfg, CHOICES, list(overrides))

    return run


def epoch_scalars(row: dict) -> dict[str, float]:
    """history.csv's row as the logger got it: every column but epoch, as numbers."""
    return {key: float(value) for key, value in row.items() if key != "epoch"}


# -- csv --------------------------------------------------------------------------------------------------


def read_csv_log(path: Path) -> dict[int, dict[str, float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "key", "value"]
    steps: dict[int, dict[str, float]] = {}
    for row in rows:
        steps.setdefault(int(row["step"]), {})[row["key"]] = float(row["value"])
    return steps


def test_csv(trained):
    run_dir, metrics, history, hparams = trained("logger=csv")
    steps = read_csv_log(run_dir / "metrics_log.csv")
    assert sorted(steps) == [1, 2]
    test = {key: steps[1].pop(key) for key in list(steps[1]) if key.startswith("test/")}
    assert steps[1] == epoch_scalars(history[0]) and steps[2] == epoch_scalars(history[1])
    assert test["test/acc"] == metrics["test/acc"] and test["test/macro_f1"] == metrics["test/macro_f1"]
    assert json.loads((run_dir / "hparams.json").read_text()) == hparams

    with open(run_dir / "confusion_matrices.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    classes = metrics["classes"]
    test_cells = {(c["true"], c["predicted"]): int(c["count"]) for c in cells if c["tag"] == "test/confusion_matrix"}
    assert [[test_cells[t, p] for p in classes] for t in classes] == metrics["test/confusion_matrix"]
    assert {(c["step"], c["tag"]) for c in cells} == {("1", "val/confusion_matrix"), ("2", "val/confusion_matrix"),
                                                      ("1", "test/confusion_matrix")}


def test_csv_appends_to_a_resumed_runs_file(tmp_path):
    for step in (1, 2):  # two loggers on one run directory: a run, then its resume=true
        logger = CsvLogger(tmp_path, filename="log.csv")
        logger.log_scalars({"val/acc": step / 10}, step)
        logger.close()
    assert read_csv_log(tmp_path / "log.csv") == {1: {"val/acc": 0.1}, 2: {"val/acc": 0.2}}


# -- mlflow -----------------------------------------------------------------------------------------------


def test_mlflow(trained, tmp_path):
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient  # the mlflow extra

    run_dir, metrics, history, hparams = trained("logger=mlflow")
    store = tmp_path / "outputs" / "mlruns"  # conf/logger/mlflow.yaml: <paths.output_dir>/mlruns
    client = MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("fer-runner").experiment_id])
    assert run.info.run_name == run_dir.name and run.data.tags["run_dir"] == str(run_dir.resolve())
    assert run.info.status == "FINISHED"
    for key in history[0]:
        if key != "epoch":
            logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            assert logged == [(1, float(history[0][key])), (2, float(history[1][key]))], key
    test_acc = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test/acc")]
    assert test_acc == [(1, metrics["test/acc"])]
    assert run.data.params == {key: str(value) for key, value in hparams.items()}
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    for tag in ("val~confusion_matrix", "test~confusion_matrix"):  # MLflow writes / as ~ in file names
        assert any(Path(path).name.startswith(f"{tag}+step+1+") and path.endswith(".png") for path in images), tag


def test_mlflow_marks_an_unfinished_run_failed(tmp_path):
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient

    logger = MlflowLogger(tmp_path / "run")  # tracking_uri=None: a store in the run directory
    logger.log_scalars({"val/acc": 0.5}, 1)
    logger.close()  # no log_hparams: the run stopped early
    assert logger.tracking_uri == (tmp_path / "run" / "mlruns").resolve().as_uri()
    assert MlflowClient(logger.tracking_uri).get_run(logger.run_id).info.status == "FAILED"


# -- wandb ------------------------------------------------------------------------------------------------


def read_wandb_records(run_folder: Path) -> list[dict]:
    """The records of an offline run's .wandb file, read by wandb itself: `wandb leet inspect --json` prints
    one JSON object per record (wandb up to 0.18 had a Python reader, wandb.sdk.internal.datastore; the
    releases since write the file from wandb-core and read it with this command)."""
    command = [sys.executable, "-m", "wandb", "leet", "inspect"]
    if subprocess.run([*command, "--help"], capture_output=True).returncode != 0:
        import wandb

        pytest.skip(f"wandb {wandb.__version__} has no `wandb leet inspect` to read its offline runs with")
    result = subprocess.run([*command, "--json", str(run_folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_wandb_offline(trained):
    pytest.importorskip("wandb")  # the wandb extra
    run_dir, metrics, history, hparams = trained("logger=wandb")
    (run_folder,) = run_dir.glob("wandb/offline-run-*")  # conf/logger/wandb.yaml: in the run directory
    records = read_wandb_records(run_folder)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["display_name"] == run_dir.name and run["project"] == "fer-runner"

    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    for epoch in (1, 2):
        (logged,) = [row for row in rows if row["epoch"] == epoch and "train/loss" in row]
        expected = epoch_scalars(history[epoch - 1])
        assert {key: logged.get(key) for key in expected} == expected
    (test,) = [row for row in rows if "test/acc" in row]  # after epoch 2, at the selected epoch 1
    assert test["epoch"] == 1 and test["test/acc"] == metrics["test/acc"]
    (image,) = [row for row in rows if "test/confusion_matrix._type" in row]
    assert image["epoch"] == 1 and image["test/confusion_matrix._type"] == "image-file"
    assert (run_folder / "files" / image["test/confusion_matrix.path"]).is_file()

    config = {key: value for r in records if r["type"] == "config" for key, value in r["config"]["update"].items()}
    assert {key: config.get(key) for key in hparams} == hparams
    assert records[-1]["type"] == "exit" and records[-1]["exit"]["exit_code"] == 0


# -- several at once --------------------------------------------------------------------------------------


def test_many_loggers(trained):
    """conf/logger/many_loggers.yaml: TensorBoard and CSV, both with the run directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, metrics, history, _ = trained("logger=many_loggers")
    steps = read_csv_log(run_dir / "metrics_log.csv")
    assert steps[2] == epoch_scalars(history[1]) and steps[1]["test/acc"] == metrics["test/acc"]
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [1, 2]
    assert [e.value for e in events.Scalars("val/acc")] == pytest.approx([float(r["val/acc"]) for r in history])
    (test_acc,) = events.Scalars("test/acc")
    assert (test_acc.step, test_acc.value) == (1, pytest.approx(metrics["test/acc"]))


def test_many_loggers_composed_on_the_command_line(compose_cfg, tmp_path):
    pytest.importorskip("mlflow")
    cfg = compose_cfg(["logger=many_loggers", "~logger.loggers.tensorboard", "+logger@logger.loggers.mlflow=mlflow",
                       "logger.loggers.csv.filename=log.csv", f"paths.output_dir={quote(tmp_path)}"])
    logger = build(cfg.logger, log_dir=tmp_path / "run")
    try:
        assert [type(child) for child in logger.loggers] == [CsvLogger, MlflowLogger]
        assert logger.loggers[0].filename == "log.csv" and logger.loggers[0].log_dir == tmp_path / "run"
        assert logger.loggers[1].tracking_uri == (tmp_path / "mlruns").resolve().as_uri()
    finally:
        logger.close()
    # the added group is the logger's, not a hyper-parameter
    choices = {"logger": "many_loggers", "logger@logger.loggers.mlflow": "mlflow"}
    assert not [key for key in flat_hparams(cfg, choices, ["+logger@logger.loggers.mlflow=mlflow"])
                if "logger" in key]


def test_many_loggers_checks_every_child_setting(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^logger\.loggers\.csv\.filename=3 is invalid: it must be a string"):
        build(compose_cfg(["logger=many_loggers", "logger.loggers.csv.filename=3"]).logger, log_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^logger\.loggers\.tensorboard\.flush is not a setting of TensorBoard"):
        build(compose_cfg(["logger=many_loggers", "+logger.loggers.tensorboard.flush=1"]).logger, log_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^logger\.loggers=3 is invalid"):
        build(compose_cfg(["logger=many_loggers", "logger.loggers=3"]).logger, log_dir=tmp_path)


class Recorder(Logger):
    """A user's logger: overrides two methods, keeps Logger's no-ops for the others."""

    def __init__(self, log_dir=None):
        super().__init__(log_dir)
        self.calls, self.closed = [], False

    def log_scalars(self, metrics, step):
        self.calls.append((step, metrics))

    def close(self):
        self.closed = True


def test_many_loggers_takes_built_loggers_and_a_list(tmp_path):
    recorder = Recorder()
    logger = ManyLoggers([recorder, {"_target_": "src.training.loggers.CsvLogger"}], log_dir=tmp_path)
    logger.log_scalars({"val/acc": 0.5}, 1)
    logger.log_hparams({"optim.lr": 0.1})
    logger.close()
    assert recorder.calls == [(1, {"val/acc": 0.5})] and recorder.closed
    assert read_csv_log(tmp_path / "metrics_log.csv") == {1: {"val/acc": 0.5}}


def test_many_loggers_closes_the_built_ones_when_one_fails(tmp_path):
    recorder = Recorder()
    with pytest.raises(ConfigError, match="filename=3 is invalid"):
        ManyLoggers([recorder, {"_target_": "src.training.loggers.CsvLogger", "filename": 3}], log_dir=tmp_path)
    assert recorder.closed


def test_the_loggers_share_one_interface():
    assert all(issubclass(cls, Logger) for cls in (TensorBoardLogger, NullLogger, CsvLogger, MlflowLogger,
                                                    WandbLogger, ManyLoggers))


# -- a backend that is not installed -----------------------------------------------------------------------


@pytest.mark.parametrize("option", ["mlflow", "wandb"])
def test_a_missing_extra_says_what_to_install(compose_cfg, monkeypatch, tmp_path, option):
    monkeypatch.setitem(sys.modules, option, None)  # `import mlflow` raises ImportError
    with pytest.raises(UserError) as error:
        build(compose_cfg([f"logger={option}"]).logger, log_dir=tmp_path)
    assert str(error.value) == f"logger={option} needs the {option} extra: pip install 'fer-runner[{option}]'"
