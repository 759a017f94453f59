"""logger=tensorboard: scalars, confusion matrices and HParams in TensorBoard; flat_hparams, the hyper-parameters
every logger gets. The interface and the other backends are in loggers.py."""
from __future__ import annotations

import os
import re

from omegaconf import DictConfig, OmegaConf

from ..figures import confusion_matrix_image
from ..key_roles import LOCATION, MACHINE, RUN_CONTROL, keys_with
from .loggers import Logger, NullLogger  # noqa: F401 - NullLogger's earlier path: older run records name it


class TensorBoardLogger(Logger):
    """Writes event files into the run directory, so `tensorboard --logdir outputs` finds every run."""

    def __init__(self, log_dir: str | os.PathLike, flush_secs: int = 30):
        super().__init__(str(log_dir))
        self.flush_secs = flush_secs
        self._writer = None

    @property
    def writer(self):
        """Created on first use: importing TensorBoard takes about a second that the first training
        step should not wait for."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir, flush_secs=self.flush_secs)
        return self._writer

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            if tag not in UNLOGGED:
                self.writer.add_scalar(TAGS.get(tag, tag), value, step)

    def log_confusion_matrix(self, tag: str, matrix: list[list[int]], classes: list[str], step: int) -> None:
        """An image at every epoch: drawn with PIL (milliseconds), not matplotlib (about a second)."""
        self.writer.add_image(tag, confusion_matrix_image(matrix, classes, tag), step, dataformats="HWC")

    def log_hparams(self, hparams: dict) -> None:
        """One row in the HParams tab: the run's hyper-parameters (see flat_hparams).

        The row's metric columns are the run's own scalars (TensorBoard reads the last value of every
        tag): val/* of the last epoch, test/* of the selected epoch (logged once, at its step). No scalar
        is written here, so the Time Series tab has no single-point cards of copies.

        Only the session start and end are written (into the run's own event file, which links the row
        to the run's scalars). The experiment summary that SummaryWriter.add_hparams also writes is left
        out on purpose: TensorBoard takes the first one it finds as the whole experiment, so a sweep's
        table would list the values of one run only; without it TensorBoard builds the table from all runs.
        """
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        _, start, end = hparams_summary(hparams, {})
        for summary in (start, end):
            self.writer.file_writer.add_summary(summary)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# history.csv's keys that get another tag in TensorBoard. The HParams tab shows the first five metric
# columns in tag order; a top-level `lr` sorts before every metric and shows the end of the schedule (0
# after a cosine), so it goes with the training curves. The peak lr is the hyper-parameter optim.lr.
TAGS = {"lr": "train/lr"}
# history.csv's keys TensorBoard has already: time_s is the wall clock, its "Relative" horizontal axis.
UNLOGGED = ("time_s",)

# Never in HParams, even when given on the command line: where files are and how the run is started, shown and
# logged (src/key_roles.py), and the groups of such keys (hydra, paths, logger).
BOOKKEEPING_KEYS = keys_with(LOCATION, RUN_CONTROL)
SKIPPED_GROUPS = tuple(key.rstrip(".") for key in BOOKKEEPING_KEYS if key.endswith("."))
# The settings that define an experiment: in HParams whether or not they were given on the command line.
# The machine's keys (the device and what only changes speed or memory, key_roles.MACHINE) and the trainer's
# other keys are in HParams only when given on the command line.
EXPERIMENT_KEYS = ("seed", "loss.", "data.", "model.", "aug.", "optim.", "sched.", "tta.", "trainer.max_epochs",
                   "trainer.precision", "trainer.gradient_clip_val", "trainer.monitor",
                   "trainer.early_stopping_patience", "trainer.ema_decay")
MACHINE_KEYS = keys_with(MACHINE)


def _among(key: str, patterns: tuple[str, ...]) -> bool:
    """`key` is one of `patterns` or below one that ends with a dot."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def flat_hparams(cfg: DictConfig, choices: dict | None, overrides: list[str] | None = None) -> dict:
    """Hyper-parameters for TensorBoard's HParams tab: what a person compares, nothing of bookkeeping.

    In this order: the keys given on the command line (`overrides`, Hydra's task overrides: the ones a sweep
    varies), the group choices (`choice/<group>`), then the settings that define the experiment
    (EXPERIMENT_KEYS). Left out: BOOKKEEPING_KEYS always; keys that are null (unset) or without effect
    (data.fold without data.folds), unless given on the command line. TensorBoard sorts the columns itself:
    those whose values differ across the runs shown first, and shows the first five."""
    # a group's name is before any `/` (hydra/launcher) or `@` (an option at another package:
    # +logger@logger.loggers.mlflow=mlflow is the logger group)
    choices = {group: str(option) for group, option in (choices or {}).items()
               if option is not None and re.split(r"[/@]", group)[0] not in SKIPPED_GROUPS}
    settings: dict = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if str(key).startswith("_"):
                continue
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                settings[f"{prefix}{key}"] = value

    container = OmegaConf.to_container(cfg, resolve=True)
    walk(container, "")
    given: dict = {}  # command-line keys, in command-line order
    for override in overrides or []:
        key = override.split("=", 1)[0].lstrip("+~")
        if re.split(r"[./@]", key)[0] in SKIPPED_GROUPS or _among(key, BOOKKEEPING_KEYS):
            continue
        if key in choices:
            given[f"choice/{key}"] = choices[key]
        else:
            given |= {k: v for k, v in settings.items() if k == key or k.startswith(key + ".")}
    inactive = {"data.fold", "data.group_regex"} if (container.get("data") or {}).get("folds") is None else set()
    defining = {k: v for k, v in settings.items()
                if _among(k, EXPERIMENT_KEYS) and not _among(k, BOOKKEEPING_KEYS + MACHINE_KEYS)
                and v is not None and k not in inactive}
    flat = given | {f"choice/{group}": option for group, option in choices.items()} | defining
    return {key: _scalar(value) for key, value in flat.items()}


def _scalar(value):
    """An HParams value: a number or a string as it is; booleans, null and lists as text (TensorBoard would
    show a boolean as 0 or 1)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return value if isinstance(value, int | float | str) else str(value)
