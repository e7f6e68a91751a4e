"""Load a frozen teacher: checkpoint file -> layout -> timm backbone (strict) -> `Teacher`.

`load_teacher(path, arch=None)` reads the file safely (`checkpoint.read_checkpoint`: allowlisted
types only unless `trust`; a file refused for pickled foreign objects is read with inert stand-ins
for them, never run, and the load line names them), detects its layout (`formats.py`, or the one
`format` names; a layout may claim a file by its place, as lightly-train's `exported_models/*.pt`),
resolves the timm architecture (the file's own `arch` field, else its shapes, else the caller's), builds
`timm.create_model(arch, pretrained=False, num_classes=0)` and loads the mapped weights strictly:
every backbone tensor must land, with the right shape, and nothing may be left over except what the
layout deliberately leaves out (projector heads, momentum encoder, queue, optimizer, classifier),
which is named in one INFO log line. A plain timm/torchvision classifier keeps its head, and the
teacher then also gives logits. An SSL projection head the layout hands over (`Converted.head`) is
built (`heads.build_head`) and kept, frozen, beside the backbone: the teacher's `emb` stays the backbone
feature until `Teacher.with_embedding("head")` (config `teacher.embedding`); the load line names it.
`timm:NAME` teachers come from `hub.py`. `save_teacher` writes the project's own teacher file (the
backbone only: a re-saved teacher carries no projection head).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import split_model_name_tag
from torch import Tensor, nn

from ..checkpoint import TRUST_FLAG, read_checkpoint, save_atomic
from ..errors import UserError
from . import layouts  # noqa: F401  (registers every layout)
from .formats import (
    Converted,
    Layout,
    StateDict,
    describe,
    drop_classifier,
    find_layout,
    inner_state_dict,
    layout_named,
)
from .formats import layouts as registered_layouts
from .heads import HeadError, HeadInfo, build_head
from .hub import check_timm_arch, is_timm_tag, load_timm_tag
from .layouts.native import pack_ssl_kd
from .teacher import LoadInfo, Teacher, no_head_message, note_resolution

__all__ = ["Teacher", "check_timm_arch", "fit_state_dict", "load_teacher", "resolve_arch", "save_teacher"]

log = logging.getLogger("ssl_kd")

ARCH_HINT = "pass --teacher-arch NAME (a timm model name, e.g. resnet50)"


# Layouts whose classifier head is a trained classifier (timm / torchvision files), kept for logits.
# Every SSL layout strips its projector heads itself; anything left under `fc`/`head` is dropped.
CLASSIFIER_LAYOUTS = ("timm", "plain")
# ... but only for a bare state dict or one under `state_dict`/`state_dict_ema` (timm train.py, torchvision,
# .safetensors); research-code files under `model` (MAE, DeiT, converted MoCo v3) may keep probes there: dropped.
CLASSIFIER_WRAPPERS = (None, "state_dict", "state_dict_ema")


@dataclass
class FileLoadInfo(LoadInfo):
    """`LoadInfo` of a teacher file, plus the pickled globals read as inert stand-ins (never run)."""

    stood_in: list[str] = field(default_factory=list)


def load_teacher(
    path_or_name: str | os.PathLike,
    arch: str | None = None,
    format: str = "auto",
    *,
    trust: bool = False,
    image_size: int | None = None,
    need_head: bool = False,
) -> Teacher:
    """Load a teacher checkpoint of any supported layout as a frozen `Teacher` (see module docstring).

    `path_or_name`: a checkpoint file (torch pickle or `.safetensors`), or `timm:NAME[.TAG]` for timm's
    pretrained weights (downloads). `format="auto"` detects the layout; a layout name
    (`--teacher-format`) forces it. `trust` (`--trust-checkpoint`) allows a full unpickle of files that
    pickle foreign classes. `image_size`: the side the teacher's backbone sees (see `Teacher`). `need_head`
    (`teacher.embedding=head`): a file without a usable projection head is a `UserError`, before the load line.
    """
    if is_timm_tag(path_or_name):
        if need_head:  # timm's pretrained weights are backbones (or classifiers): no SSL projection head
            raise UserError(no_head_message(str(path_or_name), "timm-pretrained"))
        return load_timm_tag(str(path_or_name), arch, format, image_size)
    source = str(path_or_name)
    forced = None if format == "auto" else layout_named(format)  # a bad name fails before reading the file
    loaded = read_checkpoint(path_or_name, trust=trust, stand_ins=True)
    obj, stood_in = loaded.obj, loaded.stood_in
    try:
        layout = choose_layout(obj, forced, path_or_name)
        converted = layout.convert(obj)
    except UserError as err:
        note = f" (read with inert stand-ins for {stood_in_line(stood_in)}; {TRUST_FLAG} unpickles them)"
        raise UserError(f"{source}: {err}{note if stood_in else ''}") from None
    arch_name = resolve_arch(converted.arch, arch, source, inferred=converted.inferred_arch)
    keep_head = layout.name in CLASSIFIER_LAYOUTS and _wrapper_key(obj) in CLASSIFIER_WRAPPERS
    backbone, state_dict, ignored = build_backbone(converted, arch_name, source, keep_head=keep_head)
    backbone.load_state_dict(state_dict, strict=True)
    has_logits = getattr(backbone, "num_classes", 0) > 0
    head, head_info, head_problem = projection_head(converted, int(backbone.num_features))
    if need_head and head is None:
        raise UserError(no_head_message(source, layout.name, head_problem))
    info = FileLoadInfo(arch_origin(converted, arch), len(state_dict), count_tensors(obj), ignored, stood_in=stood_in,
                        head_problem=head_problem)
    log.info(
        "teacher %s: format %s, arch %s, %d tensors loaded%s; ignored: %s%s%s",
        source, layout.name, arch_name, len(state_dict), ", classifier kept for logits" if has_logits else "",
        ", ".join(ignored) or "nothing", head_note(head_info, head_problem),
        f"; stood in for (pickled, never run): {stood_in_line(stood_in)}" if stood_in else "",
    )
    return note_resolution(Teacher(
        backbone,
        arch=arch_name,
        mean=converted.mean or IMAGENET_DEFAULT_MEAN,
        std=converted.std or IMAGENET_DEFAULT_STD,
        input_size=converted.input_size,
        image_size=image_size,
        has_logits=has_logits,
        format=layout.name,
        meta=converted.meta,
        source=source,
        info=info,
        model_kwargs=converted.model_kwargs,
        projection_head=head,
        head_info=head_info,
    ))


def projection_head(converted: Converted, width: int) -> tuple[nn.Module | None, HeadInfo | None, str | None]:
    """(head module, its info, None) for the file's projection head; (None, None, why) when it cannot be built;
    all None when the file carries none."""
    if converted.head is None:
        return None, None, None
    try:
        head, info = build_head(converted.head, width)
    except HeadError as err:
        return None, None, f"{converted.head.source or converted.head.name}: {err}"
    return head, info, None


def head_note(info: HeadInfo | None, problem: str | None) -> str:
    """The load line's part about the projection head ("" when the file has none)."""
    if info is not None:
        return f"; projection head kept for teacher.embedding=head: {info.source} ({info.name}: {info.layers}; {info.dim}-d)"
    if problem is not None:
        return f"; projection head not usable ({problem})"
    return ""


