"""ssl_kd: distil a self-supervised vision teacher into a small, fast student, and measure both.

    import ssl_kd

    teacher = ssl_kd.load_teacher("moco_v2_800ep_pretrain.pth.tar")   # or ssl_kd.Teacher.from_module(net, mean, std)
    run = ssl_kd.distill(teacher, ssl_kd.load_config(overrides=["train.epochs=5"]), out="runs/mine")
    print(ssl_kd.evaluate(run.student).headline())                     # a ModelScores

The command line is `ssl-kd` (`ssl_kd/__main__.py`); the API is `ssl_kd/api.py`. The names are
imported when first used, so `ssl-kd --help` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {  # public name -> the module that defines it
    "Config": "ssl_kd.config",
    "load_config": "ssl_kd.config",
    "Teacher": "ssl_kd.teachers",
    "FrozenEncoder": "ssl_kd.encoder",
    "load_teacher": "ssl_kd.teachers",
    "distill": "ssl_kd.api",
    "evaluate": "ssl_kd.api",
    "ModelScores": "ssl_kd.evaluation.results",
    "DistillResult": "ssl_kd.distillation",
    "UserError": "ssl_kd.errors",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'ssl_kd' has no attribute '{name}'")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
