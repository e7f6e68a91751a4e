"""Distillation methods, looked up by name (`--method NAME`, `loss.method`)."""

from __future__ import annotations

from typing import Callable

from ..config import LossConfig
from ..errors import UserError
from .base import DistillMethod
from .dlkd import DLKD

# name -> builder(cfg, student_feat_dim, teacher_dim) -> DistillMethod
METHODS: dict[str, Callable[[LossConfig, int, int], DistillMethod]] = {
    "dlkd": DLKD.from_config,
}


def build_method(cfg: LossConfig, student_dim: int, teacher_dim: int) -> DistillMethod:
    if cfg.method not in METHODS:
        raise UserError(f"unknown method '{cfg.method}'; choose one of: {', '.join(sorted(METHODS))} (--method / loss.method)")
    return METHODS[cfg.method](cfg, student_dim, teacher_dim)


__all__ = ["METHODS", "DistillMethod", "build_method", "DLKD"]
