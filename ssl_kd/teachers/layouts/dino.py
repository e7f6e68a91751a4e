"""DINO (facebookresearch/dino): training checkpoints, and bare ViT backbones such as DINO's releases.

* `dino`: `main_dino.py` saves `{"student", "teacher", "optimizer", "epoch", "args", "dino_loss",
  "fp16_scaler"?}`. Student and teacher are each `MultiCropWrapper(backbone, head)`: keys `backbone.*`
  (a timm-keyed ViT, or a torchvision ResNet without `fc`) and `head.*` (DINOHead: `mlp.*`,
  `last_layer.weight_g/_v`). The student is DDP-wrapped (`module.`); the teacher only when the
  backbone has BatchNorm. The `teacher` weights are taken, as DINO's own eval scripts do
  (`--checkpoint_key teacher`); the arch comes from `args.arch` + `args.patch_size`. The teacher's
  DINOHead MLP up to its bottleneck is kept as the projection head (`teacher.embedding=head`):
  `vision_transformer.py` `DINOHead.mlp` is `Linear(D, 2048)[, BatchNorm1d], GELU, Linear(2048, 2048)[, BN],
  GELU, Linear(2048, 256)` (`head.mlp.{0,2,4}`, with `use_bn` `{0,1,3,4,6}`; one bare Linear when
  `nlayers=1`), 256-d; the L2 norm and the weight-normed `last_layer` (65536 prototypes) after it are not.
* `vit_backbone`: DINO's released `dino_vit{small,base}{16,8}_pretrain.pth` are bare ViT state dicts
  (`cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.*`, no head): exactly the keys of a
  headless timm ViT. So this layout takes any ViT backbone with nothing else in it, bare or under
  `state_dict_ema`/`model_ema`/`state_dict`/`model` (EMA first, as timm does): iBOT's extracted
  backbones, MAE's encoder-only releases, MoCo v3's `convert_to_deit.py` output; it names the timm
  model from the shapes. A ViT-S whose `pos_embed` is MoCo v3's fixed sin-cos table is MoCo v3's
  12-head ViT-S (`convert_to_deit.py` output), built with `num_heads=12`. DINO's released ResNet-50
  is a headless torchvision ResNet: the generic `timm` layout and the ResNet inferer load it.

`training_backbone` and `file_args` are shared with the iBOT and DINOv2 layouts (same wrapper).
"""

from __future__ import annotations

from typing import Any, Mapping

import timm

from ...errors import UserError
from ..formats import (
    Converted,
    StateDict,
    arch_field,
    group_keys,
    head_under,
    infer_arch,
    inner_state_dict,
    is_state_dict,
    register_layout,
    strip_wrapper_prefixes,
    unused_top_level,
)
from .vit_arch import (
    MOCOV3_VIT_SMALL_HEADS,
    adapt_vit,
    is_mocov3_sincos,
    native_img_size,
    official_vit_name,
    read_vit,
    vit_model_kwargs,
)

_VIT_BACKBONE = ("cls_token", "pos_embed", "reg_token", "patch_embed.", "blocks.", "norm.")
_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")  # EMA first, as timm and the `timm` layout do


def file_args(obj: Any) -> Mapping[str, Any]:
    """The training `args` a checkpoint saved (an argparse.Namespace, or a dict), else {}."""
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if isinstance(args, Mapping):
        return args
    return vars(args) if hasattr(args, "__dict__") else {}


def epochs_meta(obj: Any, method: str) -> dict[str, Any]:
    """`{"method": method, "epochs": N}` (epochs only when the file has an integer `epoch`)."""
    meta: dict[str, Any] = {"method": method}
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        meta["epochs"] = epoch
    return meta


def has_training_backbone(obj: Any, key: str = "teacher") -> bool:
    """Whether `obj[key]` is a state dict with `backbone.*` keys (DINO-style MultiCropWrapper). Never raises."""
    part = obj.get(key) if isinstance(obj, Mapping) else None
    return is_state_dict(part) and any(k.startswith("backbone.") for k in strip_wrapper_prefixes(part))


