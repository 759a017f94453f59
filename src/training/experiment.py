"""One training run from a composed config: build, train, select on val, test once, write results.

This is the wiring `python -m src.train` calls; every piece is instantiated from its config group:
data (`src.data`), model (`src.models`), aug, optim, sched, trainer (`src.training.trainer`), logger.
"""
from __future__ import annotations

import csv
import logging
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from ..checkpoints import load_checkpoint
from ..config import (
    TRAIN_RULES,
    build,
    check_loss_config,
    check_model_config,
    check_optimizer_config,
    check_values,
    config_differences,
)
from ..errors import ConfigError, UserError
from ..evaluation.metrics import per_class_table
from ..evaluation.split_evaluation import evaluate_split, prefixed, write_report
from ..fileio import atomic_write_json
from ..models import count_conv_layers, count_parameters, size_mb
from ..runtime import distributed as ddp
from ..runtime.run_info import collect_run_info
from .tensorboard_logger import NullLogger
from .trainer import Interrupted

log = logging.getLogger(__name__)

# metrics.json's test block (null when the data has no test split)
TEST_KEYS = ("loss", "acc", "balanced_acc", "macro_f1", "per_class", "confusion_matrix", "roc_auc", "macro_auc")


def make_criterion(loss_cfg: DictConfig, class_counts: torch.Tensor) -> nn.Module:
    """Cross-entropy with optional label smoothing and class weights (`balanced`: n / (k * n_c))."""
    check_loss_config(loss_cfg)
    weights = loss_cfg.get("class_weights")
    if weights == "balanced":
        counts = class_counts.double()
        weights = torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp(min=1)), 0).float()
    elif weights is not None:
        if len(weights) != len(class_counts):
            raise ConfigError(f"loss.class_weights={list(weights)} is invalid: it needs one weight per class "
                              f"({len(class_counts)})")
        weights = torch.tensor(list(weights), dtype=torch.float)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=float(loss_cfg.get("label_smoothing") or 0.0))


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
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
    differences = config_differences(load_checkpoint(path)["meta"].get("config", {}), cfg)
    if differences:
        raise UserError(f"checkpoint {path} was trained with other settings ({'; '.join(differences[:4])}); "
                        "resume with the same overrides as the run that wrote it")
    return str(path)


def _flat_hparams(cfg: DictConfig, choices: dict | None) -> dict:
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


def _write_history(history: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for record in history for k in record))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


@contextmanager
def _ctrl_c_raises(error: UserError):
    """Ctrl-C (KeyboardInterrupt) inside the block raises `error` instead: one sentence, no traceback."""
    try:
        yield
    except KeyboardInterrupt:
        raise error from None


