"""SimCLR v1/v2 in their common PyTorch conversions, and Spijkervet/SimCLR's own checkpoints.

Google's SimCLR release is TensorFlow only; these are the PyTorch files people bring:

* `simclr-v1`: tonylins/simclr-converter `convert.py` writes `{"state_dict": ResNet-50 1x/2x/4x}`, one
  top-level key, torchvision names, `fc` = the TF supervised ImageNet head (1000 rows; its bias is not
  the TF bias: `convert.py` assigns it to `fc.weight.bias`). Its Bottleneck registers `downsample`
  before `conv1` (`resnet_wider.py`, to match TF's variable order), so the file lists
  `layer1.0.downsample.0.weight` before `layer1.0.conv1.weight`: that order, or a stem wider than
  64 channels, tells it from a plain torchvision file. 2x/4x widen every width, the stem included.
* `simclr-v2`: Separius/SimCLRv2-Pytorch `convert.py` writes `{"resnet": ..., "head": ...}` with nested
  Sequential names (`resnet.py`): `net.0.0` stem conv, `net.0.1.0` stem BN,
  `net.S.blocks.B.projection.shortcut` / `.projection.bn.0` (shortcut conv / BN),
  `net.S.blocks.B.net.{0,2,4}` (conv1..3) and `.net.{1,3,5}.0` (bn1..3), `fc` (supervised head).
  ResNet-50/101/152, widths 1x/2x/3x. `_sk1` files (selective kernels, 3-conv stem, avg-pool
  shortcuts) have no timm equivalent and are refused.
* `simclr-spijkervet`: Spijkervet/SimCLR `save_model` writes the bare SimCLR module: `encoder.*`
  (torchvision ResNet, `fc` = Identity) and `projector.{0,2}.weight`. Its Lightning `.ckpt` goes to
  the `lightning` layout (`encoder.*` under `state_dict`).

Projection heads (`teacher.embedding=head`): `simclr-v2` keeps the file's `head` (Separius `resnet.py`
`ContrastiveHead`: `layers.{0,3,6}` Linear without bias, `layers.{1,4,7}` BatchNorm1d, ReLU at 2 and 5;
converted from TF's `head_contrastive/nl_{0,1,2}`; 128-d), `simclr-spijkervet` its `projector` (Spijkervet
`simclr/simclr.py`: `projector.0` Linear without bias, `.1` ReLU, `.2` Linear without bias). tonylins'
v1 conversion writes no projection head (its `fc` is TF's supervised head): none.

All three were trained on images in [0, 1] without mean/std normalisation (TF SimCLR
preprocessing; Spijkervet's `TransformsSimCLR` ends in `ToTensor()`): the teacher gets mean 0, std 1.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ...errors import UserError
from ..formats import (
    Converted,
    group_keys,
    head_under,
    is_state_dict,
    register_layout,
    unused_top_level,
)
from .resnet_arch import resnet_converted, split_prefix

NO_NORMALISATION = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _width(state_dict: Mapping[str, Any]) -> str:
    stem = state_dict.get("conv1.weight")
    return f"{stem.shape[0] // 64}x" if stem is not None and stem.shape[0] % 64 == 0 else "?"


# ------------------------------------------------------------------------------ v1: tonylins


def _is_simclr_v1(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or list(obj) != ["state_dict"] or not is_state_dict(obj["state_dict"]):
        return False
    state_dict = obj["state_dict"]
    fc, stem = state_dict.get("fc.weight"), state_dict.get("conv1.weight")
    if fc is None or stem is None or fc.dim() != 2 or fc.shape[0] != 1000 or "layer1.0.conv3.weight" not in state_dict:
        return False
    keys = list(state_dict)
    if "layer1.0.downsample.0.weight" not in keys or "layer1.0.conv1.weight" not in keys:
        return False
    downsample_first = keys.index("layer1.0.downsample.0.weight") < keys.index("layer1.0.conv1.weight")
    return downsample_first or stem.shape[0] != 64


@register_layout(
    "simclr-v1",
    "SimCLR v1 ResNet-50 1x/2x/4x from tonylins/simclr-converter: {'state_dict'} with torchvision names",
    _is_simclr_v1,
    priority=60,
)
def _convert_simclr_v1(obj: Mapping[str, Any]) -> Converted:
    state_dict = obj["state_dict"]
    head = [k for k in state_dict if k.startswith("fc.")]
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    ignored = [f"supervised head fc.* ({len(head)} tensors)"] if head else []
    meta = {"method": "simclr-v1", "width": _width(state_dict), "converter": "tonylins/simclr-converter"}
    return resnet_converted(backbone, ignored=ignored, meta=meta, **NO_NORMALISATION)


# ------------------------------------------------------------------------------ v2: Separius

_V2_BLOCK = re.compile(r"net\.([1-4])\.blocks\.(\d+)\.(.+)")
_V2_RENAMES = (  # inside a block: Separius name prefix -> torchvision name prefix
    ("projection.shortcut.", "downsample.0."), ("projection.bn.0.", "downsample.1."),
    ("net.0.", "conv1."), ("net.1.0.", "bn1."), ("net.2.", "conv2."), ("net.3.0.", "bn2."),
    ("net.4.", "conv3."), ("net.5.0.", "bn3."),
)


def _v2_name(key: str) -> str | None:
    """The torchvision name of a Separius SimCLRv2 `resnet` key, or None."""
    for old, new in (("net.0.0.", "conv1."), ("net.0.1.0.", "bn1.")):
        if key.startswith(old):
            return new + key[len(old):]
    match = _V2_BLOCK.fullmatch(key)
    if match:
        stage, block, rest = match.groups()
        for old, new in _V2_RENAMES:
            if rest.startswith(old):
                return f"layer{stage}.{block}.{new}{rest[len(old):]}"
    return None


def _is_simclr_v2(obj: Any) -> bool:
    return isinstance(obj, Mapping) and is_state_dict(obj.get("resnet")) and "net.0.0.weight" in obj["resnet"]


@register_layout(
    "simclr-v2",
    "SimCLR v2 ResNet-50/101/152 sk0 from Separius/SimCLRv2-Pytorch: {'resnet', 'head'} with net.* names",
    _is_simclr_v2,
    priority=20,
)
def _convert_simclr_v2(obj: Mapping[str, Any]) -> Converted:
    resnet = obj["resnet"]
    if "net.0.2.weight" in resnet or any(".mixing_conv." in key for key in resnet):
        raise UserError(
            "this SimCLRv2 file is a selective-kernel (sk1) ResNet (3-conv stem, SK convs, avg-pool shortcuts), "
            "which timm's ResNet cannot express; use an sk0 file (r50_1x_sk0.pth ...)"
        )
    backbone, head, unknown = {}, [], []
    for key, value in resnet.items():
        name = _v2_name(key)
        if name is not None:
            backbone[name] = value
        else:
            (head if key.startswith("fc.") else unknown).append(key)
    if unknown:
        first = ", ".join(unknown[:3])
        raise UserError(f"unexpected SimCLRv2 resnet keys {first} ({len(unknown)} in all); is it another model?")
    ignored = ([f"supervised head resnet.fc.* ({len(head)} tensors)"] if head else []) + unused_top_level(obj, "resnet")
    meta = {"method": "simclr-v2", "width": _width(backbone), "converter": "Separius/SimCLRv2-Pytorch"}
    converted = resnet_converted(backbone, ignored=ignored, meta=meta, **NO_NORMALISATION)
    if is_state_dict(obj.get("head")):
        converted.head = head_under(obj["head"], "layers.", activation="relu", name="SimCLRv2 contrastive head",
                                    source="head.layers.*")
    return converted


# ------------------------------------------------------------------------------ Spijkervet/SimCLR


def _is_spijkervet(obj: Any) -> bool:
    return (
        is_state_dict(obj)
        and "encoder.conv1.weight" in obj
        and "projector.0.weight" in obj
        and all(key.startswith(("encoder.", "projector.")) for key in obj)
    )


@register_layout(
    "simclr-spijkervet",
    "Spijkervet/SimCLR checkpoint_N.tar: a bare state dict of encoder.* and projector.*",
    _is_spijkervet,
    priority=45,
)
def _convert_spijkervet(obj: Mapping[str, Any]) -> Converted:
    backbone, rest = split_prefix(obj, "encoder.")
    meta = {"method": "simclr", "source": "Spijkervet/SimCLR"}
    converted = resnet_converted(backbone, ignored=group_keys(rest), meta=meta, **NO_NORMALISATION)
    converted.head = head_under(obj, "projector.", activation="relu", name="SimCLR projector")
    return converted
