r"""DIST: distillation by Pearson correlation of class distributions, across classes and across samples.

Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022
(arXiv:2205.10536); official code github hunto/DIST_KD (loss: hunto/image_classification_sota
lib/models/losses/dist_kd.py).

Symbols. N = V*B rows (every view of every image is a sample); z^T, z^S teacher/student logits
[N, C] (real logits, or pseudo-logits over the momentum queue: `logits.py`); tau the temperature;
beta, gamma the weights of the two relations; eps = 1e-8.

    Y^S = softmax(z^S / tau), Y^T = softmax(z^T / tau)     row-wise, [N, C]
    pearson(a, b) = < a - mean(a), b - mean(b) > / ( ||a - mean(a)|| * ||b - mean(b)|| + eps )
    d_p(a, b)     = 1 - pearson(a, b)
    L_inter = (1/N) sum_i d_p(Y^S[i, :], Y^T[i, :])     per sample, across classes
    L_intra = (1/C) sum_c d_p(Y^S[:, c], Y^T[:, c])     per class, across the batch
    L = tau^2 * (beta * L_inter + gamma * L_intra)

The softmax is taken row-wise BEFORE transposing for the intra term (columns are not re-softmaxed).
Pearson ignores shifts and scales of the compared vectors: the student matches the teacher's
relations, not its exact probabilities (the paper's point for stronger teachers). The teacher side
is detached. Several processes: L_intra (each class's column over the batch) is over the GLOBAL
batch, its Y rows gathered from every process with gradients; L_inter is per row (local).
Defaults (config `loss.dist`): tau = 1, beta = gamma = 2 (the ImageNet configs: the
loss's beta = gamma = 1 times kd_loss_weight 2; their cross-entropy on labels is dropped). tau applies
to real logits; on pseudo-logits tau = 1, their one temperature being t_p (`logits.py`).
"""

from __future__ import annotations

import torch

from ..config import LossConfig
from ..embeddings import Embeddings
from ..parallel import gather_rows
from . import register_method
from .base import MethodDims, StepContext
from .logits import LogitMethod

EPS = 1e-8


def pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """1 - Pearson correlation of each row of `a` with the same row of `b`, [rows]."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return 1.0 - (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_inter, L_intra), without the tau^2 and the weights."""
    y_s = torch.softmax(student_logits / temperature, dim=1)
    y_t = torch.softmax(teacher_logits.detach() / temperature, dim=1)
    inter = pearson_distance(y_s, y_t).mean()
    intra = pearson_distance(gather_rows(y_s).T, gather_rows(y_t).T).mean()  # softmax already taken row-wise; global batch
    return inter, intra


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, beta: float, gamma: float) -> torch.Tensor:
    """tau^2 * (beta * L_inter + gamma * L_intra)."""
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    return temperature**2 * (beta * inter + gamma * intra)


class DIST(LogitMethod):
    def __init__(self, dims: MethodDims, *, temperature: float = 1.0, beta: float = 2.0, gamma: float = 2.0, pseudo_temperature: float = 0.1):
        super().__init__(dims, pseudo_temperature)
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        student_logits, teacher_logits = self.logits(student, teacher, queue)
        tau = self.class_temperature(self.temperature)
        inter, intra = dist_terms(student_logits, teacher_logits, tau)
        total = tau**2 * (self.beta * inter + self.gamma * intra)
        return {"loss": total, "inter": inter.detach(), "intra": intra.detach()}


@register_method("dist")
def _dist(cfg: LossConfig, dims: MethodDims) -> DIST:
    d = cfg.dist
    return DIST(dims, temperature=d.temperature, beta=d.beta, gamma=d.gamma, pseudo_temperature=cfg.pseudo_logit_temperature)
