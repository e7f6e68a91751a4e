"""ViT architecture from a state dict's shapes, and the position-embedding fit, for the ViT layouts.

Every ViT layout (MoCo v3, DINO, iBOT, DINOv2, MAE) ends in timm's ViT key names (`cls_token`,
`pos_embed`, `patch_embed.proj.*`, `blocks.N.*`, `norm.*`), or in DINOv2's close variant
(`mask_token`, `register_tokens`, SwiGLU `mlp.w12/w3`, and `blocks.<chunk>.N.*` in training files).
`read_vit` reads the net from either:

* embed dim and patch size from `patch_embed.proj.weight` [D, 3, p, p]; depth from the `blocks.N`;
  registers from `register_tokens` / `reg_token` [1, R, D]; DINOv2 flavour from `mask_token`,
  layer scale (`ls1.gamma`) or SwiGLU keys; the position grid from `pos_embed`.
* `infer_vit_arch` (the registered `infer_arch` hook) names the timm model:
  `vit_{tiny,small,base,large,huge,giant}_patch{8,14,16}_224`, or `vit_{small,base,large,giant}_patch14
  [_reg4]_dinov2`. MoCo v3's 12-head ViT-S has the same shapes; its layout says so (`num_heads`).

Resolution. `vit_model_kwargs` builds the model at the checkpoint's own resolution (`img_size` =
grid x patch, passed only when it differs from the timm default: DINOv2's 518 is timm's default too),
so the loaded model reproduces the reference forward exactly, and with `dynamic_img_size=True`, so it
also takes any other side that is a multiple of the patch, resampling its position embeddings on the
fly as DINO/iBOT/DINOv2's own `interpolate_pos_encoding` does. `adapt_vit` (the layouts' `adapt` hook)
runs timm's `checkpoint_filter_fn`: the DINOv2 renames, and a bicubic resample of `pos_embed` whenever
the built model's grid differs from the file's (e.g. a caller that builds the model at its data size).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import Tensor, nn

from ..formats import StateDict, register_arch_inferer

_SIZES = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large", (1280, 32): "huge",
          (1408, 40): "giant"}
_DINOV2_SIZES = {(384, 12): "small", (768, 12): "base", (1024, 24): "large", (1536, 40): "giant"}
_BLOCK = re.compile(r"^blocks\.(?:\d+\.)?(\d+)\.norm1\.weight$")  # also DINOv2's chunked `blocks.<chunk>.N.`
_CHUNK = re.compile(r"^blocks\.\d+\.(\d+)\.")
MOCOV3_VIT_SMALL_HEADS = 12  # moco-v3 vits.py `vit_small`: 384-d, depth 12, 12 heads (timm's ViT-S has 6)


@dataclass(frozen=True)
class VitShape:
    """What a ViT state dict's shapes say about the net."""

    dim: int
    depth: int
    patch: int
    grid: int | None  # side of the (square) position-embedding grid, None if it is not square
    registers: int
    dinov2: bool


def read_vit(state_dict: Mapping[str, Tensor]) -> VitShape | None:
    """The ViT shape of a timm- or DINOv2-keyed state dict, or None if it is not one. Never raises."""
    try:
        kernel, cls = state_dict.get("patch_embed.proj.weight"), state_dict.get("cls_token")
        if not isinstance(kernel, Tensor) or kernel.ndim != 4 or kernel.shape[-1] != kernel.shape[-2] or cls is None:
            return None
        blocks = {int(m.group(1)) for m in map(_BLOCK.match, state_dict) if m}
        if not blocks or blocks != set(range(len(blocks))):
            return None
        regs = state_dict.get("register_tokens", state_dict.get("reg_token"))
        dinov2 = any(k in state_dict for k in ("mask_token", "register_tokens")) or any(
            ".ls1.gamma" in k or ".mlp.w12." in k for k in state_dict
        )
        return VitShape(int(kernel.shape[0]), len(blocks), int(kernel.shape[-1]), _grid(state_dict),
                        int(regs.shape[1]) if isinstance(regs, Tensor) and regs.ndim == 3 else 0, dinov2)
    except Exception:  # a detector helper: any odd input simply is not a ViT
        return None


def _grid(state_dict: Mapping[str, Tensor]) -> int | None:
    """The side of the patch-position grid; timm's register models keep no cls position (no_embed_class)."""
    pos = state_dict.get("pos_embed")
    if not isinstance(pos, Tensor) or pos.ndim != 3:
        return None
    n = pos.shape[1] - (0 if "reg_token" in state_dict else 1)
    side = math.isqrt(max(n, 0))
    return side if side > 0 and side * side == n else None


@register_arch_inferer
def infer_vit_arch(state_dict: StateDict) -> str | None:
    """The timm ViT whose tensors have these shapes (see module docstring), else None."""
    shape = read_vit(state_dict)
    if shape is None:
        return None
    if shape.dinov2:
        size = _DINOV2_SIZES.get((shape.dim, shape.depth))
        regs = f"_reg{shape.registers}" if shape.registers else ""
        name = f"vit_{size}_patch{shape.patch}{regs}_dinov2"
    else:
        size = _SIZES.get((shape.dim, shape.depth))
        name = f"vit_{size}_patch{shape.patch}_224" if not shape.registers else ""
    return name if size and timm.is_model(name) else None


