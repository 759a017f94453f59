"""Evaluating predictions on a split, and the report every evaluation writes.

`evaluate_split` is the one code path behind the validation of every epoch, the test evaluation at
the end of training and `python -m src.evaluate`, so their numbers agree exactly for one checkpoint.
`write_split_report` writes metrics, figures, the per-class table and per-image predictions.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..command_rules import EVAL_RULES, check_values
from ..config import build_stored
from ..data import Split
from ..errors import UserError
from ..figures import confusion_matrix_figure, misclassified_figure, pca_figure, pr_figure, roc_figure, save_figure
from ..fileio import atomic_write_json
from ..inference.predictor import average_probabilities, checkpoint_paths, load_predictors, require_finite
from ..runtime.distributed import map_shards
from .metrics import BY_NAME, SCALAR_METRICS, compute_metrics, per_class_table

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Predictions on one split and their metrics."""
    split: Split
    log_probs: torch.Tensor  # (N, K) float32
    metrics: dict

    @property
    def probs(self) -> np.ndarray:
        return self.log_probs.exp().numpy()


def score(log_probs: torch.Tensor, split: Split, classes: list[str]) -> Evaluation:
    """Every metric of the registry (src/evaluation/metrics.py) of log-probabilities for a split."""
    return Evaluation(split, log_probs, compute_metrics(split.labels, log_probs, classes))


def evaluate_split(predictor, split: Split, classes: list[str], description: str = "evaluating") -> Evaluation:
    """The evaluation of a Predictor (or Ensemble) on one split; `description` (the split's name) names the
    pass in its progress. In a DDP run each rank predicts its share of the split and every rank scores all
    the predictions: the metrics of the whole split, the same on every rank. Outputs that are not finite are
    an error (scikit-learn's would be a traceback), raised on every rank alike: each holds all outputs."""
    log_probs = map_shards(lambda images: predictor.log_probs(images, description), split.images)
    require_finite(log_probs, f"the model on {description}", getattr(predictor, "precision", "fp32"))
    return score(log_probs, split, classes)


def prefixed(prefix: str, metrics: dict) -> dict:
    """metrics.json's flat keys: {"test/acc": ..., "test/per_class": ...}."""
    return {f"{prefix}/{key}": value for key, value in metrics.items()}


def write_split_report(out_dir: str | Path, evaluation: Evaluation, classes: list[str], title: str,
                 misclassified: int = 36) -> None:
    """confusion_matrix.png, roc.png, pr.png, misclassified.png, per_class.md, predictions.csv."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, probs, m = evaluation.split.labels.cpu().numpy(), evaluation.probs, evaluation.metrics
    save_figure(confusion_matrix_figure(m["confusion_matrix"], classes, title), out_dir / "confusion_matrix.png")
    save_figure(roc_figure(labels, probs, classes, m["roc_auc"], title), out_dir / "roc.png")
    save_figure(pr_figure(labels, probs, classes, title), out_dir / "pr.png")
    save_figure(misclassified_figure(evaluation.split.images.cpu(), labels, probs, classes, misclassified),
                out_dir / "misclassified.png")
    summary = f"{title}: " + ", ".join(f"{BY_NAME[k].label} {_number(m[k])}" for k in SCALAR_METRICS)
    (out_dir / "per_class.md").write_text(f"{summary}\n\n{per_class_table(m['per_class'], m['roc_auc'])}\n")
    with open(out_dir / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "true", "predicted", "confidence", *[f"p_{c}" for c in classes]])
        for file, label, p in zip(evaluation.split.files, labels, probs):
            writer.writerow([file, classes[label], classes[int(p.argmax())], f"{p.max():.6f}",
                             *[f"{v:.6f}" for v in p]])


def write_embedding(out_dir: str | Path, features: torch.Tensor, split: Split, classes: list[str], tag: str) -> None:
    """The features in TensorBoard's projector (labels as metadata, images as sprites) and pca.png."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    images = split.images.cpu().float() / 255
    with SummaryWriter(log_dir=str(out_dir)) as writer:
        writer.add_embedding(features, metadata=[classes[i] for i in split.labels.tolist()],
                             label_img=images, tag=tag)
    save_figure(pca_figure(features.numpy(), split.labels.cpu().numpy(), classes, tag), out_dir / "pca.png")


