"""Exact search backends (torch matmul + topk, FAISS): agreement with a float64 brute force, block
boundaries, k beyond the bank, the rule that picks a backend, and the callers giving equal numbers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_kd.errors import UserError
from ssl_kd.evaluation import knn, knn_classify, knn_search, retrieval_metrics, search
from ssl_kd.evaluation.search import GPU_MAX_K, TorchFlatIP, choose_backend, cpu_index, unit_rows


def _brute_force(bank, queries, k):
    """float64 cosine similarities of every pair, then torch.topk."""
    sims = F.normalize(queries.double(), dim=1) @ F.normalize(bank.double(), dim=1).T
    return sims.topk(min(k, len(bank)), dim=1)


def _random(n_bank, n_query, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_bank, dim, generator=gen), torch.randn(n_query, dim, generator=gen)


def _assert_matches(sims, idx, ref):
    assert sims.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref.indices.numpy())
    np.testing.assert_allclose(sims, ref.values.numpy(), atol=1e-5)


@pytest.mark.parametrize("k", [1, 15, 41, 50, 300, 400])  # below, at and above the 41-row block; the bank; beyond it
def test_torch_blocks_match_brute_force_at_every_boundary(k):
    bank, queries = _random(300, 45, 24, seed=0)
    # 300 = 7 x 41 + 13 bank rows (a ragged last block) and 45 queries in 7 chunks of 7 or 6
    index = TorchFlatIP(unit_rows(bank, "bank"), bank_rows=41, query_rows=7)
    sims, idx = index.search(unit_rows(queries, "queries"), k)
    assert sims.shape == (45, min(k, 300))
    _assert_matches(sims, idx, _brute_force(bank, queries, k))
    whole = TorchFlatIP(unit_rows(bank, "bank")).search(unit_rows(queries, "queries"), k)  # one block
    np.testing.assert_array_equal(whole[1], idx)
    np.testing.assert_allclose(whole[0], sims, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "faiss", "auto"])
@pytest.mark.parametrize("chunk_size", [1, 16, 4096])
def test_knn_search_backends_match_brute_force(backend, chunk_size):
    bank, queries = _random(500, 40, 32, seed=1)
    sims, idx = knn_search(bank, queries, 30, chunk_size=chunk_size, backend=backend)
    _assert_matches(sims.numpy(), idx.numpy(), _brute_force(bank, queries, 30))


def test_k_beyond_the_bank_is_clipped_in_every_backend():
    bank, queries = _random(6, 4, 5, seed=2)
    for backend in ("torch", "faiss"):
        sims, idx = knn_search(bank, queries, 50, backend=backend)
        assert sims.shape == idx.shape == (4, 6)
        _assert_matches(sims.numpy(), idx.numpy(), _brute_force(bank, queries, 50))
        assert sorted(idx[0].tolist()) == list(range(6))


def test_backends_agree_on_a_larger_bank_ties_aside():
    """k = 200 among 5,000: the same neighbours wherever the similarities are not tied (float32
    rounding of two BLAS libraries is ~1e-7), and similarities within 1e-5."""
    bank, queries = _random(5000, 300, 64, seed=3)
    t_sims, t_idx = knn_search(bank, queries, 200, backend="torch")
    f_sims, f_idx = knn_search(bank, queries, 200, backend="faiss")
    assert torch.allclose(t_sims, f_sims, atol=1e-5)
    same_or_tied = (t_idx == f_idx) | ((t_sims - f_sims).abs() <= 1e-6)
    assert bool(same_or_tied.all())
    assert (t_idx == f_idx).float().mean() > 0.999


def test_normalised_bank_is_used_in_place_and_inputs_are_not_modified():
    bank, queries = _random(50, 8, 8, seed=4)
    unit = F.normalize(bank, dim=1).numpy()
    assert np.shares_memory(unit_rows(unit, "bank"), unit)  # no copy of a normalised bank
    assert np.shares_memory(cpu_index(unit, "torch").bank.numpy(), unit)
    raw = bank.clone()
    knn_search(raw, queries, 5)
    assert torch.equal(raw, bank)


def test_rule_picks_torch_on_cpu_and_faiss_gpu_when_there(monkeypatch):
    monkeypatch.setattr(search, "faiss_gpu_available", lambda: False)
    assert choose_backend("auto") == "torch" and choose_backend("auto", use_gpu=True) == "torch"
    assert choose_backend("faiss") == "faiss" and choose_backend("torch") == "torch"
    monkeypatch.setattr(search, "faiss_gpu_available", lambda: True)
    assert choose_backend("auto", None, k=200) == "faiss-gpu"
    assert choose_backend("faiss", None, k=200) == "faiss-gpu"
    assert choose_backend("auto", None, k=GPU_MAX_K + 1) == "torch"  # past the GPU k limit
    assert choose_backend("faiss", None, k=GPU_MAX_K + 1) == "faiss"
    assert choose_backend("auto", False, k=200) == "torch"
    assert choose_backend("torch", None, k=200) == "torch"
    with pytest.raises(UserError, match="unknown search backend"):
        choose_backend("annoy")


def test_rule_chosen_gpu_backend_gives_the_same_numbers(monkeypatch):
    """No GPU here: a fake "GPU" index (FAISS on the CPU) stands in; knn_search routes to it under
    the rule and the numbers equal the torch backend's."""
    asked = []

    class FakeGpuIndex:
        def __init__(self, index):
            self.index = index

        def search(self, x, k):
            asked.append(k)
            return self.index.search(x, k)

    monkeypatch.setattr(search, "faiss_gpu_available", lambda: True)
    monkeypatch.setattr(knn, "to_gpu", lambda index, use_gpu: FakeGpuIndex(index))
    bank, queries = _random(400, 30, 16, seed=5)
    labels = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(5))
    query_labels = torch.randint(0, 4, (30,), generator=torch.Generator().manual_seed(6))
    sims, idx = knn_search(bank, queries, 20, chunk_size=16)
    assert asked == [20, 20]
    t_sims, t_idx = knn_search(bank, queries, 20, backend="torch")
    assert torch.equal(idx, t_idx) and torch.allclose(sims, t_sims, atol=1e-5)
    gpu = knn_classify(bank, labels, queries, query_labels, ks=(1, 20))
    cpu = knn_classify(bank, labels, queries, query_labels, ks=(1, 20), backend="torch")
    assert gpu.per_k == cpu.per_k and torch.equal(gpu.predictions, cpu.predictions)


