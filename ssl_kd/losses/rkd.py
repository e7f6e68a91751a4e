r"""RKD: relational knowledge distillation, the student keeps the teacher's distances and angles.

Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv:1904.05068); reference
code HobbitLong/RepDistiller (distiller_zoo/RKD.py, `RKDLoss`).

Symbols. N = V*B rows (every view of every image is a point); s_i, t_i the student/teacher
penultimate features (`student.feat`, `teacher.feat`, raw, not normalized; their widths may differ:
each network is only compared with itself); n(.) L2 normalization; SmoothL1 = Huber with delta 1,
l(x, y) = 0.5 (x - y)^2 if |x - y| < 1 else |x - y| - 0.5.

Distance (pairs):
    d^T_ij = ||t_i - t_j|| / mu_T,   mu_T = mean of the non-zero ||t_i - t_j||      (d^S, mu_S alike)
    L_D = (1/N^2) sum_{i,j} l(d^S_ij, d^T_ij)                      (the zero diagonal included)

Angle (triplets, the angle at vertex a):
    e_ab = n(t_b - t_a)   (0 when b = a),   psi^T_abc = < e_ab, e_ac >              (psi^S alike)
    L_A = (1/N^3) sum_{a,b,c} l(psi^S_abc, psi^T_abc)

Total: L = w_d L_D + w_a L_A, w_d = 25, w_a = 50 (RepDistiller; config `loss.rkd`). The teacher side
has no gradient; the student's mu_S does (as in RepDistiller). Both terms run in float32 outside
autocast (squared distances from a Gram matrix cancel badly in bf16). The angle term is computed from
the Gram matrix (`triplet_angles`): N^3 cosines (N = 256 rows: 64 MB in float32), never the N x N x D
differences (1 GB at D = 2048).

Several processes: the distance term is over the GLOBAL batch (rows gathered from every process,
the student's with gradients; N^2 work). The angle term stays per process (N^3 memory: 8 processes
of 512 rows would need 137 GB for the global batch's triplets); its mean over processes is the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..embeddings import Embeddings
from ..parallel import gather_rows
from . import register_method
from .base import DistillMethod, MethodDims, StepContext


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32, or float64 when it already is (bf16/fp16 under autocast are too coarse here)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[N, N] Euclidean distances between the rows of `x`, exact zeros on the diagonal."""
    squared = x.pow(2).sum(dim=1)
    dist = (squared[:, None] + squared[None, :] - 2 * x @ x.T).clamp(min=eps).sqrt()
    return dist * (1 - torch.eye(len(x), dtype=x.dtype, device=x.device))


def normalized_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise distances divided by their mean over the non-zero entries."""
    dist = pairwise_distances(x)
    nonzero = dist[dist > 0]
    if nonzero.numel() == 0:
        raise ValueError("RKD's distance term needs at least two distinct rows")
    return dist / nonzero.mean()


def triplet_angles(x: torch.Tensor) -> torch.Tensor:
    """psi[a, b, c] = < n(x_b - x_a), n(x_c - x_a) >, [N, N, N], from the Gram matrix G = x x^T:

        < x_b - x_a, x_c - x_a > = G_bc - G_ab - G_ac + G_aa,     psi_abc = that / (d_ab d_ac)

    so nothing of size N x N x D is formed (the direct form costs N^3 D multiply-adds and N^2 D memory,
    this one N^2 D + N^3). Rows are centered first (angles are translation invariant), which keeps the
    Gram differences well conditioned. psi is 0 where b = a or c = a, as n(0) = 0 in the direct form.
    """
    x = x - x.mean(dim=0, keepdim=True)
    gram = x @ x.T
    diag = gram.diagonal()
    inner = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diag[:, None, None]  # [a, b, c]
    dist = pairwise_distances(x)  # exact zeros on the diagonal
    inv = torch.where(dist > 0, 1.0 / dist.clamp(min=1e-12), torch.zeros_like(dist))  # 1 / d_ab, 0 when b = a
    return (inner * inv[:, :, None] * inv[:, None, :]).clamp(-1.0, 1.0)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """SmoothL1 between the mean-normalized pairwise distances of student and teacher rows, mean over N^2."""
    with torch.no_grad():
        target = normalized_distances(teacher.flatten(1))
    return F.smooth_l1_loss(normalized_distances(student.flatten(1)), target)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """SmoothL1 between the triplet angle cosines of student and teacher rows, mean over N^3."""
    with torch.no_grad():
        target = triplet_angles(teacher.flatten(1))
    return F.smooth_l1_loss(triplet_angles(student.flatten(1)), target)


class RKD(DistillMethod):
    needs_maps = False

    def __init__(self, *, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        terms = {"distance": (self.distance_weight, rkd_distance_loss), "angle": (self.angle_weight, rkd_angle_loss)}
        with torch.autocast(student.feat.device.type, enabled=False):  # float32: see the module notes
            s, t = at_least_float32(student.feat), at_least_float32(teacher.feat.detach())
            rows = {"distance": (gather_rows(s), gather_rows(t)), "angle": (s, t)}  # distances: global batch; angles: local
            parts = {name: term(*rows[name]) for name, (weight, term) in terms.items() if weight != 0}  # 0: ablation
        total = sum(terms[name][0] * value for name, value in parts.items())
        return {"loss": total, **{name: value.detach() for name, value in parts.items()}}


@register_method("rkd")
def _rkd(cfg: LossConfig, dims: MethodDims) -> RKD:
    return RKD(distance_weight=cfg.rkd.distance_weight, angle_weight=cfg.rkd.angle_weight)
