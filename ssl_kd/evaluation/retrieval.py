"""Image retrieval on frozen features: Recall@K and MAP@R, test queries against the train database.

Every query (a test item) ranks every database item (the train split) by cosine similarity,
largest first; a database item is relevant to a query when both have the same class label.

    Recall@K = (1/|Q'|) sum_{q in Q'} 1[ exists i <= K : rel_q(i) = 1 ]

    MAP@R    = (1/|Q'|) sum_{q in Q'} AP@R(q),   AP@R(q) = (1/R_q) sum_{i=1}^{R_q} P_q(i) * rel_q(i)

    rel_q(i)  1 if the i-th nearest database item has the query's label, else 0
    P_q(i)    precision at i: (1/i) sum_{j=1}^{i} rel_q(j)
    R_q       number of database items with the query's label (so R_q differs per class)
    Q'        the queries with R_q > 0; a query whose class is absent from the database can be
              neither right nor wrong, so it is left out of BOTH metrics (as in
              pytorch-metric-learning, which drops such "lone" query labels); `num_scored` says
              how many queries remain
    K         a cut-off in `ks`; K larger than the database means the whole database

Recall@K here is the METRIC-LEARNING convention (CUB-200, Cars-196, Stanford Online Products;
used by RKD, Park et al., CVPR 2019): a query scores 1 when at least one of its K nearest
neighbours is relevant. The information-retrieval convention, "fraction of the R_q relevant items
found within the top K", is a different number and is NOT computed here.

MAP@R (Musgrave, Belongie, Lim, "A Metric Learning Reality Check", ECCV 2020) is the mean average
precision truncated at rank R_q: a ranking that puts all R_q relevant items first scores 1, and
unlike Recall@K it rewards the order of everything relevant. It stops at rank R_q, so only
max(max(ks), R_q) neighbours per query are needed, while plain mAP over the full ranking needs
every database item per query (Q x N_db scores) - too costly for large databases. Example: for the
ranking rel = (1, 0, 1, 0) and R = 2, AP@R = (1/2)(1/1 + 0) = 0.5 (the full-ranking AP would be
(1/2)(1/1 + 2/3) = 0.8333), Recall@1 = Recall@2 = 1.

Unlike the leave-one-out metric-learning protocol (one test set, each item querying all the others,
methods.md 6.3), queries and database are separate splits here, so no item is excluded from its
own ranking: passing the same set as both makes every query its own first neighbour.

Search and memory: the exact search of `ssl_kd.evaluation.search`, as k-NN uses it (torch matmul +
topk on the CPU, at most 256 MiB of similarities at a time, the normalised database used in place;
FAISS `IndexFlatIP` on the GPU when faiss-gpu and CUDA are there; `backend` forces one). Queries
are searched `chunk_size` at a time with k = min(N_db, max(max(ks), max R_q over the chunk)); each
chunk's neighbours are reduced to per-query hits and AP@R at once, then dropped. FAISS on GPU
returns at most 2048 neighbours per query: a chunk needing k > 2048 is searched on the CPU instead
(exact, slower). Ties in similarity are ordered by the backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ssl_kd.evaluation.knn import _as_labels
from ssl_kd.evaluation.search import (GPU_MAX_K, ArrayLike, auto_cpu_backend, choose_backend, cpu_index, to_gpu, unit_rows,
                                     unit_rows_copy)

__all__ = ["RetrievalResult", "map_at_r_from_ranking", "recall_at_k_from_ranking", "retrieval_metrics"]


@dataclass(frozen=True)
class RetrievalResult:
    """Outcome of `retrieval_metrics`.

    recall:     {K: Recall@K in percent} for every K of `ks` (int keys, order of `ks`).
    map_at_r:   MAP@R in percent.
    num_query:  number of queries given.
    num_scored: queries with R > 0, the denominator of both metrics.
    num_db:     number of database items.

    `to_json()` gives {"recall@1": .., "recall@5": .., "recall@10": .., "map@R": .., ...}.
    """

    recall: dict[int, float]
    map_at_r: float
    num_query: int
    num_scored: int
    num_db: int

    def to_json(self) -> dict[str, Any]:
        """A dict of plain floats/ints that `json.dumps` accepts."""
        out: dict[str, Any] = {f"recall@{k}": v for k, v in self.recall.items()}
        out["map@R"] = self.map_at_r
        out.update(num_query=self.num_query, num_scored=self.num_scored, num_db=self.num_db)
        return out


def map_at_r_from_ranking(relevant: Tensor, r: Tensor) -> Tensor:
    """AP@R per query, as a fraction in [0, 1] (float64 [Q]).

    relevant: bool [Q, L], relevant[q, i] = rel_q(i + 1) of the ranking, nearest first;
              L must be >= max(r) (columns past R_q are ignored).
    r:        int [Q], R_q = number of relevant items in the whole database.
    AP@R(q) = (1/R_q) sum_{i<=R_q} P_q(i) rel_q(i); NaN where R_q = 0.
    """
    relevant = torch.as_tensor(relevant).bool()
    r = torch.as_tensor(r).long().view(-1)
    if relevant.ndim != 2 or relevant.shape[0] != r.numel():
        raise ValueError(f"relevant must be [Q, L] with Q = len(r) = {r.numel()}, got shape "
                        f"{tuple(relevant.shape)}; pass one ranking row per query")
    if r.numel() and (int(r.min()) < 0 or int(r.max()) > relevant.shape[1]):
        raise ValueError(f"every R must lie in [0, L = {relevant.shape[1]}], got R in "
                        f"[{int(r.min())}, {int(r.max())}]; pass at least max(R) ranked items per query")
    ranks = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float64)
    rel = relevant & (ranks[None, :] <= r[:, None])  # only the first R_q positions count
    precision = rel.double().cumsum(dim=1) / ranks  # P_q(i)
    ap = (precision * rel).sum(dim=1) / r.double()
    return torch.where(r > 0, ap, torch.full_like(ap, float("nan")))


def recall_at_k_from_ranking(relevant: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """{K: bool [Q]}: does query q have a relevant item among its K nearest neighbours.

    relevant: bool [Q, L] as in `map_at_r_from_ranking`. A K > L uses all L columns, which is
    right only when the ranking holds min(K, N_db) items (e.g. the whole database).
    """
    relevant = torch.as_tensor(relevant).bool()
    if relevant.ndim != 2:
        raise ValueError(f"relevant must be a 2-d bool array [Q, L], got shape {tuple(relevant.shape)}; "
                        "pass one ranking row per query")
    return {int(k): relevant[:, :int(k)].any(dim=1) for k in ks}


def retrieval_metrics(
    db_feats: ArrayLike,
    db_labels: ArrayLike,
    query_feats: ArrayLike,
    query_labels: ArrayLike,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    use_gpu: bool | None = None,
    backend: str = "auto",
) -> RetrievalResult:
    """Recall@K (metric-learning convention) and MAP@R of the queries against the database.

    Features are L2-normalised (inputs are not modified), compared by inner product (cosine).
    `use_gpu=None` uses FAISS on GPU when available, False forces CPU; `backend` ("auto", "torch",
    "faiss") as in `ssl_kd.evaluation.knn.knn_search`. Queries are searched
    `chunk_size` at a time; results do not depend on `chunk_size`. Percentages; see the module
    docstring for the formulas and for how queries whose class is absent from the database count.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive ints, got {ks}; e.g. ks=(1, 5, 10)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}; e.g. 1024")
    db = unit_rows(db_feats, "database features")
    query = unit_rows_copy(query_feats, "query features")
    if db.shape[0] == 0 or query.shape[0] == 0:
        raise ValueError(f"empty retrieval set: {db.shape[0]} database and {query.shape[0]} query features; "
                        "check the dataset path and split names")
    if db.shape[1] != query.shape[1]:
        raise ValueError(f"feature dimensions differ: database {db.shape[1]} vs query {query.shape[1]}; "
                        "extract both splits with the same model")
    n_db, n_query = db.shape[0], query.shape[0]
    db_y = _as_labels(db_labels, n_db, "db_labels")
    query_y = _as_labels(query_labels, n_query, "query_labels")
    counts = torch.bincount(db_y, minlength=int(torch.cat([db_y, query_y]).max()) + 1)
    r_all = counts[query_y]  # R_q
    n_scored = int((r_all > 0).sum())
    if n_scored == 0:
        raise ValueError("no query label occurs in the database, so no query has a relevant item; "
                        "use the same class indices for both splits")

    cpu_choice = choose_backend(backend, use_gpu=False)  # "torch", "faiss" or "hnsw"
    if backend == "auto":  # a large search: the CPU backend measured faster here
        cpu_choice = auto_cpu_backend(db, query, min(n_db, max(max(ks), int(r_all.max()))))
    cpu_search = cpu_index(db, cpu_choice)
    gpu_index = None if backend in ("torch", "hnsw") else to_gpu(cpu_search, use_gpu)  # None without faiss-gpu + CUDA

    hits = {k: 0 for k in ks}
    ap = torch.zeros(n_query, dtype=torch.float64)  # per query, summed once at the end: chunk-independent
    for start in range(0, n_query, chunk_size):
        rows = slice(start, start + chunk_size)
        r = r_all[rows]
        k = min(n_db, max(max(ks), int(r.max())))
        index = gpu_index if gpu_index is not None and k <= GPU_MAX_K else cpu_search
        _, idx = index.search(query[rows], k)
        relevant = db_y[torch.from_numpy(idx).long()] == query_y[rows, None]
        del idx
        for kk, hit in recall_at_k_from_ranking(relevant, ks).items():
            hits[kk] += int(hit.sum())  # a query with R = 0 has no relevant item, so never hits
        ap[rows] = map_at_r_from_ranking(relevant, r).nan_to_num(0.0)
        del relevant
    return RetrievalResult(
        recall={k: 100.0 * hits[k] / n_scored for k in ks},
        map_at_r=100.0 * float(ap.sum()) / n_scored,
        num_query=n_query, num_scored=n_scored, num_db=n_db,
    )