def stood_in_line(names: Sequence[str], limit: int = 6) -> str:
    """`a, b, c, ... (9 in all)`: the qualified names read as stand-ins, for one log or error line."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def choose_layout(obj: Any, forced: Layout | None, path: str | os.PathLike | None = None) -> Layout:
    """The detected layout (those claiming `path` by name first), or the forced one if it recognises the
    file (forcing picks among the matches)."""
    if forced is None:
        return find_layout(obj, path)
    if not forced.detect(obj):
        matches = [layout.name for layout in registered_layouts() if layout.detect(obj)]
        others = f"layouts that match it: {', '.join(matches)}" if matches else "no layout matches it"
        raise UserError(f"not a {forced.name} checkpoint ({describe(obj)}); {others}; drop --teacher-format or pick one")
    return forced


def build_backbone(
    converted: Converted, arch: str, source: str, *, keep_head: bool
) -> tuple[nn.Module, StateDict, list[str]]:
    """The timm model for `converted` and its checked state dict, plus what was left out.

    Headless (`num_classes=0`) unless `keep_head` and the file holds a classifier that fits the model
    (`fc.weight` [C, num_features] for a ResNet): then the model gets that C-way head and loads it too.
    """
    backbone = timm.create_model(arch, pretrained=False, num_classes=0, **converted.model_kwargs)
    num_classes = classifier_size(converted.state_dict, backbone) if keep_head else 0
    if num_classes:
        backbone.reset_classifier(num_classes)
    state_dict, dropped = drop_classifier(converted.state_dict, backbone)
    if converted.adapt is not None:
        state_dict = converted.adapt(state_dict, backbone)
    hint = (
        f"the file's own arch field says {arch}; is it another model's file?"
        if converted.arch
        else "wrong --teacher-arch?"
    )
    state_dict = fit_state_dict(state_dict, backbone, f"{source} does not fit timm {arch}", hint)
    return backbone, state_dict, converted.ignored + dropped


def classifier_size(state_dict: Mapping[str, Tensor], model: nn.Module) -> int:
    """C when `state_dict` holds a linear classifier [C, num_features] under the model's classifier name, else 0."""
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or "fc"
    name = names if isinstance(names, str) else names[0]
    weight = state_dict.get(f"{name}.weight")
    if weight is None or weight.ndim != 2 or weight.shape[1] != model.num_features:
        return 0
    return int(weight.shape[0])


