"""Per-class accuracy and confusion matrix of class predictions (e.g. from the k-NN or linear probe).

    M[t, p]  = number of test items of true class t predicted as class p     (rows true, cols predicted)
    acc_c    = 100 * M[c, c] / sum_p M[c, p]        (NaN when class c has no test item)
    mean_per_class = mean of acc_c over classes with test items (the "mean per-class accuracy"
                     reported instead of top-1 on unbalanced sets such as Aircraft, Pets, Caltech-101)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from torch import Tensor

from ssl_kd.evaluation.knn import ArrayLike, _as_labels

__all__ = ["classwise_report", "confusion_matrix", "per_class_accuracy"]


def _checked(predictions: ArrayLike, labels: ArrayLike, num_classes: int) -> tuple[Tensor, Tensor]:
    n = len(predictions)
    if n == 0:
        raise ValueError("no predictions to evaluate: the evaluation split is empty; "
                        "check the dataset path and split name")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}; pass the number of classes")
    preds = _as_labels(predictions, n, "predictions")
    labels = _as_labels(labels, n, "labels")
    largest = int(torch.maximum(preds.max(), labels.max()))
    if largest >= num_classes:
        raise ValueError(f"a prediction or label equals {largest} but num_classes={num_classes}; "
                        "pass num_classes > the largest class index")
    return preds, labels


def confusion_matrix(predictions: ArrayLike, labels: ArrayLike, num_classes: int) -> Tensor:
    """int64 [C, C]: entry [t, p] counts items of true class t predicted as p (rows true)."""
    preds, labels = _checked(predictions, labels, num_classes)
    matrix = _sk_confusion_matrix(labels.numpy(), preds.numpy(), labels=np.arange(num_classes))
    return torch.from_numpy(matrix).long()


def _per_class_from_confusion(matrix: Tensor) -> Tensor:
    totals = matrix.sum(dim=1).double()
    acc = 100.0 * matrix.diagonal().double() / totals.clamp(min=1)
    return torch.where(totals > 0, acc, torch.full_like(acc, float("nan")))


def per_class_accuracy(predictions: ArrayLike, labels: ArrayLike, num_classes: int) -> Tensor:
    """float64 [C]: accuracy in percent over each class's test items, NaN for a class with none."""
    return _per_class_from_confusion(confusion_matrix(predictions, labels, num_classes))


def classwise_report(predictions: ArrayLike, labels: ArrayLike, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready summary; class index c is `class_names[c]`.

    {"per_class": {name: acc % or None (no test item)}, "confusion": [[int]] (rows true),
     "worst": [(name, acc), ...] the 3 lowest accuracies among classes with test items
     (ties: lower class index first), "mean_per_class": float or None}
    """
    names = [str(name) for name in class_names]
    if len(set(names)) != len(names):
        raise ValueError("class_names contain duplicates; pass one distinct name per class index")
    matrix = confusion_matrix(predictions, labels, len(names))
    acc = _per_class_from_confusion(matrix).tolist()
    present = [c for c in range(len(names)) if not math.isnan(acc[c])]
    worst = sorted(present, key=lambda c: (acc[c], c))[:3]
    return {
        "per_class": {name: (None if math.isnan(a) else a) for name, a in zip(names, acc)},
        "confusion": matrix.tolist(),
        "worst": [(names[c], acc[c]) for c in worst],
        "mean_per_class": sum(acc[c] for c in present) / len(present) if present else None,
    }
