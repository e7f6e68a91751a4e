r"""DLKD: dual-level knowledge distillation, knowledge alignment plus knowledge correlation.

Ding, Yang, Hu, Krovi, Luo, "Dual-Level Knowledge Distillation via Knowledge Alignment and
Correlation", IEEE TNNLS 35(2):2425-2435, 2024 (arXiv:2012.00573); official code github
ifding/DLKD (helper/losses.py: AlignLoss, CorrLoss, SupConLoss).

Symbols. B images per batch, V views each (rows view-major); f^S, f^T student/teacher backbone
features; h_A the student projector to the teacher width (`student.emb = h_A(f^S)`); h_C a
correlation head D_S -> D_S -> D_S owned by this loss; n(.) L2 normalization; Q the momentum queue
of normalized teacher embeddings (K rows). Anchors N are the rows of view 0, the others A the rows
of views 1..V-1.

Alignment (same image, same view; no negatives):
    L_align = 2 - 2 * mean_i < n(h_A(f^S_i)), n(f^T_i) >              over all V*B rows

Correlation (the batch's similarity structure; teacher detached):
    S^S[a, b] = cos(h_C(f^S_a), h_C(f^S_b)),  S^T[a, b] = cos(f^T_a, f^T_b),   a in A, b in N
    L_corr = (1/|A|) sum_a KL( softmax(S^T[a] / tau_c) || softmax(S^S[a] / tau_c) ),  tau_c = 0.5
Each view is matched by its similarity distribution over the anchors, so images the teacher keeps
close (same class) stay close in the student, rather than being pushed apart as negatives.

The third term, `loss.dlkd.contrast`:
- `queue` (default): this project's label-free variant, an InfoNCE against the momentum queue of teacher
  embeddings. With s_i = n(h_A(f^S_i)), t_i = n(f^T_i) of the same view:
    L_contrast = -(1/(V*B)) sum_i log( exp(<s_i, t_i>/tau) / (exp(<s_i, t_i>/tau) + sum_k exp(<s_i, Q_k>/tau)) )
- `supcon`: the reference's term without labels: ifding/DLKD's `SupConLoss` (SupCon, Khosla et al.
  2020) as it computes with labels=None, its instance form (the reference trains with class labels,
  which label-free distillation does not have): trainable linear heads g_S: D_S -> 128 and
  g_T: D_T -> 128 (its `Embed`), z^S_i = n(g_S(f^S_i)), z^T_i = n(g_T(f^T_i)) for the N = V*B rows; the
  2N rows A = [z^S; z^T] are all anchors, the positive of z^S_i is z^T_i and back, every other row of A
  is a negative (in-batch only, no queue):
    l_ab = <A_a, A_b> / tau - max_b' <A_a, A_b'> / tau
    L_contrast = -(tau / tau_0) (1/2N) sum_a [ l_{a,p(a)} - log( sum_{b != a} exp(l_ab) + 1e-7 ) ],  tau_0 = 0.07
  (the max shift and the 1e-7 are the reference's). Under torchrun the rows are this process's.

Total: L = d * L_align + a * L_corr + b * L_contrast. The weights and temperatures live in
`loss.dlkd` (`ssl_kd.config.DLKDConfig`, which says where its defaults come from); the paper's scripts
use d = 10, a = 20, b = 0.5 (ImageNet) and d = 20, a = 50, b = 1 (CIFAR), the presets in configs/.
A weight of 0 switches its term off (ablation).

Several processes (torchrun): the correlation's anchors N are the view-0 rows of the GLOBAL batch
(gathered from every process, with gradients), so each view is matched by its distribution over all
the batch's images as in one process; the rows A it averages over are this process's (DDP's gradient
average makes that the global mean). Alignment and the queue contrast are per row (local), and the
queue holds every process's teacher rows.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DLKD_CONTRASTS as CONTRASTS
from ..config import DLKDConfig, LossConfig
from ..embeddings import Embeddings
from ..parallel import gather_rows
from ..students import mlp_head
from . import register_method
from .base import DistillMethod, MethodDims, StepContext, split_views


def alignment_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """2 - 2 * mean cosine between each student row and the teacher row of the same image and view."""
    cos = (F.normalize(student_emb, dim=1) * F.normalize(teacher_emb.detach(), dim=1)).sum(dim=1)
    return 2.0 - 2.0 * cos.mean()


def correlation_loss(student: torch.Tensor, teacher: torch.Tensor, num_views: int, temperature: float) -> torch.Tensor:
    """KL between teacher and student softmax(cos / tau) of views 1..V-1 over the view-0 anchors."""
    if num_views < 2:
        raise ValueError("the correlation term compares views with anchors: it needs at least 2 views")
    s = split_views(F.normalize(student, dim=1), num_views)
    t = split_views(F.normalize(teacher.detach(), dim=1), num_views)
    s_sim = s[1:].flatten(0, 1) @ gather_rows(s[0]).T  # [(V-1)B, B_global]: anchors from every process
    t_sim = t[1:].flatten(0, 1) @ gather_rows(t[0]).T
    log_p_student = F.log_softmax(s_sim / temperature, dim=1)
    log_p_teacher = F.log_softmax(t_sim / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def queue_contrast_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, queue: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """InfoNCE: the teacher embedding of the same view is the positive, the queue the negatives."""
    s = F.normalize(student_emb, dim=1)
    t = F.normalize(teacher_emb.detach(), dim=1)
    positive = (s * t).sum(dim=1, keepdim=True)
    logits = positive if queue is None or queue.numel() == 0 else torch.cat([positive, s @ queue.to(s.dtype).T], dim=1)
    target = torch.zeros(s.shape[0], dtype=torch.long, device=s.device)
    return F.cross_entropy(logits / temperature, target)


SUPCON_BASE_TEMPERATURE = 0.07  # tau_0 of the reference's SupConLoss
SUPCON_EPS = 1e-7  # inside the reference's log of the denominator


def supcon_instance_loss(student_z: torch.Tensor, teacher_z: torch.Tensor, temperature: float,
                         base_temperature: float = SUPCON_BASE_TEMPERATURE) -> torch.Tensor:
    """SupCon without labels over A = [student_z; teacher_z] (rows L2-normalized, [N, d] each): row i's
    positive is row i of the other network, every other row a negative, averaged over all 2N anchors."""
    rows = torch.cat([student_z, teacher_z])
    n = student_z.shape[0]
    logits = rows @ rows.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    others = ~torch.eye(2 * n, dtype=torch.bool, device=rows.device)
    log_denominator = torch.log((logits.exp() * others).sum(dim=1) + SUPCON_EPS)
    partner = torch.arange(2 * n, device=rows.device).roll(n)  # i <-> i + N
    log_prob = logits.gather(1, partner[:, None]).squeeze(1) - log_denominator
    return -(temperature / base_temperature) * log_prob.mean()


class SupConHeads(nn.Module):
    """The reference's `Embed` pair: a linear map to `dim` per network, then L2 normalization."""

    def __init__(self, student_dim: int, teacher_dim: int, dim: int):
        super().__init__()
        self.student, self.teacher = nn.Linear(student_dim, dim), nn.Linear(teacher_dim, dim)

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.student(student_feat), dim=1), F.normalize(self.teacher(teacher_feat.detach()), dim=1)