def official_vit_name(name: Any, patch: Any = None) -> str | None:
    """The timm name for an official repo's ViT name, else None.

    'vit_small' + patch 8 (DINO/iBOT `args`) -> vit_small_patch8_224; 'deit_small' -> vit_small_patch16_224;
    'mae_vit_base_patch16' (MAE `args.model`) -> vit_base_patch16_224.
    """
    if not isinstance(name, str):
        return None
    match = re.fullmatch(r"(?:mae_)?(?:vit|deit)_(tiny|small|base|large|huge|giant)(?:_patch(\d+))?", name)
    if not match:
        return None
    size = match.group(2) or (patch if isinstance(patch, int) and not isinstance(patch, bool) else 16)
    timm_name = f"vit_{match.group(1)}_patch{size}_224"
    return timm_name if timm.is_model(timm_name) else None


@lru_cache(maxsize=64)
def _default_img_size(arch: str) -> int | None:
    """The side timm builds `arch` at by default (read on the meta device: no memory, no init)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        return int(model.patch_embed.img_size[0])
    except Exception:  # not a ViT, or not a timm name: the strict load will say what is wrong
        return None


def native_img_size(state_dict: Mapping[str, Tensor]) -> int | None:
    """The side the checkpoint was trained at: position grid x patch (224 for 14 x 16, 518 for 37 x 14)."""
    shape = read_vit(state_dict)
    return shape.grid * shape.patch if shape and shape.grid else None


def vit_model_kwargs(state_dict: Mapping[str, Tensor], arch: str | None) -> dict[str, Any]:
    """timm kwargs that rebuild the checkpoint's own geometry (see module docstring)."""
    if read_vit(state_dict) is None:
        return {}
    kwargs: dict[str, Any] = {"dynamic_img_size": True}
    size = native_img_size(state_dict)
    if arch and size and _default_img_size(arch) not in (None, size):
        kwargs["img_size"] = size
    return kwargs


def is_mocov3_sincos(pos_embed: Any) -> bool:
    """Whether `pos_embed` is MoCo v3's fixed table (moco-v3 vits.py `build_2d_sincos_position_embedding`).

    Tells a MoCo v3 ViT apart after `convert_to_deit.py` dropped everything else: its ViT-S needs
    `num_heads=MOCOV3_VIT_SMALL_HEADS`, which no shape shows.
    """
    if not isinstance(pos_embed, Tensor) or pos_embed.ndim != 3 or pos_embed.shape[-1] % 4:
        return False
    side, dim = math.isqrt(max(pos_embed.shape[1] - 1, 0)), pos_embed.shape[-1]
    if pos_embed.device.type == "meta" or side == 0 or side * side != pos_embed.shape[1] - 1:
        return False
    grid_w, grid_h = torch.meshgrid(torch.arange(side, dtype=torch.float32),
                                    torch.arange(side, dtype=torch.float32), indexing="ij")
    omega = 1.0 / (10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    out_w, out_h = torch.outer(grid_w.flatten(), omega), torch.outer(grid_h.flatten(), omega)
    table = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    table = torch.cat([torch.zeros(1, dim), table])[None]
    return torch.allclose(pos_embed.float(), table, atol=1e-4)


def unchunk_blocks(state_dict: Mapping[str, Tensor]) -> StateDict:
    """DINOv2 training files' `blocks.<chunk>.<i>.*` (block_chunks > 0) as `blocks.<i>.*`; else unchanged."""
    return {_CHUNK.sub(r"blocks.\1.", key): value for key, value in state_dict.items()}


def adapt_vit(state_dict: StateDict, model: nn.Module) -> StateDict:
    """`state_dict` fitted to the built `model` by timm's own `checkpoint_filter_fn` (see module docstring).

    DINOv2: `mask_token` dropped, `register_tokens` -> `reg_token` with the cls position folded into
    `cls_token` (timm's register models keep no cls position), SwiGLU `w12/w3` -> `fc1/fc2`. All ViTs:
    `pos_embed` resampled (bicubic) when the model's grid differs from the file's. A different patch size
    is a different model, not a resolution: that is left for the strict check to report.
    """
    state_dict = unchunk_blocks(state_dict)
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    kernel = state_dict.get("patch_embed.proj.weight")
    if not isinstance(proj, nn.Conv2d) or kernel is None or kernel.shape[-2:] != proj.weight.shape[-2:]:
        return state_dict
    dinov2_keys = "register_tokens" in state_dict or any(".mlp.w12." in k for k in state_dict)
    if dinov2_keys and "mask_token" not in state_dict:  # timm's DINOv2 branch is keyed on mask_token
        state_dict["mask_token"] = kernel.new_zeros(1, kernel.shape[0])
    return checkpoint_filter_fn(state_dict, model)
