"""Evaluate frozen models the same way: features once, then weighted k-NN and a linear probe.

`evaluate_model` extracts L2-normalized features of the train split (the k-NN bank and the probe's
training set) and of the test split (the queries) with the deterministic eval transform, then runs
`knn_classify` (weighted vote, k and T from `EvalConfig`), `retrieval_metrics` and, if enabled, `linear_probe`.
`RawPixels` is the no-learning baseline: the images themselves, at most 32 px, flattened.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EvalConfig
from ..feature_cache import cached_features
from ..features import extract_features
from .classwise import classwise_report
from .knn import knn_classify
from .linear_probe import linear_probe
from .retrieval import retrieval_metrics


class RawPixels(nn.Module):
    """Pixels as features: images area-downsampled to at most `max_side` px, flattened."""

    def __init__(self, max_side: int = 32):
        super().__init__()
        self.max_side = max_side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if max(x.shape[-2:]) > self.max_side:
            x = F.adaptive_avg_pool2d(x, self.max_side)
        return x.flatten(1)


def loader_features(model: nn.Module, loader, cfg: EvalConfig, device: torch.device, desc: str):
    """(L2-normalized features, labels) of the loader's dataset, from `cfg.cache_dir` when it holds them."""
    if cfg.cache_dir is None:
        return extract_features(model, loader, device=device, desc=desc)
    return cached_features(model, loader.dataset, cache_dir=cfg.cache_dir, batch_size=loader.batch_size,
                           num_workers=loader.num_workers, device=device, desc=desc)


def evaluate_model(model: nn.Module, train_loader, test_loader, cfg: EvalConfig, device: torch.device, name: str) -> dict:
    """k-NN, retrieval and (if enabled) linear-probe accuracy of `model`'s features, in percent.

    One feature pass per split serves all three. k-NN: weighted vote, k and T from `cfg`, with
    per-class accuracy and the confusion matrix of its predictions. Retrieval: test queries against
    the train split, recall@1/5/10 and MAP@R.
    """
    model.to(device)
    train_feats, train_labels = loader_features(model, train_loader, cfg, device, f"{name} features (train)")
    test_feats, test_labels = loader_features(model, test_loader, cfg, device, f"{name} features (test)")
    ks = tuple(dict.fromkeys([cfg.knn_k, *cfg.knn_ks]))  # the headline k first, then the others
    knn = knn_classify(train_feats, train_labels, test_feats, test_labels, ks=ks, temperature=cfg.knn_temperature)
    classes = getattr(test_loader.dataset, "classes", None) or [str(c) for c in range(knn.num_classes)]
    retrieval = retrieval_metrics(train_feats, train_labels, test_feats, test_labels)
    result = {"feature_dim": int(train_feats.shape[1]), "knn_top1": knn.top1, "knn_top5": knn.top5, "knn": knn.to_json(),
              "knn_classwise": _classwise(knn, test_labels, classes),
              "recall_at_1": retrieval.recall[1], "map_at_r": retrieval.map_at_r, "retrieval": retrieval.to_json()}
    if cfg.linear_probe:
        probe = linear_probe(train_feats, train_labels, test_feats, test_labels)
        result.update({"linear_top1": probe["top1"], "linear_top5": probe["top5"], "linear": probe})
    return result


MAX_CONFUSION_CLASSES = 100  # larger confusion matrices stay out of report.json (eval/knn.py --out writes them)


def _classwise(knn, test_labels, classes) -> dict:
    report = classwise_report(knn.predictions, test_labels, list(classes)[: knn.num_classes])
    if knn.num_classes > MAX_CONFUSION_CLASSES:
        report.pop("confusion")
    return report


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def images_per_second(models: dict[str, nn.Module], images: torch.Tensor, device: torch.device, repeats: int = 5) -> dict[str, float]:
    """Inference throughput of each model on the same batch, timed in alternation (median of repeats)
    so that load from other processes on a shared machine hits all models alike."""
    images = images.to(device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.to(device).eval()(images)  # warm-up
    for _ in range(repeats):
        for name, model in models.items():
            _sync(device)
            start = time.perf_counter()
            model(images)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: images.shape[0] / statistics.median(t) for name, t in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
