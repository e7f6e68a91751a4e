"""timm / torchvision: a plain state dict, bare or under `state_dict` / `model`; timm train.py checkpoints.

timm's `train.py` (`timm/utils/checkpoint_saver.py`) saves `{"epoch", "arch", "state_dict",
"state_dict_ema" (with --model-ema), "optimizer", "version", "args", "metric"?}`, unwrapped (no
`module.`). Like `timm.models.load_state_dict(use_ema=True)`, the EMA weights are preferred when
present (`state_dict_ema`, then `model_ema` as in DeiT files); the non-EMA ones are named as ignored.
"""

from __future__ import annotations

from typing import Any

from ..formats import (
    Converted,
    arch_field,
    inner_state_dict,
    register_layout,
    unused_top_level,
)
from .resnet_arch import resnet_converted

_EMA_KEYS = ("state_dict_ema", "model_ema")
_TIMM_KEYS = (*_EMA_KEYS, "state_dict", "model")


def _is_timm(obj: Any) -> bool:
    return inner_state_dict(obj, _TIMM_KEYS)[0] is not None


@register_layout(
    "timm", "a plain timm/torchvision state dict, bare or under 'state_dict'/'model' (EMA preferred)", _is_timm,
    priority=100,
)
def _convert_timm(obj: Any) -> Converted:
    state_dict, key = inner_state_dict(obj, _TIMM_KEYS)
    ignored = unused_top_level(obj, key)
    meta: dict[str, Any] = {}
    if key in _EMA_KEYS:
        ignored = [f"{name} (the non-EMA weights; {key} was loaded, as timm does)" if name in _TIMM_KEYS else name
                   for name in ignored]
        meta["weights"] = key
    return resnet_converted(state_dict or {}, arch=arch_field(obj), ignored=ignored, meta=meta)
