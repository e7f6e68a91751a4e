"""The distillation objective: one branch per teacher, one loop over the branches, explicit step state.

A step, as `ssl_kd.loop.fit` runs it:

    losses, step = objective(views, index)     # every teacher and the student embed the views once;
                                               # each branch's method turns them into a loss
    losses["loss"].backward(); optimizer.step()
    objective.after_step(step)                 # enqueue into each branch's queue (all-gathered across
                                               # processes), then each method's own update (banks,
                                               # momentum student), from what this step's forward returned

With the teacher cache (`train.teacher_cache`, `ssl_kd.teacher_cache`) the batch brings each teacher's
outputs for its views, `objective(views, index, teachers)`, and no teacher is called.

`TeacherBranch` is one teacher's share: the frozen teacher, which student projector maps to its width,
its method, its momentum queue, its loss weight and the prefix of its logged parts. With one teacher
the loss is that branch's; with several, the weighted sum (each branch's parts logged as "tk/...",
the primary's also unprefixed and its loss as "t0/loss").

`trainable` (what the optimizer updates and checkpoints hold) is the student plus each branch's method
and queue, under the keys every earlier version wrote: "method"/"queue" for the primary and
"method_k"/"queue_k" for teacher k, so older checkpoints resume unchanged. The teachers are frozen:
neither optimized, nor checkpointed, nor wrapped by DDP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .embeddings import Embeddings
from .losses.base import StepContext
from .queue import MomentumQueue
from .students import Student
from .teachers import Teacher


@dataclass
class BranchStep:
    """What one branch's after_step needs from the step's forward."""

    student: Embeddings
    teacher: Embeddings
    memo: Any = None  # what the method's forward left for its after_step (CRD: the rows for its banks)


@dataclass
class DistillStep:
    """A step's state, from `DistillObjective.forward` to `after_step`."""

    ctx: StepContext
    branches: list[BranchStep] = field(default_factory=list)


class TeacherBranch(nn.Module):
    def __init__(self, teacher: Teacher, method: nn.Module, queue: MomentumQueue | None, *, projector: int,
                 weight: float, prefix: str, key_suffix: str):
        super().__init__()
        self.teacher, self.method, self.queue = teacher, method, queue
        self.projector, self.weight, self.prefix = projector, weight, prefix
        self.key_suffix = key_suffix  # "" for the primary, "_k" for teacher k: its keys in `trainable`

    def teacher_outputs(self, images: torch.Tensor, maps: bool, cached: dict | None = None) -> Embeddings:
        """The frozen teacher's outputs: from `cached` when the batch brings them (`ssl_kd.teacher_cache`:
        {"emb": [B, V, D], ("logits")} per image, turned view-major), else computed in inference mode and
        returned as ordinary tensors (the losses' backward may save them)."""
        if cached is not None:
            rows = {name: value.transpose(0, 1).reshape(-1, value.shape[-1]).float() for name, value in cached.items()}
            return Embeddings(feat=rows["emb"], emb=rows["emb"], logits=rows.get("logits"))
        with torch.inference_mode():
            out = self.teacher(images, maps=maps)
        return out.map(torch.Tensor.clone)

    def forward(self, student: Student, feat: torch.Tensor, stage_maps, ctx: StepContext, maps: bool,
                cached: dict | None = None) -> tuple[dict, BranchStep]:
        teacher_out = self.teacher_outputs(ctx.images, maps, cached)
        student_out = Embeddings(feat=feat, emb=student.project(feat, self.projector), maps=stage_maps)
        queue = self.queue.get() if self.queue is not None else None
        parts = self.method(student_out, teacher_out, queue, ctx)
        return dict(parts), BranchStep(student_out, teacher_out, getattr(parts, "memo", None))

    def after_step(self, step: BranchStep, ctx: StepContext) -> None:
        """The queue gets this step's rows (they took part in the step as negatives before), then the method updates."""
        if self.queue is not None:
            self.queue.enqueue(self.method.queue_items(step.teacher).detach())
        self.method.after_step(step.student, step.teacher, ctx, step.memo)


class DistillObjective(nn.Module):
    """One step: the teachers and the student embed all views; each teacher branch's method turns them into
    a loss; the loss is their weighted sum. See the module docstring for the step's order."""

    def __init__(self, teacher: Teacher, student: Student, method: nn.Module, queue: MomentumQueue | None,
                 extra: list[tuple[Teacher, nn.Module, MomentumQueue | None]] = (), weights: list[float] | None = None):
        super().__init__()
        teachers = [(teacher, method, queue), *extra]
        weights = list(weights) if weights else [1.0] * len(teachers)
        self.branches = nn.ModuleList(
            TeacherBranch(t, m, q, projector=k, weight=weights[k], prefix=f"t{k}/" if k else "", key_suffix=f"_{k}" if k else "")
            for k, (t, m, q) in enumerate(teachers)
        )
        parts: dict[str, nn.Module] = {"student": student}
        for branch in self.branches:
            parts[f"method{branch.key_suffix}"] = branch.method
            if branch.queue is not None:
                parts[f"queue{branch.key_suffix}"] = branch.queue
        self.trainable = nn.ModuleDict(parts)
        for branch in self.branches:
            branch.method.bind_student(student)

    @property
    def student(self) -> Student:
        return self.trainable["student"]

    @property
    def teacher(self) -> Teacher:
        """The primary teacher."""
        return self.branches[0].teacher

    def compile_targets(self) -> list[nn.Module]:
        """What `train.compile` compiles: the student's backbone and every teacher's."""
        return [self.student.backbone, *(branch.teacher.backbone for branch in self.branches)]

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None,
                teachers: list[dict] | None = None) -> tuple[dict, DistillStep]:
        """`teachers`: each branch's cached outputs for these views (`ssl_kd.teacher_cache`; the teachers
        are then not called), else None."""
        views = self.branches[0].method.batch_transform(views)  # the primary method's (STKD's mixup) applies to all
        ctx = StepContext(num_views=len(views), index=index, images=torch.cat(views))
        maps = any(getattr(branch.method, "needs_maps", False) for branch in self.branches)  # FitNet, SP: stage maps too
        feat, stage_maps = self.student.backbone_pass(ctx.images, maps)  # one student pass for every branch
        step, losses, total = DistillStep(ctx), {}, 0.0
        for k, branch in enumerate(self.branches):
            parts, branch_step = branch(self.student, feat, stage_maps, ctx, maps, teachers[k] if teachers else None)
            total = total + branch.weight * parts["loss"]
            losses.update({f"{branch.prefix}{name}": value for name, value in parts.items()})
            step.branches.append(branch_step)
        if len(self.branches) > 1:
            losses["t0/loss"], losses["loss"] = losses["loss"], total
        return losses, step

    def after_step(self, step: DistillStep) -> None:
        """After the optimizer step: each branch's queue and method state, from this step's forward."""
        for branch, branch_step in zip(self.branches, step.branches):
            branch.after_step(branch_step, step.ctx)
