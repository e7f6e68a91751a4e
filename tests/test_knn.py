"""Weighted k-NN (InstDisc / DINO): the search vs brute force, the vote, several k, errors (backends: test_search.py)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_kd.evaluation import knn_classify, knn_search, rank_of_label, weighted_vote


def _clusters(centres: torch.Tensor, n_per_class: int, gen: torch.Generator):
    """Tight Gaussian clusters (std 0.1) around far-apart centres."""
    labels = torch.arange(len(centres)).repeat_interleave(n_per_class)
    return centres[labels] + 0.1 * torch.randn(len(labels), centres.shape[1], generator=gen), labels


def _reference_scores(train, train_y, query, k, temperature, num_classes):
    """Brute force in float64: cosine matmul, torch.topk, scores exp(s / T) (no rescaling)."""
    sims = F.normalize(query.double(), dim=1) @ F.normalize(train.double(), dim=1).T
    top_sims, top_idx = sims.topk(k, dim=1)
    scores = torch.zeros(len(query), num_classes, dtype=torch.float64)
    scores.scatter_add_(1, train_y[top_idx], torch.exp(top_sims / temperature))
    return top_sims, top_idx, scores


def test_separated_clusters_are_classified_perfectly():
    gen = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(4, 16, generator=gen)  # 4 classes, 16-d
    train, train_y = _clusters(centres, 50, gen)
    query, query_y = _clusters(centres, 10, gen)
    result = knn_classify(train, train_y, query, query_y, ks=(20,))
    assert result.top1 == 100.0 and result.top5 == 100.0  # 4 classes: top-5 is trivially 100
    assert torch.equal(result.predictions, query_y)


def test_search_and_vote_match_brute_force():
    gen = torch.Generator().manual_seed(1)
    train = torch.randn(300, 24, generator=gen)
    train_y = torch.randint(0, 7, (300,), generator=gen)
    query = torch.randn(40, 24, generator=gen)
    k, temperature = 15, 0.07

    sims, idx = knn_search(train, query, k, chunk_size=16)  # several chunks
    ref_sims, ref_idx, ref_scores = _reference_scores(train, train_y, query, k, temperature, 7)
    assert sims.dtype == torch.float32 and idx.dtype == torch.int64
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(sims.double(), ref_sims, atol=1e-5)

    scores = weighted_vote(sims, train_y[idx], 7, temperature).double()
    # weighted_vote rescales each row by exp(-max s / T): compare row-normalised scores
    assert torch.allclose(scores / scores.sum(1, keepdim=True),
                          ref_scores / ref_scores.sum(1, keepdim=True), atol=1e-5)
    query_y = torch.randint(0, 7, (40,), generator=gen)
    result = knn_classify(train, train_y, query, query_y, ks=(k,), temperature=temperature)
    assert torch.equal(result.predictions, ref_scores.argmax(1))
    ref_rank = (ref_scores > ref_scores.gather(1, query_y[:, None])).sum(1)
    assert result.top1 == pytest.approx(100 * (ref_rank == 0).double().mean().item())
    assert result.top5 == pytest.approx(100 * (ref_rank < 5).double().mean().item())


def test_hand_check_weighted_vote_beats_majority():
    """methods.md 6.1: cos (0.9, 0.8, 0.7), labels (A, B, B), T = 0.07 -> A; majority -> B."""
    cosines = torch.tensor([0.9, 0.8, 0.7])
    train = torch.stack([cosines, torch.sqrt(1 - cosines**2)], dim=1)  # unit 2-d vectors
    train_y = torch.tensor([0, 1, 1])  # A = 0, B = 1
    query, query_y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])

    sims, _ = knn_search(train, query, 3)
    assert torch.allclose(sims[0], cosines, atol=1e-6)
    scores = weighted_vote(sims, train_y[None, :], 2, 0.07)
    expected_ratio = math.exp(0.9 / 0.07) / (math.exp(0.8 / 0.07) + math.exp(0.7 / 0.07))
    assert (scores[0, 0] / scores[0, 1]).item() == pytest.approx(expected_ratio, rel=1e-4)
    assert expected_ratio == pytest.approx(3.83e5 / 1.14e5, rel=0.01)  # the numbers in methods.md

    assert knn_classify(train, train_y, query, query_y, ks=(3,)).predictions.tolist() == [0]
    # a huge temperature makes the weights equal: plain majority vote, B wins
    flat = knn_classify(train, train_y, query, query_y, ks=(3,), temperature=1e6)
    assert flat.predictions.tolist() == [1] and flat.top1 == 0.0


def test_several_k_from_one_search_equal_separate_calls():
    gen = torch.Generator().manual_seed(2)
    train, train_y = torch.randn(200, 8, generator=gen), torch.randint(0, 10, (200,), generator=gen)
    query, query_y = torch.randn(60, 8, generator=gen), torch.randint(0, 10, (60,), generator=gen)
    both = knn_classify(train, train_y, query, query_y, ks=(1, 20))
    for k in (1, 20):
        alone = knn_classify(train, train_y, query, query_y, ks=(k,))
        assert both.per_k[k] == alone.per_k[k]
    assert both.k == 1 and both.top1 == both.per_k[1]["top1"]
    assert torch.equal(both.predictions, knn_classify(train, train_y, query, query_y,
                                                      ks=(1,)).predictions)
    dumped = json.loads(json.dumps(both.to_json()))
    assert set(dumped["per_k"]) == {"1", "20"} and dumped["ks"] == [1, 20]


def test_k_is_clipped_to_train_size_and_numpy_inputs_work():
    gen = np.random.default_rng(3)
    train, query = gen.standard_normal((5, 4)), gen.standard_normal((3, 4))
    sims, idx = knn_search(train, query, 50)
    assert sims.shape == idx.shape == (3, 5)
    result = knn_classify(train, np.arange(5) % 2, query, np.zeros(3, dtype=int), ks=(200,))
    assert result.per_k[200]["top5"] == 100.0  # 2 classes


def test_ties_count_against_the_true_label():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert rank_of_label(scores, torch.tensor([0, 2])).tolist() == [1, 2]
    # k = 1 among 10 classes: a true class without votes is not "in the top 5"
    train, query = torch.eye(3, 4), torch.tensor([[1.0, 0.1, 0.0, 0.0]])
    result = knn_classify(train, [0, 1, 2], query, [3], ks=(1,), num_classes=10)
    assert result.top1 == 0.0 and result.top5 == 0.0
    assert knn_classify(train, [0, 1, 2], query, [3], ks=(1,)).top5 == 100.0  # 4 classes


@pytest.mark.parametrize(
    "train_shape, query_shape, n_train_labels, match",
    [
        ((0, 8), (4, 8), 0, "no training features"),
        ((10, 8), (0, 8), 10, "no query features"),
        ((10, 8), (4, 6), 10, "feature dimensions differ"),
        ((10, 8), (4, 8), 9, "train_labels has 9 entries"),
    ],
)
def test_bad_arguments_raise_value_errors(train_shape, query_shape, n_train_labels, match):
    train, query = torch.randn(train_shape), torch.randn(query_shape)
    train_y = torch.zeros(n_train_labels, dtype=torch.long)
    query_y = torch.zeros(query_shape[0], dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        knn_classify(train, train_y, query, query_y)