def train(cfg: DictConfig, run_dir: str | Path, choices: dict | None = None) -> dict:
    """Trains as configured; writes checkpoints/, metrics.json, history.csv and TensorBoard events
    into `run_dir`; returns the metrics.

    Under torchrun with trainer=ddp every process runs this with the same run_dir: all train and
    evaluate (on their shares), all get the same metrics, rank 0 alone writes files."""
    run_started = time.perf_counter()
    run_dir = Path(run_dir)
    # Every check that needs no data first (every value's type, then device, precision, optimizer,
    # schedule, augmentation, data and model settings), so that a mistake stops the run before the
    # dataset is decoded. src/config.py holds the checks.
    check_values(cfg, TRAIN_RULES)
    optimizer = check_optimizer_config(cfg.optim)
    trainer = build(cfg.trainer)  # trainer=ddp under torchrun: joins the other processes here
    augment, schedule, data = build(cfg.aug), build(cfg.sched), build(cfg.data)
    check_model_config(cfg.model, data.channels)
    input_size = augment.input_size if augment is not None else None  # the training crop, which evaluation uses
    if cfg.tta.crop_size is not None and cfg.tta.crop_size > data.image_size:  # found out after training otherwise
        raise ConfigError(f"tta.crop_size={cfg.tta.crop_size} is invalid: it is larger than the "
                          f"{data.image_size}x{data.image_size} images")
    ckpt_path = resume_checkpoint(cfg, run_dir)
    main = ddp.is_main()
    world = {"world_size": trainer.world_size} if trainer.world_size > 1 else {}
    if main:
        atomic_write_json(collect_run_info(trainer.device, trainer.precision) | world, run_dir / "run_info.json")
    with ddp.main_first():  # rank 0 decodes into the cache, the others read it
        data.setup()
    torch.manual_seed(cfg.seed)  # weight init and dropout
    model = build(cfg.model, num_classes=len(data.classes), in_channels=data.channels)
    criterion = make_criterion(cfg.loss, data.class_counts)
    params, megabytes = count_parameters(model), size_mb(model)
    log.info("Model %s: %s parameters, %.2f MB", type(model).__name__, f"{params:,}", megabytes)
    meta = {"config": OmegaConf.to_container(cfg, resolve=True), "data": data.describe(), "input_size": input_size}
    logger = build(cfg.logger, log_dir=run_dir) if main else NullLogger()
    try:
        fit_started = time.perf_counter()
        state = trainer.fit(model, data, optimizer, schedule, augment, criterion,
                            run_dir / "checkpoints", seed=cfg.seed, meta=meta, logger=logger,
                            ckpt_path=ckpt_path)
        fit_seconds = time.perf_counter() - fit_started

        # Ctrl-C from here on: training is over and best.pt is complete; say so in one sentence.
        interrupted = (f"interrupted during the test evaluation; training finished and {run_dir / 'checkpoints'}"
                       f"/best.pt holds the selected epoch: python -m src.evaluate ckpt_path={run_dir} tests it")
        with _ctrl_c_raises(Interrupted(interrupted)):
            # Honest evaluation: the checkpoint selected on val, evaluated on test once.
            ddp.barrier()  # rank 0 has written best.pt
            model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
            test = None
            if "test" in data.splits:
                predictor = trainer.predictor(model, data, cfg.tta.mode, cfg.tta.crop_size, input_size)
                test = evaluate_split(predictor, data.splits["test"], data.classes)
            best = state.history[state.best_epoch - 1]
            timed = state.history[1:] if len(state.history) > 1 else state.history  # epoch 1 pays one-time costs
            metrics = {
                "best_epoch": state.best_epoch,
                "epochs": state.epoch,
                "monitor": trainer.monitor,
                **{key: best.get(key) for key in ("val/loss", "val/acc", "val/balanced_acc", "val/macro_f1")},
                **prefixed("test", test.metrics if test else dict.fromkeys(TEST_KEYS)),
                "tta": cfg.tta.mode,
                "classes": data.classes,
                "model/params": params,
                "model/size_mb": round(megabytes, 3),
                "model/conv_layers": count_conv_layers(model),
                "train/epoch_time_s": statistics.median(r["train/epoch_time_s"] for r in state.history),
                "train/images_per_s": statistics.median(r["train/images_per_s"] for r in timed),
                # wall-clock seconds of the training (all epochs with their validation; of a resumed run, those
                # it trained) and of the whole run (data loading, training, test evaluation)
                "train/time_s": round(fit_seconds, 1),
                "run_time_s": round(time.perf_counter() - run_started, 1),
                "device": str(trainer.device),
                "precision": trainer.precision,
                "seed": cfg.seed,
                **world,
            }
            if not main:  # the same metrics as rank 0's, which writes them
                return metrics
            atomic_write_json(metrics, run_dir / "metrics.json")
            _write_history(state.history, run_dir / "history.csv")
            if test:
                title = f"test, best epoch {state.best_epoch}"
                write_report(run_dir, test, data.classes, title)
                logger.log_confusion_matrix("test/confusion_matrix", test.metrics["confusion_matrix"], data.classes,
                                            state.best_epoch)
                log.info("Test (best epoch %d by %s, tta=%s): acc %.4f, macro-F1 %.4f, balanced acc %.4f\n%s",
                         state.best_epoch, trainer.monitor, cfg.tta.mode, test.metrics["acc"],
                         test.metrics["macro_f1"], test.metrics["balanced_acc"],
                         per_class_table(test.metrics["per_class"], test.metrics["roc_auc"]))
            final = {f"hparam/{k.replace('/', '_')}": metrics[k]
                     for k in ("val/acc", "val/macro_f1", "test/acc", "test/macro_f1") if metrics[k] is not None}
            logger.log_hparams(_flat_hparams(cfg, choices), final)
    finally:
        logger.close()
    return metrics
