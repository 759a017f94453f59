"""The training loop: epochs of device-resident batches, validation every epoch, selection on val.

Per batch there is no host synchronisation: loss and accuracy are summed on the device and read
once per epoch (and at most once a second for the progress bar).
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from ..data import Augment, DeviceLoader, ImageData
from ..errors import ConfigError, UserError
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluation import evaluate_split
from .inference import Predictor, to_input
from .logger import NullLogger
from .runtime import autocast, resolve_device, resolve_precision, synchronize
from .schedules import Plateau

log = logging.getLogger(__name__)

MONITORS = ("val/acc", "val/macro_f1", "val/balanced_acc", "val/loss")


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
    """

    def __init__(self, device: str = "auto", precision: str = "auto", channels_last: bool = True,
                 compile: bool = False, max_epochs: int = 30, limit_train_batches: int | float | None = None,
                 gradient_clip_val: float = 0.0, monitor: str = "val/acc",
                 early_stopping_patience: int | None = None, warmup_batches: int = 2, progress_bar: bool = True):
        if max_epochs < 1:
            raise ConfigError(f"trainer.max_epochs={max_epochs} is invalid: it must be at least 1")
        if monitor not in MONITORS:
            raise ConfigError(f"trainer.monitor={monitor} is invalid: use one of {', '.join(MONITORS)}")
        if limit_train_batches is not None and not (
                (isinstance(limit_train_batches, int) and limit_train_batches >= 1)
                or (isinstance(limit_train_batches, float) and 0 < limit_train_batches <= 1)):
            raise ConfigError(f"trainer.limit_train_batches={limit_train_batches} is invalid: "
                              "use a number of batches >= 1 or a fraction in (0, 1]")
        if gradient_clip_val < 0:
            raise ConfigError(f"trainer.gradient_clip_val={gradient_clip_val} is invalid: it must be >= 0")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last, self.compile = channels_last, compile
        self.max_epochs, self.limit_train_batches = max_epochs, limit_train_batches
        self.gradient_clip_val, self.monitor = gradient_clip_val, monitor
        self.monitor_mode = "min" if monitor.endswith("loss") else "max"
        self.early_stopping_patience = early_stopping_patience
        self.warmup_batches, self.progress_bar = warmup_batches, progress_bar
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels

    # -- evaluation ----------------------------------------------------------------------------------

    def predictor(self, model: nn.Module, data: ImageData, tta: str = "none", crop_size: int | None = None
                  ) -> Predictor:
        """`model` with the data's normalization, on this trainer's device, precision and memory format."""
        return Predictor(model, data.mean, data.std, self.device, self.precision, self.channels_last,
                         tta, crop_size, data.eval_batch_size)

    def evaluate(self, model: nn.Module, data: ImageData, split: str) -> dict | None:
        """Metrics of one split (see evaluation.evaluate_split), or None if the data has no such split."""
        if split not in data.splits:
            return None
        return evaluate_split(self.predictor(model, data), data.splits[split], data.classes).metrics

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
        """
        logger = logger or NullLogger()
        checkpoint_dir = Path(checkpoint_dir)
        model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        criterion.to(self.device)
        train_loader = data.train_loader(self.device, seed)
        has_val = "val" in data.splits
        steps = self._steps_per_epoch(train_loader)
        opt = optimizer(model.parameters())
        scheduler = schedule.build(opt, self.max_epochs, steps, self.monitor_mode)
        per_epoch_scheduler = isinstance(schedule, Plateau)
        if per_epoch_scheduler and not has_val:
            raise ConfigError("sched=plateau needs a validation split; set data.val_split > 0")
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        aug_generator = torch.Generator(self.device).manual_seed(seed + 1)
        state = FitState()
        if ckpt_path:
            state = self._resume(ckpt_path, model, opt, scheduler, scaler, train_loader, aug_generator, data,
                                 checkpoint_dir)
        step_model = torch.compile(model) if self.compile else model
        mean, std = (torch.tensor(v, device=self.device).view(1, -1, 1, 1) for v in (data.mean, data.std))
        log.info("Training on %s (%s%s) for %d epochs of %d batches of %d", self.device, self.precision,
                 ", channels_last" if self.channels_last else "", self.max_epochs, steps, data.batch_size)

        for epoch in range(state.epoch + 1, self.max_epochs + 1):
            train = self._train_epoch(step_model, train_loader, steps, opt, scheduler, per_epoch_scheduler,
                                      scaler, augment, aug_generator, criterion, epoch, mean, std)
            val = self.evaluate(model, data, "val") if has_val else None
            lr = opt.param_groups[0]["lr"]
            record = {"epoch": epoch, "lr": lr, "train/loss": train["loss"], "train/acc": train["acc"],
                      "train/epoch_time_s": train["time_s"], "train/images_per_s": train["images_per_s"]}
            if val:
                record |= {f"val/{k}": val[k] for k in ("loss", "acc", "balanced_acc", "macro_f1")}
                if per_epoch_scheduler:
                    scheduler.step(record[self.monitor])
            state.history.append(record)
            state.epoch = epoch
            improved = self._improved(record[self.monitor], state.best_value) if val else True
            if improved:
                state.best_value = record[self.monitor] if val else None
                state.best_epoch, state.bad_epochs = epoch, 0
            else:
                state.bad_epochs += 1

            content = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                       "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                       "state": state.as_dict(), "meta": meta or {},
                       "rng": {"torch": torch.get_rng_state(), "shuffle": train_loader.generator.get_state(),
                               "augment": aug_generator.get_state(),
                               "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []}}
            save_checkpoint(checkpoint_dir / "last.pt", content)
            if improved:
                save_checkpoint(checkpoint_dir / "best.pt", content)

            logger.log_scalars({k: v for k, v in record.items() if k != "epoch"}, epoch)
            if val:
                logger.log_confusion_matrix("val/confusion_matrix", val["confusion_matrix"], data.classes, epoch)
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

    def _train_epoch(self, model, loader, steps, opt, scheduler, per_epoch_scheduler, scaler, augment,
                     generator, criterion, epoch, mean, std) -> dict:
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, timed_from, timed_start = 0, 0, None
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{self.max_epochs}", unit="batch", leave=False,
                   disable=None if self.progress_bar else True, dynamic_ncols=True)
        start = last_postfix = time.perf_counter()
        for i, (images, labels) in enumerate(loader):
            if i == steps:
                break
            x = to_input(images, mean, std, self.channels_last, augment, generator)
            with autocast(self.device, self.precision):
                logits, loss = self._loss(model(x), labels, criterion)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if self.gradient_clip_val:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), self.gradient_clip_val)
            scaler.step(opt)
            scaler.update()
            if not per_epoch_scheduler:
                scheduler.step()
            loss_sum += loss.detach().float() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if i + 1 == self.warmup_batches:  # steady state starts here: one sync to start the clock
                synchronize(self.device)
                timed_start, timed_from = time.perf_counter(), seen
            bar.update(1)
            if not bar.disable and time.perf_counter() - last_postfix > 1.0:
                last_postfix = time.perf_counter()
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen / (last_postfix - start):.0f}")
        synchronize(self.device)
        end = time.perf_counter()
        bar.close()
        if timed_start is None or seen == timed_from:  # too few batches to leave warm-up out
            timed_start, timed_from = start, 0
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise UserError(f"the training loss became {train_loss} in epoch {epoch}; lower optim.lr or set "
                            "trainer.gradient_clip_val (the last good checkpoint is kept)")
        return {"loss": train_loss, "acc": correct.item() / seen, "time_s": end - start,
                "images_per_s": (seen - timed_from) / max(end - timed_start, 1e-9)}

    def _log_epoch(self, record: dict, best: bool) -> None:
        line = (f"epoch {record['epoch']}/{self.max_epochs}  train loss {record['train/loss']:.4f} "
                f"acc {record['train/acc']:.4f}")
        if "val/acc" in record:
            line += (f" | val loss {record['val/loss']:.4f} acc {record['val/acc']:.4f} "
                     f"macro-F1 {record['val/macro_f1']:.4f}")
        line += (f" | lr {record['lr']:.3g} | {record['train/epoch_time_s']:.1f} s, "
                 f"{record['train/images_per_s']:.0f} img/s")
        log.info(line + ("  *" if best else ""))

    def _resume(self, ckpt_path, model, opt, scheduler, scaler, train_loader, aug_generator, data,
                checkpoint_dir: Path) -> FitState:
        ckpt = load_checkpoint(ckpt_path, map_location=self.device)
        saved_classes = ckpt["meta"].get("data", {}).get("classes")
        if saved_classes is not None and saved_classes != data.classes:
            raise UserError(f"checkpoint {ckpt_path} was trained on classes {saved_classes}, "
                            f"but the data has {data.classes}")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"checkpoint {ckpt_path} does not fit this model (pass the same model overrides "
                            f"as the run that wrote it): {str(exc).splitlines()[0]}") from None
        opt.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        train_loader.generator.set_state(rng["shuffle"].cpu())
        aug_generator.set_state(rng["augment"].cpu())
        if rng["cuda"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        state = FitState(**ckpt["state"])
        self._carry_over_best(Path(ckpt_path), ckpt, state, checkpoint_dir)
        log.info("Resumed from %s at epoch %d (best %s %s at epoch %d)", ckpt_path, state.epoch, self.monitor,
                 state.best_value, state.best_epoch)
        return state

    def _carry_over_best(self, ckpt_path: Path, ckpt: dict, state: FitState, checkpoint_dir: Path) -> None:
        """The resumed run's checkpoints/ starts with the best checkpoint so far, so that selection
        continues across the interruption: best.pt beside the resumed file, or the file itself if it
        was the best epoch."""
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        target = checkpoint_dir / "best.pt"
        beside = ckpt_path.with_name("best.pt")
        if beside.resolve() == target.resolve():
            return
        if beside.is_file() and load_checkpoint(beside)["epoch"] == state.best_epoch:
            shutil.copyfile(beside, target)
        elif ckpt["epoch"] == state.best_epoch:
            shutil.copyfile(ckpt_path, target)
        else:
            log.warning("best.pt of epoch %d is not beside %s: selection restarts from the resumed epochs",
                        state.best_epoch, ckpt_path)
            state.best_value, state.best_epoch = None, 0
