"""ssl_kd: this project's own teacher file, written by `save_teacher` (see `pack_ssl_kd`)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from ...errors import UserError
from ..formats import (
    Converted,
    ProjectionHead,
    arch_field,
    is_state_dict,
    register_layout,
)
from .resnet_arch import resnet_converted

SSL_KD_KEY = "ssl_kd_teacher"
SSL_KD_VERSION = 1
_FP16_MAX = torch.finfo(torch.float16).max



def pack_ssl_kd(
    state_dict: Mapping[str, Tensor],
    arch: str,
    *,
    mean: Iterable[float],
    std: Iterable[float],
    input_size: int | None,
    meta: Mapping[str, Any] | None,
    half: bool,
    model_kwargs: Mapping[str, Any] | None = None,
    head: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `ssl_kd` teacher record. With `half`, floating tensors are stored as fp16 (unless out of range).
    `head` (optional): the SSL projection head as {"state_dict": tensors keyed `N.weight` ..., "activation",
    "name"}, stored under "head" and read back as the teacher's `teacher.embedding=head`."""
    tensors = {key: _storable(value, half) for key, value in state_dict.items()}
    record = {
        SSL_KD_KEY: SSL_KD_VERSION,
        "arch": arch,
        "state_dict": tensors,
        "mean": list(_triple(mean, "mean")),
        "std": list(_triple(std, "std")),
        "input_size": None if input_size is None else int(input_size),
        "meta": _plain(dict(meta or {})),
        "model_kwargs": _plain(dict(model_kwargs or {})),
    }
    if head is not None:
        record["head"] = {"state_dict": {key: _storable(value, half) for key, value in head["state_dict"].items()},
                          "activation": str(head.get("activation", "relu")), "name": str(head.get("name", "projection head"))}
    return record


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
    size = obj.get("input_size")
    meta = dict(obj["meta"]) if isinstance(obj.get("meta"), Mapping) else {}
    kwargs = obj.get("model_kwargs")
    # a re-saved CIFAR-stem or wide-stem ResNet is rebuilt by the same recipe that first loaded it
    converted = resnet_converted(
        dict(obj["state_dict"]),
        small_stem_padding=int(meta.get("small_stem_padding", 1)),
        arch=obj["arch"],
        mean=_triple(obj.get("mean"), "mean"),
        std=_triple(obj.get("std"), "std"),
        input_size=int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None,
        meta=meta,
        model_kwargs=dict(kwargs) if isinstance(kwargs, Mapping) else {},
    )
    head = obj.get("head")
    if isinstance(head, Mapping) and is_state_dict(head.get("state_dict")):
        converted.head = ProjectionHead(dict(head["state_dict"]), activation=str(head.get("activation", "relu")),
                                        name=str(head.get("name", "projection head")), source="head.*")
    return converted


