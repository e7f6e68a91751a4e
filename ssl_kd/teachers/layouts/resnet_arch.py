"""ResNet architecture from a torchvision/timm-keyed state dict's shapes, plus the stems timm lacks.

Every CNN layout here (SimCLR, SwAV, BYOL, SimSiam, Lightning/solo-learn...) ends in torchvision
ResNet key names (`conv1`, `bn1`, `layerS.B.convN`, `layerS.B.downsample.0/1`), which are timm's.
`read_resnet` reads the shape of the net from them: block type (`conv3` present = bottleneck),
blocks per stage (`layerS.B.`), stem, stage widths, groups, base width and avg-pool shortcuts.

* A stock timm model is named when one fits exactly (checked on the `meta` device, no memory):
  resnet18/34/26/50/101/152/200, the d/t/c/s deep-stem variants (resnet10t, resnet50d...),
  wide_resnet50_2, resnext50_32x4d... This is the registered `infer_arch` hook.
* Two variants no timm model expresses are rebuilt after `create_model` (model surgery, applied
  through `Converted.adapt`, which receives the built model before the strict load):
  - the small-image (CIFAR) stem: `conv1` 3x3/stride 1 and no max-pool (solo-learn, most CIFAR
    SSL repos; `conv1.weight` is [C, 3, 3, 3]). The padding is not stored in the file: 1 by default,
    2 for solo-learn (`solo/methods/base.py`), so the layout says which;
  - wide stems (SimCLR 2x/4x, SwAV w2/w4/w5): timm's 7x7 stem is fixed at 64 channels, so the model
    is built with `channels=(64w, 128w, 256w, 512w)` and the stem and layer1's input are widened.
`resnet_converted` packs all of that into a `Converted` for the CNN layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import timm
from torch import Tensor, nn

from ...errors import UserError
from ..formats import Converted, StateDict, infer_arch, register_arch_inferer
from ...backbones import use_small_stem

Surgery = Callable[[nn.Module], None]

_STOCK_CHANNELS = (64, 128, 256, 512)
_DEPTHS = {  # (block, blocks per stage) -> the depth in timm's names
    ("basic", (1, 1, 1, 1)): 10, ("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (1, 1, 1, 1)): 14, ("bottleneck", (2, 2, 2, 2)): 26, ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101, ("bottleneck", (3, 8, 36, 3)): 152, ("bottleneck", (3, 24, 36, 3)): 200,
}
_DEEP_SUFFIX = {  # (stem, stem_width, avg_down) -> timm's name suffix
    ("deep", 32, False): "c", ("deep", 64, False): "s", ("deep", 32, True): "d", ("deep_tiered", 32, True): "t",
}


@dataclass(frozen=True)
class ResNetShape:
    """What a ResNet state dict's shapes say about the net."""

    block: str  # "basic" | "bottleneck"
    layers: tuple[int, ...]  # blocks per stage
    stem: str  # "7x7" | "3x3" (small-image) | "deep" | "deep_tiered"
    stem_width: int  # channels out of the stem (timm's `stem_width` for deep stems)
    channels: tuple[int, ...]  # planes per stage (timm's `channels`)
    groups: int
    base_width: int
    avg_down: bool


def read_resnet(state_dict: Mapping[str, Tensor]) -> ResNetShape | None:
    """The ResNet shape of a torchvision/timm-keyed state dict, or None if it is not one. Never raises."""
    try:
        return _read_resnet(state_dict)
    except (KeyError, IndexError, ZeroDivisionError, AttributeError, TypeError):
        return None