class DLKD(DistillMethod):
    def __init__(self, dims: MethodDims, settings: DLKDConfig):
        super().__init__()
        if settings.contrast not in CONTRASTS:
            raise ValueError(f"loss.dlkd.contrast must be one of {', '.join(CONTRASTS)}, got {settings.contrast!r}")
        self.settings = settings
        self.needs_queue = settings.contrast == "queue"
        self.corr_head = mlp_head(dims.student_dim, dims.student_dim, dims.student_dim)  # h_C
        self.supcon_heads = SupConHeads(dims.student_dim, dims.teacher_feature_dim, settings.supcon_dim) if settings.contrast == "supcon" else None

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        w = self.settings
        terms = {
            "align": (w.align_weight, lambda: alignment_loss(student.emb, teacher.emb)),
            "corr": (w.corr_weight, lambda: correlation_loss(self.corr_head(student.feat), teacher.feat, ctx.num_views, w.corr_temperature)),
            "contrast": (w.contrast_weight, lambda: self._contrast(student, teacher, queue)),
        }
        parts = {name: term() for name, (weight, term) in terms.items() if weight != 0}  # a 0 weight is an ablation
        total = sum(terms[name][0] * value for name, value in parts.items())
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}

    def _contrast(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None) -> torch.Tensor:
        if self.supcon_heads is None:
            return queue_contrast_loss(student.emb, teacher.emb, queue, self.settings.contrast_temperature)
        return supcon_instance_loss(*self.supcon_heads(student.feat, teacher.feat), self.settings.contrast_temperature)


def _with_weights(cfg: LossConfig, **weights: float) -> DLKDConfig:
    return replace(cfg.dlkd, **weights)


@register_method("dlkd")
def _dlkd(cfg: LossConfig, dims: MethodDims) -> DLKD:
    return DLKD(dims, cfg.dlkd)


@register_method("dlkd_align")
def _dlkd_align_only(cfg: LossConfig, dims: MethodDims) -> DLKD:
    """Ablation: the alignment term alone."""
    return DLKD(dims, _with_weights(cfg, corr_weight=0.0, contrast_weight=0.0))


@register_method("dlkd_corr")
def _dlkd_corr_only(cfg: LossConfig, dims: MethodDims) -> DLKD:
    """Ablation: the correlation term alone."""
    return DLKD(dims, _with_weights(cfg, align_weight=0.0, contrast_weight=0.0))
