"""ssl_kd.parallel in one process (the identities library code relies on) and the global-batch rules."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from ssl_kd.loaders import per_process_batch
from ssl_kd.errors import UserError
from ssl_kd.parallel import (
    all_gather_cat,
    all_gather_with_grad,
    all_reduce_mean,
    gather_rows,
    global_row_offset,
    init_distributed,
    is_distributed,
    world_size,
)


def test_without_torchrun_every_helper_is_the_identity(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed("cpu") == torch.device("cpu") and not is_distributed() and world_size() == 1
    x = torch.randn(4, 3, requires_grad=True)
    assert all_gather_cat(x) is x and all_gather_with_grad(x) is x and gather_rows(x) is x
    assert global_row_offset(4) == 0
    assert torch.equal(all_reduce_mean(x), x)


def test_a_bad_backend_is_one_line():
    with pytest.raises(UserError, match="train.dist_backend"):
        init_distributed("cpu", backend="mpi")


def test_the_global_batch_splits_over_processes_or_says_how_to_fix_it():
    assert per_process_batch(128, 1257, 1) == 128
    assert per_process_batch(128, 1257, 8) == 16
    assert per_process_batch(128, 20, 2) == 10  # tiny data: one batch of every image
    with pytest.raises(UserError, match="multiple of 3"):
        per_process_batch(128, 1257, 3)
    with pytest.raises(UserError, match="cannot feed 4 processes"):
        per_process_batch(128, 2, 4)


@pytest.mark.parametrize("world", [2, 4])
def test_global_step_i_holds_the_same_images_for_any_number_of_processes(world):
    """The sampler's permutation cut into per-process shards: process r takes positions r, r + W, ...;
    step i of every process together is positions [i * B, (i + 1) * B) of the one-process order."""
    data, batch, epoch = list(range(103)), 16, 3
    one = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=7, drop_last=True)
    one.set_epoch(epoch)
    order = list(one)
    shards = []
    for r in range(world):
        sampler = DistributedSampler(data, num_replicas=world, rank=r, shuffle=True, seed=7, drop_last=True)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
    per = batch // world
    for step in range(len(data) // batch):
        together = sorted(i for shard in shards for i in shard[step * per:(step + 1) * per])
        assert together == sorted(order[step * batch:(step + 1) * batch])
