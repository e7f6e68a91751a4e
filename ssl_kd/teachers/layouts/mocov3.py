"""MoCo v3 (facebookresearch/moco-v3 main_moco.py): `base_encoder` minus its projector.

File: `{"epoch", "arch", "state_dict", "optimizer", "scaler"}`; `state_dict` is the DDP-wrapped MoCo
module: `module.base_encoder.*`, `module.momentum_encoder.*` (the EMA copy), `module.predictor.*`.
Their `main_lincls.py` keeps `base_encoder` and drops its projector, which keeps the classifier's name:

* ResNet (`arch` a torchvision name, e.g. 'resnet50'): torchvision keys, projector in `fc.{0,1,3,4}`
  (Linear-BN-ReLU-Linear-BN) -> timm `resnet50` (the same keys).
* ViT (`arch` 'vit_small' / 'vit_base', `vits.py`, a subclass of timm's VisionTransformer): timm keys
  `cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.*`, projector in `head.{0..7}`
  -> timm `vit_small_patch16_224` / `vit_base_patch16_224`. `pos_embed` is MoCo v3's fixed 2-D
  sin-cos table, stored as a tensor, so it simply loads. MoCo v3's ViT-S has **12 heads** where timm's
  has 6 (README); heads leave no trace in the shapes, so the layout passes `num_heads=12`.
  The conv-stem `vit_conv_small/base` have no timm counterpart and are refused.
"""

from __future__ import annotations

from typing import Any

from ...errors import UserError
from ..formats import (
    Converted,
    arch_field,
    group_keys,
    inner_state_dict,
    register_layout,
    unused_top_level,
)
from .dino import backbone_converted, epochs_meta
from .vit_arch import MOCOV3_VIT_SMALL_HEADS, official_vit_name, read_vit

_PREFIX = "base_encoder."


def _is_mocov3(obj: Any) -> bool:
    state_dict, _ = inner_state_dict(obj, ("state_dict",))
    return state_dict is not None and any(key.startswith(_PREFIX) for key in state_dict)


def _arch(obj: Any, encoder: dict) -> str | None:
    """The timm name for the file's `arch` ('vit_small' -> vit_small_patch16_224; torchvision names as is)."""
    arch = arch_field(obj)
    conv_stem = any(k.startswith("patch_embed.proj.") for k in encoder) and "patch_embed.proj.weight" not in encoder
    if conv_stem or (arch or "").startswith("vit_conv"):
        raise UserError(
            f"MoCo v3 {arch or 'ViT'} has a convolutional patch stem, which no timm ViT has; "
            "use a MoCo v3 vit_small, vit_base or ResNet checkpoint"
        )
    if arch and arch.startswith("vit_"):
        return official_vit_name(arch) or arch  # an unknown ViT name is reported by resolve_arch
    return arch


@register_layout(
    "mocov3",
    "MoCo v3 checkpoint with module.base_encoder.* / momentum_encoder.* / predictor.* (ResNet or ViT)",
    _is_mocov3,
    priority=10,
)
def _convert_mocov3(obj: Any) -> Converted:
    state_dict, used = inner_state_dict(obj, ("state_dict",))
    state_dict = state_dict or {}
    encoder = {k[len(_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(_PREFIX)}
    head = "head." if "cls_token" in encoder else "fc."
    projector = [k for k in encoder if k.startswith(head)]
    backbone = {k: v for k, v in encoder.items() if not k.startswith(head)}
    ignored = [f"projector {_PREFIX}{head}* ({len(projector)} tensors, MoCo v3 head)"] if projector else []
    ignored += group_keys(k for k in state_dict if not k.startswith(_PREFIX)) + unused_top_level(obj, used)
    converted = backbone_converted(backbone, _arch(obj, encoder), ignored, epochs_meta(obj, "mocov3"))
    shape = read_vit(backbone)
    if shape is not None and shape.dim == 384:
        converted.model_kwargs["num_heads"] = MOCOV3_VIT_SMALL_HEADS
    return converted
