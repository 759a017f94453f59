"""The `logger=` config group: the interface the training calls (Logger), and the backends besides TensorBoard.

- `csv`: CsvLogger, plain files in the run directory;
- `mlflow`: MlflowLogger, a run in an MLflow tracking store (<paths.output_dir>/mlruns by default);
- `wandb`: WandbLogger, an offline Weights & Biases run under <run directory>/wandb/;
- `many_loggers`: ManyLoggers, several of them at once;
- `none`: NullLogger, nothing;
- `tensorboard` (the default): TensorBoardLogger in tensorboard_logger.py.

The backends' packages are imported when their logger is built: the runner runs without them.
docs/loggers.md shows how to read each back and how to write a logger of your own.
"""
from __future__ import annotations

import contextlib
import csv
import importlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from omegaconf import OmegaConf

from ..config import build
from ..errors import UserError
from ..figures import confusion_matrix_image
from ..fileio import atomic_write_json


class Logger:
    """What the training calls on the object the `logger=` config group builds; every method does nothing
    here, so a logger of your own subclasses Logger and overrides only what it needs.

    src/training/experiment.py builds it once per run, on the main process only and never for a
    trainer.fast_dev_run, with `log_dir=<the run directory>` (a config's `_target_` class must take it), then:

    - `log_scalars(metrics, step)` after every epoch, with step = the epoch (1, 2, ...) and history.csv's row
      (`train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/macro_f1`, ..., `lr`, `time_s`); and once at the
      end the `test/*` metrics at the selected (best) epoch's step, which is earlier than the last step
      whenever a later epoch did not improve on it;
    - `log_confusion_matrix(tag, matrix, classes, step)`: `val/confusion_matrix` after every epoch that has a
      val split, `test/confusion_matrix` once at the end at the selected epoch's step (rows: true class,
      columns: predicted, counts);
    - `log_hparams(hparams)` once, last, and only when the run finished: a flat dict of numbers and strings
      (flat_hparams in tensorboard_logger.py: the overrides, the group choices, the experiment's settings);
    - `close()` always, also after an error or Ctrl-C (a run closed without log_hparams did not finish).
    """

    def __init__(self, log_dir: str | os.PathLike | None = None):
        self.log_dir = log_dir

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_confusion_matrix(self, tag: str, matrix: list[list[int]], classes: list[str], step: int) -> None:
        pass

    def log_hparams(self, hparams: dict) -> None:
        pass

    def close(self) -> None:
        pass


class NullLogger(Logger):
    """logger=none: log nothing (metrics.json, history.csv and checkpoints are still written)."""


