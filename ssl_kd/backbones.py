"""timm backbones as every network here uses them: built, sized, given a small stem, run for stage maps,
and the mean/std every network applies to its input.

Teachers (`ssl_kd.teachers`), students (`ssl_kd.students`), SimCLR pretraining and the exports build on
this module, and it imports none of them.

Resolution. A timm model built for a fixed side (a ViT: `img_size`, 224 by default) is built at timm's
default size, so its state dict keeps the stock shapes (an export loads with plain timm), with
`dynamic_img_size=True`, so it takes the data's side whatever it is, resampling its position
embeddings on the fly, and `dynamic_img_pad=True`, so a side that is not a multiple of the patch is
padded up to one. A model that takes `img_size` but no `dynamic_img_size` is built at `image_size`
when the caller gives it (`resolution_kwargs`).
"""

from __future__ import annotations

import difflib
import inspect
from functools import lru_cache
from typing import Sequence

import timm
import torch
from torch import nn

from .errors import UserError


def register_normalization(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """Give `module` the non-persistent buffers `mean` and `std` [1, C, 1, 1] (float32) that it applies to
    images in [0, 1] as `(x - mean) / std`: each network keeps the normalisation it was trained with."""
    module.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)


def create_backbone(arch: str, *, small_stem: bool = False, image_size: int | None = None) -> nn.Module:
    """`timm.create_model(arch, num_classes=0)`, with a clear error for an unknown name, sized for any
    input side where the model allows it (`resolution_kwargs`, module docstring)."""
    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown model '{arch}'; {hint}any name from timm.list_models() works")
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, **resolution_kwargs(arch, image_size))
    if small_stem:
        try:
            use_small_stem(backbone, padding=1)
        except UserError:
            raise UserError(f"student.small_stem needs a ResNet with a single conv1 stem; '{arch}' has another stem; "
                            "set student.small_stem=false") from None
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


def use_small_stem(model: nn.Module, padding: int = 1) -> None:
    """Replace a ResNet's 7x7/stride-2 `conv1` by a 3x3/stride-1 conv and its max-pool by Identity.

    Students (`student.small_stem`, padding 1) and the CIFAR-stem teacher layouts use it.
    """
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise UserError(f"the small-image stem needs a ResNet with a single conv1, not {type(model).__name__}")
    small = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=padding, bias=False,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    model.conv1, model.maxpool = small, nn.Identity()
