"""The training loop: epochs of device-resident batches, validation every epoch, selection on val.

Per batch there is no host synchronisation: loss and accuracy are summed on the device and read
once per epoch (and at most once a second for the progress bar).
"""
from __future__ import annotations

import inspect
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from ..checkpoints import load_checkpoint, save_checkpoint
from ..config import check_arguments
from ..data import Augment, DeviceLoader, ImageData
from ..errors import ConfigError, UserError
from ..evaluation.predictor import Predictor, to_input
from ..evaluation.split_evaluation import evaluate_split
from ..runtime import distributed as ddp
from ..runtime.devices import autocast, resolve_device, resolve_precision, seconds_since_process_start, synchronize
from .ema import ModelEma
from .schedules import Plateau
from .tensorboard_logger import NullLogger

log = logging.getLogger(__name__)

MONITORS = ("val/acc", "val/macro_f1", "val/balanced_acc", "val/loss")
VAL_KEYS = ("loss", "acc", "balanced_acc", "macro_f1")  # the val metrics of each epoch's record
CHECK_EVERY = 50  # steps between reads of the device-side "loss became non-finite" flag (one sync each)
NO_BAD_STEP = 2**62  # the first non-finite step when there is none


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

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seen": self.seen,
                "loss_sum": self.loss_sum, "correct": self.correct, "shuffle_state": self.shuffle_state}


class Interrupted(UserError):
    """Ctrl-C stopped training; last.pt holds the interrupted epoch."""
    exit_code = 130


class _StopOnSigint:
    """While active, the first Ctrl-C asks training to stop after the current batch; a second one
    interrupts at once. (Only in the main thread, where Python delivers signals.)"""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this batch and saving checkpoints/last.pt (again to abort at once)")

    def __enter__(self) -> _StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class _Session:
    """Everything one fit() works with, built once."""
    model: nn.Module
    step_model: nn.Module  # the model, or its torch.compile wrapper
    opt: torch.optim.Optimizer
    scheduler: object
    per_epoch_scheduler: bool
    scaler: torch.amp.GradScaler
    loader: DeviceLoader
    steps: int
    augment: Augment | None
    aug_generator: torch.Generator
    criterion: nn.Module
    data: ImageData
    checkpoint_dir: Path
    meta: dict
    logger: object
    device: torch.device
    ema: ModelEma | None = None
    first_step_started: float | None = None  # seconds after the process started

    def normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.tensor(v, device=self.device).view(1, -1, 1, 1) for v in (self.data.mean, self.data.std))

    def checkpoint(self, epoch: int, state: FitState, progress: EpochProgress | None = None) -> dict:
        """Everything to resume (and, with meta, to evaluate and predict), as plain data and tensors."""
        rng = {"torch": torch.get_rng_state(), "shuffle": self.loader.generator.get_state(),
               "augment": self.aug_generator.get_state(),
               "mix": self.augment.mix.state() if getattr(self.augment, "mix", None) else None,
               "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []}
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "state": state.as_dict(), "progress": progress.as_dict() if progress else None,
                "meta": self.meta, "rng": rng, "ema": self.ema.state_dict() if self.ema else None}

    def best_checkpoint(self, content: dict) -> dict:
        """best.pt: with an EMA of the weights, the EMA is the model that was selected (its val metrics
        are the monitored ones), so it is best.pt's model, the one evaluate / predict / export load."""
        return {**content, "model": self.ema.module.state_dict()} if self.ema else content



def fused_on_cuda(optimizer, device: torch.device) -> dict:
    """{"fused": True} when on CUDA the optimizer has a fused kernel and the config did not choose:
    one kernel for all parameters instead of several per tensor. On CPU the fused kernels gave no
    measurable gain (see README, Performance), so the default implementation stays."""
    func = getattr(optimizer, "func", optimizer)
    chosen = getattr(optimizer, "keywords", {})
    if device.type == "cuda" and "fused" not in chosen and "fused" in inspect.signature(func).parameters:
        return {"fused": True}
    return {}