def _read_resnet(sd: Mapping[str, Tensor]) -> ResNetShape | None:
    if "layer1.0.conv1.weight" not in sd or "bn1.weight" not in sd:
        return None
    block = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    layers: list[int] = []
    while f"layer{len(layers) + 1}.0.conv1.weight" in sd:
        stage, blocks = len(layers) + 1, 0
        while f"layer{stage}.{blocks}.conv1.weight" in sd:
            blocks += 1
        layers.append(blocks)
    last, expansion = ("conv3", 4) if block == "bottleneck" else ("conv2", 1)
    channels = tuple(sd[f"layer{s}.0.{last}.weight"].shape[0] // expansion for s in range(1, len(layers) + 1))
    mid = sd["layer1.0.conv1.weight"].shape[0]
    groups = mid // sd["layer1.0.conv2.weight"].shape[1]
    if "conv1.weight" in sd:
        kernel = sd["conv1.weight"].shape[-1]
        stem, stem_width = f"{kernel}x{kernel}", sd["conv1.weight"].shape[0]
    elif "conv1.6.weight" in sd:  # timm deep stems: conv1.{0,3,6} convs
        first, second = sd["conv1.0.weight"].shape[0], sd["conv1.3.weight"].shape[0]
        stem, stem_width = ("deep" if first == second else "deep_tiered"), second
    else:
        return None
    downsample_convs = [sd.get(f"layer{s}.0.downsample.1.weight") for s in range(1, len(layers) + 1)]
    return ResNetShape(
        block=block, layers=tuple(layers), stem=stem, stem_width=stem_width,
        channels=channels, groups=groups,
        base_width=mid * 64 // (channels[0] * groups) if block == "bottleneck" else 64,
        avg_down=any(w is not None and w.dim() == 4 for w in downsample_convs),  # AvgPool, conv, BN
    )


# ------------------------------------------------------------------------------ names and recipes


def _stock_name(shape: ResNetShape) -> str | None:
    """The timm registry name for this shape, if there is one (not yet checked against the shapes)."""
    depth = _DEPTHS.get((shape.block, shape.layers))
    if depth is None:
        return None
    if shape.stem == "7x7" and not shape.avg_down:
        suffix = ""
    else:
        suffix = _DEEP_SUFFIX.get((shape.stem, shape.stem_width, shape.avg_down))
        if suffix is None:
            return None
    if shape.groups > 1:
        return f"resnext{depth}{suffix}_{shape.groups}x{shape.base_width}d"
    if shape.base_width != 64:
        return f"wide_resnet{depth}{suffix}_{shape.base_width // 64}"
    return f"resnet{depth}{suffix}"


@dataclass(frozen=True)
class Recipe:
    """How to build a timm model that the state dict fits: name, create_model kwargs, then surgery."""

    arch: str
    model_kwargs: dict[str, Any]
    surgeries: tuple[Surgery, ...] = ()
    notes: tuple[str, ...] = ()  # what the surgery means, for the teacher's meta


def resnet_recipe(state_dict: StateDict, *, small_stem_padding: int = 1) -> Recipe | None:
    """A checked recipe for this ResNet state dict (stock model, or stock model + stem surgery), else None."""
    shape = read_resnet(state_dict)
    if shape is None or len(shape.layers) != 4:
        return None
    name = _stock_name(shape)
    if name and timm.is_model(name) and _fits(Recipe(name, {}), state_dict):
        return Recipe(name, {})
    if shape.stem not in ("7x7", "3x3") or shape.groups != 1 or shape.base_width != 64:
        return None
    base = _stock_name(replace(shape, stem="7x7", channels=_STOCK_CHANNELS))
    if base is None:
        return None
    kwargs: dict[str, Any] = {} if shape.channels == _STOCK_CHANNELS else {"channels": shape.channels}
    surgeries: list[Surgery] = []
    notes: list[str] = []
    if shape.stem_width != 64:
        if shape.block != "bottleneck":
            raise UserError(
                f"a basic-block ResNet with a {shape.stem_width}-channel stem is not supported (timm's stem is 64)"
            )
        surgeries.append(_Widen(shape.stem_width))
        notes.append(f"stem widened to {shape.stem_width} channels")
    if shape.stem == "3x3":
        surgeries.append(_SmallStem(small_stem_padding))
        notes.append(f"small-image stem: conv1 3x3 stride 1 padding {small_stem_padding}, no max-pool")
    recipe = Recipe(base, kwargs, tuple(surgeries), tuple(notes))
    return recipe if _fits(recipe, state_dict) else None


def _fits(recipe: Recipe, state_dict: StateDict) -> bool:
    """Whether the recipe's model has exactly the state dict's backbone keys and shapes (built on `meta`)."""
    try:
        model = timm.create_model(recipe.arch, pretrained=False, num_classes=0, device="meta", **recipe.model_kwargs)
        for surgery in recipe.surgeries:
            surgery(model)
    except (TypeError, ValueError, RuntimeError, AssertionError, AttributeError, KeyError, IndexError):
        # a recipe that timm cannot build simply does not fit
        return False
    skip = ("num_batches_tracked",)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(skip)}
    got = {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith(skip) and not k.startswith("fc.")}
    return expected == got


