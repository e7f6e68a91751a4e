r"""KD: vanilla knowledge distillation, the student matches the teacher's softened class distribution.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS Deep Learning Workshop
2015 (arXiv:1503.02531); reference code HobbitLong/RepDistiller (distiller_zoo/KD.py).

Symbols. N = V*B rows (every view of every image is a sample); z^T, z^S teacher/student logits
[N, C] (real logits of a supervised teacher, else pseudo-logits over the momentum queue: see
`logits.py`); sigma(.) softmax over the class axis; tau the temperature; w the weight.

    L_KD = tau^2 * (1/N) sum_i KL( sigma(z^T_i / tau) || sigma(z^S_i / tau) )     ("batchmean")
    L = w * L_KD

tau^2 keeps the soft-target gradients' size comparable across temperatures. Defaults (config
`loss.kd`): tau = 4, w = 1 (RepDistiller's CIFAR tau; there the total is 0.1 CE + 0.9 KD, but we
have no labels). tau applies to a supervised teacher's real logits; on pseudo-logits (z = cos / t_p)
tau = 1, so the one temperature there is t_p = `loss.pseudo_logit_temperature` (0.1):
L_KD = (1/N) sum_i KL(softmax(cos^T_i / t_p) || softmax(cos^S_i / t_p)). The teacher side is detached.

Several processes: per row (local); the pseudo-logits' anchors (the queue) are identical on every
process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..embeddings import Embeddings
from . import register_method
from .base import MethodDims, StepContext
from .logits import LogitMethod


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau)), summed over classes, mean over rows."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return temperature**2 * kl


class KD(LogitMethod):
    def __init__(self, dims: MethodDims, *, temperature: float = 4.0, weight: float = 1.0, pseudo_temperature: float = 0.1):
        super().__init__(dims, pseudo_temperature)
        self.temperature, self.weight = temperature, weight

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        student_logits, teacher_logits = self.logits(student, teacher, queue)
        kd = kd_loss(student_logits, teacher_logits, self.class_temperature(self.temperature))
        return {"loss": self.weight * kd, "kd": kd.detach()}


@register_method("kd")
def _kd(cfg: LossConfig, dims: MethodDims) -> KD:
    return KD(dims, temperature=cfg.kd.temperature, weight=cfg.kd.weight, pseudo_temperature=cfg.pseudo_logit_temperature)
