"""The training loop: epochs of device-resident batches, validation every epoch, selection on val.

`Trainer.fit` runs the epochs; `_train_epoch` is the step. What watches the steps (running sums,
throughput, the non-finite guard, Ctrl-C, the progress bar) is in monitors.py, what is saved and how a
run resumes in checkpointing.py. Per batch there is no host synchronisation: loss and accuracy are
summed on the device and read once per epoch (and at most once a second for the progress bar).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data import DeviceLoader, ImageData, Split
from ..data.inputs import ModelInput
from ..data.memory import device_budget_bytes
from ..errors import ConfigError
from ..evaluation.metrics import EPOCH_METRICS, MONITORS, lower_is_better
from ..evaluation.split_evaluation import evaluate_split
from ..inference.predictor import Predictor
from ..progress import LOG_EVERY_S_RULE, clock
from ..runtime import distributed as ddp
from ..runtime.devices import autocast, fused_on_cuda, resolve_device, resolve_precision
from ..value_checks import require
from .debugging import DebugModes
from .ema import ModelEma, check_ema_decay
from .monitors import CHECK_EVERY, EpochMeter, FirstStepLog, Interrupted, ProgressBar, StopOnSigint
from .profiling import NoProfiler
from .run_checkpoints import EpochProgress, FitState, Resumable, RunCheckpoints
from .tensorboard_logger import NullLogger

log = logging.getLogger(__name__)

RANK_SEED_STRIDE = 1_000_003  # rank r's random streams start from seed + r * this (apart from any seed sweep)


@dataclass
class Recipe:
    """What a run trains with, besides the model and the data: the optimizer (a partial taking the
    parameters), the schedule (`.build(optimizer, epochs, steps_per_epoch, monitor_mode)`, `.per_batch`),
    the loss, the inputs (augmentation, mixing, normalization: data.inputs.ModelInput) and the seed of
    the run's random streams."""
    optimizer: object
    schedule: object
    criterion: nn.Module
    inputs: ModelInput
    seed: int = 0


@dataclass
class _Run:
    """Everything one fit() works with, built once."""
    parts: Resumable          # what a checkpoint holds (model, optimizer, scheduler, scaler, ...)
    step_model: nn.Module     # the model, or its DDP / torch.compile wrapper
    loader: DeviceLoader
    steps: int
    recipe: Recipe
    num_classes: int
    first_step: FirstStepLog
    profiler: NoProfiler      # trainer.profile's torch.profiler, or one that does nothing


