r"""DLKD: dual-level knowledge distillation, knowledge alignment plus knowledge correlation.

Ding, Yang, Hu, Krovi, Luo, "Dual-Level Knowledge Distillation via Knowledge Alignment and
Correlation", IEEE TNNLS 35(2):2425-2435, 2024 (arXiv:2012.00573); official code github
ifding/DLKD (helper/losses.py: AlignLoss, CorrLoss, SupConLoss). Notes: research/methods.md s.1.

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

Contrast with the momentum queue (the paper's SupCon term without labels: its instance version).
With s_i = n(h_A(f^S_i)), t_i = n(f^T_i) of the same view:
    L_contrast = -(1/(V*B)) sum_i log( exp(<s_i, t_i>/tau) / (exp(<s_i, t_i>/tau) + sum_k exp(<s_i, Q_k>/tau)) ),
    tau = 0.07

Total: L = d * L_align + a * L_corr + b * L_contrast; defaults d = 10, a = 20, b = 0.5 (the paper's
ImageNet script, without its cross-entropy on labels). A weight of 0 switches a term off (ablation).

Several processes (torchrun): the correlation's anchors N are the view-0 rows of the GLOBAL batch
(gathered from every process, with gradients), so each view is matched by its distribution over all
the batch's images as in one process; the rows A it averages over are this process's (DDP's gradient
average makes that the global mean). Alignment and the queue contrast are per row (local), and the
queue holds every process's teacher rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LossConfig
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


class DLKD(DistillMethod):
    needs_queue = True

    def __init__(
        self,
        student_dim: int,
        *,
        align_weight: float = 10.0,
        corr_weight: float = 20.0,
        contrast_weight: float = 0.5,
        corr_temperature: float = 0.5,
        contrast_temperature: float = 0.07,
    ):
        super().__init__()
        self.align_weight, self.corr_weight, self.contrast_weight = align_weight, corr_weight, contrast_weight
        self.corr_temperature, self.contrast_temperature = corr_temperature, contrast_temperature
        self.corr_head = mlp_head(student_dim, student_dim, student_dim)  # h_C

    @classmethod
    def from_config(cls, cfg: LossConfig, dims: MethodDims, **weights: float) -> "DLKD":
        """The method from the config; `weights` override align/corr/contrast weights (ablations)."""
        options = dict(align_weight=cfg.align_weight, corr_weight=cfg.corr_weight, contrast_weight=cfg.contrast_weight)
        options.update(weights)
        return cls(dims.student_dim, corr_temperature=cfg.corr_temperature, contrast_temperature=cfg.contrast_temperature, **options)

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        terms = {
            "align": (self.align_weight, lambda: alignment_loss(student.emb, teacher.emb)),
            "corr": (self.corr_weight, lambda: correlation_loss(self.corr_head(student.feat), teacher.feat, ctx.num_views, self.corr_temperature)),
            "contrast": (self.contrast_weight, lambda: queue_contrast_loss(student.emb, teacher.emb, queue, self.contrast_temperature)),
        }
        parts = {name: term() for name, (weight, term) in terms.items() if weight != 0}  # a 0 weight is an ablation
        total = sum(terms[name][0] * value for name, value in parts.items())
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}


@register_method("dlkd")
def _dlkd(cfg: LossConfig, dims: MethodDims) -> DLKD:
    return DLKD.from_config(cfg, dims)


@register_method("dlkd_align")
def _dlkd_align_only(cfg: LossConfig, dims: MethodDims) -> DLKD:
    """Ablation: the alignment term alone."""
    return DLKD.from_config(cfg, dims, corr_weight=0.0, contrast_weight=0.0)


@register_method("dlkd_corr")
def _dlkd_corr_only(cfg: LossConfig, dims: MethodDims) -> DLKD:
    """Ablation: the correlation term alone."""
    return DLKD.from_config(cfg, dims, align_weight=0.0, contrast_weight=0.0)
