"""classification_metrics against values computed by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from src.evaluation.metrics import classification_metrics, per_class_table

CLASSES = ["a", "b", "c"]
#                   a  a  a  a  b  b  b  c  c  c
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])
# By hand, rows = true class, columns = predicted class:
#   a: predicted a, a, b, c  -> [2, 1, 1]
#   b: predicted b, b, a     -> [1, 2, 0]
#   c: predicted c, c, b     -> [0, 1, 2]
CONFUSION = [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
# precision = diagonal / column sum: a 2/3, b 2/4, c 2/3; recall = diagonal / row sum: a 2/4, b 2/3, c 2/3
PRECISION = {"a": 2 / 3, "b": 1 / 2, "c": 2 / 3}
RECALL = {"a": 1 / 2, "b": 2 / 3, "c": 2 / 3}
# F1 = 2PR / (P + R): a = (2/3) / (7/6) = 4/7, b = 4/7, c = 2/3
F1 = {"a": 4 / 7, "b": 4 / 7, "c": 2 / 3}
SUPPORT = {"a": 4, "b": 3, "c": 3}
ACCURACY = 6 / 10
MACRO_F1 = (4 / 7 + 4 / 7 + 2 / 3) / 3      # = 38/63
BALANCED_ACC = (1 / 2 + 2 / 3 + 2 / 3) / 3  # mean recall = 11/18


def test_hand_computed_example():
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    assert m["acc"] == pytest.approx(ACCURACY)
    assert m["macro_f1"] == pytest.approx(MACRO_F1)
    assert m["macro_f1"] == pytest.approx(38 / 63)
    assert m["balanced_acc"] == pytest.approx(BALANCED_ACC)
    assert m["balanced_acc"] == pytest.approx(11 / 18)
    assert m["confusion_matrix"] == CONFUSION
    assert list(m["per_class"]) == CLASSES
    for name in CLASSES:
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(PRECISION[name]), name
        assert row["recall"] == pytest.approx(RECALL[name]), name
        assert row["f1"] == pytest.approx(F1[name]), name
        assert row["support"] == SUPPORT[name]


def test_confusion_matrix_orientation_rows_are_true_classes():
    # Every "a" predicted as "c": the count sits in row a, column c.
    m = classification_metrics(np.array([0, 0, 1, 2]), np.array([2, 2, 1, 2]), CLASSES)
    assert m["confusion_matrix"] == [[0, 0, 2], [0, 1, 0], [0, 0, 1]]
    assert [sum(row) for row in m["confusion_matrix"]] == [m["per_class"][c]["support"] for c in CLASSES]


def test_perfect_and_all_wrong_predictions():
    perfect = classification_metrics(Y_TRUE, Y_TRUE, CLASSES)
    assert perfect["acc"] == perfect["macro_f1"] == perfect["balanced_acc"] == 1.0
    assert perfect["confusion_matrix"] == [[4, 0, 0], [0, 3, 0], [0, 0, 3]]
    wrong = classification_metrics(Y_TRUE, (Y_TRUE + 1) % 3, CLASSES)
    assert wrong["acc"] == wrong["macro_f1"] == wrong["balanced_acc"] == 0.0
    assert all(row[k] == 0.0 for row in wrong["per_class"].values() for k in ("precision", "recall", "f1"))


def test_class_absent_from_split_is_listed_but_not_averaged():
    # Class "d" never occurs in y_true nor y_pred: per_class still lists it (support 0, zeros), and
    # macro-F1 averages over the classes present, as documented (scikit-learn's default).
    m = classification_metrics(Y_TRUE, Y_PRED, [*CLASSES, "d"])
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx(MACRO_F1)
    assert m["balanced_acc"] == pytest.approx(BALANCED_ACC)
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert [row[3] for row in m["confusion_matrix"]] == [0, 0, 0, 0]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_predicted_but_never_true_counts_as_zero_f1():
    # "c" is predicted once but never true: precision 0 (no division warning), and it enters macro-F1.
    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), CLASSES)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    f1_a = 2 * (1 * 0.5) / (1 + 0.5)  # precision 1/1, recall 1/2
    assert m["macro_f1"] == pytest.approx((f1_a + 1.0 + 0.0) / 3)


def test_results_are_plain_json_types():
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    assert json.loads(json.dumps(m)) == m
    assert type(m["acc"]) is float and type(m["per_class"]["a"]["support"]) is int


def test_per_class_table_lists_every_class():
    table = per_class_table(classification_metrics(Y_TRUE, Y_PRED, CLASSES)["per_class"])
    lines = table.splitlines()
    assert lines[0].startswith("| class | precision | recall | F1 | support |")
    assert len(lines) == 2 + len(CLASSES)
    assert lines[2] == "| a | 0.667 | 0.500 | 0.571 | 4 |"
