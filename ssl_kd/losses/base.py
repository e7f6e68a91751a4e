"""The contract every distillation method follows, and the helpers they share.

A method is an `nn.Module` (it may own trainable heads; the loop optimizes them with the student):

    forward(student: Embeddings, teacher: Embeddings, queue: Tensor | None, num_views: int) -> dict

`student` and `teacher` hold the same images, the views stacked view-major: rows
`[v * B:(v + 1) * B]` are view `v` of the batch's B images. `queue` is the momentum queue's
L2-normalized teacher embeddings ([K, D], no gradient) when the method sets `needs_queue`. The
result maps "loss" (the weighted total, a scalar) and every named part to tensors; the loop logs
them all. `enqueue(teacher)` says what goes into the queue after the step.
"""

from __future__ import annotations

import torch
from torch import nn

from ..embeddings import Embeddings


class DistillMethod(nn.Module):
    needs_queue: bool = False
    needs_logits: bool = False

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, num_views: int) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def queue_items(self, teacher: Embeddings) -> torch.Tensor:
        """What this step adds to the momentum queue: the teacher's embeddings by default."""
        return teacher.emb


def split_views(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """[V*B, D] view-major rows -> [V, B, D]."""
    if x.shape[0] % num_views:
        raise ValueError(f"{x.shape[0]} rows do not split into {num_views} views")
    return x.view(num_views, x.shape[0] // num_views, *x.shape[1:])