def training_backbone(obj: Mapping[str, Any], key: str = "teacher") -> tuple[StateDict, list[str]]:
    """`obj[key]`'s `backbone.*` weights (prefixes stripped), and what else the file holds, for `ignored`."""
    if not has_training_backbone(obj, key):  # only when a layout was forced onto another kind of file
        raise UserError(
            f"no '{key}' state dict with backbone.* keys in this file; is it a DINO/iBOT training checkpoint?"
        )
    part = strip_wrapper_prefixes(obj[key])
    backbone = {k[len("backbone.") :]: v for k, v in part.items() if k.startswith("backbone.")}
    rest = [k for k in part if not k.startswith("backbone.")]
    ignored = [f"{key} {line}" for line in group_keys(rest)]
    ignored += [name for name in unused_top_level(obj, key) if name != "args"]
    return backbone, ignored


def args_arch(args: Mapping[str, Any]) -> str | None:
    """The timm name for a DINO/iBOT `args.arch` (+ `args.patch_size` for ViTs); None if timm lacks it."""
    arch = args.get("arch")
    vit = official_vit_name(arch, args.get("patch_size"))
    if vit or not isinstance(arch, str):
        return vit
    return arch if not arch.startswith(("vit", "deit")) and timm.is_model(arch) else None  # torchvision ResNets


def backbone_converted(backbone: StateDict, arch: str | None, ignored: list[str], meta: dict[str, Any]) -> Converted:
    """A `Converted` for a backbone from a ViT layout (or a ResNet one: then no ViT geometry is added)."""
    inferred = infer_arch(backbone)
    is_vit = read_vit(backbone) is not None
    return Converted(
        state_dict=backbone,
        arch=arch,
        inferred_arch=inferred,
        ignored=ignored,
        meta=meta,
        input_size=native_img_size(backbone),
        model_kwargs=vit_model_kwargs(backbone, arch or inferred) if is_vit else {},
        adapt=adapt_vit if is_vit else None,
    )


def _is_dino(obj: Any) -> bool:
    return has_training_backbone(obj) and "student" in obj


@register_layout(
    "dino", "DINO training checkpoint: teacher/student with backbone.*/head.*, args, dino_loss", _is_dino, priority=30
)
def _convert_dino(obj: Mapping[str, Any]) -> Converted:
    backbone, ignored = training_backbone(obj)
    converted = backbone_converted(backbone, args_arch(file_args(obj)), ignored, epochs_meta(obj, "dino"))
    converted.head = head_under(strip_wrapper_prefixes(obj["teacher"]), "head.mlp.", activation="gelu",
                                name="DINO head MLP to its bottleneck", source="teacher head.mlp.*")
    return converted


def _vit_only(obj: Any) -> bool:
    state_dict, _ = inner_state_dict(obj, _WRAPPERS)
    return (
        state_dict is not None
        and all(key.startswith(_VIT_BACKBONE) for key in state_dict)
        and read_vit(state_dict) is not None
    )


@register_layout(
    "vit_backbone",
    "a bare ViT backbone state dict, no head (DINO/iBOT releases, MAE encoder-only, headless timm ViT)",
    _vit_only,
    priority=90,
)
def _convert_vit_backbone(obj: Any) -> Converted:
    state_dict, key = inner_state_dict(obj, _WRAPPERS)
    ignored = [name for name in unused_top_level(obj, key) if name != "args"]
    meta = {"weights": key} if key in _WRAPPERS[:2] else {}
    converted = backbone_converted(state_dict or {}, arch_field(obj), ignored, meta)
    shape, pos_embed = read_vit(converted.state_dict), converted.state_dict.get("pos_embed")
    if shape is not None and shape.dim == 384 and is_mocov3_sincos(pos_embed):  # MoCo v3 convert_to_deit.py
        converted.model_kwargs["num_heads"] = MOCOV3_VIT_SMALL_HEADS
        converted.meta["method"] = "mocov3"
    return converted
