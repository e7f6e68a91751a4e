r"""FitNet: hints, the student's intermediate feature map regresses onto the teacher's.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015
(arXiv:1412.6550); reference code HobbitLong/RepDistiller (distiller_zoo/FitNet.py `HintLoss`,
models/util.py `ConvReg`).

Symbols. N = V*B rows; k = `loss.fitnet.hint_stage`, an index into each network's stage maps
(`Embeddings.maps`: for a ResNet 0 = stem, 1..4 = layer1..layer4, so k = 2 is layer2, RepDistiller's
"middle" hint; for a ViT k is a block); F^S [N, C_S, H_S, W_S], F^T [N, C_T, H_T, W_T] the two hints;
P the resize of F^S to H_T x W_T; r the regressor owned by this loss (trained with the student):

    r(x) = ReLU(BN(Conv1x1(P(x))))            C_S -> C_T channels
    L_hint = (1 / (N C_T H_T W_T)) sum ( r(F^S) - F^T )^2        (MSE, mean over all elements)
    L = beta * L_hint,   beta = 100 (RepDistiller; config `loss.fitnet.weight`)

Differences from RepDistiller's ConvReg: it picks a 3x3 stride-2 conv (student map twice the
teacher's), a 4x4 stride-2 transposed conv (half) or a (1 + H_S - H_T) kernel (larger), and the 1x1
conv + BN + ReLU for equal sizes. Here every size pair uses the 1x1 conv + BN + ReLU after P:
adaptive average pooling when the student map is at least as large in both sides, else bilinear
interpolation (e.g. a teacher seeing 224 px against a student at 96 px). The ReLU, as in
RepDistiller, suits ResNet hints (post-ReLU, >= 0); a ViT block's tokens are also negative, which
a ReLU output cannot match (`use_relu=False` removes it).

The regressor's channel counts are only known from the maps, so it is a lazy module: its
parameters exist (uninitialized) from construction and are materialized in place, with
nn.Conv2d's default init, by the first forward (or by loading a state dict). The teacher side has
no gradient. The original paper trains in two stages (hints, then KD); RepDistiller and this file
train the hint jointly, as the only objective.

Several processes: per row (local); nothing is gathered.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from ..config import LossConfig
from ..embeddings import Embeddings
from ..errors import UserError
from . import register_method
from .base import DistillMethod, MethodDims, StepContext


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`x` [N, C, H, W] at spatial `size`: adaptive average pooling to shrink, bilinear to grow."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class HintRegressor(LazyModuleMixin, nn.Module):
    """r(x) = ReLU(BN(Conv1x1(resize(x)))), mapping the student hint to the teacher hint's shape.

    `forward(student_hint, teacher_hint)`: the teacher hint gives the target size and channels; the
    first call materializes the 1x1 conv's weight [C_T, C_S, 1, 1] and bias [C_T] and the BN.
    """

    def __init__(self, use_relu: bool = True):
        super().__init__()
        self.use_relu = use_relu
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()
        self.bn = nn.LazyBatchNorm2d()

    def initialize_parameters(self, student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> None:
        if not self.has_uninitialized_params():
            return
        in_channels, out_channels = student_hint.shape[1], teacher_hint.shape[1]
        with torch.no_grad():
            self.weight.materialize((out_channels, in_channels, 1, 1))
            self.bias.materialize((out_channels,))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d.reset_parameters
            bound = 1 / math.sqrt(in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
        x = resize_to(student_hint, tuple(teacher_hint.shape[-2:]))
        x = self.bn(F.conv2d(x, self.weight, self.bias))
        return F.relu(x) if self.use_relu else x


def pick_stage(maps: list[torch.Tensor] | None, stage: int, network: str) -> torch.Tensor:
    """maps[stage] (negative indices count from the last stage), with an error naming the valid range."""
    if not maps:
        raise ValueError(f"FitNet needs the {network}'s feature maps: call it with maps=True (needs_maps)")
    if not -len(maps) <= stage < len(maps):
        raise UserError(f"loss.fitnet.hint_stage={stage} but the {network} has {len(maps)} stage maps "
                        f"(indices 0..{len(maps) - 1}, or negative from the last); pick a stage both networks have")
    return maps[stage]


class FitNet(DistillMethod):
    needs_maps = True

    def __init__(self, *, hint_stage: int = 2, weight: float = 100.0, use_relu: bool = True):
        super().__init__()
        self.hint_stage, self.weight = hint_stage, weight
        self.regressor = HintRegressor(use_relu=use_relu)

    def forward(self, student: Embeddings, teacher: Embeddings, queue: torch.Tensor | None, ctx: StepContext) -> dict:
        student_hint = pick_stage(student.maps, self.hint_stage, "student")
        teacher_hint = pick_stage(teacher.maps, self.hint_stage, "teacher").detach()
        loss = F.mse_loss(self.regressor(student_hint, teacher_hint), teacher_hint)
        return {"loss": self.weight * loss, "hint": loss.detach()}


@register_method("fitnet")
def _fitnet(cfg: LossConfig, dims: MethodDims) -> FitNet:
    return FitNet(hint_stage=cfg.fitnet.hint_stage, weight=cfg.fitnet.weight)