def run_evaluation(cfg: DictConfig, run_dir: str | Path) -> dict:
    """`python -m src.evaluate`: one checkpoint or an ensemble on a split, with the full report."""
    check_values(cfg, EVAL_RULES)
    if cfg.saliency:
        from ..inference.saliency import require_captum

        require_captum()
    run_dir = Path(run_dir)
    paths = checkpoint_paths(cfg.ckpt_path)
    predictors, shared = load_predictors(paths, cfg.trainer, cfg.tta)
    if cfg.embed:
        predictors[0].check_has_features()  # before the evaluation, not after it
    # The training run's data config, read from the checkpoint: built only as a registered
    # dataset class (config.build_stored), with data.root / data.csv from the command line on top.
    overrides = {key: value for key, value in OmegaConf.to_container(cfg.data, resolve=True).items()
                 if key != "split" and value is not None}
    data = build_stored(shared["config"]["data"], "data", f"checkpoint {paths[0]}",
                        **overrides, cache_dir=cfg.paths.cache_dir).setup()
    classes, split_name = shared["classes"], cfg.data.split
    if data.classes != classes:
        raise UserError(f"the data's classes {data.classes} are not the checkpoint's {classes}")
    if split_name not in data.splits:
        raise UserError(f"data.split={split_name}: the data has no such split (it has {', '.join(data.splits)})")
    split = data.splits[split_name]

    n = len(predictors)
    members = [evaluate_split(p, split, classes, split_name if n == 1 else f"{split_name}, model {i}/{n}")
               for i, p in enumerate(predictors, start=1)]
    evaluation = members[0] if len(members) == 1 else score(average_probabilities([m.log_probs for m in members]),
                                                           split, classes)
    metrics = {"ckpt_path": paths if len(paths) > 1 else paths[0], "split": split_name, "tta": cfg.tta.mode,
               **prefixed(split_name, evaluation.metrics), "classes": classes}
    title = f"{split_name}, {'ensemble of ' + str(len(paths)) if len(paths) > 1 else Path(paths[0]).name}"
    if len(members) > 1:
        metrics["members"] = {path: {k: m.metrics[k] for k in SCALAR_METRICS} for path, m in zip(paths, members)}
        table = ensemble_table(paths, members, evaluation)
        (run_dir / "ensemble.md").write_text(table + "\n")
        log.info("Ensemble on %s (tta=%s):\n%s", split_name, cfg.tta.mode, table)
    write_split_report(run_dir, evaluation, classes, title, cfg.misclassified)
    atomic_write_json(metrics, run_dir / "metrics.json")
    if cfg.embed:
        features = predictors[0].features(split.images, f"{split_name} features")
        write_embedding(run_dir, features, split, classes, split_name)
    if cfg.saliency:
        from ..inference.saliency import split_saliency

        which = "" if len(predictors) == 1 else " (the maps are the first model's, for the ensemble's predictions)"
        figure = split_saliency(predictors[0], split.images, split.labels, evaluation.probs, classes,
                                cfg.saliency_per_class, f"Grad-CAM of the predicted class, {title}{which}")
        save_figure(figure, run_dir / "saliency.png")
        log.info("Saliency maps: %s", run_dir / "saliency.png")
    m = evaluation.metrics
    log.info("%s (tta=%s): acc %.4f, macro-F1 %.4f, balanced acc %.4f", title, cfg.tta.mode, m["acc"],
             m["macro_f1"], m["balanced_acc"])
    # In a sweep: in the job's log file, not on the console (src/entry.py)
    log.info("%s per class:\n%s", title, per_class_table(m["per_class"], m["roc_auc"]), extra={"file_only": True})
    return metrics


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def ensemble_table(paths: list[str], members: list[Evaluation], ensemble: Evaluation) -> str:
    """A Markdown table: each member's and the ensemble's scalar metrics."""
    rows = ["| model | " + " | ".join(BY_NAME[k].label for k in SCALAR_METRICS) + " |",
            "|---|" + "---:|" * len(SCALAR_METRICS)]
    for name, evaluation in [*zip(paths, members), ("**ensemble**", ensemble)]:
        rows.append(f"| {name} | " + " | ".join(_number(evaluation.metrics[k]) for k in SCALAR_METRICS) + " |")
    return "\n".join(rows)
