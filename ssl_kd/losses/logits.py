r"""Logits for the logit-distillation methods (KD, CKD, DIST, STKD), from any teacher.

Logit methods compare the class distributions of teacher and student. Where they come from:

Supervised teacher (`teacher.logits` is not None; the method was built with
`MethodDims.num_classes = C > 0`): the teacher's real classifier logits, and for the student a
linear head the METHOD owns on the student's backbone feature (`LogitHead`, trained with it):

    z^T = teacher.logits [N, C],      z^S = W f^S + b [N, C]

Label-free (self-supervised) teacher (`num_classes = 0`): there are no classes, hence no logits.
Their place is taken by *pseudo-logits*, the cosine similarities of an embedding to a shared set of
K anchors, the momentum queue Q of L2-normalized past teacher embeddings (rows already normalized),
sharpened by t_p = `loss.pseudo_logit_temperature`:

    z^T = n(e^T) Q^T / t_p,      z^S = n(e^S) Q^T / t_p      [N, K]

e^T = teacher.emb, e^S = student.emb (the student's projector output, of the teacher's width), n(.)
L2 normalization over the feature axis. Every anchor plays the role of a class and the similarity
distribution over the anchors that of the class distribution; teacher and student use the SAME
anchors, so their distributions are comparable entry by entry, and any logit loss applies. Matching
such similarity distributions over a queue of teacher embeddings is the idea of SEED (Fang et al.,
ICLR 2021) and CompRess (Abbasi Koohpayegani et al., NeurIPS 2020).
Logit methods on label-free teachers therefore declare `needs_queue`. t_p is the ONE temperature
of the similarity distributions: KD, STKD and DIST take their own tau (`loss.kd.temperature`, ...)
on real logits only, and tau = 1 on pseudo-logits (`LogitMethod.class_temperature`), so they see
softmax(cos / t_p), t_p = 0.1 by default, in the range of SEED's and CompRess's 0.04-0.2 (stacking
t_p = 0.1 with KD's tau = 4 gave softmax(cos / 0.4), far softer). CKD L2-normalizes the logits, so
t_p cancels there.

First step: the queue is still empty (None or 0 rows); the anchors are then the current batch's own
normalized teacher embeddings (K = N rows; the global batch's, gathered, under several processes), so
the first step has a well-defined loss too. Every other statistic here is per row (local).

Neither the anchors nor the teacher's logits ever carry gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..embeddings import Embeddings
from ..parallel import all_gather_cat
from .base import DistillMethod, MethodDims


class LogitHead(nn.Module):
    """The student's classifier for a supervised teacher: one linear layer, feat [N, D_S] -> [N, C]."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"a logit head needs at least one class, got num_classes={num_classes}")
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.fc(feat)


def pseudo_logits(emb: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """n(emb) @ anchors.T / t_p: cosine similarity of each row to each (normalized) anchor, [N, K]."""
    return F.normalize(emb, dim=1) @ anchors.to(emb.dtype).T / temperature


def pseudo_anchors(teacher: Embeddings, queue: torch.Tensor | None) -> torch.Tensor:
    """The queue's rows; while it is empty, the batch's own normalized teacher embeddings."""
    if queue is not None and queue.numel() > 0:
        return queue.detach()
    return all_gather_cat(F.normalize(teacher.emb.detach(), dim=1))


def method_logits(
    student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, *, temperature: float, head: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(student logits, teacher logits), both [N, C] (real) or [N, K] (pseudo); the teacher's detached.

    With a `head` (the method was built for a supervised teacher) the teacher's real logits and
    `head(student.feat)`; without one, pseudo-logits over the queue at `temperature` (t_p).
    """
    if head is not None:
        if teacher.logits is None:
            raise ValueError("this method was built for a supervised teacher (num_classes > 0), but the teacher gave no logits")
        return head(student.feat), teacher.logits.detach()
    anchors = pseudo_anchors(teacher, queue)
    return pseudo_logits(student.emb, anchors, temperature), pseudo_logits(teacher.emb.detach(), anchors, temperature)


class LogitMethod(DistillMethod):
    """Base of the logit methods: decides at build time between real logits and pseudo-logits.

    `dims.num_classes > 0`: a supervised teacher; the method owns a `LogitHead` and declares
    `needs_logits`. Otherwise pseudo-logits, and the method declares `needs_queue`.
    """

    def __init__(self, dims: MethodDims, pseudo_temperature: float):
        super().__init__()
        supervised = dims.num_classes > 0
        self.needs_logits, self.needs_queue = supervised, not supervised
        self.pseudo_temperature = pseudo_temperature
        self.head = LogitHead(dims.student_dim, dims.num_classes) if supervised else None

    def logits(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return method_logits(student, teacher, queue, temperature=self.pseudo_temperature, head=self.head)

    def class_temperature(self, temperature: float) -> float:
        """The tau of the method's softmax over its logits: `temperature` on a supervised teacher's real logits,
        1 on pseudo-logits (already divided by t_p, their one temperature)."""
        return temperature if self.head is not None else 1.0
