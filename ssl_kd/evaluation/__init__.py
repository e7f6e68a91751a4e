"""Evaluation of frozen features: weighted k-NN and linear probe."""

from ssl_kd.evaluation.knn import KNNResult, knn_classify, knn_search, rank_of_label, weighted_vote
from ssl_kd.evaluation.linear_probe import fit_logistic_regression, linear_probe

__all__ = [
    "KNNResult",
    "fit_logistic_regression",
    "knn_classify",
    "knn_search",
    "linear_probe",
    "rank_of_label",
    "weighted_vote",
]
