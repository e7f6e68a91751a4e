r"""STKD: similarity transfer, KD on mixup "virtual samples" that blend two images.

Zhao, Gong, Sun, Dong, Yu, "Similarity Transfer for Knowledge Distillation", arXiv:2103.10047, 2021.
No official code exists and the paper body was not available: this is a RECONSTRUCTION
(from the abstract: transfer the similarity between the categories of
MULTIPLE samples by matching teacher and student distributions on mixup virtual samples).

Symbols. B images per batch, V views (all rows are samples, N = V*B); x_i a view of image i;
lam ~ Beta(alpha, alpha); pi a random permutation of the B images; z^T(.), z^S(.) teacher/student
logits (real logits, or pseudo-logits over the momentum queue: `logits.py`); sigma softmax; tau the
temperature; w the weight.

    x~_i = lam * x_i + (1 - lam) * x_pi(i)        the SAME lam and pi for every view of the step
    L = w * tau^2 * (1/N) sum_i KL( sigma(z^T(x~_i) / tau) || sigma(z^S(x~_i) / tau) )

`batch_transform` builds the virtual samples before both networks see the batch, so the loss is
vanilla KD (`kd.kd_loss`) on them. lam and pi come from torch's global RNG (the loop seeds it, so a
run is reproducible); alpha <= 0 switches the mixing off (lam = 1, plain KD).

Left out of the reconstruction, deliberately: the mixed-label cross-entropy CE(z^S(x~), lam y_i +
(1-lam) y_pi(i)) needs labels, which label-free distillation does not have. With a supervised teacher
its natural stand-in, a soft-target CE of the student on the teacher's mixed prediction, equals the
KL term up to the teacher's entropy (a constant for the student), so it would only re-weight the KL:
KL only, for every teacher. The momentum queue (pseudo-logit anchors) receives the teacher's
embeddings of the mixed images, the only ones this step computes. Defaults (config `loss.stkd`,
guesses: the paper's values are unknown): tau = 4, alpha = 1, w = 1; as in KD, tau applies to real
logits, and on pseudo-logits tau = 1 (the one temperature is t_p: `logits.py`).

Several processes: the mixup partner pi(i) is drawn within this process's batch (local), as the
logit loss is per row; lam is drawn per process.
"""

from __future__ import annotations

import torch

from ..config import LossConfig
from ..embeddings import Embeddings
from . import register_method
from .base import MethodDims, StepContext
from .kd import kd_loss
from .logits import LogitMethod


def draw_mix(batch_size: int, alpha: float) -> tuple[float, torch.Tensor]:
    """(lam ~ Beta(alpha, alpha), a random permutation of range(batch_size)), from torch's global RNG."""
    if alpha <= 0:
        return 1.0, torch.arange(batch_size)
    concentration = torch.tensor(float(alpha))
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    return lam, torch.randperm(batch_size)


def mix_views(views: list[torch.Tensor], lam: float, perm: torch.Tensor) -> list[torch.Tensor]:
    """lam * x + (1 - lam) * x[perm] for every view x, with the same lam and perm."""
    return [lam * x + (1.0 - lam) * x[perm.to(x.device)] for x in views]


class STKD(LogitMethod):
    def __init__(self, dims: MethodDims, *, temperature: float = 4.0, mixup_alpha: float = 1.0, weight: float = 1.0, pseudo_temperature: float = 0.1):
        super().__init__(dims, pseudo_temperature)
        self.temperature, self.mixup_alpha, self.weight = temperature, mixup_alpha, weight

    def batch_transform(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = {x.shape[0] for x in views}
        if len(sizes) != 1:
            raise ValueError(f"every view must hold the same images; got batch sizes {sorted(sizes)}")
        lam, perm = draw_mix(sizes.pop(), self.mixup_alpha)
        return mix_views(views, lam, perm)

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        student_logits, teacher_logits = self.logits(student, teacher, queue)
        kd = kd_loss(student_logits, teacher_logits, self.class_temperature(self.temperature))
        return {"loss": self.weight * kd, "kd": kd.detach()}


@register_method("stkd")
def _stkd(cfg: LossConfig, dims: MethodDims) -> STKD:
    s = cfg.stkd
    return STKD(dims, temperature=s.temperature, mixup_alpha=s.mixup_alpha, weight=s.weight, pseudo_temperature=cfg.pseudo_logit_temperature)
