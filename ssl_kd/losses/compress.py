r"""CompRess: match the teacher's similarity distribution over a bank of anchors (1q and 2q).

Abbasi Koohpayegani, Tejankar, Pirsiavash, "CompRess: Self-Supervised Learning by Compressing
Representations", NeurIPS 2020 (arXiv:2010.14713); official code github UMBCvision/CompRess
(nn/compress_loss.py; train_student_one_queue.py for 1q, train_student.py for 2q).


Symbols. Rows i over the V*B views of the batch; s_i = n(student.emb_i), t_i = n(teacher.emb_i),
n(.) L2 normalization; A^T = [a^T_1..a^T_K] the shared momentum queue of normalized teacher
embeddings; A^S = [a^S_1..a^S_K] (2q only) this method's own FIFO of normalized embeddings of the
SAME images by a momentum copy of the student. Both banks are read with stop-gradient and get this
step's rows after the optimizer step.
    p^T_ij = softmax_j(<t_i, a^T_j> / tau)
    1q:  p^S_ij = softmax_j(<s_i, a^T_j> / tau)       (the student against the teacher's anchors)
    2q:  p^S_ij = softmax_j(<s_i, a^S_j> / tau)       (the student against its own anchors)
    L = (1/(V*B)) sum_i sum_j p^T_ij (log p^T_ij - log p^S_ij)       (KL, batchmean)
Defaults tau = 0.04 (teacher and student), momentum 0.999, weight 1. The loss is 0 while the banks
are empty (the first step).

2q bookkeeping: `after_step` embeds `ctx.images` (the V*B rows the teacher saw, in the same order)
with the momentum student, enqueues the normalized embeddings into A^S, then EMA-updates the
momentum student's parameters. As in the reference (train_student.py: `student_key.eval()`, then
`set_bn_train`), its BatchNorm layers normalize with the current batch's statistics while the run
trains and keep their own running statistics, which the EMA leaves alone (`memory.MomentumStudent`). The shared teacher queue gets the teacher's V*B rows at the same step, so a^S_j
and a^T_j are always the same image and view. The momentum student and A^S are submodules, hence
checkpointed and resumed with the run.

Several processes: per row (local) against banks that every process fills with every process's
rows (all-gathered before the enqueue), so the teacher and student anchors are identical everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig
from ..embeddings import Embeddings
from ..queue import MomentumQueue
from . import register_method
from .base import DistillMethod, MethodDims, StepContext
from .memory import MomentumStudent, full_precision


def compress_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, teacher_anchors: torch.Tensor,
                  student_anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p^T || p^S), batchmean; p^T over the teacher anchors, p^S over the student anchors
    (the same tensor for 1q). Anchors are normalized rows, j-th teacher and student anchor of one image."""
    if teacher_anchors.shape != student_anchors.shape:
        shapes = f"{tuple(teacher_anchors.shape)} and {tuple(student_anchors.shape)}"
        raise ValueError(f"teacher and student anchors must be aligned row for row, got shapes {shapes}")
    student_emb, teacher_emb = full_precision(student_emb, teacher_emb.detach())
    s = F.normalize(student_emb, dim=1)
    if teacher_anchors.shape[0] == 0:
        return (s * 0.0).sum()  # no anchors yet: zero, still part of the graph
    t = F.normalize(teacher_emb, dim=1)
    with torch.autocast(s.device.type, enabled=False):
        log_p_teacher = F.log_softmax(t @ teacher_anchors.detach().to(t).T / temperature, dim=1)
        log_p_student = F.log_softmax(s @ student_anchors.detach().to(s).T / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


class CompRess(DistillMethod):
    needs_queue = True

    def __init__(self, teacher_dim: int, *, queues: int = 1, queue_size: int = 4096, temperature: float = 0.04,
                 momentum: float = 0.999, weight: float = 1.0):
        super().__init__()
        if queues not in (1, 2):
            raise ValueError(f"CompRess uses 1 or 2 queues, got {queues} (loss.compress.queues)")
        self.queues, self.temperature, self.momentum, self.weight = queues, temperature, momentum, weight
        # 2q: A^S, fed like the shared teacher queue; the momentum student arrives with bind_student
        self.student_queue = MomentumQueue(queue_size, teacher_dim) if queues == 2 else None
        self.momentum_student: MomentumStudent | None = None
        self._online: list[nn.Module] = []  # the bound student, kept out of the submodules (no second copy in checkpoints)

    def bind_student(self, student: nn.Module) -> None:
        if self.queues == 2:
            self.momentum_student = MomentumStudent(student)
            self._online = [student]

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        teacher_anchors = queue if queue is not None else teacher.emb.new_zeros(0, teacher.emb.shape[1])
        student_anchors = teacher_anchors if self.queues == 1 else self.student_queue.get()
        if student_anchors.shape[0] != teacher_anchors.shape[0]:
            raise RuntimeError(
                f"CompRess-2q: {student_anchors.shape[0]} student anchors for {teacher_anchors.shape[0]} teacher anchors; "
                "both queues must get every step's rows (call after_step after each optimizer step, and size "
                "loss.queue_size the same for both)"
            )
        kl = compress_loss(student.emb, teacher.emb, teacher_anchors, student_anchors, self.temperature)
        return {"loss": self.weight * kl, "compress": kl.detach()}

    def after_step(self, student: Embeddings, teacher: Embeddings, ctx: StepContext, memo=None) -> None:
        """2q: enqueue the momentum student's embeddings of this step's images, then EMA-update it."""
        if self.queues == 1:
            return
        if self.momentum_student is None or ctx.images is None:
            raise RuntimeError("CompRess-2q needs bind_student(student) before training and ctx.images at every step")
        self.student_queue.enqueue(self.momentum_student(ctx.images).emb)
        self.momentum_student.update(self._online[0], self.momentum)


def _build(cfg: LossConfig, dims: MethodDims, queues: int) -> CompRess:
    c = cfg.compress
    return CompRess(dims.teacher_dim, queues=queues, queue_size=cfg.queue_size, temperature=c.temperature,
                    momentum=c.momentum, weight=c.weight)


@register_method("compress")
def _compress(cfg: LossConfig, dims: MethodDims) -> CompRess:
    return _build(cfg, dims, cfg.compress.queues)


@register_method("compress_1q")
def _compress_1q(cfg: LossConfig, dims: MethodDims) -> CompRess:
    return _build(cfg, dims, 1)


@register_method("compress_2q")
def _compress_2q(cfg: LossConfig, dims: MethodDims) -> CompRess:
    return _build(cfg, dims, 2)
