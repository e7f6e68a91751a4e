"""Exact cosine-similarity search shared by k-NN (`knn.py`) and retrieval (`retrieval.py`).

Rows are L2-normalised, so the inner product is the cosine similarity; every backend returns the
k largest inner products per query, sorted in decreasing order, with their bank indices. The
backends differ only in who multiplies and who selects:

    "torch"      `TorchFlatIP`: query chunk @ bank block.T with torch (MKL on x86 wheels), then
                 `Tensor.topk`; when the bank is split into blocks, each block's top k is merged
                 with the running top k by one more `topk`. The similarity block is bounded by
                 `SIMS_BLOCK_FLOATS` (512 MiB of float32), so memory does not grow with the number
                 of queries, and the bank is used in place (no copy, no index).
    "faiss"      FAISS `IndexFlatIP` on the CPU (its bundled OpenBLAS sgemm plus a per-query heap,
                 or a reservoir for k >= 100); the index holds a copy of the bank.
    "faiss-gpu"  that index copied to every GPU (`faiss.index_cpu_to_all_gpus`), used only when
                 FAISS has GPU support and CUDA is there, and only for k <= `GPU_MAX_K`.
    "hnsw"       APPROXIMATE: FAISS `IndexHNSWFlat` (inner product, M = 32 links, efSearch =
                 max(2k, 128)), for banks too large for exact search (past about 1M rows, where an
                 exact search of every query costs N x D per query); it changes some neighbours, so
                 it is used only when asked for (`eval.search=hnsw`, `--search hnsw`), never by the rule.

The rule (`choose_backend(backend="auto", ...)`): "faiss-gpu" when it is available, `use_gpu` is not
False and k <= GPU_MAX_K; otherwise the CPU backend, "torch" for a small search and, for a large one
(Q x N x D above `CALIBRATE_WORK` multiply-adds), whichever of "torch" and "faiss" searched a sample
of its queries faster on this machine just now (`auto_cpu_backend`, `fastest_cpu_backend`). No fixed
choice is right on every machine: on one idle 2-core machine (below) torch was 2.7x FAISS, on
another 2-core machine of the same kind (AMD EPYC, load 1.6) FAISS was 1.42x torch (3.20 s against
4.53 s for the search below). `backend="faiss"`, `"torch"` or `"hnsw"` forces one.

Why torch and not FAISS on the CPU (2-core AMD EPYC, Zen 4, x86_64, KVM; torch 2.14.1 with MKL,
faiss-cpu 1.15.1 with its bundled OpenBLAS 0.3.15): `bench/eval_speed.py` (top-200 of 10,000 queries
among 50,000 x 512) gave 8.87 s for FAISS and 3.23 s for torch matmul + topk on an idle machine.
FAISS's arithmetic is not the problem (on one thread it is the faster: 0.6 CPU s per 1,024 queries
against torch's 0.8), nor is its per-query heap or reservoir at k = 200 (k = 1 costs about 85 % as
much). Its threads are: FAISS multiplies 1,024 bank rows at a time
(`faiss.cvar.distance_compute_blas_database_bs`) and enters two OpenMP regions per block (the
sgemm, then the heap update), and on two threads its CPU time doubles (0.63 -> 1.27 s per 1,024
queries at k = 200, 0.54 -> 0.85 s at k = 1), so on an idle machine two threads are no
faster than one; with 8,192-row blocks two
threads cost 0.68 s. torch does one GEMM against the whole bank per query chunk (10-15 % CPU
overhead on two threads). On the same machine shared with other jobs (load 3.9) FAISS's wall time
was the lower (8.1 s against 10.8 s, CPU 7.4 s against 8.3 s): a single-threaded-in-effect search
suffers less from contention. The rule is for the unloaded machine, and the torch path is the
matmul + topk that the goal is measured against, so it holds on every machine; `backend="faiss"`
is there for the others. Neighbours agree with FAISS up to ties (similarities within 1e-5, the
float32 rounding of two BLAS libraries).

"""

from __future__ import annotations

import time
from typing import Union

import faiss
import numpy as np
import torch
from torch import Tensor

from ssl_kd.errors import UserError

ArrayLike = Union[Tensor, np.ndarray]

__all__ = [
    "BACKENDS", "GPU_MAX_K", "TorchFlatIP", "choose_backend", "cpu_index", "faiss_gpu_available",
    "to_gpu", "unit_rows", "unit_rows_copy",
]