class Trainer:
    """The `trainer=` config group.

    Args:
        device: auto | cpu | cuda | cuda:N.
        precision: auto | fp32 | bf16 | fp16 (autocast; auto = bf16 where the device supports it).
        channels_last: NHWC memory format for model and inputs (faster convolutions on CPU and GPU).
        compile: wrap the model in torch.compile.
        max_epochs: epochs to train.
        limit_train_batches, limit_val_batches, limit_test_batches, overfit_batches, fast_dev_run, profile: the
            debugging modes (smoke runs, learning a few batches by heart, the profiler): see debugging.py.
        gradient_clip_val: clip the global gradient norm to this value (0 = off).
        monitor: the val metric that selects best.pt (and drives plateau schedules, early stopping).
        early_stopping_patience: stop after this many epochs without improvement (null = never).
        warmup_batches: batches per epoch left out of the images/s measurement.
        threads: CPU threads of this process (null: torch's default, or cores / jobs in a parallel sweep).
        progress_bar: a per-epoch bar on terminals (elsewhere a log line every `log_every_s` s; 0 = none).
        distributed: DistributedDataParallel over the processes of a torchrun launch (trainer=ddp); each
            trains on its share of every epoch with batches of data.batch_size (the global batch is
            data.batch_size * processes). Without torchrun, one process trains alone.
        backend: the process group's backend with `distributed`: auto (nccl for CUDA, gloo for CPU),
            nccl or gloo.
    """

    def __init__(self, device: str = "auto", precision: str = "auto", channels_last: bool = True,
                 compile: bool = False, max_epochs: int = 30, limit_train_batches: int | float | None = None,
                 limit_val_batches: int | float | None = None, limit_test_batches: int | float | None = None,
                 overfit_batches: int | float = 0, fast_dev_run: bool | int = False, profile: bool = False,
                 gradient_clip_val: float = 0.0, monitor: str = "val/acc", log_every_s: float = 30.0,
                 early_stopping_patience: int | None = None, warmup_batches: int = 2, progress_bar: bool = True,
                 distributed: bool = False, backend: str = "auto", ema_decay: float | None = None,
                 threads: int | None = None):
        self.debug = DebugModes(limit_train_batches, limit_val_batches, limit_test_batches, overfit_batches,
                                fast_dev_run, profile)
        require(max_epochs >= 1, "trainer.max_epochs", max_epochs, "must be at least 1")
        require(monitor in MONITORS, "trainer.monitor", monitor, f"must be one of {', '.join(MONITORS)}")
        require(early_stopping_patience is None or early_stopping_patience >= 0, "trainer.early_stopping_patience",
                early_stopping_patience, "must be >= 0 (epochs without improvement), or null (never stop early)")
        require(warmup_batches >= 0, "trainer.warmup_batches", warmup_batches, "must be >= 0")
        require(LOG_EVERY_S_RULE[0](log_every_s), "trainer.log_every_s", log_every_s, "must be " + LOG_EVERY_S_RULE[1])
        require(gradient_clip_val >= 0, "trainer.gradient_clip_val", gradient_clip_val, "must be >= 0")
        require(threads is None or threads >= 1, "trainer.threads", threads,
                "must be at least 1, or null (the default)")
        if ema_decay is not None:
            check_ema_decay(ema_decay)
        launched = ddp.launched_world_size()
        if launched > 1 and not distributed:
            raise ConfigError(f"torchrun started {launched} processes, but this trainer trains in one: each would "
                              "train the whole run and write into the same directory; use trainer=ddp")
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = resolve_device(device, ddp.local_rank() if launched > 1 else None)
        self.precision = resolve_precision(precision, self.device)
        self.world_size = ddp.init(backend, self.device) if distributed else 1
        self.channels_last, self.compile = channels_last, compile
        self.max_epochs = 1 if self.debug.fast_dev_run else max_epochs
        self.gradient_clip_val, self.monitor = gradient_clip_val, monitor
        self.early_stopping_patience = early_stopping_patience
        self.warmup_batches, self.progress_bar, self.log_every_s = warmup_batches, progress_bar, log_every_s
        self.ema_decay = ema_decay
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        self._eval_data, self._eval_splits = None, {}  # see _eval_split

    # -- evaluation ----------------------------------------------------------------------------------

    def predictor(self, model: nn.Module, inputs: ModelInput, tta: str = "none", crop_size: int | None = None,
                  batch_size: int = 512) -> Predictor:
        """`model` on this trainer's device and precision, its inputs made as in training."""
        return Predictor(model, inputs, self.device, self.precision, tta, crop_size, batch_size, self.log_every_s)

    def evaluate(self, model: nn.Module, data: ImageData, inputs: ModelInput, split: str) -> dict | None:
        """Metrics of a split (val, test cut by limit_val/test_batches: DebugModes.split), or None if there is none."""
        part = self._eval_split(data, split)
        if part is None:
            return None
        predictor = self.predictor(model, inputs, batch_size=data.eval_batch_size)
        return evaluate_split(predictor, part, data.classes, split).metrics

    def _eval_split(self, data: ImageData, name: str) -> Split | None:
        """The split `name` to evaluate, on a GPU uploaded once per run where it fits the data budget:
        validation runs every epoch, and a copy from pageable host memory each time would stall it."""
        if self._eval_data is not data:  # another dataset: nothing kept applies
            self._eval_data, self._eval_splits = data, {}
        if name not in self._eval_splits:
            part = self.debug.split(data, name)
            if part is not None and self.device.type == "cuda" and part.nbytes <= device_budget_bytes(
                    self.device, data.max_device_bytes):
                part = Split(part.images.to(self.device), part.labels, part.files)
            self._eval_splits[name] = part
        return self._eval_splits[name]

    # -- training ------------------------------------------------------------------------------------

    def _start(self, model: nn.Module, data: ImageData, recipe: Recipe, profile_dir: str | None) -> _Run:
        model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        recipe.criterion.to(self.device)
        if not recipe.schedule.per_batch and "val" not in data.splits:
            raise ConfigError("sched=plateau needs a validation split; set data.val_split > 0")
        loader = self.debug.train_loader(data, self.device, recipe.seed)  # all of train, or overfit_batches'
        if self.world_size > 1:
            loader.shard(ddp.rank(), self.world_size)
        steps = self.debug.train_steps(len(loader))
        optimizer = recipe.optimizer(model.parameters(), **fused_on_cuda(recipe.optimizer, self.device))
        # Under DDP each rank draws its own crops, flips, erasing, mixing and dropout masks: seeded alike, the
        # ranks would repeat each other's draws (B independent samples instead of B x world size). Rank 0
        # keeps the run's seed, so one process trains as before; the weights are rank 0's (DDP broadcasts).
        rank_seed = recipe.seed + RANK_SEED_STRIDE * ddp.rank()
        recipe.inputs.seed(rank_seed, self.device)
        if ddp.rank() > 0:
            torch.manual_seed(rank_seed)
        step_model = ddp.wrap(model, self.device)
        parts = Resumable(
            model=model, optimizer=optimizer,
            scheduler=recipe.schedule.build(optimizer, self.max_epochs, steps,
                                            "min" if lower_is_better(self.monitor) else "max"),
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16"),
            batch_order=loader.generator, inputs=recipe.inputs, device=self.device,
            ema=ModelEma(model, self.ema_decay) if self.ema_decay is not None else None)
        return _Run(parts, torch.compile(step_model) if self.compile else step_model, loader, steps, recipe,
                    len(data.classes), FirstStepLog(), self.debug.profiler(profile_dir, self.device, steps))

    def fit(self, model: nn.Module, data: ImageData, recipe: Recipe, checkpoints: RunCheckpoints,
            logger=None, resume_from: str | None = None, profile_dir: str | None = None) -> FitState:
        """Trains `model` for max_epochs; checkpoints/last.pt every epoch and best.pt on improvement of the
        monitored val metric. Returns the final FitState (best epoch, per-epoch history). Ctrl-C (SIGINT)
        stops after the current batch, saves last.pt (resumable mid-epoch) and raises Interrupted.
        trainer.profile writes its trace into `profile_dir` (none without one)."""
        run, logger = self._start(model, data, recipe, profile_dir), logger or NullLogger()
        state, progress = FitState(), None
        if resume_from:
            state, progress = checkpoints.resume(resume_from, run.parts, data.classes)
            where = f"epoch {state.epoch}" + (f", batch {progress.batches_done} of epoch {progress.epoch}"
                                              if progress else "")
            log.info("Resumed from %s at %s (best %s %s at epoch %d)", resume_from, where, self.monitor,
                     state.best_value, state.best_epoch)
        log.info("Training on %s (%s%s) for %d epoch%s of %d batches of %d", self.device, self.precision,
                 ", channels_last" if self.channels_last else "", self.max_epochs, "s"[:self.max_epochs != 1],
                 run.steps, data.batch_size)
        if self.world_size > 1:
            log.info("%d processes, each on its share of every epoch: global batch %d", self.world_size,
                     data.batch_size * self.world_size)
        # history's time_s: wall-clock seconds of training with validation up to each epoch's end, across
        # resumes (what val accuracy is plotted against by src.report: time to accuracy)
        done_before = state.history[-1].get("time_s", 0.0) if state.history else 0.0
        started = time.perf_counter() - done_before - (progress.seconds if progress else 0.0)
        with StopOnSigint() as stop, run.profiler:
            for epoch in range(state.epoch + 1, self.max_epochs + 1):
                progress = progress or EpochProgress(epoch, shuffle_state=run.loader.generator.get_state())
                side = recipe.inputs.start_epoch(epoch, self.max_epochs, data.image_size)
                if side < recipe.inputs.input_size(data.image_size):
                    log.info("Epoch %d trains on %dx%d inputs (aug.progressive)", epoch, side, side)
                train = self._train_epoch(run, progress, stop)
                if train is None:  # interrupted: progress holds where, last.pt lets the run go on from there
                    done_before = state.history[-1].get("time_s", 0.0) if state.history else 0.0
                    progress.seconds = time.perf_counter() - started - done_before
                    checkpoints.save_interrupted(run.parts, state, progress)
                    raise Interrupted(f"interrupted in epoch {epoch} after batch {progress.batches_done} of "
                                      f"{run.steps}; {checkpoints.last} continues it (ckpt_path=... with the same "
                                      "overrides)")
                progress = None
                record, val = self._validate(run, data, {"epoch": epoch, **train})
                record["time_s"] = round(time.perf_counter() - started, 2)
                improved = state.add(record, record.get(self.monitor), lower_is_better(self.monitor))
                checkpoints.save(run.parts, state, improved)
                logger.log_scalars({k: v for k, v in record.items() if k != "epoch"}, epoch)
                if val:
                    logger.log_confusion_matrix("val/confusion_matrix", val["confusion_matrix"], data.classes, epoch)
                self._log_epoch(record, improved and bool(val))
                if val and self._stop_early(state):
                    break
                # Ctrl-C after the epoch's last batch (during its validation or saving) stops here, the epoch
                # saved: no batch is left to notice it, and a sweep would otherwise go on with its next job
                if stop.agreed(at_check=True):
                    raise Interrupted(f"interrupted after epoch {epoch}; {checkpoints.last} continues it "
                                      "(ckpt_path=... with the same overrides)")
        return state

    def _validate(self, run: _Run, data: ImageData, record: dict) -> tuple[dict, dict | None]:
        """The epoch's record with its val metrics (of the EMA of the weights when there is one: the model
        selected and tested; the weights' own as val_raw/*), and the val metrics; a per-epoch schedule
        steps here with the monitored one."""
        ddp.broadcast_buffers(run.parts.model)  # evaluate and save one model: rank 0's
        val = self.evaluate(run.parts.model, data, run.recipe.inputs, "val")
        if val and run.parts.ema:
            ddp.broadcast_buffers(run.parts.ema.module)
            record |= {f"val_raw/{k}": val[k] for k in EPOCH_METRICS}
            val = self.evaluate(run.parts.ema.module, data, run.recipe.inputs, "val")
        if val:
            record |= {f"val/{k}": val[k] for k in EPOCH_METRICS}
            if not run.recipe.schedule.per_batch:
                run.parts.scheduler.step(record[self.monitor])
        return record, val

    def _stop_early(self, state: FitState) -> bool:
        patience = self.early_stopping_patience
        stop = patience is not None and state.bad_epochs > 0 and state.bad_epochs >= patience
        if stop:
            log.info("Early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)",
                     self.monitor, state.bad_epochs, state.best_value, state.best_epoch)
        return stop

    @staticmethod
    def _loss(output, labels: torch.Tensor, criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss). Models with auxiliary heads (GoogLeNet) return, in training mode,
        (logits, [(weight, aux_logits), ...]); each head adds weight * its loss."""
        if isinstance(output, tuple):
            logits, aux = output
            return logits, criterion(logits, labels) + sum(w * criterion(a, labels) for w, a in aux)
        return output, criterion(output, labels)

    def _train_epoch(self, run: _Run, progress: EpochProgress, stop: StopOnSigint) -> dict | None:
        """One epoch from `progress` (its start, or where an interrupted run stopped). Returns the epoch's
        train loss, accuracy, time and images/s, or None when Ctrl-C stopped it (`progress` then says where)."""
        parts, recipe = run.parts, run.recipe
        parts.model.train()
        meter = EpochMeter(self.device, self.warmup_batches, progress.batches_done,
                           (progress.seen, progress.loss_sum, progress.correct, progress.lr_sum))
        bar = ProgressBar(run.steps, progress, self.max_epochs, self.progress_bar, self.log_every_s)
        run.loader.generator.set_state(progress.shuffle_state)
        for i, (images, labels) in enumerate(run.loader.iterate(progress.batches_done), start=progress.batches_done):
            if i == run.steps:
                break
            run.first_step.before_step()
            x, targets, labels = recipe.inputs.training_batch(images, labels, run.num_classes)
            with autocast(self.device, self.precision):
                logits, loss = self._loss(run.step_model(x), targets, recipe.criterion)
            lr = parts.optimizer.param_groups[0]["lr"]
            if self._optimizer_step(parts, loss):
                if parts.ema:
                    parts.ema.update(parts.model)
                if recipe.schedule.per_batch:
                    parts.scheduler.step()
            meter.update(i, lr, loss.detach(), logits.detach(), labels)
            run.profiler.step()
            bar.step(meter)
            run.first_step.after_step(self.device)
            at_check = (i + 1) % CHECK_EVERY == 0 or i + 1 == run.steps
            if at_check:
                meter.check_finite(progress.epoch)
            if stop.agreed(at_check):
                progress.batches_done = i + 1
                progress.seen, progress.loss_sum, progress.correct, progress.lr_sum = meter.sums_over_ranks()
                bar.close()
                return None
        bar.close()
        meter.check_finite(progress.epoch)
        return meter.result()

    def _optimizer_step(self, parts: Resumable, loss: torch.Tensor) -> bool:
        """Backward and optimizer step (gradient clipping on the unscaled gradients); returns whether the
        weights changed. With fp16 the GradScaler skips a step whose gradients overflowed (and lowers its
        scale): the EMA and a per-step schedule then do not advance either. (scaler.step already waits for
        the device to know; without a scaler nothing is read back.)"""
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        if self.gradient_clip_val:
            parts.scaler.unscale_(parts.optimizer)
            nn.utils.clip_grad_norm_(parts.model.parameters(), self.gradient_clip_val)
        scale = parts.scaler.get_scale() if parts.scaler.is_enabled() else None
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        return scale is None or parts.scaler.get_scale() >= scale

    def _log_epoch(self, record: dict, best: bool) -> None:
        line = (f"epoch {record['epoch']}/{self.max_epochs}  train loss {record['train/loss']:.4f} "
                f"acc {record['train/acc']:.4f}")
        if "val/acc" in record:
            line += (f" | val loss {record['val/loss']:.4f} acc {record['val/acc']:.4f} "
                     f"macro-F1 {record['val/macro_f1']:.4f}")
        line += (f" | lr {record['lr']:.3g} | {record['train/epoch_time_s']:.1f} s, "
                 f"{record['train/images_per_s']:.0f} img/s")
        line += f" | run {clock(record['time_s'])}"
        epochs_left = self.max_epochs - record["epoch"]
        if epochs_left > 0:  # a long run says when it should end: the mean epoch so far (resumes included)
            line += f", about {clock(epochs_left * record['time_s'] / record['epoch'])} left"
        log.info(line + ("  *" if best else ""))
