"""MomentumQueue: a FIFO ring of normalized rows, partial fill, wrap-around, oversize batches, resume."""

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.checkpoint import load_checkpoint, save_atomic
from ssl_kd.queue import MomentumQueue


def _rows(start: int, n: int, dim: int = 3) -> torch.Tensor:
    """n random, non-normalized rows (seeded by `start`)."""
    gen = torch.Generator().manual_seed(1000 + start)
    return 5 * torch.randn(n, dim, generator=gen) + 0.1


def _sequence(n: int, dim: int = 3) -> torch.Tensor:
    """A fixed stream of n rows of various norms."""
    gen = torch.Generator().manual_seed(42)
    return (torch.rand(n, 1, generator=gen) + 1) * torch.randn(n, dim, generator=gen)


def test_empty_queue_gives_no_rows():
    queue = MomentumQueue(5, 3)
    assert queue.get().shape == (0, 3)
    assert queue.ordered().shape == (0, 3)


def test_rows_are_normalized():
    queue = MomentumQueue(8, 3)
    batch = _sequence(4)
    queue.enqueue(batch)
    assert torch.allclose(queue.get().norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(queue.get(), F.normalize(batch, dim=1), atol=1e-6)


def test_only_filled_rows_before_full():
    queue = MomentumQueue(5, 3)
    data = _sequence(4)
    queue.enqueue(data[:2])
    assert queue.get().shape == (2, 3)
    queue.enqueue(data[2:4])
    assert queue.get().shape == (4, 3)
    assert torch.allclose(queue.get(), F.normalize(data, dim=1), atol=1e-6)
    assert torch.allclose(queue.ordered(), F.normalize(data, dim=1), atol=1e-6)
    assert int(queue.count) == 4 and int(queue.ptr) == 4


def test_fifo_wraps_around_oldest_first():
    queue = MomentumQueue(5, 3)
    data = _sequence(11)
    # batches of 2, 2, 2 (wraps: row 0 is overwritten), then 3 (wraps again), then 2
    bounds = [(0, 2), (2, 4), (4, 6), (6, 9), (9, 11)]
    for lo, hi in bounds:
        queue.enqueue(data[lo:hi])
        expected = F.normalize(data[max(0, hi - 5) : hi], dim=1)  # the last 5 written, oldest first
        assert queue.get().shape[0] == min(hi, 5)
        assert torch.allclose(queue.ordered(), expected, atol=1e-6), (lo, hi)
        # get() holds the same set, in storage order
        got = queue.get()
        assert all(torch.isclose(got, row, atol=1e-6).all(dim=1).any() for row in expected)
    assert int(queue.count) == 5
    assert int(queue.ptr) == 11 % 5


def test_a_batch_larger_than_the_queue_keeps_its_last_rows():
    for already in (0, 2):  # from an empty queue, and from a pointer in the middle
        queue = MomentumQueue(4, 3)
        if already:
            queue.enqueue(_sequence(already))
        big = _rows(7, 9)
        queue.enqueue(big)
        assert int(queue.count) == 4
        assert torch.allclose(queue.ordered(), F.normalize(big[-4:], dim=1), atol=1e-6)


def test_a_batch_of_exactly_the_queue_size_replaces_everything():
    queue = MomentumQueue(4, 3)
    queue.enqueue(_sequence(3))
    batch = _rows(3, 4)
    queue.enqueue(batch)
    assert torch.allclose(queue.ordered(), F.normalize(batch, dim=1), atol=1e-6)


def test_invalid_sizes_are_rejected():
    with pytest.raises(ValueError):
        MomentumQueue(0, 3)
    with pytest.raises(ValueError):
        MomentumQueue(3, 0)


def test_state_dict_round_trip_resumes_with_the_same_negatives(tmp_path):
    queue = MomentumQueue(5, 3)
    data = _sequence(7)
    queue.enqueue(data[:4])
    queue.enqueue(data[4:7])  # wrapped: ptr 2, full
    state = queue.state_dict()
    assert set(state) == {"embeddings", "ptr", "count"}

    path = save_atomic({"queue": state}, tmp_path / "q.pt")
    restored = MomentumQueue(5, 3)
    restored.load_state_dict(load_checkpoint(path)["queue"])
    assert torch.equal(restored.embeddings, queue.embeddings)
    assert int(restored.ptr) == int(queue.ptr) == 2
    assert int(restored.count) == int(queue.count) == 5
    assert torch.equal(restored.ordered(), queue.ordered())

    # both continue identically
    more = _rows(9, 3)
    queue.enqueue(more)
    restored.enqueue(more)
    assert torch.equal(restored.get(), queue.get())
    assert torch.equal(restored.ordered(), queue.ordered())


def test_partial_queue_round_trip_keeps_the_fill_level():
    queue = MomentumQueue(6, 3)
    queue.enqueue(_sequence(2))
    restored = MomentumQueue(6, 3)
    restored.load_state_dict(queue.state_dict())
    assert restored.get().shape == (2, 3)
    assert torch.equal(restored.get(), queue.get())
