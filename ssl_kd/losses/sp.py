r"""SP: similarity-preserving distillation, the student keeps the teacher's batch similarity matrix.

Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (arXiv:1907.09682); reference
code HobbitLong/RepDistiller (distiller_zoo/SP.py, `Similarity`).

Symbols. N = V*B rows (every view of every image); A^T, A^S the LAST-stage feature maps of teacher
and student (`Embeddings.maps[-1]`: a ResNet's layer4 output, a ViT's last block as a token grid,
before the final norm), [N, C, H, W] with C, H, W free to differ between the two networks;
Q = A flattened to [N, C*H*W]; n_rows(.) L2 normalization of each row.

    G^T = n_rows(Q^T Q^T^T),   G^S = n_rows(Q^S Q^S^T)        (N x N, each row of unit length)
    L_SP = (1/N^2) || G^T - G^S ||_F^2
    L = gamma * L_SP,   gamma = 3000 (paper and RepDistiller; config `loss.sp.weight`)

Row normalization makes each network's G independent of the scale of its maps, so the student only
copies which images the teacher finds alike. The teacher side has no gradient; the Gram matrices
are formed in float32 outside autocast (bf16 rounding of G is of the order of the differences).

Several processes: G is the GLOBAL batch's (N = all processes' rows): each process forms its own rows
of G against every process's Q (gathered, the student's with gradients) and sums their squared
differences; times the number of processes W, the mean over processes is the one-process loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..embeddings import Embeddings
from ..parallel import gather_rows, world_size
from . import register_method
from .base import DistillMethod, MethodDims, StepContext
from .rkd import at_least_float32


def normalized_gram(maps: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
    """n_rows(Q K^T) for Q = `maps` flattened per row and K = `keys` (flattened; default Q itself): [N, M]."""
    q = maps.flatten(1)
    k = q if keys is None else keys.flatten(1)
    return F.normalize(q @ k.T, p=2, dim=1)


def similarity_preserving_loss(student_maps: torch.Tensor, teacher_maps: torch.Tensor) -> torch.Tensor:
    """||G^T - G^S||_F^2 / N^2 between the row-normalized Gram matrices of the two networks' maps."""
    if student_maps.shape[0] != teacher_maps.shape[0]:
        raise ValueError(f"SP compares the same images: {student_maps.shape[0]} student rows, {teacher_maps.shape[0]} teacher rows")
    with torch.no_grad():
        target = normalized_gram(teacher_maps, gather_rows(teacher_maps))  # this process's rows of the global G^T
    student_gram = normalized_gram(student_maps, gather_rows(student_maps))
    n = target.shape[1]  # rows of the global batch
    return (target - student_gram).pow(2).sum() / (n * n) * world_size()


class SP(DistillMethod):
    needs_maps = True

    def __init__(self, *, weight: float = 3000.0):
        super().__init__()
        self.weight = weight

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        if not student.maps or not teacher.maps:
            raise ValueError("SP needs both networks' feature maps: call them with maps=True (needs_maps)")
        with torch.autocast(student.maps[-1].device.type, enabled=False):  # float32: see the module notes
            loss = similarity_preserving_loss(at_least_float32(student.maps[-1]), at_least_float32(teacher.maps[-1].detach()))
        return {"loss": self.weight * loss, "sp": loss.detach()}


@register_method("sp")
def _sp(cfg: LossConfig, dims: MethodDims) -> SP:
    return SP(weight=cfg.sp.weight)
