"""Classification metrics with scikit-learn, as plain Python types ready for metrics.json."""
from __future__ import annotations

import numpy as np


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
