"""What a training run remembers between epochs, what it saves, and how a saved run goes on.

`FitState` is the selection state (best epoch and value, epochs without improvement, the per-epoch
history). `RunCheckpoints` writes checkpoints/last.pt every epoch and best.pt when the monitored
metric improves, and resumes a run from a checkpoint. A checkpoint (the file format: src/checkpoint_file.py)
holds everything to go on exactly where the run stopped: model, optimizer, schedule, grad scaler, the
EMA of the weights, every random stream (weight init and dropout, batch order, augmentation, mixing,
CUDA), the selection state and, after Ctrl-C, the position in the interrupted epoch; and everything
evaluate / predict / export need (`meta`: the resolved config, the data description, the input size).
"""
from __future__ import annotations

import json
import logging
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import yaml
from omegaconf import DictConfig

from ..checkpoint_file import check_weights, load_checkpoint, save_checkpoint
from ..config import check_arguments
from ..data.inputs import ModelInput
from ..errors import ConfigError, UserError
from ..fileio import read_text
from ..runtime import distributed as ddp
from .config_changes import config_differences
from .ema import ModelEma

log = logging.getLogger(__name__)


@dataclass
class FitState:
    """What selection and early stopping remember between epochs (saved in every checkpoint)."""
    epoch: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "best_value": self.best_value, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "history": self.history}

    def add(self, record: dict, value: float | None, lower_is_better: bool) -> bool:
        """Records an epoch and its monitored value (None without validation: every epoch counts as the
        best, so the last one is kept); returns whether it improved on the best."""
        self.history.append(record)
        self.epoch = record["epoch"]
        improved = value is None or self.best_value is None or (
            value < self.best_value if lower_is_better else value > self.best_value)
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch, 0
        else:
            self.bad_epochs += 1
        return improved


@dataclass
class EpochProgress:
    """How far an epoch got: saved in last.pt when Ctrl-C interrupts it, so a resumed run continues at
    the next batch, with the same batch order, and ends exactly as an uninterrupted run would."""
    epoch: int
    batches_done: int = 0
    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    shuffle_state: torch.Tensor | None = None  # the batch-order generator at the start of the epoch
    lr_sum: float = 0.0  # of the steps done: history's lr is the epoch's mean
    seconds: float = 0.0  # wall-clock seconds the epoch ran before the interruption (history's time_s)

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seen": self.seen,
                "loss_sum": self.loss_sum, "correct": self.correct, "shuffle_state": self.shuffle_state,
                "lr_sum": self.lr_sum, "seconds": self.seconds}


