"""Checkpoints: written atomically, read safely.

`save_atomic` writes to `<path>.tmp` and then `os.replace`s it onto `path`, so a run killed mid-write
never leaves a half-written checkpoint where the last good one was. `load_checkpoint` reads with
`torch.load(..., weights_only=True)`: tensors, numbers, strings, lists and dicts only, never arbitrary
pickled objects. Failures become one-line `UserError`s that say what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .errors import UserError


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, *, weights_only: bool = True) -> Any:
    """Load a checkpoint on the CPU, safely (`weights_only=True` unless the caller opts out)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; check the path (absolute, or relative to {Path.cwd()})")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory; pass the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); download or write it again")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch.load raises many types on a foreign or damaged file
        text = " ".join(str(err).split())
        if "Unsupported global" in text:
            found = text.split("Unsupported global:", 1)[-1].split(" We ")[0].strip() or "a foreign class"
            raise UserError(
                f"checkpoint {path} pickles a Python object that safe loading refuses ({_short(found, 80)}); "
                "re-save it as a plain state dict, or pass --trust-checkpoint if you trust its source"
            ) from None
        raise UserError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {_short(text, 100)}); "
            "is the file truncated or of another kind?"
        ) from None


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
