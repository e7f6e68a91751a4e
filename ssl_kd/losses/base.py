"""The contract every distillation method follows, and the helpers they share.

A method is an `nn.Module` (it may own trainable heads; the loop optimizes them with the student):

    forward(student: Embeddings, teacher: Embeddings, queue: Tensor | None, ctx: StepContext) -> dict

`student` and `teacher` hold the same images, the views stacked view-major: rows
`[v * B:(v + 1) * B]` are view `v` of the batch's B images. `queue` is the momentum queue's
L2-normalized teacher embeddings ([K, D], no gradient) when the method sets `needs_queue`. The
result maps "loss" (the weighted total, a scalar) and every named part to tensors; the loop logs
them all.

Hooks a method may override (the defaults do nothing):
- `batch_transform(views)`: change the batch before both networks see it (STKD's mixup);
- `queue_items(teacher)`: what this step adds to the momentum queue (the teacher's embeddings);
- `after_step(student, teacher, ctx, memo)`: update the method's own state after the optimizer step
  (memory banks, a momentum copy of the student). `memo` is the `.memo` of what this step's forward
  returned (a `MethodOutput`; not logged): a method hands values from its forward to its after_step
  that way, never through attributes kept between the calls;
- `bind_student(student)`: called once with the student module, for methods that keep a momentum
  copy of it (`ctx.images` then lets them run the copy on the step's batch).
Declared needs: `needs_maps` (the backbones' stage maps), `needs_queue` (the momentum queue of teacher embeddings), `needs_logits` (a
supervised teacher's real logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..embeddings import Embeddings


class MethodOutput(dict):
    """A method's result: the logged tensors ("loss" and its parts), plus `memo`, what the method's
    `after_step` needs from this forward (CRD: the rows for its memory banks); the memo is not logged."""

    def __init__(self, parts: dict, memo=None):
        super().__init__(parts)
        self.memo = memo


@dataclass
class StepContext:
    """What a method may know about the step besides the embeddings."""

    num_views: int  # views per image, stacked view-major
    index: torch.Tensor | None = None  # dataset indices of the batch's B images, [B]
    images: torch.Tensor | None = None  # the [V*B, 3, H, W] batch both networks saw (after batch_transform)


@dataclass
class MethodDims:
    """Sizes a method may need when it is built."""

    student_dim: int  # student backbone feature width (student.feat)
    teacher_dim: int  # teacher embedding width (teacher.emb; also student.emb, the projector output)
    num_samples: int = 0  # training-set size (memory banks indexed by image)
    num_classes: int = 0  # a supervised teacher's classes (0: label-free teacher, pseudo-logits)
    teacher_feat_dim: int = 0  # teacher backbone feature width (teacher.feat); 0: teacher_dim (backbone space)

    @property
    def teacher_feature_dim(self) -> int:
        """The width of `teacher.feat`: `teacher_feat_dim`, or `teacher_dim` when the embedding is the feature."""
        return self.teacher_feat_dim or self.teacher_dim


class DistillMethod(nn.Module):
    needs_queue: bool = False
    needs_logits: bool = False
    needs_maps: bool = False

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def batch_transform(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        return views

    def queue_items(self, teacher: Embeddings) -> torch.Tensor:
        """What this step adds to the momentum queue: the teacher's embeddings by default."""
        return teacher.emb

    def after_step(self, student: Embeddings, teacher: Embeddings, ctx: StepContext, memo=None) -> None:
        pass

    def bind_student(self, student: nn.Module) -> None:
        pass


def split_views(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """[V*B, D] view-major rows -> [V, B, D]."""
    if x.shape[0] % num_views:
        raise ValueError(f"{x.shape[0]} rows do not split into {num_views} views")
    return x.view(num_views, x.shape[0] // num_views, *x.shape[1:])
