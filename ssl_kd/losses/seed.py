r"""SEED: self-supervised distillation by matching similarity distributions over a queue.

Fang, Wang, Wang, Zhang, Yang, Liu, "SEED: Self-supervised Distillation for Visual
Representation", ICLR 2021 (arXiv:2101.04731); official code github jacobswan1/SEED
(seed/builder.py, soft_cross_entropy in tools/utils.py).

Symbols. Rows i over the V*B views of the batch (each view is its own sample: the student and the
teacher see the same view); s_i = n(student.emb_i), t_i = n(teacher.emb_i), n(.) L2 normalization;
Q = [q_1..q_K] the shared momentum queue of normalized teacher embeddings (read with stop-gradient,
this step's rows enqueued after the step). Entry 0 of each row's K+1 entries is its own teacher
embedding:
    l^S_i = [<s_i, t_i>, <s_i, q_1>, ..., <s_i, q_K>] / tau_S
    l^T_i = [<t_i, t_i>, <t_i, q_1>, ..., <t_i, q_K>] / tau_T
    L_SEED = -(1/(V*B)) sum_i sum_j softmax(l^T_i)_j * log softmax(l^S_i)_j      (soft cross-entropy)
Defaults tau_S = 0.2, tau_T = 1e-4 (the code's), weight 1. With tau_T -> 0 the target is one-hot on
entry 0 (<t_i, t_i> = 1 is the largest entry), and L_SEED is InfoNCE with the teacher embedding as
the positive and the queue as the negatives. The logits are computed in float32 (a 1e-4
temperature scales them by 1e4).

Several processes: every term is per row (local); the queue holds every process's teacher rows
(all-gathered before the enqueue, SEED's `concat_all_gather`), identical on every process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..embeddings import Embeddings
from . import register_method
from .base import DistillMethod, MethodDims, StepContext
from .memory import full_precision


def seed_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, queue: torch.Tensor | None,
              student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """Soft cross-entropy between the teacher's and the student's softmax over [own teacher row, queue]."""
    student_emb, teacher_emb = full_precision(student_emb, teacher_emb.detach())
    s = F.normalize(student_emb, dim=1)
    t = F.normalize(teacher_emb, dim=1)
    bank = t.new_zeros(0, t.shape[1]) if queue is None else queue.detach().to(t)
    with torch.autocast(s.device.type, enabled=False):
        student_logits = torch.cat([(s * t).sum(dim=1, keepdim=True), s @ bank.T], dim=1) / student_temperature
        teacher_logits = torch.cat([(t * t).sum(dim=1, keepdim=True), t @ bank.T], dim=1) / teacher_temperature
    target = F.softmax(teacher_logits, dim=1)
    return -(target * F.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


class SEED(DistillMethod):
    needs_queue = True

    def __init__(self, *, student_temperature: float = 0.2, teacher_temperature: float = 1e-4, weight: float = 1.0):
        super().__init__()
        self.student_temperature, self.teacher_temperature, self.weight = student_temperature, teacher_temperature, weight

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        seed = seed_loss(student.emb, teacher.emb, queue, self.student_temperature, self.teacher_temperature)
        return {"loss": self.weight * seed, "seed": seed.detach()}


@register_method("seed")
def _seed(cfg: LossConfig, dims: MethodDims) -> SEED:
    c = cfg.seed
    return SEED(student_temperature=c.student_temperature, teacher_temperature=c.teacher_temperature, weight=c.weight)
