"""Every metric the runner reports, named once, and how each is computed (scikit-learn, as plain Python
types ready for metrics.json).

`METRICS` is the registry: a metric's name is its key in a split's metrics (metrics.json has
`test/<name>` and, for the per-epoch ones, `val/<name>`). Everything else derives from it: the keys of
each epoch's record in history.csv and the `trainer.monitor` choices (`EPOCH_METRICS`, `MONITORS`), the
test block of metrics.json, the ensemble table, the columns of the comparison tables and what they
aggregate over seeds (`SUMMARY_METRICS`), TensorBoard's HParams. Adding a metric is one entry here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix.

    Macro-F1 averages over the classes present in y_true or y_pred (scikit-learn's default), so a
    class absent from a small split does not count as a zero; `per_class` lists every class.
    The confusion matrix has rows = true class, columns = predicted class, in `classes` order.
    """
    # scikit-learn is imported here, not at the top: it costs 0.6 s that training needs no earlier
    # than the first validation.
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "acc": float(accuracy_score(y_true, y_pred)),
        "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def per_class_table(per_class: dict, roc_auc: dict | None = None) -> str:
    """A Markdown table of per-class precision, recall, F1, support (and ROC AUC when given)."""
    auc_head, auc_rule = (" ROC AUC |", "---:|") if roc_auc else ("", "")
    rows = [f"| class | precision | recall | F1 | support |{auc_head}", f"|---|---:|---:|---:|---:|{auc_rule}"]
    for name, m in per_class.items():
        auc = ""
        if roc_auc:
            auc = " – |" if roc_auc.get(name) is None else f" {roc_auc[name]:.3f} |"
        rows.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |{auc}")
    return "\n".join(rows)


def roc_auc(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """One-vs-rest ROC AUC per class (None for a class absent from, or alone in, the split) and their
    mean over the classes where it is defined (macro AUC)."""
    from sklearn.metrics import roc_auc_score  # imported on first use: see classification_metrics

    per_class = {}
    for c, name in enumerate(classes):
        positive = labels == c
        per_class[name] = (float(roc_auc_score(positive, probs[:, c]))
                           if 0 < positive.sum() < len(labels) else None)
    defined = [v for v in per_class.values() if v is not None]
    return {"roc_auc": per_class, "macro_auc": float(np.mean(defined)) if defined else None}


# -- the registry -----------------------------------------------------------------------------------------------


class Scored:
    """What every metric is computed from: a split's true labels and predicted log-probabilities. The
    scikit-learn results several metrics share are computed once."""

    def __init__(self, labels: torch.Tensor, log_probs: torch.Tensor, classes: list[str]):
        self.labels_tensor, self.log_probs, self.classes = labels.cpu(), log_probs, classes
        self.labels = self.labels_tensor.numpy()

    @cached_property
    def probs(self) -> np.ndarray:
        return self.log_probs.exp().numpy()

    @cached_property
    def classification(self) -> dict:
        return classification_metrics(self.labels, self.log_probs.argmax(1).numpy(), self.classes)

    @cached_property
    def auc(self) -> dict:
        return roc_auc(self.labels, self.probs, self.classes)


@dataclass(frozen=True)
class Metric:
    name: str                            # key in a split's metrics: metrics.json's test/<name>, val/<name>
    compute: Callable[[Scored], object]
    label: str = ""                      # heading in tables and log lines
    scalar: bool = True                  # a number (False: a per-class table, a matrix)
    lower_is_better: bool = False
    every_epoch: bool = True             # scalars: recorded on val every epoch, selectable as trainer.monitor
    in_summary: bool = False             # scalars: a column (val and test) of the comparison tables, in HParams
    decimals: int = 4                    # in the comparison tables (per_class: its f1_<class> columns)


METRICS: tuple[Metric, ...] = (
    Metric("loss", lambda s: float(F.nll_loss(s.log_probs, s.labels_tensor)), "loss", lower_is_better=True),
    Metric("acc", lambda s: s.classification["acc"], "accuracy", in_summary=True),
    Metric("balanced_acc", lambda s: s.classification["balanced_acc"], "balanced accuracy"),
    Metric("macro_f1", lambda s: s.classification["macro_f1"], "macro-F1", in_summary=True),
    Metric("per_class", lambda s: s.classification["per_class"], scalar=False),
    Metric("confusion_matrix", lambda s: s.classification["confusion_matrix"], scalar=False),
    Metric("roc_auc", lambda s: s.auc["roc_auc"], scalar=False),
    Metric("macro_auc", lambda s: s.auc["macro_auc"], "macro ROC AUC", every_epoch=False),
)
BY_NAME = {m.name: m for m in METRICS}
SCALAR_METRICS = tuple(m.name for m in METRICS if m.scalar)
EPOCH_METRICS = tuple(m.name for m in METRICS if m.scalar and m.every_epoch)
SUMMARY_METRICS = tuple(m.name for m in METRICS if m.scalar and m.in_summary)
MONITORS = tuple(f"val/{name}" for name in EPOCH_METRICS)


def compute_metrics(labels: torch.Tensor, log_probs: torch.Tensor, classes: list[str]) -> dict:
    """Every metric of the registry for one split, in registry order."""
    scored = Scored(labels, log_probs, classes)
    return {m.name: m.compute(scored) for m in METRICS}


def lower_is_better(key: str) -> bool:
    """For a metrics.json key such as val/loss or test/acc."""
    metric = BY_NAME.get(key.split("/", 1)[-1])
    return bool(metric and metric.lower_is_better)
