"""Per-class accuracy, confusion matrix and report on a hand-counted example."""

import json
import math

import numpy as np
import pytest
import torch

from ssl_kd.evaluation.classwise import classwise_report, confusion_matrix, per_class_accuracy

# 4 classes; class 3 has no test item (but is predicted once)
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
PREDS = torch.tensor([0, 0, 1, 3, 1, 0, 2, 2, 2])
# true 0: predicted 0,0,1,3 -> 2/4 = 50 %; true 1: 1,0 -> 50 %; true 2: 2,2,2 -> 100 %; true 3: none -> NaN
EXPECTED_CONFUSION = [
    [2, 1, 0, 1],
    [1, 1, 0, 0],
    [0, 0, 3, 0],
    [0, 0, 0, 0],
]


def test_confusion_matrix_by_hand():
    matrix = confusion_matrix(PREDS, LABELS, 4)
    assert matrix.dtype == torch.int64 and matrix.tolist() == EXPECTED_CONFUSION
    assert int(matrix.sum()) == len(LABELS)
    # numpy and list inputs give the same matrix
    assert confusion_matrix(PREDS.numpy(), LABELS.tolist(), 4).tolist() == EXPECTED_CONFUSION


def test_per_class_accuracy_and_absent_class_is_nan():
    acc = per_class_accuracy(PREDS, LABELS, 4)
    assert acc.shape == (4,)
    assert acc[:3].tolist() == pytest.approx([50.0, 50.0, 100.0])
    assert math.isnan(acc[3].item())
    # a fifth class nobody uses is NaN too, the others unchanged
    acc5 = per_class_accuracy(PREDS, LABELS, 5)
    assert acc5[:3].tolist() == pytest.approx([50.0, 50.0, 100.0]) and np.isnan(acc5[3:].numpy()).all()


def test_report_is_json_ready():
    names = ["cat", "dog", "bird", "fish"]
    report = classwise_report(PREDS, LABELS, names)
    assert report["per_class"] == {"cat": 50.0, "dog": 50.0, "bird": 100.0, "fish": None}
    assert report["confusion"] == EXPECTED_CONFUSION
    assert report["worst"] == [("cat", 50.0), ("dog", 50.0), ("bird", 100.0)]  # absent class skipped
    assert report["mean_per_class"] == pytest.approx(200 / 3)
    text = json.dumps(report, allow_nan=False)  # no NaN leaks into the JSON
    assert json.loads(text)["worst"][0] == ["cat", 50.0]


@pytest.mark.parametrize("case", ["range", "length", "empty", "negative"])
def test_bad_arguments_raise_value_errors(case):
    preds, labels, c = PREDS, LABELS, 4
    if case == "range":
        c = 3  # label 3 / prediction 3 out of range
    elif case == "length":
        preds = PREDS[:-1]
    elif case == "empty":
        preds, labels = torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    elif case == "negative":
        preds = PREDS.clone()
        preds[0] = -1
    with pytest.raises(ValueError):
        confusion_matrix(preds, labels, c)
    with pytest.raises(ValueError):
        classwise_report(preds, labels, ["a", "b", "c", "d"][:c])


def test_duplicate_class_names_rejected():
    with pytest.raises(ValueError):
        classwise_report(PREDS, LABELS, ["a", "a", "b", "c"])
