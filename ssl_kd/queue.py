"""MomentumQueue: a FIFO ring buffer of L2-normalized teacher embeddings (the negatives).

The teacher is frozen, so its embeddings of past batches stay valid negatives: the queue keeps the
last `size` of them, as MoCo (He et al., 2020) and SEED (Fang et al., 2021) do. Under DDP every
rank gathers the whole global batch before enqueueing, so all ranks hold the same queue (larger
effective batch, same negatives everywhere). The buffer and the write pointer are persistent
buffers: they are saved in checkpoints and a resumed run continues with the same negatives.

Until `size` embeddings have been written, only the filled rows are returned (never placeholder
noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .parallel import all_gather_cat


class MomentumQueue(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"queue size and dim must be positive, got size={size}, dim={dim}")
        self.size, self.dim = size, dim
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def get(self) -> torch.Tensor:
        """The stored embeddings in storage order ([min(count, size), dim]), detached, no copy.

        Losses treat them as a set of negatives, so their order does not matter; `ordered()` gives
        them oldest first.
        """
        return self.embeddings[: int(self.count)].detach()

    def ordered(self) -> torch.Tensor:
        """The stored embeddings, oldest first (a copy)."""
        if int(self.count) < self.size:
            return self.get().clone()
        p = int(self.ptr)
        return torch.cat([self.embeddings[p:], self.embeddings[:p]]).detach()

    @torch.no_grad()
    def enqueue(self, batch: torch.Tensor) -> None:
        """Write `batch` ([B, dim], normalized here) after the newest rows, overwriting the oldest."""
        batch = F.normalize(all_gather_cat(batch.detach().float()), dim=1)
        if batch.shape[0] >= self.size:
            batch = batch[-self.size :]
        n, p = batch.shape[0], int(self.ptr)
        end = p + n
        if end <= self.size:
            self.embeddings[p:end] = batch
        else:
            split = self.size - p
            self.embeddings[p:] = batch[:split]
            self.embeddings[: end - self.size] = batch[split:]
        self.ptr.fill_(end % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))
