"""The `logger=` config group: TensorBoard (scalars, confusion matrices, HParams) or nothing."""
from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from ..evaluation.figures import confusion_matrix_figure


class TensorBoardLogger:
    """Writes event files into the run directory, so `tensorboard --logdir outputs` finds every run."""

    def __init__(self, log_dir: str | os.PathLike, flush_secs: int = 30):
        self.log_dir, self.flush_secs = str(log_dir), flush_secs
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
            self.writer.add_scalar(tag, value, step)

    def log_confusion_matrix(self, tag: str, matrix: list[list[int]], classes: list[str], step: int) -> None:
        self.writer.add_figure(tag, confusion_matrix_figure(matrix, classes, tag), step, close=True)

    def log_hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """One row in the HParams tab: the run's hyper-parameters with its final metrics.

        Only the session start and end are written (into the run's own event file, which links the row
        to the run's scalars). The experiment summary that SummaryWriter.add_hparams also writes is left
        out on purpose: TensorBoard takes the first one it finds as the whole experiment, so a sweep's
        table would list the values of one run only; without it TensorBoard builds the table from all runs.
        """
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        _, start, end = hparams_summary(hparams, metrics)
        for summary in (start, end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, 0)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def flat_hparams(cfg: DictConfig, choices: dict | None) -> dict:
    """Hyper-parameters for TensorBoard's HParams tab: group choices and every scalar setting."""
    flat = {f"choice/{group}": str(option) for group, option in (choices or {}).items()
            if not group.startswith("hydra") and option is not None}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if str(key).startswith("_") or key == "cache_dir":
                continue
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)

    container = OmegaConf.to_container(cfg, resolve=True)
    walk({k: v for k, v in container.items() if k not in ("paths", "logger")}, "")
    return flat


class NullLogger:
    """logger=none: log nothing (metrics.json and checkpoints are still written)."""

    def __init__(self, log_dir: str | os.PathLike | None = None):
        pass

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_confusion_matrix(self, tag: str, matrix: list[list[int]], classes: list[str], step: int) -> None:
        pass

    def log_hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass
