"""Checkpoints: written atomically, read safely.

`save_atomic` writes to `<path>.tmp` and then `os.replace`s it onto `path`, so a run killed mid-write
never leaves a half-written checkpoint where the last good one was.

`load_checkpoint` never runs code from the file unless asked to. By default it reads with
`torch.load(..., weights_only=True)`: tensors, numbers, strings, lists and dicts, plus the short
allowlist `safe_globals()` below of harmless types that official SSL checkpoints pickle. A file that
pickles anything else is refused with one line naming the type and the opt-in `--trust-checkpoint`
(`trust=True`: a full unpickle, for files from a source you trust). `.safetensors` files are read
with `safetensors.torch.load_file` into a plain state dict (that format cannot hold code at all).
Failures become one-line `UserError`s that say what to do.

Teacher files go through `read_checkpoint(..., stand_ins=True)`: a file that `weights_only` refuses
for its foreign globals (a Lightning `.ckpt` that also pickles the model objects, a script's config
object) is read again by `safe_unpickle.load_with_stand_ins`, where every foreign class or function
becomes an inert stand-in that is never called, and is accepted when tensors sit in its plain
dicts/lists; `LoadedCheckpoint.stood_in` names what was stood in for. A file whose tensors are all
inside foreign objects (`torch.save(model)`) is still refused. Run checkpoints keep the plain refusal.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import UserError
from .safe_unpickle import has_plain_tensors, load_with_stand_ins

log = logging.getLogger("ssl_kd")

TRUST_FLAG = "--trust-checkpoint"

# numpy dtypes whose scalars appear in released files (metrics such as `best_acc1`, `epoch` counters)
_NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "complex64", "complex128")


def safe_globals() -> list[Callable | tuple[Callable, str]]:
    """The types a default (`weights_only=True`) load accepts beyond torch's own; each is data, not code.

    * `argparse.Namespace`: the `args` that DINO, MAE, MoCo v3, DeiT and timm's train.py save next to
      the weights. A namespace only holds attributes, and those are unpickled under the same rules.
      timm itself allowlists it (timm >= 1.0.26 `_torch_load`).
    * `numpy ... multiarray.scalar`: a numpy scalar (e.g. a `np.float64` best accuracy) rebuilt from its
      dtype and raw bytes. Listed under both module paths, `numpy.core` (files written with numpy 1.x)
      and `numpy._core` (numpy 2.x), which is what the PyTorch serialization docs suggest allowlisting.
    * `numpy.dtype` and the dtype classes of numeric dtypes (`numpy.dtypes.Float64DType`, ...): the
      scalar's dtype; building one only sets its byte order and flags.

    Not listed, so refused by default: numpy arrays (`ndarray`, `_reconstruct`), OmegaConf / Lightning
    hyper-parameter objects, and any user class.
    """
    allowed: list[Callable | tuple[Callable, str]] = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # numpy is a dependency, but loading torch files does not need it
        return allowed
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((multiarray.scalar, f"{module}.scalar"))
    allowed.append(np.dtype)
    allowed += list(dict.fromkeys(type(np.dtype(name)) for name in _NUMPY_DTYPES))
    return allowed


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj, path)` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


@dataclass
class LoadedCheckpoint:
    """A loaded checkpoint object, and the pickled globals read as inert stand-ins (empty unless some were)."""

    obj: Any
    stood_in: list[str] = field(default_factory=list)


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> Any:
    """Load a checkpoint (torch pickle or `.safetensors`) on the CPU; see the module docstring.

    `trust=True` (`--trust-checkpoint`) unpickles anything the file holds, which can run code from
    it; a warning line says so. Without it, foreign pickled types are a `UserError`.
    """
    return read_checkpoint(path, trust=trust).obj


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False, stand_ins: bool = False) -> LoadedCheckpoint:
    """`load_checkpoint`, and with `stand_ins` a file refused for foreign globals is read with inert stand-ins."""
    path = _existing_file(path)
    if path.suffix == ".safetensors":
        return LoadedCheckpoint(_load_safetensors(path))
    if trust:
        log.warning("%s: loading with %s: a full unpickle can run code from the file; only do this for "
                    "files from a source you trust", path, TRUST_FLAG)
    try:
        if trust:
            return LoadedCheckpoint(torch.load(path, map_location="cpu", weights_only=False))
        with torch.serialization.safe_globals(safe_globals()):
            return LoadedCheckpoint(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # torch.load raises many types on a foreign or damaged file
        foreign = None if trust else _refused_type(" ".join(str(err).split()))
        if foreign is None or not stand_ins:
            raise _load_error(path, err, trust, foreign) from None
    return _read_with_stand_ins(path, foreign)


def _read_with_stand_ins(path: Path, foreign: str) -> LoadedCheckpoint:
    """The refused file read by the restricted unpickler; a `UserError` when no tensor lies outside its objects."""
    try:
        obj, stood_in = load_with_stand_ins(path)
    except Exception as err:  # a damaged pickle, a TorchScript archive, a stand-in where torch needs the real thing
        raise UserError(_refusal(path, f"pickles {foreign}, which safe loading refuses, and its tensors could not be "
                                       f"read around it ({type(err).__name__}: {_short(str(err), 80)})")) from None
    if not has_plain_tensors(obj):
        names = ", ".join(stood_in[:3]) + (f" and {len(stood_in) - 3} more" if len(stood_in) > 3 else "")
        raise UserError(_refusal(path, f"pickles {names or foreign} and holds no tensors outside those objects (as a "
                                       "whole model saved with torch.save(model) does)"))
    return LoadedCheckpoint(obj, stood_in)


def _refusal(path: Path, problem: str) -> str:
    return (f"{path} {problem}; re-save the weights as a plain state dict, or pass {TRUST_FLAG} "
            "(teacher.trust_checkpoint=true) if you trust the file's source")


def _load_error(path: Path, err: Exception, trust: bool, foreign: str | None) -> UserError:
    """The one-line `UserError` for a failed `torch.load`: a refused type, an unimportable class, or a bad file."""
    if trust and isinstance(err, (AttributeError, ImportError)):  # a pickled class this process cannot import
        return UserError(
            f"{path} pickles a class that cannot be imported here ({_short(str(err), 100)}); install the code that "
            f"wrote the file, drop {TRUST_FLAG} (a teacher's tensors are then read with inert stand-ins for its "
            "objects), or re-save its weights as a plain state dict"
        )
    if foreign is not None:
        return UserError(_refusal(path, f"pickles {foreign}, which safe loading refuses"))
    return UserError(
        f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {_short(str(err), 100)}); "
        "is the file truncated or of another kind?"
    )


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; check the path (absolute, or relative to {Path.cwd()})")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory; pass the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); download or write it again")
    return path


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as err:  # SafetensorError, OSError, ...: a damaged or foreign file
        raise UserError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {_short(str(err), 100)}); "
            "is the file truncated or of another kind?"
        ) from None


_REFUSAL_PATTERNS = (
    r"GLOBAL (\S+) was not an allowed global",  # a class or function outside the allowlist
    r"unsupported GLOBAL (\S+) whose module",  # os.system and friends: blocked modules
    r"add_safe_globals`,? but got <class '([^']+)'>",  # an object of a type that may not be built
)


def _refused_type(message: str) -> str | None:
    """The dotted name of the type `weights_only` refused, from torch's message; None if it is no refusal."""
    for pattern in _REFUSAL_PATTERNS:
        match = re.search(pattern, message)
        if match:
            return match.group(1)
    return None


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
