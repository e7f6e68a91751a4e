"""Teacher checkpoint layouts: recognise what a loaded checkpoint is, map it onto a timm backbone.

Each layout is one small pair of functions joined by `register_layout`: a *detector* (`obj -> bool`,
cheap, never raises) and a *converter* (`obj -> Converted`: a state dict keyed exactly like
`timm.create_model(arch, num_classes=0).state_dict()`, plus what the file says about itself and a
list of what was deliberately left out). `find_layout` tries the detectors in priority order and the
first match wins, so specific layouts (MoCo: keys under `encoder_q.`) sit before the generic one
(`timm`: any plain state dict). A new layout (DINO, MoCo v3, SimCLR, ...) is one detector, one
converter and one decorator line; nothing else changes.

Layouts (sources: facebookresearch/moco `main_moco.py` / `main_lincls.py`, timm `_helpers.py`):

* `ssl_kd`: this project's own teacher file, written by `save_teacher` (see `pack_ssl_kd`).
* `moco`:   MoCo v1/v2 training checkpoints: `encoder_q` minus its `fc` projector.
* `timm`:   a plain timm or torchvision state dict, bare or under `state_dict` / `model`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..errors import UserError

StateDict = dict[str, Tensor]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers, stripped as true prefixes
SSL_KD_KEY = "ssl_kd_teacher"
SSL_KD_VERSION = 1
_FP16_MAX = torch.finfo(torch.float16).max


@dataclass
class Converted:
    """A checkpoint mapped onto timm backbone key names, plus what the file says about itself."""

    state_dict: StateDict
    arch: str | None = None  # the timm name the file records, if it records one
    ignored: list[str] = field(default_factory=list)  # human-readable, e.g. "encoder_k.* (320 tensors)"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """One registered checkpoint layout."""

    name: str
    summary: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any], Converted]
    priority: int  # lower is tried first; generic layouts use a high number


_LAYOUTS: list[Layout] = []


def register_layout(
    name: str, summary: str, detect: Callable[[Any], bool], *, priority: int = 50
) -> Callable[[Callable[[Any], Converted]], Callable[[Any], Converted]]:
    """Decorator for a converter: register it with its detector under `name`."""

    def add(convert: Callable[[Any], Converted]) -> Callable[[Any], Converted]:
        if any(layout.name == name for layout in _LAYOUTS):
            raise ValueError(f"checkpoint layout {name!r} is registered twice")
        _LAYOUTS.append(Layout(name, summary, detect, convert, priority))
        _LAYOUTS.sort(key=lambda layout: layout.priority)
        return convert

    return add


def layouts() -> list[Layout]:
    """The registered layouts, in the order they are tried."""
    return list(_LAYOUTS)


def find_layout(obj: Any) -> Layout:
    """The first registered layout whose detector accepts `obj`, else a `UserError` listing them all."""
    for layout in _LAYOUTS:
        if layout.detect(obj):
            return layout
    supported = "; ".join(f"{layout.name} ({layout.summary})" for layout in _LAYOUTS)
    raise UserError(
        f"unrecognised checkpoint layout ({describe(obj)}); supported layouts: {supported}; "
        "re-save the backbone weights as a plain timm state dict"
    )


def detect_format(obj: Any) -> str:
    """The name of the layout of a loaded checkpoint object (`UserError` if none matches)."""
    return find_layout(obj).name


# ---------------------------------------------------------------------------------------------
# Small helpers shared by converters


def describe(obj: Any, limit: int = 5) -> str:
    """A short description of a loaded object for error messages."""
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty dict"
        keys = ", ".join(str(key) for key in list(obj)[:limit])
        more = f", ... ({len(obj)} keys)" if len(obj) > limit else ""
        return f"a dict with keys {keys}{more}"
    return f"a {type(obj).__name__}"


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping from strings to tensors."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(key, str) and isinstance(value, Tensor) for key, value in obj.items())
    )


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> StateDict:
    """Remove leading `module.` / `_orig_mod.` (repeatedly, in any order) from every key."""
    out: StateDict = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    return out


def unwrap(obj: Any, keys: Iterable[str]) -> tuple[Any, str | None]:
    """`obj[key]` for the first `key` holding a mapping, and that key; else `obj` itself and None."""
    if isinstance(obj, Mapping):
        for key in keys:
            if isinstance(obj.get(key), Mapping):
                return obj[key], key
    return obj, None


def group_keys(keys: Iterable[str]) -> list[str]:
    """Summarise keys by their first component: `encoder_k.* (320 tensors)`, or `queue` for a lone key."""
    keys = list(keys)
    counts = Counter(key.split(".", 1)[0] for key in keys)
    return [key if key in keys and n == 1 else f"{key}.* ({n} tensors)" for key, n in counts.items()]


def unused_top_level(obj: Any, used: str | None) -> list[str]:
    """Top-level entries besides `used` that carry weights or state (optimizer, EMA...); scalars are skipped."""
    if not isinstance(obj, Mapping) or used is None:
        return []
    weighty = (Mapping, list, tuple, Tensor)
    return [str(key) for key, value in obj.items() if key != used and isinstance(value, weighty)]


def drop_classifier(state_dict: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    """Drop classifier keys (`fc.*`, `head.*`, per the model's pretrained cfg) that the headless model lacks."""
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ("fc", "head", "classifier")
    names = (names,) if isinstance(names, str) else tuple(names)
    expected = model.state_dict().keys()
    dropped = [k for k in state_dict if k not in expected and any(k.startswith(n + ".") for n in names)]
    kept = {k: v for k, v in state_dict.items() if k not in set(dropped)}
    return kept, [f"classifier {line}" for line in group_keys(dropped)]


def inner_state_dict(obj: Any, keys: Iterable[str]) -> tuple[StateDict | None, str | None]:
    """The state dict in `obj` (bare, or under the first of `keys`), wrapper prefixes stripped; and that key."""
    inner, key = unwrap(obj, keys)
    return (strip_wrapper_prefixes(inner) if is_state_dict(inner) else None), key


def arch_field(obj: Any) -> str | None:
    """The checkpoint's own `arch` string, if it has one."""
    arch = obj.get("arch") if isinstance(obj, Mapping) else None
    return arch if isinstance(arch, str) and arch else None


# ---------------------------------------------------------------------------------------------
# ssl_kd: this project's own teacher file


def pack_ssl_kd(
    state_dict: Mapping[str, Tensor],
    arch: str,
    *,
    mean: Iterable[float],
    std: Iterable[float],
    input_size: int | None,
    meta: Mapping[str, Any] | None,
    half: bool,
) -> dict[str, Any]:
    """The `ssl_kd` teacher record. With `half`, floating tensors are stored as fp16 (unless out of range)."""
    tensors = {key: _storable(value, half) for key, value in state_dict.items()}
    return {
        SSL_KD_KEY: SSL_KD_VERSION,
        "arch": arch,
        "state_dict": tensors,
        "mean": list(_triple(mean, "mean")),
        "std": list(_triple(std, "std")),
        "input_size": None if input_size is None else int(input_size),
        "meta": _plain(dict(meta or {})),
    }


def _storable(value: Tensor, half: bool) -> Tensor:
    value = value.detach().cpu()
    if half and value.is_floating_point() and value.numel() and value.abs().max() <= _FP16_MAX:
        return value.half()
    return value


def _plain(value: Any) -> Any:
    """Meta made of what `torch.load(weights_only=True)` reads: dicts, lists, str, numbers, bool, None."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # paths, enums, namespaces: keep them readable rather than unloadable


def _triple(values: Any, name: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or (name == "std" and min(triple) <= 0):
        rule = "3 numbers > 0" if name == "std" else "3 numbers"
        got = " ".join(repr(values).split())[:80]
        raise UserError(f"teacher {name} must be {rule} (one per RGB channel), got {got}; fix it or re-export the teacher")
    return triple  # type: ignore[return-value]


def _is_ssl_kd(obj: Any) -> bool:
    return isinstance(obj, Mapping) and SSL_KD_KEY in obj


@register_layout("ssl_kd", "an ssl_kd teacher file written by save_teacher", _is_ssl_kd, priority=0)
def _convert_ssl_kd(obj: Mapping[str, Any]) -> Converted:
    version = obj[SSL_KD_KEY]
    if version != SSL_KD_VERSION:
        raise UserError(
            f"ssl_kd teacher file version {version!r} is not readable by this ssl_kd "
            f"(it reads version {SSL_KD_VERSION}); upgrade ssl_kd or export the teacher again"
        )
    if arch_field(obj) is None or not is_state_dict(obj.get("state_dict")):
        raise UserError("ssl_kd teacher file lacks a valid 'arch' or 'state_dict'; it is damaged, re-export the teacher")
    size, meta = obj.get("input_size"), obj.get("meta")
    return Converted(
        state_dict=dict(obj["state_dict"]),
        arch=obj["arch"],
        mean=_triple(obj.get("mean"), "mean"),
        std=_triple(obj.get("std"), "std"),
        input_size=int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None,
        meta=dict(meta) if isinstance(meta, Mapping) else {},
    )


# ---------------------------------------------------------------------------------------------
# MoCo v1 / v2 (facebookresearch/moco): {"epoch", "arch", "state_dict": module.encoder_q.*, ..., "optimizer"}


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
    return Converted(state_dict=backbone, arch=arch_field(obj), ignored=ignored, meta=meta)


# ---------------------------------------------------------------------------------------------
# timm / torchvision: a plain state dict, bare or under "state_dict" / "model"


_TIMM_KEYS = ("state_dict", "model")


def _is_timm(obj: Any) -> bool:
    return inner_state_dict(obj, _TIMM_KEYS)[0] is not None


@register_layout(
    "timm", "a plain timm/torchvision state dict, bare or under 'state_dict'/'model'", _is_timm, priority=100
)
def _convert_timm(obj: Any) -> Converted:
    state_dict, key = inner_state_dict(obj, _TIMM_KEYS)
    return Converted(state_dict=state_dict or {}, arch=arch_field(obj), ignored=unused_top_level(obj, key))
