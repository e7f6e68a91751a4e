"""Evaluate frozen models the same way: features once, then weighted k-NN and a linear probe.

`evaluate_model` extracts L2-normalized features of the train split (the k-NN bank and the probe's
training set) and of the test split (the queries) with the deterministic eval transform, then runs
`knn_classify` (weighted vote, k and T from `EvalConfig`) and, if enabled, `linear_probe`.
`RawPixels` is the no-learning baseline: the images themselves, at most 32 px, flattened.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..config import EvalConfig
from ..features import extract_features
from .knn import knn_classify
from .linear_probe import linear_probe


class RawPixels(nn.Module):
    """Pixels as features: images area-downsampled to at most `max_side` px, flattened."""

    def __init__(self, max_side: int = 32):
        super().__init__()
        self.max_side = max_side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if max(x.shape[-2:]) > self.max_side:
            x = F.adaptive_avg_pool2d(x, self.max_side)
        return x.flatten(1)


def evaluate_model(model: nn.Module, train_loader, test_loader, cfg: EvalConfig, device: torch.device, name: str) -> dict:
    """k-NN (and linear-probe) accuracy of `model`'s features, in percent, with the protocol's knobs."""
    model.to(device)
    train_feats, train_labels = extract_features(model, train_loader, device=device, desc=f"{name} features (train)")
    test_feats, test_labels = extract_features(model, test_loader, device=device, desc=f"{name} features (test)")
    ks = tuple(dict.fromkeys([cfg.knn_k, *cfg.knn_ks]))  # the headline k first, then the others
    knn = knn_classify(train_feats, train_labels, test_feats, test_labels, ks=ks, temperature=cfg.knn_temperature)
    result = {"feature_dim": int(train_feats.shape[1]), "knn_top1": knn.top1, "knn_top5": knn.top5, "knn": knn.to_json()}
    if cfg.linear_probe:
        probe = linear_probe(train_feats, train_labels, test_feats, test_labels)
        result.update({"linear_top1": probe["top1"], "linear_top5": probe["top5"], "linear": probe})
    return result


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