def _require(name: str):
    """Imports the backend package `name` when its logger is built, or says in one sentence how to install it
    (the option, the extra and the package have the same name)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"logger={name} needs the {name} extra: pip install 'fer-runner[{name}]'") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class CsvLogger(Logger):
    """logger=csv: plain files in the run directory, for any CSV reader or a spreadsheet.

    - `filename` (metrics_log.csv): `step,key,value`, one row per scalar. Long format, because the keys differ
      between calls (the test/* metrics come once, at an earlier step) and a user's callback may add its own;
      history.csv, written at the end of the run, is the wide table of the epochs.
    - confusion_matrices.csv: `step,tag,true,predicted,count`, one row per cell of every matrix.
    - hparams.json: the hyper-parameters, written once the run finished.

    Rows are appended and the file closed at every call, so a crashed run keeps what it logged and a resumed
    one (resume=true) goes on in the same files.
    """

    def __init__(self, log_dir: str | os.PathLike, filename: str = "metrics_log.csv"):
        super().__init__(log_dir)
        self.filename = filename

    def _append(self, name: str, header: list[str], rows: list[list]) -> None:
        path = Path(self.log_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if f.tell() == 0:  # a new (or empty) file
                writer.writerow(header)
            writer.writerows(rows)

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        self._append(self.filename, ["step", "key", "value"], [[step, key, value] for key, value in metrics.items()])

    def log_confusion_matrix(self, tag: str, matrix: list[list[int]], classes: list[str], step: int) -> None:
        self._append("confusion_matrices.csv", ["step", "tag", "true", "predicted", "count"],
                     [[step, tag, true, predicted, count] for true, row in zip(classes, matrix)
                      for predicted, count in zip(classes, row)])

    def log_hparams(self, hparams: dict) -> None:
        atomic_write_json(hparams, Path(self.log_dir) / "hparams.json")


class MlflowLogger(Logger):
    """logger=mlflow: one MLflow run per training run, in experiment `experiment` of the store at `tracking_uri`.

    Scalars are metrics (step = epoch), the confusion matrices images (MLflow's image series with a step
    slider), the hyper-parameters params; the run is named after the run directory (unless `run_name`) and
    tagged `run_dir` with its path. It is marked FINISHED once log_hparams came, FAILED otherwise.

    `tracking_uri`: a path is a local file store (conf/logger/mlflow.yaml: <paths.output_dir>/mlruns, one
    store for every run and sweep); None is a store of the run's own, <log_dir>/mlruns; a server
    (http://host:5000) or a database (sqlite:///mlflow.db: SQLAlchemy and Alembic, as the full mlflow package
    has) goes as it is. MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE=true, so this sets that
    variable (when unset) for a local store: the file store needs no database, and parallel sweep jobs write
    into it side by side.

    The client API (MlflowClient) with an explicit run id, not mlflow.start_run's process-wide active run,
    so that runs trained one after another in a process (a sweep, the tests) cannot log into each other.
    """

    _PARAMS_PER_BATCH = 100  # MLflow's limit of params per log_batch call

    def __init__(self, log_dir: str | os.PathLike, tracking_uri: str | None = None, experiment: str = "fer-runner",
                 run_name: str | None = None):
        super().__init__(log_dir)
        _require("mlflow")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = tracking_uri if tracking_uri is not None else str(Path(log_dir) / "mlruns")
        if len(urlparse(uri).scheme) <= 1:  # a path (one letter: a Windows drive); absolute, as MLflow records it
            uri = Path(uri).expanduser().resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri, self.finished = uri, False
        try:
            self.client = MlflowClient(tracking_uri=uri)
            run = self.client.create_run(self._experiment_id(experiment), run_name=run_name or Path(log_dir).name,
                                         tags={"run_dir": str(Path(log_dir).resolve())})
        except MlflowException as exc:
            raise UserError(f"logger=mlflow could not start a run in {uri}: {_first_line(exc)}") from None
        self.run_id = run.info.run_id

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # a parallel sweep job created it in the meantime
            return self.client.get_experiment_by_name(name).experiment_id

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step)
                                                    for key, value in metrics.items()])

    def log_confusion_matrix(self, tag: str, matrix: list[list[int]], classes: list[str], step: int) -> None:
        self.client.log_image(self.run_id, confusion_matrix_image(matrix, classes, tag), key=tag, step=step)

    def log_hparams(self, hparams: dict) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)) for key, value in hparams.items()]
        for start in range(0, len(params), self._PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + self._PARAMS_PER_BATCH])
        self.finished = True

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if self.finished else "FAILED")


class WandbLogger(Logger):
    """logger=wandb: one Weights & Biases run per training run, written under <log_dir>/wandb/ (offline by
    default: `wandb sync <log_dir>/wandb/offline-run-*` uploads it later; mode=online logs in directly).

    Every call is one wandb.log with the key `epoch` = step, and every key is plotted against `epoch`
    (define_metric): wandb's own step only grows, so the test/* metrics, which come at the selected epoch's
    step after the last epoch, would otherwise be dropped. The confusion matrices are images, the
    hyper-parameters the run's config; the run is named after the run directory unless `name` is given, and
    ends with exit code 0 once log_hparams came, 1 otherwise.
    """

    def __init__(self, log_dir: str | os.PathLike, project: str = "fer-runner",
                 mode: Literal["offline", "online", "disabled"] = "offline", name: str | None = None):
        super().__init__(log_dir)
        self.wandb = _require("wandb")
        self.finished = False
        Path(log_dir).mkdir(parents=True, exist_ok=True)  # wandb.init wants its dir to exist
        try:
            self.run = self.wandb.init(project=project, mode=mode, name=name or Path(log_dir).name, dir=str(log_dir))
        except self.wandb.errors.Error as exc:  # online without an API key, say
            raise UserError(f"logger=wandb could not start a run: {_first_line(exc)}") from None
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({"epoch": step, **metrics})

    def log_confusion_matrix(self, tag: str, matrix: list[list[int]], classes: list[str], step: int) -> None:
        image = self.wandb.Image(confusion_matrix_image(matrix, classes, tag), caption=f"{tag}, epoch {step}")
        self.run.log({"epoch": step, tag: image})

    def log_hparams(self, hparams: dict) -> None:
        self.run.config.update(hparams, allow_val_change=True)
        self.finished = True

    def close(self) -> None:
        self.run.finish(exit_code=0 if self.finished else 1)


class ManyLoggers(Logger):
    """logger=many_loggers: every call goes to each of `loggers`, in order.

    `loggers` is a mapping of name to logger config (conf/logger/many_loggers.yaml: its defaults put the
    option files there, so `logger.loggers.csv.filename=...` sets one, `~logger.loggers.tensorboard` drops
    one and `+logger@logger.loggers.mlflow=mlflow` adds one) or a list of them; each is built here with this
    logger's `log_dir`, through the same checks of its settings as any other config node. From Python, a
    built logger object may stand in for a config.
    """

    def __init__(self, loggers: Sequence[Mapping | Logger] | Mapping[str, Mapping | Logger],
                 log_dir: str | os.PathLike | None = None):
        super().__init__(log_dir)
        if OmegaConf.is_config(loggers):
            # Hydra hands them over detached from the config, their keys starting at `loggers`; under `logger`
            # again (the group this is an option of), a child's error names the key as the user writes it
            loggers = OmegaConf.create({"logger": {"loggers": loggers}}).logger.loggers
        self.loggers: list = []
        try:
            for child in loggers.values() if isinstance(loggers, Mapping) else loggers:
                self.loggers.append(build(child, log_dir=log_dir) if isinstance(child, Mapping) else child)
        except BaseException:
            with contextlib.suppress(Exception):  # the build's failure is the one to report
                self.close()  # the ones already started (an MLflow or W&B run) end as failed runs
            raise

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_scalars(metrics, step)

    def log_confusion_matrix(self, tag: str, matrix: list[list[int]], classes: list[str], step: int) -> None:
        for logger in self.loggers:
            logger.log_confusion_matrix(tag, matrix, classes, step)

    def log_hparams(self, hparams: dict) -> None:
        for logger in self.loggers:
            logger.log_hparams(hparams)

    def close(self) -> None:
        """Closes every logger even when one fails, then raises the first failure."""
        failure = None
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as exc:  # noqa: BLE001 - the others' files must be closed all the same
                failure = failure or exc
        if failure is not None:
            raise failure
