"""Students: a timm backbone plus a projector MLP to the teacher's embedding width.

`Student.forward(x)` takes images in [0, 1], normalizes them with the student's own mean/std, and
returns `Embeddings(feat=backbone(x), emb=projector(feat))`. The backbone is a stock timm model
(`num_classes=0`), so after distillation it is exported as a plain timm state dict that
`timm.create_model(name, checkpoint_path=...)` loads with no ssl_kd code. `forward(x, maps=True)`
also returns the backbone's stage maps from the same pass (`ssl_kd.backbones.backbone_with_maps`; FitNet, SP).

`small_stem=True` replaces a ResNet's 7x7/stride-2 stem and max-pool by a 3x3/stride-1 conv (the
CIFAR variant SSL papers use at 32 px); the exported file then records it, since timm's stock
model has the ImageNet stem.

Resolution: the backbone takes the data's side where timm allows it (`ssl_kd.backbones`).
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from .backbones import backbone_with_maps, create_backbone, register_normalization, resolution_kwargs
from .config import StudentConfig
from .embeddings import Embeddings


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear (the MLP head of MoCo v2 / SimCLR / DLKD's h_A)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class Student(nn.Module):
    def __init__(self, cfg: StudentConfig, embed_dim: int, mean, std, extra_dims: tuple[int, ...] = (), image_size: int | None = None):
        super().__init__()
        self.arch, self.small_stem = cfg.arch, cfg.small_stem
        self.model_kwargs = resolution_kwargs(cfg.arch, image_size) if timm.is_model(cfg.arch) else {}  # what timm needs to rebuild it
        with torch.random.fork_rng():
            torch.manual_seed(cfg.init_seed)
            self.backbone = create_backbone(cfg.arch, small_stem=cfg.small_stem, image_size=image_size)
            self.projector = mlp_head(self.backbone.num_features, cfg.proj_hidden, embed_dim)
            # one projector per additional teacher (built after the primary's, so its init is unchanged)
            self.extra_projectors = nn.ModuleList(mlp_head(self.backbone.num_features, cfg.proj_hidden, dim) for dim in extra_dims)
        register_normalization(self, mean, std)

    @property
    def feat_dim(self) -> int:
        return self.backbone.num_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)

    def project(self, feat: torch.Tensor, k: int = 0) -> torch.Tensor:
        """The embedding for teacher k (0: the primary's `projector`, k >= 1: `extra_projectors[k - 1]`)."""
        return self.projector(feat) if k == 0 else self.extra_projectors[k - 1](feat)

    def backbone_pass(self, x: torch.Tensor, maps: bool = False) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """(backbone feature, stage maps or None) of one pass; each teacher's projector then applies to the feature."""
        if not maps:
            return self.features(x), None
        return backbone_with_maps(self.backbone, (x - self.mean) / self.std)

    def forward(self, x: torch.Tensor, maps: bool = False) -> Embeddings:
        """`maps=True`: also the backbone's stage maps, from the same single pass."""
        feat, stage_maps = self.backbone_pass(x, maps)
        return Embeddings(feat=feat, emb=self.projector(feat), maps=stage_maps)
