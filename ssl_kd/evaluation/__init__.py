"""Evaluation of frozen features: weighted k-NN, retrieval, linear probes, per-class detail, reports."""

from ssl_kd.evaluation.augmented_probe import augmented_linear_probe
from ssl_kd.evaluation.classwise import classwise_report, confusion_matrix, per_class_accuracy
from ssl_kd.evaluation.knn import KNNResult, knn_classify, knn_search, rank_of_label, weighted_vote
from ssl_kd.evaluation.linear_probe import fit_logistic_regression, linear_probe
from ssl_kd.evaluation.retrieval import RetrievalResult, retrieval_metrics

__all__ = [
    "KNNResult",
    "RetrievalResult",
    "augmented_linear_probe",
    "classwise_report",
    "confusion_matrix",
    "fit_logistic_regression",
    "knn_classify",
    "knn_search",
    "linear_probe",
    "per_class_accuracy",
    "rank_of_label",
    "retrieval_metrics",
    "weighted_vote",
]
