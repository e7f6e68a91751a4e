"""Students: a timm backbone plus a projector MLP to the teacher's embedding width.

`Student.forward(x)` takes images in [0, 1], normalizes them with the student's own mean/std, and
returns `Embeddings(feat=backbone(x), emb=projector(feat))`. The backbone is a stock timm model
(`num_classes=0`), so after distillation it is exported as a plain timm state dict that
`timm.create_model(name, checkpoint_path=...)` loads with no ssl_kd code. `forward(x, maps=True)`
also returns the backbone's stage maps from the same pass (`backbone_with_maps`; FitNet, SP).

`small_stem=True` replaces a ResNet's 7x7/stride-2 stem and max-pool by a 3x3/stride-1 conv (the
CIFAR variant SSL papers use at 32 px); the exported file then records it, since timm's stock
model has the ImageNet stem.

Resolution. A timm model built for a fixed side (a ViT: `img_size`, 224 by default) is built as the
ViT teachers are (`ssl_kd.teachers.layouts.vit_arch.vit_model_kwargs`): at timm's default size, so its
state dict keeps the stock shapes (the export loads with plain timm), with `dynamic_img_size=True`, so
it takes the data's side whatever it is, resampling its position embeddings on the fly, and
`dynamic_img_pad=True`, so a side that is not a multiple of the patch is padded up to one. A model
that takes `img_size` but no `dynamic_img_size` is built at `image_size` when the caller gives it.
"""

from __future__ import annotations

import difflib
import inspect
from functools import lru_cache

import timm
import torch
from torch import nn

from .config import StudentConfig
from .embeddings import Embeddings
from .errors import UserError


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear (the MLP head of MoCo v2 / SimCLR / DLKD's h_A)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def create_backbone(arch: str, *, small_stem: bool = False, image_size: int | None = None) -> nn.Module:
    """`timm.create_model(arch, num_classes=0)`, with a clear error for an unknown name, sized for any
    input side where the model allows it (`resolution_kwargs`, module docstring)."""
    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown model '{arch}'; {hint}any name from timm.list_models() works")
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, **resolution_kwargs(arch, image_size))
    if small_stem:
        _use_small_stem(backbone, arch)
    return backbone


@lru_cache(maxsize=64)
def _init_parameters(arch: str) -> frozenset[str]:
    """The constructor arguments of the model class timm builds for `arch` (read on the meta device)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0)
    except Exception:  # noqa: BLE001  (a model that cannot be built on the meta device: built as timm's default)
        return frozenset()
    return frozenset(inspect.signature(type(model).__init__).parameters)


def resolution_kwargs(arch: str, image_size: int | None = None) -> dict:
    """timm kwargs that let `arch` take images of any side (ViTs, Swin, EVA: `dynamic_img_size`, and
    `dynamic_img_pad` where it exists), else `img_size=image_size` for a model built for one fixed side;
    {} for a model that takes any side anyway (CNNs)."""
    params = _init_parameters(arch)
    if "dynamic_img_size" in params:
        return {"dynamic_img_size": True, **({"dynamic_img_pad": True} if "dynamic_img_pad" in params else {})}
    if "img_size" in params and image_size is not None:
        return {"img_size": image_size}
    return {}


def backbone_with_maps(backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One pass of a timm backbone giving (pooled pre-logits feature, stage maps in stage order).

    The maps are timm's `forward_intermediates` outputs for every stage (`indices=None`: a ResNet's
    stem then layer1..layer4, a ViT's blocks as [B, C, H, W] token grids without prefix tokens); the
    feature is `forward_head(final, pre_logits=True)`, equal to the plain `backbone(x)` of a
    `num_classes=0` model.
    """
    if not hasattr(backbone, "forward_intermediates"):
        raise UserError(f"{type(backbone).__name__} has no forward_intermediates in this timm version; "
                        "a method that needs feature maps (sp, fitnet) cannot use it; choose another model or method")
    final, maps = backbone.forward_intermediates(x, indices=None, intermediates_only=False)
    return backbone.forward_head(final, pre_logits=True), list(maps)


def _use_small_stem(backbone: nn.Module, arch: str) -> None:
    from .teachers.layouts.resnet_arch import small_stem

    try:
        small_stem(backbone, padding=1)
    except UserError:
        raise UserError(f"student.small_stem needs a ResNet with a single conv1 stem; '{arch}' has another stem; set student.small_stem=false") from None


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
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

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
