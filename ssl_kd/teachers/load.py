"""Load a frozen teacher: checkpoint file -> layout -> timm backbone (strict) -> `Teacher`.

`load_teacher(path, arch=None)` reads the file safely, detects its layout (`formats.py`), resolves
the timm architecture (the file's own `arch` field first, else the caller's), builds
`timm.create_model(arch, pretrained=False, num_classes=0)` and loads the mapped weights strictly:
every backbone tensor must land, with the right shape, and nothing may be left over except what the
layout deliberately leaves out (projector heads, momentum encoder, queue, optimizer, classifier),
which is named in one INFO log line. `save_teacher` writes the project's own teacher file.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import split_model_name_tag
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, save_atomic
from ..embeddings import Embeddings
from ..errors import UserError
from . import layouts  # noqa: F401  (registers every layout)
from .formats import StateDict, drop_classifier, find_layout, layout_named
from .layouts.native import pack_ssl_kd

log = logging.getLogger("ssl_kd")

ARCH_HINT = "pass --teacher-arch NAME (a timm model name, e.g. resnet50)"


class Teacher(nn.Module):
    """A frozen timm backbone that normalises its own input and returns `Embeddings`.

    Input: images in [0, 1], float [B, 3, H, W], not normalised; the teacher applies its own
    mean/std. Output: `Embeddings(feat=f, emb=f, logits=None)` with f the pooled backbone feature
    [B, embed_dim], computed without autograd. Every parameter has `requires_grad=False`, and the
    module stays in eval mode whatever `.train()` is called with, on it or on a parent.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        arch: str,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int | None = None,
        format: str = "unknown",
        meta: Mapping[str, Any] | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.arch = arch
        self.embed_dim: int = int(backbone.num_features)
        self.input_size = input_size
        self.format = format
        self.meta = dict(meta or {})
        self.source = source
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Teacher":
        """Always eval mode: a frozen teacher's BatchNorm statistics and dropout never change."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Embeddings:
        if not x.is_floating_point():
            raise TypeError(f"Teacher expects float images in [0, 1], got dtype {x.dtype}")
        feat = self.backbone((x - self.mean) / self.std)
        return Embeddings(feat=feat, emb=feat, logits=None)

    def extra_repr(self) -> str:
        return f"arch={self.arch}, format={self.format}, embed_dim={self.embed_dim}, source={self.source!r}"


def load_teacher(path: str | os.PathLike, arch: str | None = None, format: str = "auto") -> Teacher:
    """Load a teacher checkpoint of any supported layout as a frozen `Teacher` (see module docstring).

    `format="auto"` detects the layout; a layout name (`--teacher-format`) forces it.
    """
    source = str(path)
    obj = load_checkpoint(path)
    try:
        layout = find_layout(obj) if format == "auto" else layout_named(format)
        converted = layout.convert(obj)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    arch_name = resolve_arch(converted.arch, arch, source, inferred=converted.inferred_arch)
    backbone = timm.create_model(arch_name, pretrained=False, num_classes=0, **converted.model_kwargs)
    state_dict, dropped = drop_classifier(converted.state_dict, backbone)
    if converted.adapt is not None:
        state_dict = converted.adapt(state_dict, backbone)
    hint = (
        f"the file's own arch field says {arch_name}; is it another model's file?"
        if converted.arch
        else "wrong --teacher-arch?"
    )
    state_dict = fit_state_dict(state_dict, backbone, f"{source} does not fit timm {arch_name}", hint)
    backbone.load_state_dict(state_dict, strict=True)
    ignored = converted.ignored + dropped
    log.info(
        "teacher %s: format %s, arch %s, %d tensors loaded; ignored: %s",
        source, layout.name, arch_name, len(state_dict), ", ".join(ignored) or "nothing",
    )
    return Teacher(
        backbone,
        arch=arch_name,
        mean=converted.mean or IMAGENET_DEFAULT_MEAN,
        std=converted.std or IMAGENET_DEFAULT_STD,
        input_size=converted.input_size,
        format=layout.name,
        meta=converted.meta,
        source=source,
    )


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
) -> Path:
    """Write an `ssl_kd` teacher file atomically; `load_teacher` reads it back with no other argument.

    `backbone` is the timm model built with `num_classes=0` (or its state dict). With `half`, its
    floating tensors are stored as fp16 to halve the file; integer buffers stay integer.
    """
    check_timm_arch(arch)
    state_dict = backbone.state_dict() if isinstance(backbone, nn.Module) else dict(backbone)
    record = pack_ssl_kd(state_dict, arch, mean=mean, std=std, input_size=input_size, meta=meta, half=half)
    return save_atomic(record, path)


def resolve_arch(own: str | None, given: str | None, source: str, inferred: str | None = None) -> str:
    """The timm name to build: the file's own `arch`, else the one inferred from its shapes, else the
    caller's (`--teacher-arch`). Any two that disagree are an error naming both."""
    named = [(f"{source} says its arch is", own), ("its weights' shapes say", inferred), ("--teacher-arch is", given)]
    named = [(what, arch) for what, arch in named if arch]
    for (what_a, a), (what_b, b) in zip(named, named[1:]):
        if split_model_name_tag(a)[0] != split_model_name_tag(b)[0]:
            raise UserError(f"{what_a} {a} but {what_b} {b}; drop --teacher-arch or pass {named[0][1]}")
    if not named:
        raise UserError(f"{source} does not say its architecture; {ARCH_HINT}")
    return check_timm_arch(named[0][1])


def check_timm_arch(arch: str) -> str:
    """`arch` if timm knows it, else a `UserError` with up to 3 close names."""
    if timm.is_model(arch):
        return arch
    base, names = split_model_name_tag(arch)[0], timm.list_models()
    longer = sorted((name for name in names if name.startswith(base)), key=lambda name: (len(name), name))
    close = list(dict.fromkeys(longer[:3] + difflib.get_close_matches(base, names, n=3)))[:3]
    suggestion = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"{arch!r} is not a timm model name{suggestion}; see timm.list_models()")


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
