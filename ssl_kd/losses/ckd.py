r"""CKD: contrastive knowledge distillation from a sample-wise perspective (the released code's loss).

Zhu, Zhou, Zhu, Wang, Hu, "Contrastive Knowledge Distillation from a Sample-wise Perspective",
arXiv:2404.14109, 2024; official code github ZhouXinzzzzz/CKD (mdistiller/distillers/CKD.py,
defaults mdistiller/engine/cfg.py).

Symbols. B images per batch, V views (rows view-major); z^T_i, z^S_i teacher/student logits of
sample i (real logits, or pseudo-logits over the momentum queue: `logits.py`); n(.) L2
normalization over the class axis; tau the temperature; w the weight.

    M[i, j] = < n(z^T_i), n(z^S_j) > / tau                         [B, B], rows = teacher anchors
    L_CKD   = (1/B) sum_i -log( exp(M[i, i]) / sum_j exp(M[i, j]) )  = cross_entropy(M, arange(B))
    L = w * L_CKD

The positive is the same sample's student logits; the negatives, the other samples' student logits
against the same teacher anchor. In-batch only, nothing trainable, one direction (teacher-anchored,
not symmetrized); the teacher side is detached. With V > 1 views the contrast runs within each view
(B x B; otherwise another view of the same image would be a negative) and the V losses are
averaged; V = 1 is exactly the paper's batch. Several processes: the negatives j are the GLOBAL
batch's student rows of the view (gathered with gradients); the anchors i are this process's rows,
whose positive sits at their offset in the gathered batch. On pseudo-logits (cos / t_p) the normalization
cancels t_p: CKD then compares the anchor-similarity vectors themselves. Defaults (config
`loss.ckd`): tau = 1, w = 10 (the ImageNet setting; the code's cross-entropy on labels, weight 1,
is dropped: we have no labels).

PAPER VS CODE. The paper's text (v1 abstract, third-party summaries) describes an intra-sample term
"minimising logit differences by numerical values" and inter-sample negatives between student logits
of different samples (s_i, s_j). The released code has no separate difference/MSE term (alignment is
only the positive of the contrast) and its negatives pair the teacher anchor i with the other
students j. This file implements the CODE version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..embeddings import Embeddings
from ..parallel import gather_rows, global_row_offset
from . import register_method
from .base import MethodDims, StepContext, split_views
from .logits import LogitMethod


def ckd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """cross_entropy(M, arange(B)), M[i, j] = cos(z_T_i, z_S_j) / tau: teacher rows are the anchors."""
    u = F.normalize(teacher_logits.detach(), dim=1)
    v = gather_rows(F.normalize(student_logits, dim=1))  # every process's students: the negatives
    sim = u @ v.T / temperature
    target = torch.arange(sim.shape[0], device=sim.device) + global_row_offset(sim.shape[0])
    return F.cross_entropy(sim, target)


def ckd_loss_per_view(student_logits: torch.Tensor, teacher_logits: torch.Tensor, num_views: int, temperature: float) -> torch.Tensor:
    """`ckd_loss` within each view's B rows, averaged over the V views."""
    s, t = split_views(student_logits, num_views), split_views(teacher_logits, num_views)
    return torch.stack([ckd_loss(s[v], t[v], temperature) for v in range(num_views)]).mean()


class CKD(LogitMethod):
    def __init__(self, dims: MethodDims, *, temperature: float = 1.0, weight: float = 10.0, pseudo_temperature: float = 0.1):
        super().__init__(dims, pseudo_temperature)
        self.temperature, self.weight = temperature, weight

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        student_logits, teacher_logits = self.logits(student, teacher, queue)
        ckd = ckd_loss_per_view(student_logits, teacher_logits, ctx.num_views, self.temperature)
        return {"loss": self.weight * ckd, "ckd": ckd.detach()}


@register_method("ckd")
def _ckd(cfg: LossConfig, dims: MethodDims) -> CKD:
    return CKD(dims, temperature=cfg.ckd.temperature, weight=cfg.ckd.weight, pseudo_temperature=cfg.pseudo_logit_temperature)