@register_arch_inferer
def infer_resnet(state_dict: StateDict) -> str | None:
    """The timm ResNet whose stock build fits these shapes exactly (no surgery), else None."""
    try:
        recipe = resnet_recipe(state_dict)
    except UserError:
        return None
    return recipe.arch if recipe is not None and not recipe.model_kwargs and not recipe.surgeries else None


# ------------------------------------------------------------------------------ model surgery


def _conv_like(conv: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
    )


def widen_stem(model: nn.Module, width: int) -> None:
    """Make a bottleneck ResNet's single-conv stem `width` channels wide (timm fixes it at 64).

    Replaces `conv1`, `bn1`, and the input side of `layer1.0.conv1` and `layer1.0.downsample.0`;
    their weights come from the checkpoint in the strict load that follows.
    """
    conv, bn, block = model.conv1, model.bn1, model.layer1[0]
    model.conv1 = _conv_like(conv, conv.in_channels, width)
    model.bn1 = nn.BatchNorm2d(width, eps=bn.eps, momentum=bn.momentum, device=bn.weight.device, dtype=bn.weight.dtype)
    block.conv1 = _conv_like(block.conv1, width, block.conv1.out_channels)
    if block.downsample is not None:
        block.downsample[0] = _conv_like(block.downsample[0], width, block.downsample[0].out_channels)


@dataclass(frozen=True)
class _Widen:
    width: int

    def __call__(self, model: nn.Module) -> None:
        widen_stem(model, self.width)


@dataclass(frozen=True)
class _SmallStem:
    padding: int

    def __call__(self, model: nn.Module) -> None:
        use_small_stem(model, self.padding)


def _surgery_adapt(surgeries: tuple[Surgery, ...]) -> Callable[[StateDict, nn.Module], StateDict]:
    """A `Converted.adapt` that rebuilds parts of the freshly created model; the weights are untouched."""

    def adapt(state_dict: StateDict, model: nn.Module) -> StateDict:
        for surgery in surgeries:
            surgery(model)
        return state_dict

    return adapt


# ------------------------------------------------------------------------------ for the layouts


def resnet_converted(state_dict: StateDict, *, small_stem_padding: int = 1, **fields: Any) -> Converted:
    """A `Converted` for a backbone state dict: ResNet recipe (arch, kwargs, surgery) when it is a
    ResNet, else whatever `infer_arch` says (e.g. a ViT backbone under Lightning's `backbone.`)."""
    recipe = resnet_recipe(state_dict, small_stem_padding=small_stem_padding)
    if recipe is None:
        return Converted(state_dict=state_dict, inferred_arch=infer_arch(state_dict), **fields)
    meta = dict(fields.pop("meta", {}) or {})
    if recipe.notes:
        meta["surgery"] = "; ".join(recipe.notes)
    small = [s for s in recipe.surgeries if isinstance(s, _SmallStem)]
    if small:  # the padding is not in the weights: recorded so that a re-saved teacher can be rebuilt
        meta["small_stem_padding"] = small[0].padding
        fields["input_size"] = fields.get("input_size") or 32
    return Converted(
        state_dict=state_dict, inferred_arch=recipe.arch, meta=meta,
        model_kwargs={**recipe.model_kwargs, **(fields.pop("model_kwargs", None) or {})},
        adapt=_surgery_adapt(recipe.surgeries) if recipe.surgeries else None, **fields,
    )


def split_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> tuple[StateDict, list[str]]:
    """The keys under `prefix` (a true prefix, removed), and every other key."""
    inner = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return inner, [k for k in state_dict if not k.startswith(prefix)]


_SEQUENTIAL_NAMES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def from_sequential(state_dict: Mapping[str, Tensor]) -> StateDict:
    """Keys of `nn.Sequential(*list(resnet.children())[:-1])` (`0.weight`, `4.0.conv1.weight`...) back to
    torchvision names; indices 2, 3, 8 (relu, maxpool, avgpool) hold no tensors. Unknown keys stay."""
    out: StateDict = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        out[f"{_SEQUENTIAL_NAMES[head]}.{rest}" if head in _SEQUENTIAL_NAMES else key] = value
    return out