class Trainer:
    """The `trainer=` config group.

    Args:
        device: auto | cpu | cuda | cuda:N.
        precision: auto | fp32 | bf16 | fp16 (autocast; auto = bf16 where the device supports it).
        channels_last: NHWC memory format for model and inputs (faster convolutions on CPU and GPU).
        compile: wrap the model in torch.compile.
        max_epochs: epochs to train.
        limit_train_batches: stop each epoch after this many batches (int) or this fraction (float);
            for smoke runs.
        gradient_clip_val: clip the global gradient norm to this value (0 = off).
        monitor: the val metric that selects best.pt (and drives plateau schedules, early stopping).
        early_stopping_patience: stop after this many epochs without improvement (null = never).
        warmup_batches: batches per epoch left out of the images/s measurement.
        progress_bar: show a per-epoch progress bar on terminals.
        distributed: DistributedDataParallel over the processes of a torchrun launch (trainer=ddp); each
            trains on its share of every epoch with batches of data.batch_size (the global batch is
            data.batch_size * processes). Without torchrun, one process trains alone.
        backend: the process group's backend with `distributed`: auto (nccl for CUDA, gloo for CPU),
            nccl or gloo.
    """

    def __init__(self, device: str = "auto", precision: str = "auto", channels_last: bool = True,
                 compile: bool = False, max_epochs: int = 30, limit_train_batches: int | float | None = None,
                 gradient_clip_val: float = 0.0, monitor: str = "val/acc",
                 early_stopping_patience: int | None = None, warmup_batches: int = 2, progress_bar: bool = True,
                 distributed: bool = False, backend: str = "auto", ema_decay: float | None = None):
        if max_epochs < 1:
            raise ConfigError(f"trainer.max_epochs={max_epochs} is invalid: it must be at least 1")
        if monitor not in MONITORS:
            raise ConfigError(f"trainer.monitor={monitor} is invalid: use one of {', '.join(MONITORS)}")
        if limit_train_batches is not None and not (
                (isinstance(limit_train_batches, int) and limit_train_batches >= 1)
                or (isinstance(limit_train_batches, float) and 0 < limit_train_batches <= 1)):
            raise ConfigError(f"trainer.limit_train_batches={limit_train_batches} is invalid: "
                              "use a number of batches >= 1 or a fraction in (0, 1]")
        if early_stopping_patience is not None and early_stopping_patience < 0:
            raise ConfigError(f"trainer.early_stopping_patience={early_stopping_patience} is invalid: it must be "
                              ">= 0 (epochs without improvement), or null (never stop early)")
        if warmup_batches < 0:
            raise ConfigError(f"trainer.warmup_batches={warmup_batches} is invalid: it must be >= 0")
        if gradient_clip_val < 0:
            raise ConfigError(f"trainer.gradient_clip_val={gradient_clip_val} is invalid: it must be >= 0")
        launched = ddp.launched_world_size()
        if launched > 1 and not distributed:
            raise ConfigError(f"torchrun started {launched} processes, but this trainer trains in one: each would "
                              "train the whole run and write into the same directory; use trainer=ddp")
        self.device = resolve_device(device, ddp.local_rank() if launched > 1 else None)
        self.precision = resolve_precision(precision, self.device)
        self.world_size = ddp.init(backend, self.device) if distributed else 1
        self.channels_last, self.compile = channels_last, compile
        self.max_epochs, self.limit_train_batches = max_epochs, limit_train_batches
        self.gradient_clip_val, self.monitor = gradient_clip_val, monitor
        self.monitor_mode = "min" if monitor.endswith("loss") else "max"
        self.early_stopping_patience = early_stopping_patience
        self.warmup_batches, self.progress_bar = warmup_batches, progress_bar
        self.ema_decay = ema_decay
        if ema_decay is not None:
            ModelEma(nn.Identity(), ema_decay)  # checks the value now, before any data is read
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels

    # -- evaluation ----------------------------------------------------------------------------------

    def predictor(self, model: nn.Module, data: ImageData, tta: str = "none", crop_size: int | None = None,
                  input_size: int | None = None) -> Predictor:
        """`model` with the data's normalization, on this trainer's device, precision and memory format;
        input_size: the training crop's side (Augment.input_size), which evaluation crops to."""
        return Predictor(model, data.mean, data.std, self.device, self.precision, self.channels_last,
                         tta, crop_size, data.eval_batch_size, input_size)

    def evaluate(self, model: nn.Module, data: ImageData, split: str, input_size: int | None = None
                 ) -> dict | None:
        """Metrics of one split (see evaluation.evaluate_split), or None if the data has no such split."""
        if split not in data.splits:
            return None
        predictor = self.predictor(model, data, input_size=input_size)
        return evaluate_split(predictor, data.splits[split], data.classes).metrics

    # -- training ------------------------------------------------------------------------------------

    def _steps_per_epoch(self, loader: DeviceLoader) -> int:
        limit = self.limit_train_batches
        if limit is None:
            return len(loader)
        if isinstance(limit, float):
            return max(1, int(len(loader) * limit))
        return min(limit, len(loader))

    def _improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best if self.monitor_mode == "min" else value > best

    def fit(self, model: nn.Module, data: ImageData, optimizer, schedule, augment: Augment | None,
            criterion: nn.Module, checkpoint_dir: str | Path, seed: int = 0, meta: dict | None = None,
            logger=None, ckpt_path: str | None = None) -> FitState:
        """Trains `model` for max_epochs; writes checkpoints/last.pt every epoch and best.pt on improvement.

        `optimizer` is a partial taking the parameters; `schedule` has .build(optimizer, epochs,
        steps_per_epoch, monitor_mode). Returns the final FitState (best epoch, per-epoch history).
        Ctrl-C (SIGINT) stops after the current batch, saves last.pt (resumable mid-epoch) and raises
        Interrupted.
        """
        model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        criterion.to(self.device)
        loader = data.train_loader(self.device, seed)
        if self.world_size > 1:
            loader.shard(ddp.rank(), self.world_size)
        steps = self._steps_per_epoch(loader)
        opt = optimizer(model.parameters(), **fused_on_cuda(optimizer, self.device))
        step_model = ddp.wrap(model, self.device)
        run = _Session(
            model=model, step_model=torch.compile(step_model) if self.compile else step_model, opt=opt,
            scheduler=schedule.build(opt, self.max_epochs, steps, self.monitor_mode),
            per_epoch_scheduler=isinstance(schedule, Plateau),
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16"),
            loader=loader, steps=steps, augment=augment,
            aug_generator=torch.Generator(self.device).manual_seed(seed + 1),
            criterion=criterion, data=data, checkpoint_dir=Path(checkpoint_dir), meta=meta or {},
            logger=logger or NullLogger(), device=self.device)
        if getattr(augment, "mix", None):
            augment.mix.seed(seed + 2)
        if self.ema_decay is not None:
            run.ema = ModelEma(model, self.ema_decay)
        has_val = "val" in data.splits
        if run.per_epoch_scheduler and not has_val:
            raise ConfigError("sched=plateau needs a validation split; set data.val_split > 0")
        state, progress = FitState(), None
        if ckpt_path:
            state, progress = self._resume(ckpt_path, run)
        log.info("Training on %s (%s%s) for %d epochs of %d batches of %d", self.device, self.precision,
                 ", channels_last" if self.channels_last else "", self.max_epochs, steps, data.batch_size)
        if self.world_size > 1:
            log.info("%d processes, each on its share of every epoch: global batch %d", self.world_size,
                     data.batch_size * self.world_size)

        input_size = augment.input_size if augment is not None else None  # validation sees the training crop
        with _StopOnSigint() as stop:
            for epoch in range(state.epoch + 1, self.max_epochs + 1):
                progress = progress or EpochProgress(epoch, shuffle_state=loader.generator.get_state())
                train = self._train_epoch(run, progress, stop)
                if train is None:  # interrupted: progress holds where, last.pt lets the run go on from there
                    if ddp.is_main():
                        save_checkpoint(run.checkpoint_dir / "last.pt", run.checkpoint(epoch - 1, state, progress))
                    ddp.barrier()  # a rank that exits first makes torchrun stop rank 0, perhaps mid-write
                    raise Interrupted(f"interrupted in epoch {epoch} after batch {progress.batches_done} of "
                                      f"{steps}; {run.checkpoint_dir / 'last.pt'} continues it "
                                      f"(ckpt_path=... with the same overrides)")
                progress = None
                ddp.broadcast_buffers(model)  # evaluate and save one model: rank 0's
                val = self.evaluate(model, data, "val", input_size) if has_val else None
                record = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], **train}
                if val and run.ema:  # val/* is the EMA's (the model selected and tested); val_raw/* the weights'
                    ddp.broadcast_buffers(run.ema.module)
                    record |= {f"val_raw/{k}": val[k] for k in VAL_KEYS}
                    val = self.evaluate(run.ema.module, data, "val", input_size)
                if val:
                    record |= {f"val/{k}": val[k] for k in VAL_KEYS}
                    if run.per_epoch_scheduler:
                        run.scheduler.step(record[self.monitor])
                state.history.append(record)
                state.epoch = epoch
                improved = self._improved(record[self.monitor], state.best_value) if val else True
                if improved:
                    state.best_value = record[self.monitor] if val else None
                    state.best_epoch, state.bad_epochs = epoch, 0
                else:
                    state.bad_epochs += 1

                if ddp.is_main():  # the ranks' models, optimizers and RNG streams are identical: one writes
                    content = run.checkpoint(epoch, state)
                    save_checkpoint(run.checkpoint_dir / "last.pt", content)
                    if improved:
                        save_checkpoint(run.checkpoint_dir / "best.pt", run.best_checkpoint(content))
                run.logger.log_scalars({k: v for k, v in record.items() if k != "epoch"}, epoch)
                if val:
                    run.logger.log_confusion_matrix("val/confusion_matrix", val["confusion_matrix"], data.classes,
                                                    epoch)
                self._log_epoch(record, improved and bool(val))
                if (self.early_stopping_patience is not None and val and not improved
                        and state.bad_epochs >= self.early_stopping_patience):
                    log.info("Early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                             self.monitor, state.bad_epochs, state.best_value, state.best_epoch)
                    break
        return state

    @staticmethod
    def _loss(output, labels: torch.Tensor, criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss). Models with auxiliary heads (GoogLeNet) return, in training mode,
        (logits, [(weight, aux_logits), ...]); each head adds weight * its loss."""
        if isinstance(output, tuple):
            logits, aux = output
            return logits, criterion(logits, labels) + sum(w * criterion(a, labels) for w, a in aux)
        return output, criterion(output, labels)

    def _train_epoch(self, run: _Session, progress: EpochProgress, stop: _StopOnSigint) -> dict | None:
        """One epoch from `progress` (its start, or where an interrupted run stopped). Returns the epoch's
        train loss, accuracy, time and images/s, or None when Ctrl-C stopped it (`progress` then says where)."""
        run.model.train()
        mean, std = run.normalization()
        mix, num_classes = getattr(run.augment, "mix", None), len(run.data.classes)
        # An interrupted epoch's sums were summed over the ranks when it stopped: rank 0 alone goes on from them.
        carried = progress if ddp.is_main() else EpochProgress(progress.epoch)
        loss_sum = torch.tensor(carried.loss_sum, device=self.device)
        correct = torch.tensor(carried.correct, device=self.device, dtype=torch.long)
        # The first step whose loss is not finite, recorded on the device (no sync), read every CHECK_EVERY steps.
        first_bad = torch.tensor(NO_BAD_STEP, device=self.device)
        seen, timed_from, timed_start = carried.seen, carried.seen, None
        bar = tqdm(total=run.steps, initial=progress.batches_done, desc=f"epoch {progress.epoch}/{self.max_epochs}",
                   unit="batch", leave=False, disable=None if self.progress_bar and ddp.is_main() else True,
                   dynamic_ncols=True)
        run.loader.generator.set_state(progress.shuffle_state)
        start = last_postfix = time.perf_counter()
        for i, (images, labels) in enumerate(run.loader.iterate(progress.batches_done), start=progress.batches_done):
            if i == run.steps:
                break
            started_at = seconds_since_process_start() if run.first_step_started is None else None
            x = to_input(images, mean, std, self.channels_last, run.augment, run.aug_generator)
            targets = labels
            if mix:  # mixup / CutMix: the loss is against the blended one-hot targets
                x, targets = mix(x, labels, num_classes)
                labels = targets.argmax(1)  # train accuracy counts the dominant label
            with autocast(self.device, self.precision):
                logits, loss = self._loss(run.step_model(x), targets, run.criterion)
            run.opt.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            if self.gradient_clip_val:
                run.scaler.unscale_(run.opt)
                nn.utils.clip_grad_norm_(run.model.parameters(), self.gradient_clip_val)
            run.scaler.step(run.opt)
            run.scaler.update()
            if run.ema:
                run.ema.update(run.model)
            if not run.per_epoch_scheduler:
                run.scheduler.step()
            loss = loss.detach().float()
            first_bad = torch.where(torch.isfinite(loss), first_bad, first_bad.clamp(max=i + 1))
            loss_sum += loss * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if i + 1 - progress.batches_done == self.warmup_batches:  # steady state: one sync to start the clock
                synchronize(self.device)
                timed_start, timed_from = time.perf_counter(), seen
            bar.update(1)
            if run.first_step_started is None:
                self._log_first_step(run, started_at)
            check = (i + 1) % CHECK_EVERY == 0 or i + 1 == run.steps
            if check:
                self._check_finite(first_bad, progress.epoch)
            if self._stop_requested(stop, check):
                progress.batches_done = i + 1
                progress.seen, progress.loss_sum, progress.correct = ddp.sum_over_ranks(seen, loss_sum, correct)
                progress.seen, progress.correct = int(progress.seen), int(progress.correct)
                bar.close()
                return None
            if not bar.disable and time.perf_counter() - last_postfix > 1.0:
                last_postfix = time.perf_counter()
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{(seen - carried.seen) / (last_postfix - start):.0f}")
        synchronize(self.device)
        end = time.perf_counter()
        bar.close()
        self._check_finite(first_bad, progress.epoch)
        if timed_start is None or seen == timed_from:  # too few batches to leave warm-up out
            timed_start, timed_from = start, carried.seen
        # Loss and accuracy over every rank's samples; images/s of all ranks together.
        loss_sum, correct, seen, images_per_s = ddp.sum_over_ranks(
            loss_sum, correct, seen, (seen - timed_from) / max(end - timed_start, 1e-9))
        return {"train/loss": loss_sum / seen, "train/acc": correct / seen, "train/epoch_time_s": end - start,
                "train/images_per_s": images_per_s}

    def _stop_requested(self, stop: _StopOnSigint, check: bool) -> bool:
        """Whether to stop after this batch for Ctrl-C. With several processes all must stop after the same
        batch (one that went on would wait forever for the others in its next gradient all-reduce), so
        they agree at the non-finite checks, every CHECK_EVERY batches: that costs no extra sync per step,
        and stopping takes at most CHECK_EVERY batches."""
        if self.world_size == 1:
            return stop.requested
        return check and ddp.any_rank(stop.requested)

    def _log_first_step(self, run: _Session, started_at: float | None) -> None:
        """How long the process took to start training (the startup budget), and its first step."""
        run.first_step_started = started_at if started_at is not None else -1.0
        synchronize(self.device)
        done = seconds_since_process_start()
        if started_at is not None and done is not None:
            log.info("First training step started %.1f s after the process started (done at %.1f s)",
                     started_at, done)

    @staticmethod
    def _check_finite(first_bad: torch.Tensor, epoch: int) -> None:
        # The earliest over the ranks: all of them raise at the same check, none waits for the others.
        step = int(ddp.all_reduce(first_bad, "min").item())
        if step != NO_BAD_STEP:
            raise UserError(f"the training loss became NaN or infinite in epoch {epoch} at step {step}; lower "
                            "optim.lr or set trainer.gradient_clip_val (the last good checkpoint is kept)")

    def _log_epoch(self, record: dict, best: bool) -> None:
        line = (f"epoch {record['epoch']}/{self.max_epochs}  train loss {record['train/loss']:.4f} "
                f"acc {record['train/acc']:.4f}")
        if "val/acc" in record:
            line += (f" | val loss {record['val/loss']:.4f} acc {record['val/acc']:.4f} "
                     f"macro-F1 {record['val/macro_f1']:.4f}")
        line += (f" | lr {record['lr']:.3g} | {record['train/epoch_time_s']:.1f} s, "
                 f"{record['train/images_per_s']:.0f} img/s")
        log.info(line + ("  *" if best else ""))

    def _resume(self, ckpt_path, run: _Session) -> tuple[FitState, EpochProgress | None]:
        """Restores model, optimizer, schedule, RNG streams and selection state; for a checkpoint of an
        interrupted epoch, also where in that epoch to go on."""
        ckpt = load_checkpoint(ckpt_path, map_location=self.device)
        saved_classes = (ckpt["meta"].get("data") or {}).get("classes")
        if saved_classes is not None and saved_classes != run.data.classes:
            raise UserError(f"checkpoint {ckpt_path} was trained on classes {saved_classes}, "
                            f"but the data has {run.data.classes}")
        try:
            state, progress = self._restore(ckpt, ckpt_path, run)
        except ConfigError as exc:  # a value of the stored state of the wrong type
            raise UserError(f"checkpoint {ckpt_path} cannot be resumed: its {exc}") from None
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            # A checkpoint may come from anywhere: a part of the training state missing or of the wrong shape
            raise UserError(f"checkpoint {ckpt_path} cannot be resumed: its training state is missing or damaged "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        self._carry_over_best(Path(ckpt_path), ckpt, state, run.checkpoint_dir)
        where = f"epoch {state.epoch}" + (f", batch {progress.batches_done} of epoch {progress.epoch}"
                                          if progress else "")
        log.info("Resumed from %s at %s (best %s %s at epoch %d)", ckpt_path, where, self.monitor,
                 state.best_value, state.best_epoch)
        return state, progress

    def _restore(self, ckpt: dict, ckpt_path, run: _Session) -> tuple[FitState, EpochProgress | None]:
        """Loads the checkpoint's model, optimizer, schedule, RNG and selection state into `run`."""
        check_arguments(FitState, ckpt["state"], "state")
        for record in ckpt["state"]["history"]:  # the per-epoch figures metrics.json and history.csv are made of
            if not all(isinstance(k, str) and isinstance(v, int | float) for k, v in record.items()):
                raise ConfigError(f"state.history holds a record that is not numbers by name: {record}")
        if ckpt.get("progress"):
            check_arguments(EpochProgress, ckpt["progress"], "progress")
        try:
            run.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"checkpoint {ckpt_path} does not fit this model (pass the same model overrides "
                            f"as the run that wrote it): {str(exc).splitlines()[0]}") from None
        run.opt.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        run.loader.generator.set_state(rng["shuffle"].cpu())
        run.aug_generator.set_state(rng["augment"].cpu())
        if run.ema:
            if not ckpt.get("ema"):
                raise UserError(f"checkpoint {ckpt_path} has no EMA of the weights: resume with the settings of "
                                "the run that wrote it (trainer.ema_decay)")
            run.ema.load_state_dict(ckpt["ema"])
        if rng.get("mix") and getattr(run.augment, "mix", None):
            run.augment.mix.set_state(rng["mix"])
        if rng["cuda"] and self.device.type == "cuda":
            if self.world_size > 1:  # each rank's generator went in step with rank 0's, which was cuda:0's
                torch.cuda.set_rng_state(rng["cuda"][0].cpu(), self.device)
            else:
                torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        state = FitState(**ckpt["state"])
        progress = EpochProgress(**ckpt["progress"]) if ckpt.get("progress") else None
        if progress:
            progress.shuffle_state = progress.shuffle_state.cpu()
        return state, progress

    @staticmethod
    def _carry_over_best(ckpt_path: Path, ckpt: dict, state: FitState, checkpoint_dir: Path) -> None:
        """The resumed run's checkpoints/ starts with the best checkpoint so far, so that selection
        continues across the interruption: best.pt beside the resumed file, or the file itself if it
        was the best epoch."""
        target = checkpoint_dir / "best.pt"
        beside = ckpt_path.with_name("best.pt")
        if beside.resolve() == target.resolve():
            return
        if beside.is_file() and load_checkpoint(beside)["epoch"] == state.best_epoch:
            source = beside
        elif ckpt["epoch"] == state.best_epoch:
            source = ckpt_path
        else:
            log.warning("best.pt of epoch %d is not beside %s: selection restarts from the resumed epochs",
                        state.best_epoch, ckpt_path)
            state.best_value, state.best_epoch = None, 0
            return
        if ddp.is_main():  # every rank decides alike (the decision changes the state); one copies
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
