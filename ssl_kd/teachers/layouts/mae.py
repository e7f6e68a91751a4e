"""MAE (facebookresearch/mae main_pretrain.py, util/misc.py `save_model`): the encoder of a pretrain file.

File: `{"model", "optimizer", "epoch", "scaler", "args"}`. `model` is `MaskedAutoencoderViT`
(models_mae.py): an encoder with timm ViT keys (`cls_token`, `pos_embed` = fixed 2-D sin-cos table,
`patch_embed.proj.*`, `blocks.N.*`, `norm.*`) plus the decoder (`mask_token` [1, 1, D_dec],
`decoder_embed.*`, `decoder_pos_embed`, `decoder_blocks.*`, `decoder_norm.*`, `decoder_pred.*`).
The `_full.pth` / `mae_visualize_*.pth` releases have this layout; the plain `mae_pretrain_vit_*.pth`
releases are encoder-only (`{"model": encoder}`) and load through the `vit_backbone` layout.
-> the encoder only, into timm `vit_{base,large}_patch16_224` / `vit_huge_patch14_224`, named by
`args.model` ('mae_vit_base_patch16') and by the shapes.
"""

from __future__ import annotations

from typing import Any

from ..formats import (
    Converted,
    group_keys,
    inner_state_dict,
    register_layout,
    unused_top_level,
)
from .dino import backbone_converted, epochs_meta, file_args
from .vit_arch import official_vit_name, read_vit

_DECODER = ("decoder_", "mask_token")


def _is_mae(obj: Any) -> bool:
    state_dict, _ = inner_state_dict(obj, ("model",))
    return (
        state_dict is not None
        and any(key.startswith("decoder_") for key in state_dict)
        and read_vit(state_dict) is not None
    )


@register_layout(
    "mae", "MAE pretrain checkpoint: ViT encoder + decoder_* + mask_token under 'model'", _is_mae, priority=40
)
def _convert_mae(obj: Any) -> Converted:
    state_dict, used = inner_state_dict(obj, ("model",))
    state_dict = state_dict or {}
    decoder = [k for k in state_dict if k.startswith(_DECODER)]
    encoder = {k: v for k, v in state_dict.items() if not k.startswith(_DECODER)}
    ignored = [f"decoder {line}" for line in group_keys(decoder)]
    ignored += [name for name in unused_top_level(obj, used) if name != "args"]
    arch = official_vit_name(file_args(obj).get("model"))
    return backbone_converted(encoder, arch, ignored, epochs_meta(obj, "mae"))