def arch_origin(converted: Converted, given: str | None) -> str:
    """Where `resolve_arch`'s answer came from: the file's own field, its shapes, or --teacher-arch."""
    return "file" if converted.arch else "shapes" if converted.inferred_arch else "flag" if given else "unknown"


def count_tensors(obj: Any) -> int:
    """Every tensor in a loaded checkpoint, however deeply nested (weights, momentum copies, optimizer state)."""
    if isinstance(obj, Tensor):
        return 1
    if isinstance(obj, Mapping):
        return sum(count_tensors(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(count_tensors(value) for value in obj)
    return 0


def _wrapper_key(obj: Any) -> str | None:
    """The top-level key a plain state dict sits under (`state_dict`, `model`), or None when bare."""
    return inner_state_dict(obj, ("state_dict_ema", "model_ema", "state_dict", "model"))[1]


def save_teacher(
    path: str | os.PathLike,
    backbone: nn.Module | Mapping[str, Tensor],
    arch: str,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: int | None,
    meta: Mapping[str, Any] | None = None,
    half: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    head: Mapping[str, Any] | None = None,
) -> Path:
    """Write an `ssl_kd` teacher file atomically; `load_teacher` reads it back with no other argument.

    `backbone` is the timm model built with `num_classes=0` (or its state dict). With `half`, its
    floating tensors are stored as fp16 to halve the file; integer buffers stay integer.
    `model_kwargs` (plain values, e.g. a loaded teacher's `teacher.model_kwargs`) are stored and passed
    to `timm.create_model` on load. `head` (optional): the SSL projection head, {"state_dict" (keys `N.weight`,
    `N.running_mean`, ... of its `nn.Sequential`), "activation" ("relu" | "gelu"), "name"}; kept in the file for
    `teacher.embedding=head`.
    """
    check_timm_arch(arch)
    state_dict = backbone.state_dict() if isinstance(backbone, nn.Module) else dict(backbone)
    record = pack_ssl_kd(state_dict, arch, mean=mean, std=std, input_size=input_size, meta=meta, half=half,
                         model_kwargs=model_kwargs, head=head)
    return save_atomic(record, path)


def resolve_arch(own: str | None, given: str | None, source: str, inferred: str | None = None) -> str:
    """The timm name to build: the file's own `arch`, else the one inferred from its shapes, else the
    caller's (`--teacher-arch`). Any two that disagree are an error naming both."""
    if given:
        check_timm_arch(given)  # a typo in the flag is the clearest error of all
    named = [(f"{source} says its arch is", own), ("its weights' shapes say", inferred), ("--teacher-arch is", given)]
    named = [(what, arch) for what, arch in named if arch]
    if not named:
        raise UserError(f"{source} does not say its architecture; {ARCH_HINT}")
    (first_what, first), others = named[0], named[1:]
    for what, arch in others:
        if split_model_name_tag(first)[0] != split_model_name_tag(arch)[0]:
            raise UserError(f"{first_what} {first} but {what} {arch}; drop --teacher-arch or pass {first}")
    return check_timm_arch(first)


def fit_state_dict(state_dict: StateDict, model: nn.Module, what: str, hint: str) -> StateDict:
    """Check that `state_dict` matches `model` key for key and shape for shape, else a `UserError`.

    Missing `num_batches_tracked` counters (absent from some older files) are filled from the model,
    as `torch.nn.BatchNorm` itself does; they do not affect an eval-mode forward.
    """
    expected = model.state_dict()
    state_dict = dict(state_dict)
    for key in expected:
        if key not in state_dict and key.endswith("num_batches_tracked"):
            state_dict[key] = expected[key]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise UserError(
            f"{what}: {len(missing)} missing keys ({_first(missing)}), "
            f"{len(unexpected)} unexpected keys ({_first(unexpected)}); {hint}"
        )
    wrong = [k for k in expected if state_dict[k].shape != expected[k].shape]
    if wrong:
        key = wrong[0]
        raise UserError(
            f"{what}: shape mismatch at {key}: checkpoint {list(state_dict[key].shape)} vs model "
            f"{list(expected[key].shape)} ({len(wrong)} tensors differ in shape); {hint}"
        )
    return state_dict


def _first(keys: Sequence[str], n: int = 3) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")