BACKENDS = ("auto", "torch", "faiss", "hnsw")
CALIBRATE_WORK = 2e10  # multiply-adds (queries x bank rows x dims) above which "auto" times both CPU backends
CALIBRATION_QUERIES = 256  # queries of the timing sample
CALIBRATION_ROWS = 50_000  # bank rows of the timing sample (both backends' cost is linear in the rows)
HNSW_LINKS = 32  # M: graph links per node (FAISS's usual 32; memory N x M x 8 bytes on top of the bank)
HNSW_MIN_EF = 128  # efSearch floor; efSearch = max(2k, 128) candidates explored per query
GPU_MAX_K = 2048  # faiss GPU k-selection limit (GPU_MAX_SELECTION_K, CUDA builds since faiss 1.7)
SIMS_BLOCK_FLOATS = 1 << 27  # at most 512 MiB of float32 similarities at a time (query rows x bank rows)
MIN_QUERY_ROWS = 512  # the bank is split into blocks only when fewer query rows would fit in that budget
CHECK_CHUNK = 65536  # rows checked (finite, unit norm) at a time
UNIT_TOLERANCE = 1e-4


def _float32_view(feats: ArrayLike) -> np.ndarray:
    """`feats` as a C-contiguous float32 numpy array, without a copy when it already is one."""
    if isinstance(feats, Tensor):
        feats = feats.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(feats, dtype=np.float32)


def _check_2d(arr: np.ndarray, name: str) -> None:
    if arr.ndim != 2:
        raise UserError(f"{name} must be a 2-d array [N, D], got shape {tuple(arr.shape)}; "
                        "flatten or pool the features first")


def unit_rows_copy(feats: ArrayLike, name: str) -> np.ndarray:
    """Float32, C-contiguous numpy copy of `feats` [N, D] with L2-normalised rows (all-zero rows stay zero)."""
    if isinstance(feats, Tensor):
        feats = feats.detach().to("cpu", torch.float32).numpy()
    arr = np.array(feats, dtype=np.float32, order="C", copy=True)
    _check_2d(arr, name)
    if not np.isfinite(arr).all():
        raise UserError(f"{name} contain NaN or Inf; check the model output before evaluating")
    faiss.normalize_L2(arr)  # in place
    return arr


def unit_rows(feats: ArrayLike, name: str) -> np.ndarray:
    """The L2-normalised rows of `feats` [N, D] as float32 numpy; the input is not modified.

    Features from `extract_features` are normalised already: their rows are checked chunk by chunk
    and returned without a copy. Other inputs get a normalised copy.
    """
    arr = _float32_view(feats)
    _check_2d(arr, name)
    unit = True
    for start in range(0, arr.shape[0], CHECK_CHUNK):
        chunk = arr[start:start + CHECK_CHUNK]
        if not np.isfinite(chunk).all():
            raise UserError(f"{name} contain NaN or Inf; check the model output before evaluating")
        unit = unit and bool(np.all(np.abs(np.einsum("ij,ij->i", chunk, chunk) - 1.0) < UNIT_TOLERANCE))
    return arr if unit else unit_rows_copy(arr, name)


