"""Weighted k-nearest-neighbour classifier on frozen features (InstDisc / DINO protocol).

Every train feature f_j and query feature x is L2-normalised, so the inner product is the cosine
similarity s_j = <x, f_j>. For each query the k train items with the largest s_j vote:

    S_c = sum_{j in top-k(x)} exp(s_j / T) * 1[y_j = c],        prediction = argmax_c S_c

    s_j      cosine similarity between the query and train item j
    y_j      label of train item j
    T        temperature (0.07 in InstDisc and DINO); small T makes the closest neighbours dominate
    S_c      score of class c; top-1 = argmax, top-5 = true label among the 5 largest scores

Numerical stability: the weights are computed as exp((s_j - max_j s_j) / T), i.e. every score of
one query is multiplied by the same positive constant exp(-max_j s_j / T). This changes no
argmax and no ranking, but the nearest neighbour always has weight 1: no score underflows to
zero and none overflows (raw exp(s / T) overflows float32 once T < 1/88; exp((s - 1) / T)
underflows for small T when every neighbour is far). `weighted_vote` returns these scores.

Ties count against the true label: its rank is the number of OTHER classes scoring at least as
much, top-1 correct <=> rank 0, top-5 correct <=> rank < 5. So a true class that got no vote is
never "in the top 5" when there are more than 5 classes (with k < 5, DINO's sort could count
such zero-vote classes), and with at most 5 classes top-5 is 100 %. Without exact ties this is
the usual definition and top-1 correct <=> prediction (argmax) == label.

The search runs once with max(ks) neighbours; smaller k reuse the prefix of that sorted list. It is
exact, by torch matmul + topk on the CPU or FAISS on the GPU (`ssl_kd.evaluation.search`: the
backends and the rule that picks one).

References: Wu, Xiong, Yu, Lin, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (InstDisc), CVPR 2018; Caron et al., "Emerging Properties in Self-Supervised
Vision Transformers" (DINO), ICCV 2021, `eval_knn.py` (k = 20 headline, T = 0.07).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import faiss
import numpy as np
import torch
from torch import Tensor

from ssl_kd.evaluation.search import (ArrayLike, auto_cpu_backend, choose_backend, cpu_index, to_gpu, unit_rows,
                                      unit_rows_copy)

__all__ = ["KNNResult", "knn_search", "knn_classify", "weighted_vote", "rank_of_label"]


@dataclass(frozen=True)
class KNNResult:
    """Outcome of `knn_classify`.

    top1, top5:  accuracies in percent at the headline k (= `k`, the first of `ks`).
    k:           the headline k.
    ks:          every k evaluated, in the order given.
    per_k:       {k: {"top1": float, "top5": float}} for every k in `ks` (int keys).
    temperature: the T of the vote weights.
    predictions: predicted class per query at the headline k, int64 [Q].
    num_train, num_query, num_classes: sizes the result was computed with.

    `to_json()` gives a JSON-ready dict (str keys for k, predictions left out).
    """

    top1: float
    top5: float
    k: int
    ks: list[int]
    per_k: dict[int, dict[str, float]]
    temperature: float
    predictions: Tensor = field(repr=False)
    num_train: int
    num_query: int
    num_classes: int

    def to_json(self) -> dict[str, Any]:
        """A dict of plain floats/ints/strs that `json.dumps` accepts (without `predictions`)."""
        return {
            "top1": self.top1,
            "top5": self.top5,
            "k": self.k,
            "ks": list(self.ks),
            "per_k": {str(k): dict(acc) for k, acc in self.per_k.items()},
            "temperature": self.temperature,
            "num_train": self.num_train,
            "num_query": self.num_query,
            "num_classes": self.num_classes,
        }


_as_unit_rows = unit_rows_copy  # the names retrieval.py and older callers import


def flat_ip_index(feats: ArrayLike, name: str) -> faiss.IndexFlatIP:
    """A CPU FAISS `IndexFlatIP` of the L2-normalized rows of `feats` [N, D] (the input is not modified).

    Normalised input is added without a normalised copy (the index holds one copy: 2 x N x D x 4 bytes
    with the caller's array); other inputs get a normalised copy first (3 x).
    """
    return cpu_index(unit_rows(feats, name), "faiss")


def knn_search(
    train_feats: ArrayLike,
    query_feats: ArrayLike,
    k: int,
    *,
    chunk_size: int = 4096,
    use_gpu: bool | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Exact cosine-similarity search of every query among the train features.

    Both sets are L2-normalised here (inputs are not modified; train features that are normalised
    already are used without a copy). `backend="auto"` searches with FAISS's GPU index when FAISS
    has GPU support, CUDA is there, `use_gpu` is not False and k <= 2048, and otherwise on the CPU
    with torch matmul + topk, or for a large search with whichever of torch and FAISS's CPU index
    searched a sample faster on this machine (`ssl_kd.evaluation.search`); "torch", "faiss" or the
    approximate "hnsw" forces one. All give the same
    neighbours up to ties and similarities within float32 rounding. Queries go through in chunks
    of `chunk_size` (the torch backend also caps each block of similarities at 256 MiB). `k` is
    clipped to the number of train items.

    Returns (sims, idx): float32 [Q, k'] cosine similarities sorted in decreasing order, and
    int64 [Q, k'] train indices, on CPU, where k' = min(k, N_train).
    """
    train = unit_rows(train_feats, "train features")
    query = unit_rows_copy(query_feats, "query features")
    if train.shape[0] == 0:
        raise ValueError("no training features: the train split is empty; "
                        "check the dataset path and split name")
    if query.shape[0] == 0:
        raise ValueError("no query features: the evaluation split is empty; "
                        "check the dataset path and split name")
    if train.shape[1] != query.shape[1]:
        raise ValueError(f"feature dimensions differ: train {train.shape[1]} vs query "
                        f"{query.shape[1]}; extract both splits with the same model")
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be >= 1, got k={k}, chunk_size={chunk_size}")
    k = min(int(k), train.shape[0])

    chosen = choose_backend(backend, use_gpu, k)
    if backend == "auto" and chosen == "torch":
        chosen = auto_cpu_backend(train, query, k)  # a large search: the CPU backend measured faster here
    index = cpu_index(train, "faiss" if chosen == "faiss-gpu" else chosen)
    if chosen == "faiss-gpu":
        index = to_gpu(index, use_gpu)
    sims, idx = zip(*(index.search(query[start:start + chunk_size], k)
                      for start in range(0, query.shape[0], chunk_size)))
    return torch.from_numpy(np.concatenate(sims)), torch.from_numpy(np.concatenate(idx)).long()


def weighted_vote(
    sims: Tensor, neighbor_labels: Tensor, num_classes: int, temperature: float = 0.07
) -> Tensor:
    """Class scores S [Q, C] from the neighbours' similarities [Q, k] and labels [Q, k].

    S_c = sum_j exp((s_j - max_j s_j) / T) * 1[y_j = c]: the InstDisc/DINO score times the
    per-row constant exp(-max_j s_j / T) (same argmax and ranking, no underflow).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; the usual value is 0.07")
    sims = sims.float()
    weights = torch.exp((sims - sims.max(dim=1, keepdim=True).values) / temperature)
    scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float32, device=sims.device)
    return scores.scatter_add_(1, neighbor_labels.long(), weights)


def rank_of_label(scores: Tensor, labels: Tensor) -> Tensor:
    """Rank [Q] of each true label among the class scores [Q, C]: the number of other classes
    scoring >= the true one (ties count against it). "Top-n correct" <=> rank < n."""
    true = scores.gather(1, labels.view(-1, 1))
    return (scores >= true).sum(dim=1) - 1


def _as_labels(labels: ArrayLike, n: int, name: str) -> Tensor:
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    labels = labels.detach().to("cpu").long().view(-1)
    if labels.numel() != n:
        raise ValueError(f"{name} has {labels.numel()} entries but there are {n} features; "
                        "pass one label per feature row")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} contain negative values; labels must be class indices 0..C-1")
    return labels


def _num_classes(train_labels: Tensor, query_labels: Tensor, num_classes: int | None) -> int:
    largest = int(torch.cat([train_labels, query_labels]).max()) + 1
    if num_classes is None:
        return largest
    if num_classes < largest:
        raise ValueError(f"num_classes={num_classes} but a label equals {largest - 1}; "
                        "pass num_classes > the largest label, or leave it None")
    return int(num_classes)


def _accuracy_at_k(
    sims: Tensor, nbr_labels: Tensor, query_labels: Tensor, k: int, temperature: float,
    num_classes: int, chunk_size: int,
) -> tuple[float, float, Tensor]:
    """(top1 %, top5 %, predictions) using the first k neighbours, scores built chunk by chunk."""
    hits1 = hits5 = 0
    preds = []
    for start in range(0, sims.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        scores = weighted_vote(sims[rows, :k], nbr_labels[rows, :k], num_classes, temperature)
        rank = rank_of_label(scores, query_labels[rows])
        hits1 += int((rank == 0).sum())
        hits5 += int((rank < 5).sum())
        preds.append(scores.argmax(dim=1))
    n = sims.shape[0]
    return 100.0 * hits1 / n, 100.0 * hits5 / n, torch.cat(preds)


def knn_classify(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    query_feats: ArrayLike,
    query_labels: ArrayLike,
    *,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 4096,
    backend: str = "auto",
) -> KNNResult:
    """Weighted k-NN accuracy of `query_feats` against `train_feats` for every k in `ks`.

    One search with max(ks) neighbours serves every k; a k larger than the train set is clipped
    to its size (the result is still reported under the requested k). `num_classes` defaults to
    the largest label + 1. Returns a `KNNResult`: `.top1`, `.top5` (percent) and `.predictions`
    at the first k of `ks`, `.per_k[k]["top1" | "top5"]` for every k, `.to_json()` for logging.
    `backend` picks the search (`knn_search`; "auto" by default).
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive ints, got {ks}; e.g. ks=(10, 20)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; the usual value is 0.07")
    n_train, n_query = len(train_feats), len(query_feats)
    train_y = _as_labels(train_labels, n_train, "train_labels")
    query_y = _as_labels(query_labels, n_query, "query_labels")
    sims, idx = knn_search(train_feats, query_feats, max(ks), chunk_size=chunk_size, backend=backend)
    n_classes = _num_classes(train_y, query_y, num_classes)

    nbr_labels = train_y[idx]
    per_k: dict[int, dict[str, float]] = {}
    predictions = torch.empty(0, dtype=torch.long)
    for k in ks:
        top1, top5, preds = _accuracy_at_k(sims, nbr_labels, query_y, k, temperature,
                                           n_classes, chunk_size)
        per_k[k] = {"top1": top1, "top5": top5}
        if k == ks[0]:
            predictions = preds
    return KNNResult(top1=per_k[ks[0]]["top1"], top5=per_k[ks[0]]["top5"], k=ks[0], ks=ks,
                     per_k=per_k, temperature=float(temperature), predictions=predictions,
                     num_train=n_train, num_query=n_query, num_classes=n_classes)
