"""Teacher checkpoint layouts: recognise what a loaded checkpoint is, map it onto a timm backbone.

Each layout is one small pair of functions joined by `register_layout`: a *detector* (`obj -> bool`,
cheap, never raises) and a *converter* (`obj -> Converted`: a state dict keyed exactly like
`timm.create_model(arch, num_classes=0).state_dict()`, plus what the file says about itself and a
list of what was deliberately left out). `find_layout` tries the detectors in priority order and the
first match wins, so specific layouts (MoCo: keys under `encoder_q.`) sit before the generic one
(`timm`: any plain state dict). A new layout (DINO, MoCo v3, SimCLR, ...) is one detector, one
converter and one decorator line; nothing else changes.

A layout may also claim files by where they lie (`file_patterns`, matched from the right of the path):
lightly-train's `exported_models/exported_last.pt` is a bare timm state dict that only its place tells
apart from any other, so `find_layout(obj, path)` tries the layouts whose patterns match `path` first
(each still has to recognise the object).

A converter may also hand over the file's SSL projection head (`Converted.head`, a `ProjectionHead`: its
tensors keyed relative to the head, `0.weight`, `1.running_mean`, ...; the activation between its layers;
what it is). `heads.py` builds it generically from those keys; `teacher.embedding=head` makes the methods
see its output. A layout whose files carry no head leaves it None.

The layouts themselves live in `layouts/`, one family a file, registered on import. When a file does
not say its architecture, converters ask `infer_arch(state_dict)`, which tries the registered
shape-based inferers (ResNet depth from block counts, ViT size from width/depth/patch, ...).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable, Iterable, Mapping

from torch import Tensor, nn

from ..errors import UserError

StateDict = dict[str, Tensor]

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers, stripped as true prefixes


@dataclass
class ProjectionHead:
    """An SSL projection head as a file stores it (MoCo v2's `encoder_q.fc`, a solo-learn `projector`, ...).

    `state_dict` is keyed relative to the head, as its `nn.Sequential` names them (`0.weight`, `1.running_mean`,
    `3.weight`), or `weight`/`bias` for a head that is one bare Linear. Index N with a 2-D `N.weight` is a
    Linear (with `N.bias` if stored), with `N.running_mean` a BatchNorm1d (affine when `N.weight` is stored);
    the indices missing between them are the parameter-free `activation` ("relu" or "gelu"). `name` says what
    it is ("MoCo v2 fc MLP"), `source` where it lies in the file ("encoder_q.fc.*"). See `heads.py`.
    """

    state_dict: StateDict
    activation: str = "relu"
    name: str = "projection head"
    source: str = ""
    bn_eps: float = 1e-5


def head_under(state_dict: Mapping[str, Tensor], prefix: str, **fields: Any) -> ProjectionHead | None:
    """The `ProjectionHead` of the keys under `prefix` (removed as a true prefix), or None when there are none."""
    tensors = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not tensors:
        return None
    return ProjectionHead(tensors, source=fields.pop("source", f"{prefix}*"), **fields)


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
    inferred_arch: str | None = None  # from the tensor shapes (`infer_arch`), when the file does not say
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (reg_tokens, ...)
    # called with (state_dict, built model) before the strict check, e.g. to resample ViT position embeddings
    adapt: Callable[[StateDict, nn.Module], StateDict] | None = None
    head: ProjectionHead | None = None  # the file's SSL projection head, when it carries one (teacher.embedding=head)


@dataclass(frozen=True)
class Layout:
    """One registered checkpoint layout."""

    name: str
    summary: str
    detect: Callable[[Any], bool]
    convert: Callable[[Any], Converted]
    priority: int  # lower is tried first; generic layouts use a high number
    file_patterns: tuple[str, ...] = ()  # paths this layout claims first (PurePath.match patterns)

    def claims(self, path: str | os.PathLike | None) -> bool:
        """Whether `path` matches one of this layout's file patterns."""
        return path is not None and any(PurePath(path).match(pattern) for pattern in self.file_patterns)


_LAYOUTS: list[Layout] = []


def register_layout(
    name: str, summary: str, detect: Callable[[Any], bool], *, priority: int = 50, file_patterns: tuple[str, ...] = ()
) -> Callable[[Callable[[Any], Converted]], Callable[[Any], Converted]]:
    """Decorator for a converter: register it with its detector under `name` (and the file names it claims)."""

    def add(convert: Callable[[Any], Converted]) -> Callable[[Any], Converted]:
        if any(layout.name == name for layout in _LAYOUTS):
            raise ValueError(f"checkpoint layout {name!r} is registered twice")
        _LAYOUTS.append(Layout(name, summary, detect, convert, priority, tuple(file_patterns)))
        _LAYOUTS.sort(key=lambda layout: layout.priority)
        return convert

    return add


def layouts() -> list[Layout]:
    """The registered layouts, in the order they are tried."""
    return list(_LAYOUTS)


def find_layout(obj: Any, path: str | os.PathLike | None = None) -> Layout:
    """The first registered layout whose detector accepts `obj` (those claiming `path` by name tried first),
    else a `UserError` listing them all."""
    for layout in sorted(_LAYOUTS, key=lambda layout: not layout.claims(path)):  # stable: priority order kept
        if layout.detect(obj):
            return layout
    supported = "; ".join(f"{layout.name} ({layout.summary})" for layout in _LAYOUTS)
    raise UserError(
        f"unrecognised checkpoint layout ({describe(obj)}); supported layouts: {supported}; "
        "re-save the backbone weights as a plain timm state dict"
    )


def layout_named(name: str) -> Layout:
    """The layout registered as `name` (for an explicit --teacher-format), else a `UserError`."""
    for layout in _LAYOUTS:
        if layout.name == name:
            return layout
    raise UserError(f"unknown teacher format '{name}'; choose one of: auto, {', '.join(l.name for l in _LAYOUTS)}")


_ARCH_INFERERS: list[Callable[[StateDict], str | None]] = []


def register_arch_inferer(infer: Callable[[StateDict], str | None]) -> Callable[[StateDict], str | None]:
    """Decorator: a function that names the timm arch from a backbone state dict's shapes, or None."""
    _ARCH_INFERERS.append(infer)
    return infer


def infer_arch(state_dict: StateDict) -> str | None:
    """The first registered inferer's answer for this (timm-keyed) backbone state dict, else None."""
    for infer in _ARCH_INFERERS:
        arch = infer(state_dict)
        if arch:
            return arch
    return None


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