@dataclass
class Resumable:
    """The objects of a run whose state a checkpoint holds."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    batch_order: torch.Generator
    inputs: ModelInput
    ema: ModelEma | None
    device: torch.device

    def rank_rng(self) -> dict:
        """This process's random streams. The batch order is drawn alike on every rank; the others (dropout,
        augmentation, mixing) are each rank's own under DDP. The run's own GPU only (by device, not by
        index among the visible ones): another machine may show other GPUs, or the run may resume on the CPU."""
        return {"torch": torch.get_rng_state(), **self.inputs.state(), "device": self.device.type,
                "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []}

    def content(self, epoch: int, state: FitState, progress: EpochProgress | None, meta: dict,
                rank_streams: list[dict] | None = None) -> dict:
        """A checkpoint; under DDP `rank_streams` (every rank's rank_rng, gathered on rank 0) holds the
        other ranks' streams as rng["ranks"]."""
        rng = {**(rank_streams or [self.rank_rng()])[0], "shuffle": self.batch_order.get_state(),
               "ranks": (rank_streams or [])[1:]}
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "state": state.as_dict(), "progress": progress.as_dict() if progress else None,
                "meta": meta, "rng": rng, "ema": self.ema.state_dict() if self.ema else None}

    @staticmethod
    def _rank_streams(rng: dict, path) -> dict:
        """This rank's streams in a checkpoint: rank 0's are rng itself, rank r's rng["ranks"][r - 1]. A run
        resumed with another number of processes gives the new ranks fresh streams from the seed."""
        rank, others = ddp.rank(), rng.get("ranks") or []
        if rank == 0:
            return rng
        if len(others) == ddp.world_size() - 1:
            return others[rank - 1]
        if rank == 1:
            log.warning("%s was written by %d process(es) and resumes with %d: the random streams of ranks "
                        "beyond its own start afresh from the seed", path, len(others) + 1, ddp.world_size())
        return {**rng, "torch": torch.get_rng_state(), "augment": None, "mix": None, "cuda": []}

    def restore(self, ckpt: dict, path) -> tuple[FitState, EpochProgress | None]:
        """Loads a checkpoint's training state into these objects (types checked first: a checkpoint may
        come from anywhere)."""
        check_arguments(FitState, ckpt["state"], "state")
        for record in ckpt["state"]["history"]:  # the per-epoch figures metrics.json and history.csv are made of
            if not all(isinstance(k, str) and isinstance(v, int | float) for k, v in record.items()):
                raise ConfigError(f"state.history holds a record that is not numbers by name: {record}")
        if ckpt.get("progress"):
            check_arguments(EpochProgress, ckpt["progress"], "progress")
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"checkpoint {path} does not fit this model (pass the same model overrides "
                            f"as the run that wrote it): {str(exc).splitlines()[0]}") from None
        check_weights(ckpt["model"], self.model, path)  # dtypes and finite values: a NaN weight would train on
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty from a run without fp16: the scaler starts afresh
            self.scaler.load_state_dict(ckpt["scaler"])
        self.batch_order.set_state(ckpt["rng"]["shuffle"].cpu())
        rng = self._rank_streams(ckpt["rng"], path)
        torch.set_rng_state(rng["torch"].cpu())  # host streams: the same on any device
        saved_on = rng.get("device") or ("cuda" if rng["cuda"] else "cpu")  # older checkpoints: by their cuda states
        if saved_on == self.device.type:
            self.inputs.set_state(rng)
            if rng["cuda"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"][0].cpu(), self.device)
        else:  # a CPU generator's state does not fit a GPU's, nor the other way round
            log.warning("%s was written by a run on %s and resumes on %s: the random streams on the device "
                        "(augmentation, dropout) start afresh from the seed, so the run goes on but not bit for bit "
                        "as it would have on %s", path, saved_on, self.device.type, saved_on)
            self.inputs.set_state({**rng, "augment": None})
        if self.ema:
            if not ckpt.get("ema"):
                raise UserError(f"checkpoint {path} has no EMA of the weights: resume with the settings of "
                                "the run that wrote it (trainer.ema_decay)")
            self.ema.load_state_dict(ckpt["ema"])
        progress = EpochProgress(**ckpt["progress"]) if ckpt.get("progress") else None
        if progress:
            progress.shuffle_state = progress.shuffle_state.cpu()
        return FitState(**ckpt["state"]), progress


class RunCheckpoints:
    """checkpoints/last.pt (every epoch, or mid-epoch after Ctrl-C) and best.pt (the epoch selected on
    val) of one run; with several processes rank 0 alone writes (their states are identical)."""

    def __init__(self, folder: str | Path, meta: dict | None = None):
        self.folder, self.meta = Path(folder), meta or {}

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    def save(self, parts: Resumable, state: FitState, improved: bool) -> None:
        """After an epoch. best.pt: with an EMA of the weights the EMA is the model that was selected (its
        val metrics are the monitored ones), so it is best.pt's model, the one evaluate / predict load."""
        streams = ddp.gather_to_main(parts.rank_rng())  # a collective: every rank takes part
        if not ddp.is_main():
            return
        content = parts.content(state.epoch, state, None, self.meta, streams)
        save_checkpoint(self.last, content)
        if improved:
            save_checkpoint(self.best, {**content, "model": parts.ema.module.state_dict()} if parts.ema else content)

    def best_weights(self) -> dict:
        """The model weights of the selected epoch (best.pt's), for the test evaluation."""
        return load_checkpoint(self.best)["model"]

    def save_interrupted(self, parts: Resumable, state: FitState, progress: EpochProgress) -> None:
        """Mid-epoch, after Ctrl-C: last.pt with the position in the epoch."""
        streams = ddp.gather_to_main(parts.rank_rng())
        if ddp.is_main():
            save_checkpoint(self.last, parts.content(progress.epoch - 1, state, progress, self.meta, streams))
        ddp.barrier()  # a rank that exits first makes torchrun stop rank 0, perhaps mid-write

    def resume(self, path: str | Path, parts: Resumable, classes: list[str]) -> tuple[FitState, EpochProgress | None]:
        """Restores model, optimizer, schedule, RNG streams and selection state from `path`; for a checkpoint
        of an interrupted epoch, also where in that epoch to go on."""
        ckpt = load_checkpoint(path, map_location=parts.device)
        saved_classes = (ckpt["meta"].get("data") or {}).get("classes")
        if saved_classes is not None and saved_classes != classes:
            raise UserError(f"checkpoint {path} was trained on classes {saved_classes}, but the data has {classes}")
        try:
            state, progress = parts.restore(ckpt, path)
        except ConfigError as exc:  # a value of the stored state of the wrong type
            raise UserError(f"checkpoint {path} cannot be resumed: its {exc}") from None
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            # A part of the training state missing or of the wrong shape
            raise UserError(f"checkpoint {path} cannot be resumed: its training state is missing or damaged "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        self._carry_over_best(Path(path), ckpt, state)
        return state, progress

    def _carry_over_best(self, path: Path, ckpt: dict, state: FitState) -> None:
        """The resumed run's checkpoints/ starts with the best checkpoint so far, so that selection
        continues across the interruption: best.pt beside the resumed file, or the file itself if it
        was the best epoch."""
        beside = path.with_name("best.pt")
        if beside.resolve() == self.best.resolve():
            return
        if beside.is_file() and load_checkpoint(beside)["epoch"] == state.best_epoch:
            source = beside
        elif ckpt["epoch"] == state.best_epoch:
            source = path
        else:
            log.warning("best.pt of epoch %d is not beside %s: selection restarts from the resumed epochs",
                        state.best_epoch, path)
            state.best_value, state.best_epoch = None, 0
            return
        if ddp.is_main():  # every rank decides alike (the decision changes the state); one copies
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, self.best)


def checkpoint_to_resume(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to resume from: `ckpt_path`, or with `resume=true` this run directory's last.pt.
    Its model and data settings must be the ones of this run (only data.root/csv may move)."""
    path = cfg.get("ckpt_path")
    if cfg.get("resume"):
        if path:
            raise ConfigError("set resume=true or ckpt_path=..., not both")
        path = run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            raise UserError(f"resume=true but {path} does not exist: resume in the run directory that has it "
                            "(hydra.run.dir=outputs/runs/<run>) or pass ckpt_path=")
    if not path:
        return None
    differences = config_differences(load_checkpoint(path)["meta"].get("config") or {}, cfg, ("model", "data"))
    if differences:
        command = _command_that_wrote(Path(path))
        how = (f"resume with the overrides of the run that wrote it: {command} ckpt_path={path}" if command
               else "resume with the same overrides as the run that wrote it")
        raise UserError(f"checkpoint {path} was trained with other settings ({'; '.join(differences)}); {how}")
    return str(path)


def previous_attempt(cfg: DictConfig, run_dir: Path) -> dict | None:
    """A sweep job whose directory already holds an attempt (the sweep command re-run with the same
    hydra.sweep.dir): its metrics when that attempt completed with the same settings, so the job is
    skipped; when it was interrupted, `resume` is set and the job goes on from its last.pt; None also when
    there is nothing to go on from (a job that failed before its first epoch runs again)."""
    last, metrics = run_dir / "checkpoints" / "last.pt", run_dir / "metrics.json"
    if not last.is_file():
        return None
    saved = load_checkpoint(last)["meta"].get("config") or {}
    differences = config_differences(saved, cfg, ("model", "data", "optim", "sched", "aug", "loss", "trainer", "tta"))
    if saved.get("seed") != cfg.seed:
        differences.append(f"seed: {saved.get('seed')} → {cfg.seed}")
    if differences:
        raise UserError(f"{run_dir} holds a run of this job with other settings ({'; '.join(differences)}): the "
                        "configs changed since; use another hydra.sweep.dir (or delete that directory)")
    if metrics.is_file():
        try:
            return json.loads(read_text(metrics))
        except (OSError, ValueError):
            pass  # damaged: run again
    cfg.resume, cfg.ckpt_path = True, None
    return None


def _command_that_wrote(path: Path) -> str | None:
    """The command of the run that wrote <run>/checkpoints/<file>: its overrides as Hydra recorded them
    (<run>/.hydra/overrides.yaml: for a sweep job, that job's own values), without those that said where to
    resume from; None when there is no readable record."""
    try:
        overrides = yaml.safe_load(read_text(path.parent.parent / ".hydra" / "overrides.yaml"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        return None
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "resume")]
    return shlex.join(["python", "-m", "src.train", *kept])
