"""PyTorch Lightning `.ckpt` files of SSL libraries: solo-learn, lightly, Spijkervet/SimCLR `main_pl.py`.

Layout: `{"state_dict": {...}, "epoch", "global_step", "pytorch-lightning_version",
"hyper_parameters", "optimizer_states", "lr_schedulers", "callbacks", "loops", ...}`; the weights are
the LightningModule's attributes, so the backbone sits under its attribute name:

* solo-learn (vturrisi/solo-learn `solo/methods/base.py`): `backbone.*` = torchvision ResNet with
  `fc` = Identity (or a timm ViT with `num_classes=0`), beside `projector.*`, `predictor.*`,
  `momentum_backbone.*`, `momentum_projector.*`, `classifier.*` (online linear probe). Older
  releases call the backbone `encoder.`. CIFAR runs replace `conv1` by a 3x3/stride-1 conv with
  **padding 2** and drop the max-pool;
* lightly (lightly-ai/lightly docs and benchmarks): `backbone.*` with torchvision names, or numeric
  names when the backbone is `nn.Sequential(*list(resnet.children())[:-1])` (`backbone.0.weight` =
  conv1, `backbone.4.*` = layer1 ...), beside `projection_head.*` / `prediction_head.*`;
* Spijkervet/SimCLR `main_pl.py`: `encoder.*`, with the same tensors again under `model.encoder.*`.

The backbone is kept (prefix removed as a true prefix, its `fc.*` dropped); everything else is
named as ignored. The online projector is kept as the projection head (`teacher.embedding=head`; ReLU
between layers in all three): solo-learn `projector.*` (`solo/methods/*.py`: e.g. simclr Linear-ReLU-Linear,
byol/swav Linear-BN-ReLU-Linear, barlow/vicreg/nnclr/simsiam three Linears, some ending in a BatchNorm1d),
lightly `projection_head.layers.*` (`lightly/models/modules/heads.py` `ProjectionHead`: Linear[-BN][-ReLU]
blocks in one `layers` Sequential), Spijkervet `model.projector.*` (Linear-ReLU-Linear, no biases). The
momentum copies (`momentum_projector.*`, `projection_head_momentum.*`) and predictors are not heads. `hyper_parameters` may hold arbitrary objects: they are only read for the method
name. Detection needs a `backbone.`/`encoder.` key plus a Lightning top-level key (`global_step`,
`pytorch-lightning_version`, ...) or, for `backbone.`, a sibling SSL head; DINO's `backbone.` +
`head.last_layer` is left to the DINO layout.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..formats import (
    Converted,
    ProjectionHead,
    group_keys,
    head_under,
    inner_state_dict,
    register_layout,
    unused_top_level,
)
from .resnet_arch import from_sequential, resnet_converted, split_prefix

_LIGHTNING_KEYS = ("pytorch-lightning_version", "global_step", "optimizer_states", "lr_schedulers")
_SSL_HEADS = (
    "projector.", "projection_head.", "predictor.", "prediction_head.", "momentum_backbone.",
    "momentum_projector.", "classifier.", "prototypes",
)
_SOLO_HEADS = ("projector.", "momentum_backbone.", "classifier.")
_BACKBONE_PREFIXES = ("backbone.", "encoder.")
# (prefix, what it is) of the online projection head, first match wins (see the module docstring)
_PROJECTORS = (("projector.", "projector"), ("projection_head.layers.", "lightly projection head"),
               ("model.projector.", "SimCLR projector (Spijkervet main_pl.py)"))


def _lightning_state_dict(obj: Any) -> tuple[dict | None, str | None]:
    """The `state_dict` of a Lightning-style checkpoint and its backbone prefix, else (None, None)."""
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        return None, None
    state_dict, _ = inner_state_dict(obj, ("state_dict",))
    if state_dict is None or any(key.startswith("head.last_layer.") for key in state_dict):
        return None, None
    prefix = next((p for p in _BACKBONE_PREFIXES if any(key.startswith(p) for key in state_dict)), None)
    return (state_dict, prefix) if prefix else (None, None)


def _is_lightning(obj: Any) -> bool:
    state_dict, prefix = _lightning_state_dict(obj)
    if state_dict is None:
        return False
    if any(key in obj for key in _LIGHTNING_KEYS):
        return True
    return prefix == "backbone." and any(key.startswith(_SSL_HEADS) for key in state_dict)


def _method(obj: Mapping[str, Any]) -> str | None:
    """The SSL method recorded in Lightning's hyper-parameters (solo-learn: `cfg.method`), if any."""
    hparams = obj.get("hyper_parameters")
    for where in (hparams, hparams.get("cfg") if isinstance(hparams, Mapping) else None):
        method = where.get("method") if isinstance(where, Mapping) else None
        if isinstance(method, str):
            return method
    return None


@register_layout(
    "lightning",
    "a Lightning .ckpt (solo-learn, lightly, Spijkervet SimCLR): backbone.* or encoder.* under 'state_dict'",
    _is_lightning,
    priority=40,
)
def _convert_lightning(obj: Mapping[str, Any]) -> Converted:
    state_dict, prefix = _lightning_state_dict(obj)
    backbone, rest = split_prefix(state_dict or {}, prefix or "backbone.")
    meta: dict[str, Any] = {"method": _method(obj)}
    if "0.weight" in backbone and "conv1.weight" not in backbone:
        backbone = from_sequential(backbone)
        meta["backbone"] = "nn.Sequential of a torchvision ResNet's children"
    fc = [k for k in backbone if k.startswith("fc.")]
    backbone = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
    ignored = [f"{prefix}fc.* ({len(fc)} tensors)"] if fc else []
    ignored += group_keys(rest) + unused_top_level(obj, "state_dict")
    if isinstance(obj.get("epoch"), int):
        meta["epochs"] = obj["epoch"]
    if isinstance(obj.get("pytorch-lightning_version"), str):
        meta["lightning"] = obj["pytorch-lightning_version"]
    solo = prefix == "backbone." and any(key.startswith(_SOLO_HEADS) for key in rest)
    meta = {k: v for k, v in meta.items() if v is not None}
    converted = resnet_converted(backbone, small_stem_padding=2 if solo else 1, ignored=ignored, meta=meta)
    converted.head = _projector(state_dict or {}, solo)
    return converted


def _projector(state_dict: Mapping[str, Any], solo: bool) -> ProjectionHead | None:
    for prefix, name in _PROJECTORS:
        name = f"solo-learn {name}" if solo and prefix == "projector." else name
        head = head_under(state_dict, prefix, activation="relu", name=name)
        if head is not None:
            return head
    return None
