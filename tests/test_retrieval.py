"""Retrieval metrics: hand-checked Recall@K / MAP@R, FAISS vs a float64 brute force, chunking, errors."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.evaluation import retrieval
from ssl_kd.evaluation.retrieval import map_at_r_from_ranking, recall_at_k_from_ranking, retrieval_metrics


def _reference(db, db_y, query, query_y, ks):
    """Full float64 sort of every database item, then the definitions written out per query."""
    sims = F.normalize(query.double(), dim=1) @ F.normalize(db.double(), dim=1).T
    order = sims.argsort(dim=1, descending=True)
    recall_hits, aps, scored = {k: 0 for k in ks}, [], 0
    for q in range(len(query)):
        rel = (db_y[order[q]] == query_y[q]).tolist()
        r = sum(rel)
        if r == 0:
            continue
        scored += 1
        for k in ks:
            recall_hits[k] += any(rel[:k])
        found, ap = 0, 0.0
        for i in range(1, r + 1):
            if rel[i - 1]:
                found += 1
                ap += found / i
        aps.append(ap / r)
    return {k: 100.0 * h / scored for k, h in recall_hits.items()}, 100.0 * sum(aps) / scored


def test_hand_check_ranking_1010():
    relevant = torch.tensor([[True, False, True, False]])
    # MAP@R with R = 2 looks at the first 2 ranks only: (1/2)(1/1 + 0) = 0.5 (full AP would be 0.8333)
    assert map_at_r_from_ranking(relevant, torch.tensor([2])).item() == pytest.approx(0.5)
    # R = 3 (a third relevant item beyond the ranking shown): (1/3)(1/1 + 2/3)
    assert map_at_r_from_ranking(relevant, torch.tensor([3])).item() == pytest.approx((1 + 2 / 3) / 3)
    hits = recall_at_k_from_ranking(relevant, (1, 2))
    assert hits[1].tolist() == [True] and hits[2].tolist() == [True]


def test_map_at_r_rows_by_hand():
    relevant = torch.tensor([
        [False, True, True, False],   # R=2: (1/2)(0 + 1/2) = 0.25
        [True, True, False, False],   # R=2: perfect = 1
        [False, False, False, True],  # R=1: first rank irrelevant = 0
        [True, False, False, False],  # R=0: undefined -> NaN
    ])
    ap = map_at_r_from_ranking(relevant, torch.tensor([2, 2, 1, 0]))
    assert ap[:3].tolist() == pytest.approx([0.25, 1.0, 0.0])
    assert math.isnan(ap[3].item())
    hits = recall_at_k_from_ranking(relevant, (1, 3))
    assert hits[1].tolist() == [False, True, False, True]
    assert hits[3].tolist() == [True, True, False, True]
    with pytest.raises(ValueError):
        map_at_r_from_ranking(relevant[:, :1], torch.tensor([2, 2, 1, 0]))  # fewer columns than R


def test_tiny_2d_example_exact_values():
    # database on the unit circle at angles 0, 20, 40, 90, 180 degrees; labels 0, 1, 0, 1, 2
    angles = torch.tensor([0.0, 20.0, 40.0, 90.0, 180.0]) * math.pi / 180
    db = torch.stack([angles.cos(), angles.sin()], dim=1)
    db_y = torch.tensor([0, 1, 0, 1, 2])
    # query A at 5 deg, label 0: ranking 0(rel) 20(no) 40(rel) 90 180 -> R=2, AP@R=(1/2)(1+0)=0.5, R@1 hit
    # query B at 60 deg, label 1: ranking 40(no) 90(rel) 20(rel) 0 180 -> R=2, AP@R=(1/2)(0+1/2)=0.25, R@1 miss, R@5 hit
    # query C at 170 deg, label 2: ranking 180(rel) ... -> R=1, AP@R=1, R@1 hit
    # query D at 0 deg, label 3: class absent from the database -> not scored
    q_angles = torch.tensor([5.0, 60.0, 170.0, 0.0]) * math.pi / 180
    query = 3.0 * torch.stack([q_angles.cos(), q_angles.sin()], dim=1)  # scale must not matter
    query_y = torch.tensor([0, 1, 2, 3])
    result = retrieval_metrics(db, db_y, query, query_y, ks=(1, 2, 5), use_gpu=False)
    assert result.num_query == 4 and result.num_scored == 3 and result.num_db == 5
    assert result.recall == pytest.approx({1: 200 / 3, 2: 100.0, 5: 100.0})
    assert result.map_at_r == pytest.approx(100 * (0.5 + 0.25 + 1.0) / 3)
    out = json.loads(json.dumps(result.to_json()))
    assert out["recall@1"] == pytest.approx(200 / 3) and out["map@R"] == pytest.approx(175 / 3)


def test_faiss_matches_brute_force_for_every_chunk_size():
    gen = torch.Generator().manual_seed(0)
    db = torch.randn(300, 16, generator=gen)
    db_y = torch.randint(0, 5, (300,), generator=gen)  # R about 60 > max(ks): the search k follows R
    query = torch.randn(50, 16, generator=gen)
    query_y = torch.randint(0, 5, (50,), generator=gen)
    ks = (1, 5, 10)
    ref_recall, ref_map = _reference(db, db_y, query, query_y, ks)
    results = [retrieval_metrics(db, db_y, query, query_y, ks=ks, chunk_size=c, use_gpu=False)
               for c in (1, 7, 50, 1024)]
    for res in results:
        assert res.recall == pytest.approx(ref_recall, abs=1e-9)
        assert res.map_at_r == pytest.approx(ref_map, abs=1e-9)
        assert res.recall == results[0].recall and res.map_at_r == results[0].map_at_r  # identical
    assert 0 < ref_map < 100  # random data: not a degenerate value


def test_k_beyond_database_and_single_class():
    gen = torch.Generator().manual_seed(3)
    db, query = torch.randn(8, 4, generator=gen), torch.randn(3, 4, generator=gen)
    # one class everywhere: every item is relevant, R = 8 = the whole database
    res = retrieval_metrics(db, torch.zeros(8, dtype=torch.long), query, torch.zeros(3, dtype=torch.long),
                            ks=(1, 50), use_gpu=False)
    assert res.recall == {1: 100.0, 50: 100.0} and res.map_at_r == pytest.approx(100.0)


def test_separable_clusters_score_100():
    gen = torch.Generator().manual_seed(1)
    centres = 5 * torch.randn(4, 16, generator=gen)
    db_y = torch.arange(4).repeat_interleave(40)
    query_y = torch.arange(4).repeat_interleave(10)
    db = centres[db_y] + 0.1 * torch.randn(160, 16, generator=gen)
    query = centres[query_y] + 0.1 * torch.randn(40, 16, generator=gen)
    res = retrieval_metrics(db, db_y, query, query_y, chunk_size=16, use_gpu=False)
    assert res.recall == {1: 100.0, 5: 100.0, 10: 100.0}
    assert res.map_at_r == pytest.approx(100.0)
    # shuffled database labels break it
    shuffled = db_y[torch.randperm(160, generator=gen)]
    assert retrieval_metrics(db, shuffled, query, query_y, use_gpu=False).map_at_r < 60


@pytest.mark.parametrize("case", ["dims", "empty_db", "empty_query", "labels_len", "ks", "chunk", "no_relevant", "nan"])
def test_bad_arguments_raise_value_errors(case):
    db, db_y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    query, query_y = torch.randn(3, 4), torch.randint(0, 2, (3,))
    kwargs = {}
    if case == "dims":
        query = torch.randn(3, 5)
    elif case == "empty_db":
        db, db_y = torch.empty(0, 4), torch.empty(0, dtype=torch.long)
    elif case == "empty_query":
        query, query_y = torch.empty(0, 4), torch.empty(0, dtype=torch.long)
    elif case == "labels_len":
        db_y = db_y[:9]
    elif case == "ks":
        kwargs = {"ks": (0, 5)}
    elif case == "chunk":
        kwargs = {"chunk_size": 0}
    elif case == "no_relevant":
        query_y = torch.full((3,), 7)
    elif case == "nan":
        db[0, 0] = float("nan")
    with pytest.raises(ValueError) as err:
        retrieval_metrics(db, db_y, query, query_y, use_gpu=False, **kwargs)
    assert "\n" not in str(err.value) and ";" in str(err.value)


def test_gpu_path_falls_back_to_cpu_when_k_exceeds_the_gpu_limit(monkeypatch):
    """No GPU here: a fake GPU index records each k it is asked for and enforces a small limit."""
    asked = []

    class FakeGpuIndex:
        def __init__(self, cpu_index):
            self.cpu_index = cpu_index

        def search(self, x, k):
            assert k <= retrieval.GPU_MAX_K, "GPU search asked for more than GPU_MAX_K neighbours"
            asked.append(k)
            return self.cpu_index.search(x, k)

    monkeypatch.setattr(retrieval, "to_gpu", lambda index, use_gpu: FakeGpuIndex(index))
    monkeypatch.setattr(retrieval, "GPU_MAX_K", 20)
    gen = torch.Generator().manual_seed(2)
    db = torch.randn(100, 8, generator=gen)
    db_y = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(10, dtype=torch.long)])  # R = 90 or 10
    query = torch.randn(40, 8, generator=gen)
    query_y = torch.cat([torch.ones(20, dtype=torch.long), torch.zeros(20, dtype=torch.long)])
    res = retrieval.retrieval_metrics(db, db_y, query, query_y, chunk_size=10)
    assert asked == [10, 10]  # the two class-1 chunks (k = max(10, R = 10)) ran on the "GPU"
    ref_recall, ref_map = _reference(db, db_y, query, query_y, (1, 5, 10))  # class-0 chunks (k = 90) on CPU
    assert res.recall == pytest.approx(ref_recall, abs=1e-9) and res.map_at_r == pytest.approx(ref_map, abs=1e-9)
