"""timm / torchvision: a plain state dict, bare or under `state_dict` / `model`."""

from __future__ import annotations

from typing import Any

from ..formats import (
    Converted,
    arch_field,
    inner_state_dict,
    register_layout,
    unused_top_level,
)

_TIMM_KEYS = ("state_dict", "model")


def _is_timm(obj: Any) -> bool:
    return inner_state_dict(obj, _TIMM_KEYS)[0] is not None


@register_layout(
    "timm", "a plain timm/torchvision state dict, bare or under 'state_dict'/'model'", _is_timm, priority=100
)
def _convert_timm(obj: Any) -> Converted:
    state_dict, key = inner_state_dict(obj, _TIMM_KEYS)
    return Converted(state_dict=state_dict or {}, arch=arch_field(obj), ignored=unused_top_level(obj, key))
