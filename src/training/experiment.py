"""One training run from a composed config: build, train, select on val, test once, write results.

This is the wiring `python -m src.train` calls; every piece is instantiated from its config group:
data (`src.data`), model (`src.models`), aug (`src.data.augment`), optim, sched
(`src.training.schedules`), loss (`src.training.losses`), trainer (`src.training.trainer`), logger.
"""
from __future__ import annotations

import csv
import logging
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..checkpoint_file import check_meta
from ..command_rules import TRAIN_RULES, check_model_config, check_optimizer_config, check_values
from ..config import build, build_stored
from ..data.inputs import ModelInput
from ..errors import ConfigError, UserError
from ..evaluation.metrics import EPOCH_METRICS, METRICS, SUMMARY_METRICS, per_class_table
from ..evaluation.split_evaluation import Evaluation, evaluate_split, prefixed, write_split_report
from ..fileio import atomic_write_json
from ..inference.predictor import stored_model
from ..models import count_conv_layers, count_parameters, size_mb
from ..runtime import distributed as ddp
from ..runtime.run_info import collect_run_info, earlier_commands
from .debugging import DevRunCheckpoints
from .losses import make_criterion
from .monitors import Interrupted
from .run_checkpoints import FitState, RunCheckpoints, checkpoint_to_resume
from .tensorboard_logger import NullLogger, flat_hparams
from .trainer import Recipe, Trainer

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: str | Path, choices: dict | None = None,
          overrides: list[str] | None = None) -> dict:
    """Trains as configured; writes checkpoints/, metrics.json, history.csv and TensorBoard events
    into `run_dir` (a trainer.fast_dev_run writes none of them: see training/debugging.py); returns the metrics.
    `choices` and `overrides` (Hydra's group choices and command-line overrides) pick the run's HParams.

    Under torchrun with trainer=ddp every process runs this with the same run_dir: all train and
    evaluate (on their shares), all get the same metrics, rank 0 alone writes files."""
    run_started, run_dir = time.perf_counter(), Path(run_dir)
    # Every check that needs no data first (every value's type, then device, precision, optimizer,
    # schedule, augmentation, data and model settings), so that a mistake stops the run before the
    # dataset is decoded. src/config.py holds the checks.
    check_values(cfg, TRAIN_RULES)
    optimizer = check_optimizer_config(cfg.optim)
    trainer: Trainer = build(cfg.trainer)  # trainer=ddp under torchrun: joins the other processes here
    augment, schedule, data = build(cfg.aug), build(cfg.sched), build(cfg.data)
    check_model_config(cfg.model, data.channels)
    # The checkpoints of this run must be ones the runner reads back: their meta passes the rules of every
    # reader, checked by the readers' own code, on the config now and on the real meta once the data is read.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_meta({"config": resolved, "input_size": augment.crop_size,
                "data": {"classes": data.selected_classes, "channels": data.channels, "image_size": data.image_size,
                         "mean": data.mean, "std": data.std}}, where="")
    if cfg.tta.crop_size is not None and cfg.tta.crop_size > data.image_size:  # found out after training otherwise
        raise ConfigError(f"tta.crop_size={cfg.tta.crop_size} is invalid: it is larger than the "
                          f"{data.image_size}x{data.image_size} images")
    resume_from = checkpoint_to_resume(cfg, run_dir)
    dev_run = trainer.debug.fast_dev_run
    if dev_run and resume_from:
        raise ConfigError("trainer.fast_dev_run saves nothing and resumes nothing: leave out ckpt_path and resume")
    if dev_run:
        trainer.debug.shrink_batches(data)
        log.warning("fast_dev_run=%d: a smoke test of the whole run with %d train, val and test batches of up to %d "
                    "images; it writes no metrics.json, history.csv, checkpoints, test report or TensorBoard events",
                    dev_run, dev_run, data.batch_size)
    main = ddp.is_main()
    if main:
        info = collect_run_info(trainer.device, trainer.precision) | _world(trainer)
        if resume_from:  # the record of a resumed run says how all of its epochs were made
            info["earlier_commands"] = earlier_commands(Path(resume_from).parent.parent / "run_info.json")
        atomic_write_json(info, run_dir / "run_info.json")

    with ddp.main_first():  # rank 0 decodes into the cache, the others read it
        data.setup()
    torch.manual_seed(cfg.seed)  # weight init and dropout
    model = build(cfg.model, num_classes=len(data.classes), in_channels=data.channels)
    log.info("Model %s: %s parameters, %.2f MB", type(model).__name__, f"{count_parameters(model):,}",
             size_mb(model))
    inputs = ModelInput.for_training(data.mean, data.std, augment, trainer.channels_last)
    recipe = Recipe(optimizer, schedule, make_criterion(cfg.loss, data.class_counts), inputs, cfg.seed)
    meta = {"config": resolved, "data": data.describe(), "input_size": inputs.crop}
    _check_readable(meta)
    checkpoints = DevRunCheckpoints() if dev_run else RunCheckpoints(run_dir / "checkpoints", meta)
    logger = build(cfg.logger, log_dir=run_dir) if main and not dev_run else NullLogger()
    try:
        fit_started = time.perf_counter()
        state = trainer.fit(model, data, recipe, checkpoints, logger, resume_from, str(run_dir / "profile"))
        fit_seconds = time.perf_counter() - fit_started
        # Ctrl-C from here on: training is over and best.pt is complete; say so in one sentence.
        with _ctrl_c_raises(Interrupted("interrupted during the test evaluation of a fast_dev_run" if dev_run else
                                        f"interrupted during the test evaluation; training finished and "
                                        f"{checkpoints.best} holds the selected epoch: python -m src.evaluate "
                                        f"ckpt_path={run_dir} tests it")):
            # Honest evaluation: the checkpoint selected on val, evaluated on test once.
            ddp.barrier()  # rank 0 has written best.pt
            model.load_state_dict(checkpoints.best_weights())
            # all of it, or limit_test_batches' part; none with test=false (a recipe being designed on val)
            test, test_split = None, trainer.debug.split(data, "test") if cfg.test else None
            if test_split is not None:
                predictor = trainer.predictor(model, inputs, cfg.tta.mode, cfg.tta.crop_size, data.eval_batch_size)
                test = evaluate_split(predictor, test_split, data.classes, "test")
            metrics = _metrics(cfg, trainer, model, state, test, data.classes) | {
                # wall-clock seconds of the training (all epochs with their validation, across resumes;
                # a checkpoint older than history's time_s: this process's) and of this process's run (data
                # loading, training, test evaluation)
                "train/time_s": round(state.history[-1].get("time_s", fit_seconds), 1),
                "run_time_s": round(time.perf_counter() - run_started, 1)}
            if main and dev_run:
                log.warning("fast_dev_run: the run went through training, validation and the test evaluation; "
                            "it saved no results (no metrics.json, history.csv, checkpoints or test report)")
            elif main:  # the other ranks have the same metrics; rank 0 writes them
                _write_results(run_dir, metrics, state, test, data.classes, trainer, logger)
                logger.log_hparams(flat_hparams(cfg, choices, overrides))
    finally:
        logger.close()
    return metrics


