"""Distillation methods, looked up by name (`--method NAME`, `loss.method`).

Each method file registers its builders with `@register_method("name")`; importing this package
imports every module in it, so a new method is one new file. A builder takes
`(cfg: LossConfig, dims: MethodDims)` and returns a `DistillMethod`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from ..config import LossConfig
from ..errors import UserError
from .base import DistillMethod, MethodDims, StepContext

Builder = Callable[[LossConfig, MethodDims], DistillMethod]
METHODS: dict[str, Builder] = {}


def register_method(name: str) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = builder
        return builder

    return add


def build_method(cfg: LossConfig, dims: MethodDims) -> DistillMethod:
    if cfg.method not in METHODS:
        raise UserError(f"unknown method '{cfg.method}'; choose one of: {', '.join(sorted(METHODS))} (--method / loss.method)")
    return METHODS[cfg.method](cfg, dims)


for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base",):
        importlib.import_module(f"{__name__}.{_module.name}")

from .dlkd import DLKD  # noqa: E402

__all__ = ["METHODS", "DLKD", "DistillMethod", "MethodDims", "StepContext", "build_method", "register_method"]
