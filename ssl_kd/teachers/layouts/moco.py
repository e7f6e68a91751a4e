"""MoCo v1/v2 (facebookresearch/moco main_moco.py): `encoder_q` minus its `fc` projector.

The projector is kept as the file's projection head (`teacher.embedding=head`): `moco/builder.py` builds
`encoder_q = base_encoder(num_classes=dim)` (v1: `fc` one Linear 2048->128) and with `--mlp` (v2) replaces
it by `nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), fc)`: `encoder_q.fc.0` Linear, `.1` ReLU, `.2` Linear.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..formats import (
    Converted,
    arch_field,
    group_keys,
    head_under,
    inner_state_dict,
    register_layout,
    unused_top_level,
)
from .resnet_arch import resnet_converted


def _is_moco(obj: Any) -> bool:
    state_dict, _ = inner_state_dict(obj, ("state_dict",))
    return state_dict is not None and any(key.startswith("encoder_q.") for key in state_dict)


@register_layout("moco", "MoCo v1/v2 checkpoint with module.encoder_q.* keys", _is_moco, priority=10)
def _convert_moco(obj: Any) -> Converted:
    state_dict, used = inner_state_dict(obj, ("state_dict",))
    state_dict = state_dict or {}
    encoder = {k[len("encoder_q.") :]: v for k, v in state_dict.items() if k.startswith("encoder_q.")}
    rest = [k for k in state_dict if not k.startswith("encoder_q.")]
    head = [k for k in encoder if k.startswith("fc.")]
    version = "v2" if "fc.0.weight" in encoder else "v1" if "fc.weight" in encoder else None
    ignored = [f"projector encoder_q.fc.* ({len(head)} tensors, MoCo {version or '?'} head)"] if head else []
    ignored += group_keys(rest) + unused_top_level(obj, used)
    meta: dict[str, Any] = {"method": "moco" + (version or "")}
    if isinstance(obj, Mapping) and isinstance(obj.get("epoch"), int):
        meta["epochs"] = obj["epoch"]
    backbone = {k: v for k, v in encoder.items() if not k.startswith("fc.")}
    converted = resnet_converted(backbone, arch=arch_field(obj), ignored=ignored, meta=meta)
    name = "MoCo v2 fc MLP" if version == "v2" else "MoCo v1 fc" if version == "v1" else "MoCo fc"
    converted.head = head_under(encoder, "fc.", activation="relu", name=name, source="encoder_q.fc.*")
    return converted


