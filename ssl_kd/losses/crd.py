r"""CRD: contrastive representation distillation with two memory banks and an NCE objective.

Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020 (arXiv:1910.10699);
official code github HobbitLong/RepDistiller (crd/criterion.py, crd/memory.py).


Symbols. N training images; B images per batch, V views each (rows view-major, V*B rows);
f^S, f^T student/teacher backbone features; e^S = n(W_S f^S), e^T = n(W_T f^T) trainable linear
embeds to d = 128 plus L2 normalization n(.); M^S, M^T memory banks of N rows (`MemoryBank`)
holding past e^S and e^T by dataset index; K negatives, tau = 0.07, eps = 1e-7 (RepDistiller's).
For a row of image i and an anchor v against a bank M, the K+1 bank rows are m_0 = M_i (the
positive) and m_1..m_K = M_j with j drawn uniformly from the other N - 1 images:
    P(v, m) = exp(<v, m> / tau) / Z,     Z = N * mean(exp(<v, m> / tau)) over the first batch, then fixed
    h(v, m) = P / (P + K/N)                                    (NCE posterior of "real pair")
    L(v, M) = -(1/(V*B)) sum_rows [ log h(v, m_0) + sum_{k=1..K} log(1 - h(v, m_k)) ]
with log h = log(P / (P + K/N + eps)) and log(1 - h) = log((K/N) / (P + K/N + eps)) as in the code.
    L_CRD = L(e^S, M^T) + L(e^T, M^S)        (each direction its own Z), weight 0.8
Gradients reach the student (through e^S) and both embeds (W_T through e^T); the banks never.

Banks: after the optimizer step, the view-0 rows of this step's e^S and e^T (as computed in the
forward) update M^S and M^T at `ctx.index`: M_i <- n(0.5 M_i + 0.5 e_i). Using only view 0 keeps
one update per image and step, as in the single-view original. The V views of an image share its
K sampled negatives. Z (both directions) is a persistent buffer, -1 until the first batch sets it,
so a resumed run keeps the same normalization. Several processes: every statistic is per row
(local) but Z, whose first-batch mean is taken over all processes, and the banks, which every process
updates with every process's rows (all-gathered indices and embeddings), so they stay identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossConfig
from ..embeddings import Embeddings
from . import register_method
from .base import DistillMethod, MethodOutput, MethodDims, StepContext, split_views
from ..parallel import all_reduce_mean
from .memory import MemoryBank, full_precision

EPS = 1e-7  # RepDistiller's crd/criterion.py


def nce_scores(anchors: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor, num_views: int, temperature: float) -> torch.Tensor:
    """exp(<v, m> / tau): anchors [V*B, d] (view-major) against the bank rows [B, K+1] (indices into `bank`
    [N, d]) of their image -> [V*B, K+1].

    When the bank has no more rows than are drawn per image (N <= K+1, small datasets), every dot
    product with the bank is cheaper than gathering B x (K+1) rows of it: the scores are then read from
    anchors @ bank^T. Same values either way.
    """
    anchors, bank = full_precision(anchors, bank.detach())
    views = split_views(anchors, num_views)  # [V, B, d]
    with torch.autocast(anchors.device.type, enabled=False):
        bank = bank.to(anchors)
        if bank.shape[0] <= rows.shape[1]:
            dots = (views @ bank.T).gather(2, rows[None].expand(num_views, -1, -1))
        else:
            dots = torch.einsum("vbd,bkd->vbk", views, bank[rows])
    return torch.exp(dots / temperature).flatten(0, 1)


def nce_loss(scores: torch.Tensor, z: torch.Tensor, num_samples: int) -> torch.Tensor:
    """-(1/rows) sum_rows [log h(pos) + sum log(1 - h(neg))] of the scores exp(<v, m>/tau) [rows, K+1]
    (column 0 the positive), P = scores / Z, h = P / (P + K/N)."""
    p = scores / z
    noise = (scores.shape[1] - 1) / num_samples  # K/N: K negatives drawn from N images
    log_pos = torch.log(p[:, 0] / (p[:, 0] + noise + EPS))
    log_neg = torch.log(noise / (p[:, 1:] + noise + EPS))
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]


class CRD(DistillMethod):
    def __init__(self, student_dim: int, teacher_dim: int, num_samples: int, *, embed_dim: int = 128,
                 negatives: int = 4096, temperature: float = 0.07, momentum: float = 0.5, weight: float = 0.8):
        super().__init__()
        if num_samples < 2:
            raise ValueError(f"CRD keeps a memory bank of the training set: it needs its size (got num_samples={num_samples})")
        self.num_samples, self.negatives, self.temperature = num_samples, negatives, temperature
        self.momentum, self.weight = momentum, weight
        self.embed_student = nn.Linear(student_dim, embed_dim)  # W_S
        self.embed_teacher = nn.Linear(teacher_dim, embed_dim)  # W_T
        self.student_bank = MemoryBank(num_samples, embed_dim)  # M^S
        self.teacher_bank = MemoryBank(num_samples, embed_dim)  # M^T
        self.register_buffer("z", torch.full((2,), -1.0))  # Z of [student anchors vs M^T, teacher anchors vs M^S]

    def embed(self, student: Embeddings, teacher: Embeddings) -> tuple[torch.Tensor, torch.Tensor]:
        """e^S = n(W_S f^S), e^T = n(W_T f^T) for all rows."""
        return F.normalize(self.embed_student(student.feat), dim=1), F.normalize(self.embed_teacher(teacher.feat.detach()), dim=1)

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        if ctx.index is None:
            raise ValueError("CRD indexes its memory banks by image: it needs ctx.index (the batch's dataset indices)")
        index = ctx.index.long()
        e_s, e_t = self.embed(student, teacher)
        negatives = self.student_bank.sample_negatives(index, self.negatives)
        rows = torch.cat([index.view(-1, 1).to(negatives.device), negatives], dim=1)  # [B, K+1]: the positive, then K negatives
        s_scores = nce_scores(e_s, self.teacher_bank.memory, rows, ctx.num_views, self.temperature)
        t_scores = nce_scores(e_t, self.student_bank.memory, rows, ctx.num_views, self.temperature)
        self._set_z_once(s_scores, t_scores)
        student_side = nce_loss(s_scores, self.z[0], self.num_samples)
        teacher_side = nce_loss(t_scores, self.z[1], self.num_samples)
        batch = index.shape[0]
        crd = student_side + teacher_side
        parts = {"loss": self.weight * crd, "crd": crd.detach(), "crd_student": student_side.detach(), "crd_teacher": teacher_side.detach()}
        return MethodOutput(parts, memo=(index, e_s[:batch].detach(), e_t[:batch].detach()))  # the banks' rows, for after_step

    @torch.no_grad()
    def _set_z_once(self, s_scores: torch.Tensor, t_scores: torch.Tensor) -> None:
        """Z = N * mean(exp(<v, m>/tau)) of the first batch, per direction; fixed afterwards."""
        if bool((self.z < 0).any()):  # the mean over every process's rows: one Z everywhere
            self.z.copy_(all_reduce_mean(torch.stack([s_scores.mean(), t_scores.mean()])).to(self.z) * self.num_samples)

    def after_step(self, student: Embeddings, teacher: Embeddings, ctx: StepContext, memo=None) -> None:
        """M^S, M^T <- the view-0 embeddings of this step's images (momentum update, renormalized); `memo` is
        the (index, e^S, e^T) memo of this step's forward."""
        if memo is None:
            raise ValueError("CRD.after_step needs the memo its forward returned (out.memo): the rows for its banks")
        index, e_s, e_t = memo
        self.student_bank.update(index, e_s, self.momentum)
        self.teacher_bank.update(index, e_t, self.momentum)


@register_method("crd")
def _crd(cfg: LossConfig, dims: MethodDims) -> CRD:
    c = cfg.crd
    return CRD(dims.student_dim, dims.teacher_feature_dim, dims.num_samples, embed_dim=c.embed_dim, negatives=c.negatives,
               temperature=c.temperature, momentum=c.momentum, weight=c.weight)