class TorchFlatIP:
    """Exact inner-product search with torch matmul + topk, with the interface of a FAISS index.

    `bank` [N, D] float32 (unit rows for cosine) is used in place. `search(x, k)` takes queries
    [Q, D] (numpy or tensor) and returns numpy (sims [Q, k'] float32, decreasing; idx [Q, k'] int64),
    k' = min(k, N). Queries go in equal chunks of at most `query_rows` against bank blocks of
    `bank_rows`, chosen so that one block of similarities holds at most `SIMS_BLOCK_FLOATS` floats:
    the whole bank per block up to 262,144 rows (one GEMM and one topk per query chunk; splitting a
    50,000-row bank into 16,384-row blocks was 30 % slower on one thread), merged block tops beyond
    that. Large query chunks pay: on 100,000 x 2048, 1,024 queries took 5.2 CPU s in one chunk,
    5.6 in two of 512 and 6.0 split 671 + 353.
    `bank_rows` / `query_rows` override the block sizes (tests use small ones).
    """

    def __init__(self, bank: ArrayLike, *, bank_rows: int | None = None, query_rows: int | None = None):
        self.bank = torch.as_tensor(bank)
        self.ntotal, self.d = int(self.bank.shape[0]), int(self.bank.shape[1])
        self.bank_rows = max(1, min(self.ntotal, bank_rows or SIMS_BLOCK_FLOATS // MIN_QUERY_ROWS))
        self.query_rows = max(1, query_rows or SIMS_BLOCK_FLOATS // self.bank_rows)

    def search(self, x: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k), self.ntotal)
        sims, idx = [], []
        x = torch.as_tensor(x)
        for queries in x.tensor_split(max(1, -(-x.shape[0] // self.query_rows))):  # ceil(Q / query_rows) chunks
            best = None
            for start in range(0, self.ntotal, self.bank_rows):
                block = queries @ self.bank[start:start + self.bank_rows].T
                top = block.topk(min(k, block.shape[1]), dim=1)
                del block
                best = _merge(best, (top.values, top.indices + start), k)
            sims.append(best[0])
            idx.append(best[1])
        return torch.cat(sims).numpy(), torch.cat(idx).numpy()


def _merge(best: tuple[Tensor, Tensor] | None, new: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """The k largest of two (sims, idx) candidate lists per row, sorted; `best` None: `new` as it is."""
    if best is None:
        return new
    both = torch.cat([best[0], new[0]], dim=1)
    sims, order = both.topk(min(k, both.shape[1]), dim=1)  # fewer than k seen in the first blocks
    return sims, torch.cat([best[1], new[1]], dim=1).gather(1, order)


def faiss_gpu_available() -> bool:
    """FAISS was built with GPU support, sees a GPU, and CUDA is available to torch."""
    return getattr(faiss, "get_num_gpus", lambda: 0)() > 0 and torch.cuda.is_available()


def choose_backend(backend: str = "auto", use_gpu: bool | None = None, k: int = 1) -> str:
    """"faiss-gpu", "faiss" or "torch" for one search (see the module docstring for the rule).

    `use_gpu`: None = use FAISS's GPU index when it is there, False = never, True = when it is
    there (there is no GPU torch path). "faiss" means FAISS's GPU index when the GPU would be used,
    its CPU index otherwise.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown search backend {backend!r}; use one of {', '.join(BACKENDS)}")
    gpu = use_gpu is not False and faiss_gpu_available() and k <= GPU_MAX_K
    if gpu and backend in ("auto", "faiss"):
        return "faiss-gpu"
    return backend if backend in ("faiss", "hnsw") else "torch"


class HNSWSearch:
    """FAISS `IndexHNSWFlat` over `bank` (inner product), approximate; `search(x, k)` as an index's, with
    efSearch raised to max(2k, HNSW_MIN_EF) so that k neighbours are always explored."""

    def __init__(self, bank: np.ndarray):
        self.index = faiss.IndexHNSWFlat(int(bank.shape[1]), HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        self.index.add(bank)
        self.ntotal = self.index.ntotal

    def search(self, x: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.index.hnsw.efSearch = max(2 * int(k), HNSW_MIN_EF)
        return self.index.search(_float32_view(x), int(k))


def fastest_cpu_backend(bank: np.ndarray, queries: np.ndarray, k: int) -> str:
    """"torch" or "faiss": whichever searched a sample (`CALIBRATION_QUERIES` queries among at most
    `CALIBRATION_ROWS` bank rows) faster, best of 2 alternating rounds, on this machine now."""
    sample_bank, sample = bank[:CALIBRATION_ROWS], queries[:CALIBRATION_QUERIES]
    k = min(k, sample_bank.shape[0])
    searchers = {name: cpu_index(sample_bank, name) for name in ("torch", "faiss")}
    best = {name: float("inf") for name in searchers}
    for _ in range(2):
        for name, index in searchers.items():
            start = time.perf_counter()
            index.search(sample, k)
            best[name] = min(best[name], time.perf_counter() - start)
    return min(best, key=best.get)


def auto_cpu_backend(bank: np.ndarray, queries: np.ndarray, k: int) -> str:
    """The CPU backend "auto" means for this search: "torch" below `CALIBRATE_WORK` multiply-adds, the
    measured faster of torch and FAISS above."""
    work = float(queries.shape[0]) * bank.shape[0] * bank.shape[1]
    return fastest_cpu_backend(bank, queries, k) if work > CALIBRATE_WORK else "torch"


def cpu_index(bank: np.ndarray, backend: str) -> TorchFlatIP | HNSWSearch | faiss.IndexFlatIP:
    """The CPU searcher of `bank` (unit rows): a FAISS `IndexFlatIP` (a copy) for "faiss", an approximate
    `HNSWSearch` for "hnsw", else `TorchFlatIP`."""
    if backend == "hnsw":
        return HNSWSearch(bank)
    if backend == "faiss":
        index = faiss.IndexFlatIP(int(bank.shape[1]))
        index.add(bank)
        return index
    return TorchFlatIP(bank)


def to_gpu(index: TorchFlatIP | faiss.Index, use_gpu: bool | None) -> faiss.Index | None:
    """The index (a FAISS `IndexFlatIP` of the bank of a `TorchFlatIP`) on every GPU when FAISS has
    GPU support and CUDA is there and `use_gpu` is not False; None otherwise."""
    if use_gpu is False or not faiss_gpu_available():
        return None
    if isinstance(index, TorchFlatIP):
        index = cpu_index(index.bank.numpy(), "faiss")
    return faiss.index_cpu_to_all_gpus(index)
