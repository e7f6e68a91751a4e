"""DINOv2 (facebookresearch/dinov2) backbones and iBOT (bytedance/ibot) training checkpoints.

* `dinov2`: the released `dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth` are bare state dicts:
  `cls_token`, `pos_embed` [1, 1 + 37*37, D] (trained at 518 px), `mask_token` [1, D] (the iBOT-style
  mask embedding, unused at inference), `patch_embed.proj.*`, `blocks.N.{norm1, attn.qkv, attn.proj,
  ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`, `norm.*`; `register_tokens` [1, 4, D] in the
  `_reg4` files; ViT-g has SwiGLU `mlp.w12/w3` instead of `mlp.fc1/fc2`. Also read: the evaluation
  `teacher_checkpoint.pth` of a DINOv2 training run, `{"teacher": {"backbone.*", "dino_head.*",
  "ibot_head.*"}}`, whose blocks may be chunked (`blocks.<chunk>.<i>.*`, dinov2#235).
  -> timm `vit_{small,base,large,giant}_patch14[_reg4]_dinov2`, converted by timm's own
  `checkpoint_filter_fn` in `adapt` (see `vit_arch.adapt_vit`).
* `ibot`: `main_ibot.py` saves `{"student", "teacher", "optimizer", "epoch", "args", "ibot_loss",
  "fp16_scaler"?}`, the DINO wrapper layout (`backbone.*`, `head.*` = iBOTHead). ViT-S/B/L 16 ->
  timm `vit_{small,base,large}_patch16_224`. The student's backbone has `masked_embed` [1, D] (masked
  image modelling); the teacher is built without it, but it is dropped and named wherever it shows up.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..formats import (
    Converted,
    StateDict,
    inner_state_dict,
    register_layout,
    strip_wrapper_prefixes,
)
from .dino import (
    args_arch,
    backbone_converted,
    epochs_meta,
    file_args,
    has_training_backbone,
    training_backbone,
)
from .vit_arch import read_vit, unchunk_blocks

_DINOV2_KEYS = ("mask_token", "register_tokens")


def _dinov2_marked(state_dict: Mapping[str, Any]) -> bool:
    """A ViT state dict with DINOv2's own keys (mask/register tokens, SwiGLU), which timm names otherwise."""
    return read_vit(state_dict) is not None and (
        any(key in state_dict for key in _DINOV2_KEYS) or any(".mlp.w12." in key for key in state_dict)
    )


def _teacher_backbone(obj: Any) -> StateDict:
    """The `teacher` backbone of a training file, prefixes stripped (empty if there is none). Never raises."""
    if not has_training_backbone(obj):
        return {}
    part = strip_wrapper_prefixes(obj["teacher"])
    return {k[len("backbone.") :]: v for k, v in part.items() if k.startswith("backbone.")}


def _is_dinov2(obj: Any) -> bool:
    state_dict, _ = inner_state_dict(obj, ())
    if state_dict is not None:
        return _dinov2_marked(state_dict)
    return isinstance(obj, Mapping) and "student" not in obj and _dinov2_marked(_teacher_backbone(obj))


@register_layout(
    "dinov2",
    "DINOv2 backbone: bare ViT with mask_token/register_tokens/mlp.w12 (or a run's teacher_checkpoint.pth)",
    _is_dinov2,
    priority=20,
)
def _convert_dinov2(obj: Any) -> Converted:
    bare, _ = inner_state_dict(obj, ())
    backbone, ignored = (bare, []) if bare is not None else training_backbone(obj)
    backbone = unchunk_blocks(backbone)
    if "mask_token" in backbone:  # kept for timm's converter, which drops it (see vit_arch.adapt_vit)
        ignored.insert(0, "mask_token (DINOv2 masked-modelling token, unused at inference)")
    return backbone_converted(backbone, None, ignored, {"method": "dinov2"})


def _is_ibot(obj: Any) -> bool:
    if not (has_training_backbone(obj) and "student" in obj):
        return False
    return "ibot_loss" in obj or any(
        str(key).endswith("backbone.masked_embed")
        for part in ("teacher", "student") if isinstance(obj[part], Mapping)
        for key in obj[part]
    )


@register_layout(
    "ibot", "iBOT training checkpoint: teacher/student with backbone.*/head.*, args, ibot_loss", _is_ibot, priority=25
)
def _convert_ibot(obj: Mapping[str, Any]) -> Converted:
    backbone, ignored = training_backbone(obj)
    if "masked_embed" in backbone:
        del backbone["masked_embed"]
        ignored.insert(0, "teacher backbone.masked_embed (iBOT masked-modelling token)")
    return backbone_converted(backbone, args_arch(file_args(obj)), ignored, epochs_meta(obj, "ibot"))
