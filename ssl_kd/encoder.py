"""`FrozenEncoder`: a frozen backbone that normalises and sizes its own input and returns `Embeddings`.

Every model that is measured or distilled from without being trained is one: a teacher
(`ssl_kd.teachers.Teacher`, a subclass that adds a projection head and a classifier) and a
distilled student rebuilt from its export (`ssl_kd.evaluation.models.load_student_export`).
This module imports `backbones` and `embeddings` only, so teachers, students and the evaluation can
all build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import backbone_with_maps, register_normalization
from .embeddings import Embeddings


class FrozenEncoder(nn.Module):
    """A frozen backbone: images in [0, 1] -> `Embeddings(feat=f, emb=f)`.

    Input: float images [B, 3, H, W] in [0, 1], not normalised (any other dtype is a `TypeError`).
    The encoder applies its own `mean`/`std` (buffers [1, 3, 1, 1], `register_normalization`), after
    resizing to `image_size` x `image_size` (bilinear, antialiased) when `image_size` is an int; None
    keeps the side it is given.

    Output: `Embeddings(feat=f, emb=f, logits=None)`, f the backbone's pooled pre-logits feature
    [B, feat_dim] (`backbone(x)` of a `num_classes=0` timm model), computed without autograd.
    `forward(x, maps=True)` also fills `maps`, the backbone's stage outputs
    (`ssl_kd.backbones.backbone_with_maps`), from the same single pass.

    Frozen (`freeze`): every parameter has `requires_grad=False`, and the encoder stays in eval mode
    whatever `.train()` is called with, on it or on a parent. The backbone given is frozen in place, not
    copied.

    What the evaluation and the exports read: `backbone`, `arch` (the timm name, or a label),
    `feat_dim`, `embed_dim` (the width of `emb`: `feat_dim` here), `image_size`, `format` (what the
    weights came from), `source` (the file or module they came from), `mean`, `std` and `has_logits`
    (False: no classifier; a `Teacher` of a supervised checkpoint may have one).
    """

    has_logits: bool = False

    def __init__(self, backbone: nn.Module, *, arch: str, mean: Sequence[float], std: Sequence[float],
                 image_size: int | None = None, format: str = "unknown", source: str = "") -> None:
        super().__init__()
        self.backbone = backbone
        register_normalization(self, mean, std)
        self.arch = arch
        self.feat_dim: int = int(backbone.num_features)
        self.embed_dim: int = self.feat_dim
        self.image_size = image_size
        self.format = format
        self.source = source
        self.freeze()

    def freeze(self) -> FrozenEncoder:
        """`requires_grad=False` on every parameter and eval mode: called at the end of `__init__`; a subclass
        that attaches more modules (a teacher's projection head) calls it again once they are attached."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Always eval mode: a frozen encoder's BatchNorm statistics and dropout never change."""
        return super().train(False)

    def preprocess(self, x: Tensor) -> Tensor:
        """What the backbone sees: `x` checked (float), resized (`resize`), then `(x - mean) / std`."""
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects float images in [0, 1], got dtype {x.dtype}")
        return (self.resize(x) - self.mean) / self.std

    def resize(self, x: Tensor) -> Tensor:
        """`x` at image_size x image_size (bilinear, antialiased), or unchanged when no size is set."""
        size = self.image_size
        if size is None or tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    def backbone_pass(self, x: Tensor, maps: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """(pooled feature, stage maps or None) of the preprocessed `x`, in one pass of the backbone."""
        if maps:
            return backbone_with_maps(self.backbone, x)
        return self.backbone(x), None

    @torch.no_grad()
    def forward(self, x: Tensor, maps: bool = False) -> Embeddings:
        """`maps=True`: also the backbone's stage maps (`Embeddings.maps`), from the same single pass."""
        feat, stage_maps = self.backbone_pass(self.preprocess(x), maps)
        return Embeddings(feat=feat, emb=feat, logits=None, maps=stage_maps)

    def extra_repr(self) -> str:
        return f"arch={self.arch}, format={self.format}, feat_dim={self.feat_dim}, source={self.source!r}"
