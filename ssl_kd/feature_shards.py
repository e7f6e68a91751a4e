"""Features of a whole dataset with every process extracting its part: shard, extract, gather by index.

Under torchrun each rank takes the samples `rank, rank + W, rank + 2W, ...` of the dataset
(`shard_indices`: DistributedSampler's order without its padding, so no sample is seen twice and
any dataset size works, also one that W does not divide), runs `extract_features` over them, and
`gather_by_index` puts every rank's rows back at their sample index. Every rank ends with exactly
the feature matrix that one process computes, in dataset order. `all_gather` needs equal shapes,
so each rank's rows are padded to the largest shard (padding rows carry the index -1) and the
padding is cut again. In one process the shard is the whole dataset and nothing is gathered.

`broadcast_from_main` sends rank 0's tensor to every rank (used for features read from the cache).
On NCCL the collectives run on this process's GPU; the results always come back to the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ssl_kd.features import extract_features
from ssl_kd.parallel import all_gather_cat, broadcast_object, collective_device, is_distributed, is_main_process, rank, world_size

__all__ = ["assemble_by_index", "broadcast_from_main", "gather_by_index", "pad_rows", "shard_indices", "sharded_features"]

PADDING_INDEX = -1  # the sample index of a padding row: dropped by `assemble_by_index`


def shard_indices(num_samples: int, num_shards: int, shard: int) -> list[int]:
    """The sample indices of `shard` (0-based) of `num_shards`: shard, shard + num_shards, ... .

    The shards are disjoint, cover 0..num_samples-1 exactly once and differ in size by at most one
    (a shard is empty when there are fewer samples than shards)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards} does not exist")
    return list(range(shard, num_samples, num_shards))


def pad_rows(tensor: Tensor, rows: int, value: float = 0) -> Tensor:
    """`tensor` with rows of `value` appended up to `rows` rows (a copy, or `tensor` when it is that long)."""
    missing = rows - tensor.shape[0]
    if missing < 0:
        raise ValueError(f"cannot pad {tensor.shape[0]} rows down to {rows}")
    if missing == 0:
        return tensor
    return torch.cat([tensor, tensor.new_full((missing, *tensor.shape[1:]), value)])


def assemble_by_index(row_parts: list[Tensor], index_parts: list[Tensor], total: int) -> Tensor:
    """One [total, ...] tensor with row `index_parts[p][i]` = `row_parts[p][i]`; padding rows (index -1)
    are dropped. Every index 0..total-1 must appear exactly once."""
    rows = torch.cat(row_parts)
    indices = torch.cat(index_parts).long()
    real = indices != PADDING_INDEX
    rows, indices = rows[real], indices[real]
    if not torch.equal(indices.sort().values, torch.arange(total)):
        raise ValueError(f"the gathered rows do not hold every index 0..{total - 1} exactly once")
    out = rows.new_empty((total, *rows.shape[1:]))
    out[indices] = rows
    return out


def gather_by_index(rows: Tensor, indices: Tensor, total: int) -> Tensor:
    """Every rank's `rows` (this rank's samples `indices`) as one [total, ...] tensor in index order, on
    every rank and on the CPU. Ranks may hold different numbers of rows, also none (then `rows` may be
    any empty tensor of the right dtype and number of dimensions)."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    if not is_distributed():
        return assemble_by_index([rows.cpu()], [indices], total)
    device = collective_device()
    shapes = all_gather_cat(torch.tensor([list(rows.shape)], device=device)).cpu()  # [W, ndim]: every rank's shape
    counts = shapes[:, 0]
    if int(counts.max()) == 0:
        return assemble_by_index([rows.cpu()], [indices], total)
    longest = int(counts.max())
    row_shape = shapes[counts > 0][0, 1:].tolist()  # from a rank with rows (a rank without any may not know it)
    local = rows if rows.shape[0] else rows.new_empty((0, *row_shape))
    gathered_rows = all_gather_cat(pad_rows(local.to(device), longest)).cpu()
    gathered_indices = all_gather_cat(pad_rows(indices.to(device), longest, PADDING_INDEX)).cpu()
    return assemble_by_index(list(gathered_rows.chunk(world_size())), list(gathered_indices.chunk(world_size())), total)


def broadcast_from_main(tensor: Tensor | None) -> Tensor:
    """Rank 0's `tensor` on every rank, on the CPU (other ranks pass None); `tensor` itself in one process."""
    if not is_distributed():
        return tensor
    shape, dtype = broadcast_object((tuple(tensor.shape), tensor.dtype) if is_main_process() else None)
    device = collective_device()
    buffer = tensor.to(device).contiguous() if is_main_process() else torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(buffer, src=0)
    return buffer.cpu()


def sharded_features(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    normalize: bool = True,
    desc: str | None = None,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """`extract_features` of `model` over all of `dataset`, in dataset order, with every rank extracting
    its shard; (feats float32 [N, D], labels int64 [N]) on the CPU of every rank.

    Every rank must call it (it is a collective under torchrun). Only rank 0 shows a progress bar. The
    loader has its own random generator, so nothing is drawn from torch's global one."""
    if not is_distributed():
        return extract_features(model, _ordered_loader(dataset, batch_size, num_workers), device=device, normalize=normalize,
                                desc=desc, progress=progress)
    shard = shard_indices(len(dataset), world_size(), rank())
    if shard or len(dataset) == 0:  # an empty dataset raises extract_features' error on every rank
        loader = _ordered_loader(Subset(dataset, shard), batch_size, num_workers)
        feats, labels = extract_features(model, loader, device=device, normalize=normalize, desc=desc,
                                         progress=progress if is_main_process() else False)
    else:  # fewer samples than ranks: this rank has none, but still takes part in the gather
        feats, labels = torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return gather_by_index(feats, shard, len(dataset)), gather_by_index(labels, shard, len(dataset))


def _ordered_loader(dataset: Any, batch_size: int, num_workers: int) -> DataLoader:
    """Every sample once, in order; a private generator keeps torch's global random state untouched."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers,
                      generator=torch.Generator())


