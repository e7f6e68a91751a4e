"""Read the tensors of a torch checkpoint that pickles foreign objects, without running any of its code.

`torch.load(weights_only=True)` refuses a file as soon as it pickles a class or function outside its
allowlist, even when the weights sit in a plain state dict beside it: a Lightning `.ckpt` from
lightly-train also pickles the `timm.models.resnet.ResNet` and `lightly_train` model objects, a
training script may pickle its config object. `load_with_stand_ins(path)` reads such a file with
`torch.load(..., weights_only=False, pickle_module=<this module's restricted pickle module>)`, so
torch's own machinery still reads the zip (or legacy) container, rebuilds the storages and tensors
(`persistent_load`) and maps them to the CPU; only the unpickler's `find_class` is replaced:

* a global on the allow-list resolves to the real object: torch's own `weights_only` allowlist
  (`torch._weights_only_unpickler._get_allowed_globals`: `OrderedDict`, `Counter`, `set`, `bytearray`,
  `complex`, `_codecs.encode` for bytes, dtypes, `torch.Size`, `torch.device`, storage types, the
  `torch._utils._rebuild_*` tensor rebuild functions, `Parameter`), the globals registered with
  `torch.serialization.add_safe_globals`, and `ssl_kd.checkpoint.safe_globals()` (`argparse.Namespace`,
  numpy scalars and dtypes). `torch._tensor._rebuild_from_type_v2` (tensors with Python attributes or
  of a subclass) is wrapped so that a foreign tensor subclass yields the plain tensor;
* every other global (a class, a function, `os.system`, `builtins.getattr` ...) resolves to an inert
  `StandIn` class made for that qualified name. Calling it (pickle's REDUCE), `__new__` (NEWOBJ),
  `__setstate__` (BUILD), item assignment and `append`/`extend` (SETITEMS, APPENDS) only *record*
  what they are given (`args`, `kwargs`, `state`, `items`, `list_items`), and calling a stand-in
  object gives one more stand-in; the original class or function is never imported, looked up, or
  called. `copyreg._reconstructor` (protocol 0/1 objects)
  is replaced by a version that only builds stand-ins.

The result is the file's nested dicts/lists with their tensors, where each foreign object is a
`StandIn`, plus the qualified names stood in for, in the order the pickle first names them (torch's
own, such as the `torch.nn` modules of a pickled model, last).
TorchScript archives (which `torch.load` would hand to `torch.jit.load`) and pre-1.0 tar files are
not read here. This is never a way to run code from the file: that is `--trust-checkpoint`.
"""

from __future__ import annotations

import _compat_pickle
import os
import pickle
import tarfile
import types
import warnings
import zipfile
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

__all__ = ["StandIn", "has_plain_tensors", "load_with_stand_ins"]


class StandIn:
    """An inert stand-in for a pickled object whose class or function is not on the allow-list.

    `stand_in_for` (class attribute) is the qualified name it replaces. It records what the pickle gave
    it and does nothing else: `args`/`kwargs` (of the call or `__new__`), `state` (BUILD), `items`
    (item assignment, e.g. a dict subclass), `list_items` (`append`/`extend`, e.g. a list subclass).
    """

    stand_in_for = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        self = object.__new__(cls)
        self.args, self.kwargs = args, kwargs
        self.state: Any = None
        self.items: dict[Any, Any] = {}
        self.list_items: list[Any] = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # __new__ recorded them
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __call__(self, *args: Any, **kwargs: Any) -> StandIn:
        """A pickled call of a stood-in object (e.g. a bound method from `getattr`): one more stand-in."""
        return _stand_in_class(f"{self.stand_in_for}(...)")(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<stand-in for {self.stand_in_for}>"


def _stand_in_class(name: str) -> type[StandIn]:
    short = name.rsplit(".", 1)[-1] or "object"
    return type(short, (StandIn,), {"stand_in_for": name, "__module__": __name__, "__qualname__": f"StandIn[{name}]"})


def has_plain_tensors(obj: Any) -> bool:
    """Whether a tensor sits in `obj` itself or in its dicts/lists/tuples (stand-ins are not looked into)."""
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if isinstance(item, Tensor):
            return True
        if isinstance(item, (Mapping, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, Mapping) else item)
    return False


# ------------------------------------------------------------------------------ the restricted pickle module


def _rebuild_from_type_v2(func: Callable, new_type: Any, args: tuple, state: Any) -> Any:
    """torch's `_rebuild_from_type_v2`, except that a foreign tensor subclass gives the plain tensor."""
    ret = func(*args)  # an allowed rebuild function, or a stand-in (which only records)
    if isinstance(ret, Tensor) and isinstance(new_type, type) and issubclass(new_type, Tensor):
        return torch._tensor._rebuild_from_type_v2(lambda: ret, new_type, (), state)
    return ret  # a stood-in tensor subclass: the plain tensor (its Python attributes dropped)


def _reconstructor(cls: Any, base: Any, state: Any) -> StandIn:
    """`copyreg._reconstructor` (protocol 0/1 objects), building stand-ins only: never `base.__new__`."""
    if isinstance(cls, type) and issubclass(cls, StandIn):
        return cls.__new__(cls) if state is None else cls.__new__(cls, state)
    return _stand_in_class("copyreg._reconstructor")(cls, base, state)


def _allowed_globals() -> dict[str, Any]:
    """Qualified name -> object for every global the restricted unpickler resolves to the real thing."""
    from torch import _weights_only_unpickler as weights_only

    from .checkpoint import safe_globals

    allowed = dict(weights_only._get_allowed_globals())
    allowed.update(weights_only._get_user_allowed_globals())
    for entry in safe_globals():
        obj, name = entry if isinstance(entry, tuple) else (entry, f"{entry.__module__}.{entry.__qualname__}")
        allowed[name] = obj
    allowed["torch._tensor._rebuild_from_type_v2"] = _rebuild_from_type_v2
    allowed["copyreg._reconstructor"] = _reconstructor
    return allowed


def _pickle_module(stood_in: list[str]) -> types.ModuleType:
    """A module with the `Unpickler` / `load` that `torch.load(pickle_module=...)` uses; names go to `stood_in`."""
    allowed = _allowed_globals()
    classes: dict[str, type[StandIn]] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:  # see the module docstring
            if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, as torch's own unpickler maps them
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if full not in classes:
                classes[full] = _stand_in_class(full)
                stood_in.append(full)
            return classes[full]

    def load(file: Any, **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    module = types.ModuleType("ssl_kd_stand_in_pickle")
    module.Unpickler, module.load = Unpickler, load  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    return module


def load_with_stand_ins(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """The checkpoint at `path` with foreign objects as `StandIn`s, and the qualified names stood in for.

    Raises `ValueError` for a TorchScript archive or a legacy tar file, and whatever `torch.load`
    raises for a damaged file; never runs code from the file.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist()):
                raise ValueError("a TorchScript archive, which is code")
    elif tarfile.is_tarfile(path):
        raise ValueError("a legacy (torch < 1.0) tar checkpoint")
    stood_in: list[str] = []
    with warnings.catch_warnings():  # legacy files: torch cannot find a stand-in's source to compare with the saved one
        warnings.filterwarnings("ignore", message="Couldn't retrieve source code for container")
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=False,
                         pickle_module=_pickle_module(stood_in))
    return obj, sorted(stood_in, key=lambda name: name.startswith("torch."))  # stable: torch's own classes last
