"""BYOL, SimSiam and SwAV checkpoints in the layouts their popular repositories write.

* `swav`: facebookresearch/swav (`main_swav.py`, `hubconf.py`, `src/resnet50.py`). Released files are a
  bare state dict; training checkpoints are `{"epoch", "state_dict", "optimizer"(, "amp")}`. Keys:
  `module.` + torchvision ResNet-50 names (no `fc`), `projection_head.{0,1,3}.*` and `prototypes.weight`
  (or `prototypes.prototypes{i}.weight`). The DeepCluster-v2 / SeLa-v2 files of the same release
  share the layout. SwAV's conv1 (ConstantPad2d(1) then padding 2) equals torchvision's padding 3;
  the w2/w4/w5 models widen the stem too (see resnet_arch). `projection_head` is kept as the projection
  head (`teacher.embedding=head`): `src/resnet50.py` builds `nn.Sequential(nn.Linear(2048, hidden_mlp),
  nn.BatchNorm1d(hidden_mlp), nn.ReLU(inplace=True), nn.Linear(hidden_mlp, output_dim))`, or one
  `nn.Linear(2048, output_dim)` when `hidden_mlp == 0`; its output is L2-normalised before the
  prototypes, which the methods do themselves. The BYOL and SimSiam layouts below keep no head.
* `byol-pytorch`: lucidrains/byol-pytorch when the whole `BYOL` learner is saved: `net.*` and the
  same tensors under `online_encoder.net.*`, `online_encoder.projector.*`, `online_predictor.*`,
  `target_encoder.*`; possibly under a wrapper prefix (`learner.`, `model.`) and `state_dict`. The
  wrapped net's untrained `fc` (BYOL hooks the layer before it) is dropped. The README's own save
  (`resnet.state_dict()`) is a plain torchvision file: the `timm` layout reads it.
* `byol-sthalles`: sthalles/PyTorch-BYOL `trainer.py` `save_model`: `{"online_network_state_dict",
  "target_network_state_dict", "optimizer_state_dict"(, "encoder_state_dict")}`; the online network's
  `encoder` is `nn.Sequential(*list(resnet.children())[:-1])` (numeric keys) beside `projetion.*` (sic).
  Its transforms end in `ToTensor()` (no normalisation): the teacher gets mean 0, std 1.
  The research notes do not cover this repo; read from `trainer.py`, `models/resnet_base_network.py`
  and `data/transforms.py`.
* `simsiam`: facebookresearch/simsiam `main_simsiam.py`: `{"epoch", "arch", "state_dict", "optimizer"}`,
  keys `module.encoder.*` (torchvision ResNet whose `fc` became the 3-layer projector
  `encoder.fc.{0,1,3,4,6,7}`) and `module.predictor.{0,1,3}.*`; `main_lincls.py` keeps
  `module.encoder.` minus `module.encoder.fc`. The research notes are silent on SimSiam; this follows
  the official `simsiam/builder.py` and `main_lincls.py` as known.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..formats import (
    Converted,
    arch_field,
    group_keys,
    head_under,
    inner_state_dict,
    is_state_dict,
    register_layout,
    unused_top_level,
)
from .resnet_arch import from_sequential, resnet_converted, split_prefix

_SWAV_HEADS = ("projection_head.", "prototypes.")
_BYOL_NET = "online_encoder.net."


def _without_fc(backbone: dict, label: str) -> tuple[dict, list[str]]:
    """`backbone` minus its `fc.*`, and the ignored-line naming what was dropped."""
    fc = [k for k in backbone if k.startswith("fc.")]
    kept = {k: v for k, v in backbone.items() if not k.startswith("fc.")}
    return kept, ([f"{label} ({len(fc)} tensors)"] if fc else [])


def _epochs(obj: Any) -> dict[str, Any]:
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    return {"epochs": epoch} if isinstance(epoch, int) and not isinstance(epoch, bool) else {}


# ------------------------------------------------------------------------------ SwAV


def _is_swav(obj: Any) -> bool:
    state_dict, _ = inner_state_dict(obj, ("state_dict",))
    if state_dict is None or "conv1.weight" not in state_dict:
        return False
    return any(key.startswith(_SWAV_HEADS) for key in state_dict)


@register_layout(
    "swav",
    "SwAV / DeepCluster-v2 / SeLa-v2 (facebookresearch/swav): ResNet keys + projection_head.* + prototypes.*",
    _is_swav,
    priority=35,
)
def _convert_swav(obj: Any) -> Converted:
    state_dict, used = inner_state_dict(obj, ("state_dict",))
    state_dict = state_dict or {}
    heads = [k for k in state_dict if k.startswith(_SWAV_HEADS)]
    backbone = {k: v for k, v in state_dict.items() if not k.startswith(_SWAV_HEADS)}
    backbone, ignored = _without_fc(backbone, "fc.*")
    ignored += group_keys(heads) + unused_top_level(obj, used)
    converted = resnet_converted(backbone, ignored=ignored, meta={"method": "swav", **_epochs(obj)})
    converted.head = head_under(state_dict, "projection_head.", activation="relu", name="SwAV projection head")
    return converted


# ------------------------------------------------------------------------------ lucidrains BYOL learner


def _byol_prefix(state_dict: Mapping[str, Any]) -> str | None:
    """The wrapper prefix in front of `online_encoder.net.` ('' for a bare learner), else None."""
    for key in state_dict:
        if key.startswith(_BYOL_NET) or f".{_BYOL_NET}" in key:
            return key[: key.index(_BYOL_NET)]
    return None


def _is_byol_learner(obj: Any) -> bool:
    state_dict, _ = inner_state_dict(obj, ("state_dict",))
    return state_dict is not None and _byol_prefix(state_dict) is not None


@register_layout(
    "byol-pytorch",
    "a lucidrains/byol-pytorch BYOL learner: online_encoder.net.* (+ net.*, target_encoder.*, online_predictor.*)",
    _is_byol_learner,
    priority=22,
)
def _convert_byol_learner(obj: Any) -> Converted:
    state_dict, used = inner_state_dict(obj, ("state_dict",))
    state_dict = state_dict or {}
    prefix = _byol_prefix(state_dict) or ""
    backbone, rest = split_prefix(state_dict, prefix + _BYOL_NET)
    backbone, ignored = _without_fc(backbone, f"{prefix}{_BYOL_NET}fc.* (never trained)")
    rest = [k.removeprefix(prefix) for k in rest]
    ignored += group_keys(rest) + unused_top_level(obj, used)
    return resnet_converted(backbone, ignored=ignored, meta={"method": "byol", **_epochs(obj)})


# ------------------------------------------------------------------------------ sthalles BYOL

_STHALLES_KEY = "online_network_state_dict"


def _is_byol_sthalles(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and is_state_dict(obj.get(_STHALLES_KEY))
        and any(key.startswith("encoder.") for key in obj[_STHALLES_KEY])
    )


@register_layout(
    "byol-sthalles",
    "sthalles/PyTorch-BYOL model.pth: online_network_state_dict with a Sequential encoder.*",
    _is_byol_sthalles,
    priority=24,
)
def _convert_byol_sthalles(obj: Mapping[str, Any]) -> Converted:
    encoder, rest = split_prefix(obj[_STHALLES_KEY], "encoder.")
    backbone = from_sequential(encoder) if "0.weight" in encoder else encoder
    ignored = group_keys(rest) + unused_top_level(obj, _STHALLES_KEY)
    meta = {"method": "byol", "source": "sthalles/PyTorch-BYOL"}
    return resnet_converted(backbone, ignored=ignored, meta=meta, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------ SimSiam


def _is_simsiam(obj: Any) -> bool:
    state_dict, _ = inner_state_dict(obj, ("state_dict",))
    return (
        state_dict is not None
        and "encoder.conv1.weight" in state_dict
        and any(key.startswith("predictor.") for key in state_dict)
        and not any(key.startswith(("projector.", "backbone.")) for key in state_dict)
    )


@register_layout(
    "simsiam",
    "SimSiam (facebookresearch/simsiam): module.encoder.* (projector in encoder.fc) + module.predictor.*",
    _is_simsiam,
    priority=30,
)
def _convert_simsiam(obj: Any) -> Converted:
    state_dict, used = inner_state_dict(obj, ("state_dict",))
    encoder, rest = split_prefix(state_dict or {}, "encoder.")
    backbone, ignored = _without_fc(encoder, "projector encoder.fc.*")
    ignored += group_keys(rest) + unused_top_level(obj, used)
    meta = {"method": "simsiam", **_epochs(obj)}
    return resnet_converted(backbone, arch=arch_field(obj), ignored=ignored, meta=meta)