def _check_readable(meta: dict) -> None:
    """The meta this run's checkpoints will hold, read back as evaluate / predict / export read it: its types
    and ranges (a dataset reader may have named two classes alike), the model rebuilt from its stored config
    on the meta device, the dataset from its stored config."""
    source = "this run's checkpoint"
    try:
        check_meta(meta)
    except ConfigError as exc:
        raise UserError(f"{source} would be refused: its {exc}") from None
    with torch.device("meta"):
        stored_model(meta, source)
    build_stored(meta["config"]["data"], "data", source)


def _world(trainer: Trainer) -> dict:
    return {"world_size": trainer.world_size} if trainer.world_size > 1 else {}


def _metrics(cfg: DictConfig, trainer: Trainer, model, state: FitState, test: Evaluation | None,
             classes: list[str]) -> dict:
    """metrics.json: the selected epoch's val metrics, the test metrics (null without a test split), the
    model's size and the run's speed."""
    best = state.history[state.best_epoch - 1]
    timed = state.history[1:] if len(state.history) > 1 else state.history  # epoch 1 pays one-time costs
    return {
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "monitor": trainer.monitor,
        **{f"val/{name}": best.get(f"val/{name}") for name in EPOCH_METRICS},
        **prefixed("test", test.metrics if test else dict.fromkeys(m.name for m in METRICS)),
        "tta": cfg.tta.mode,
        "classes": classes,
        "model/params": count_parameters(model),
        "model/size_mb": round(size_mb(model), 3),
        "model/conv_layers": count_conv_layers(model),
        "train/epoch_time_s": statistics.median(r["train/epoch_time_s"] for r in state.history),
        "train/images_per_s": statistics.median(r["train/images_per_s"] for r in timed),
        "device": str(trainer.device),
        "precision": trainer.precision,
        "seed": cfg.seed,
        **_world(trainer),
    }


def _write_results(run_dir: Path, metrics: dict, state: FitState, test: Evaluation | None, classes: list[str],
                   trainer: Trainer, logger) -> None:
    """metrics.json, history.csv and the test report (figures, per-class table, predictions)."""
    atomic_write_json(metrics, run_dir / "metrics.json")
    keys = list(dict.fromkeys(k for record in state.history for k in record))
    with open(run_dir / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(state.history)
    if test:
        write_split_report(run_dir, test, classes, f"test, best epoch {state.best_epoch}")
        logger.log_confusion_matrix("test/confusion_matrix", test.metrics["confusion_matrix"], classes,
                                    state.best_epoch)
        # At the selected epoch's step: the test columns of TensorBoard's HParams row, beside the val curves.
        logger.log_scalars({f"test/{name}": test.metrics[name] for name in SUMMARY_METRICS
                            if test.metrics[name] is not None}, state.best_epoch)
        log.info("Test (best epoch %d by %s, tta=%s): acc %.4f, macro-F1 %.4f, balanced acc %.4f",
                 state.best_epoch, trainer.monitor, metrics["tta"], test.metrics["acc"], test.metrics["macro_f1"],
                 test.metrics["balanced_acc"])
        # In a sweep: in the job's train.log, not on the console (src/entry.py)
        log.info("Test per class:\n%s", per_class_table(test.metrics["per_class"], test.metrics["roc_auc"]),
                 extra={"file_only": True})


@contextmanager
def _ctrl_c_raises(error: UserError):
    """Ctrl-C (KeyboardInterrupt) inside the block raises `error` instead: one sentence, no traceback."""
    try:
        yield
    except KeyboardInterrupt:
        raise error from None