def test_callers_give_identical_metrics_with_either_backend():
    bank, queries = _random(600, 80, 16, seed=7)
    gen = torch.Generator().manual_seed(7)
    bank_y, query_y = torch.randint(0, 6, (600,), generator=gen), torch.randint(0, 6, (80,), generator=gen)
    by = {b: knn_classify(bank, bank_y, queries, query_y, ks=(1, 10, 200), backend=b) for b in ("torch", "faiss")}
    assert by["torch"].per_k == by["faiss"].per_k
    assert torch.equal(by["torch"].predictions, by["faiss"].predictions)
    ret = {b: retrieval_metrics(bank, bank_y, queries, query_y, chunk_size=32, backend=b, use_gpu=False)
           for b in ("torch", "faiss")}
    assert ret["torch"].recall == ret["faiss"].recall
    assert ret["torch"].map_at_r == pytest.approx(ret["faiss"].map_at_r, abs=1e-12)


def _clusters(n_per_class: int, classes: int, dim: int, seed: int):
    """Unit rows around `classes` fixed centres (the same for every seed), `n_per_class` each."""
    centres = F.normalize(torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)), dim=1)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    noise = 0.05 * torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return F.normalize(centres[labels] + noise, dim=1), labels


def test_hnsw_is_approximate_but_finds_nearly_every_exact_neighbour():
    gen = torch.Generator().manual_seed(0)
    bank, queries = F.normalize(torch.randn(4000, 32, generator=gen), dim=1), F.normalize(torch.randn(200, 32, generator=gen), dim=1)
    exact = cpu_index(unit_rows(bank, "bank"), "torch").search(queries, 10)[1]
    approximate = cpu_index(unit_rows(bank, "bank"), "hnsw").search(queries, 10)[1]
    found = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact)])
    assert found > 0.95
    assert choose_backend("hnsw") == "hnsw" and choose_backend("auto") != "hnsw"  # asked for, never chosen


def test_hnsw_gives_the_exact_knn_and_retrieval_numbers_on_separable_clusters():
    bank, bank_y = _clusters(200, 5, 16, seed=2)
    queries, query_y = _clusters(20, 5, 16, seed=3)
    exact = knn_classify(bank, bank_y, queries, query_y, ks=(20,), backend="torch")
    approximate = knn_classify(bank, bank_y, queries, query_y, ks=(20,), backend="hnsw")
    assert approximate.top1 == exact.top1 == 100.0
    assert retrieval_metrics(bank, bank_y, queries, query_y, backend="hnsw").recall[1] == 100.0


def test_auto_times_both_cpu_backends_only_for_a_large_search(monkeypatch):
    bank = unit_rows(F.normalize(torch.randn(300, 8), dim=1), "bank")
    queries = unit_rows(F.normalize(torch.randn(40, 8), dim=1), "queries")
    assert search.auto_cpu_backend(bank, queries, 5) == "torch"  # 96,000 multiply-adds: no timing
    monkeypatch.setattr(search, "CALIBRATE_WORK", 10)
    assert search.auto_cpu_backend(bank, queries, 5) in ("torch", "faiss")
    monkeypatch.setattr(search, "fastest_cpu_backend", lambda *args: "faiss")
    exact = knn_search(bank, queries, 5, backend="torch")
    measured = knn_search(bank, queries, 5)  # "auto" now searches with FAISS's CPU index
    assert torch.equal(exact[1], measured[1]) and torch.allclose(exact[0], measured[0], atol=1e-5)
