"""Evaluate frozen models the same way: features once, then weighted k-NN, retrieval and a linear probe.

`evaluate_model` (a `ModelScores`) gets L2-normalized features of the train split (the k-NN bank and the probe's
training set) and of the test split (the queries) through `split_features` (the one feature path,
cached and torchrun-aware), then `evaluate_features` runs `knn_classify` (weighted vote, k and T
from `EvalConfig`), `retrieval_metrics` and, if enabled, `linear_probe`, once (on rank 0).
`RawPixels` is the no-learning baseline: the images themselves, at most 32 px, flattened.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import EvalConfig
from .classwise import classwise_report
from .inputs import EvalSplits, split_features
from .knn import knn_classify
from .linear_probe import linear_probe
from .on_main import on_main_process
from .results import ModelScores
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


def evaluate_model(model: nn.Module, train_loader, test_loader, cfg: EvalConfig, device: torch.device, name: str) -> ModelScores:
    """k-NN, retrieval and (if enabled) linear-probe accuracy of `model`'s features, in percent.

    The loaders say which datasets (train split = bank, test split = queries), in which batches and
    with how many workers; their features come from `split_features` (cached in `cfg.cache_dir` when
    set). Under torchrun every rank must call it: all ranks extract, rank 0 alone scores
    (`evaluate_features`), and every rank returns rank 0's numbers.
    """
    model.to(device)
    splits = EvalSplits(train_loader.dataset, test_loader.dataset)
    feats = split_features(model, splits, cache_dir=cfg.cache_dir, batch_size=train_loader.batch_size,
                           num_workers=train_loader.num_workers, device=device, name=name)
    classes = getattr(splits.test, "classes", None)
    return on_main_process(lambda: evaluate_features(*feats, cfg, classes))


def evaluate_features(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, cfg: EvalConfig,
                      classes: list[str] | None = None) -> ModelScores:
    """k-NN, retrieval and (if enabled) linear-probe numbers of L2-normalized features, in percent.

    One feature pass per split serves all three. k-NN: weighted vote, k and T from `cfg`, with
    per-class accuracy and the confusion matrix of its predictions. Retrieval: test queries against
    the train split, recall@1/5/10 and MAP@R.
    """
    ks = tuple(dict.fromkeys([cfg.knn_k, *cfg.knn_ks]))  # the headline k first, then the others
    knn = knn_classify(train_feats, train_labels, test_feats, test_labels, ks=ks, temperature=cfg.knn_temperature,
                       backend=cfg.search)
    classes = classes or [str(c) for c in range(knn.num_classes)]
    retrieval = retrieval_metrics(train_feats, train_labels, test_feats, test_labels, backend=cfg.search)
    probe = linear_probe(train_feats, train_labels, test_feats, test_labels) if cfg.linear_probe else None
    return ModelScores(knn_top1=knn.top1, knn_top5=knn.top5, recall_at_1=retrieval.recall[1], map_at_r=retrieval.map_at_r,
                       linear_top1=probe["top1"] if probe else None, linear_top5=probe["top5"] if probe else None,
                       feature_dim=int(train_feats.shape[1]), knn=knn.to_json(), knn_classwise=_classwise(knn, test_labels, classes),
                       retrieval=retrieval.to_json(), linear=probe)


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
