"""On-disk cache of frozen features: `cached_features` = `extract_features` computed once per key.

The key (`feature_cache_key`) hashes the model's weights, the data and the transform, so a frozen
teacher's (or a finished student's) features are extracted once and reused by k-NN, retrieval and the
linear probe, and any change to the weights, the images, the labels or the transform invalidates them.
Files are safetensors (no pickle), written atomically; float16 storage halves them.

`cached_features` is the one way the project computes the features of a dataset for evaluation (the
pipelines' report, the k-NN monitor, the `eval/` entry points). Under torchrun every rank calls it:
rank 0 alone looks up and writes the cache file, every rank extracts its shard of the dataset
(`ssl_kd.feature_shards`), and every rank returns the same features as one process would.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssl_kd.errors import UserError
from ssl_kd.feature_shards import broadcast_from_main, sharded_features
from ssl_kd.features import _show_progress
from ssl_kd.evaluation.on_main import on_main_process
from ssl_kd.parallel import barrier, is_main_process

__all__ = ["CACHE_DTYPES", "cached_features", "feature_cache_key"]


CACHE_DTYPES = ("float32", "float16")
# Bump when the key's recipe or the file layout changes: old cache files then simply stop matching.
_CACHE_FORMAT = "ssl_kd-features-v1"
_KEY_CHARS = 24
_MAX_WRAPPER_DEPTH = 32


def feature_cache_key(model: nn.Module, dataset: Any, *, normalize: bool = True, extra: str = "") -> str:
    """A 24-hex-digit sha256 naming the features of `model` on `dataset`.

    What goes into the key, and why:
    - the weights (`_model_fingerprint`): the model's class and every `state_dict()` entry (name,
      dtype, shape, raw bytes; buffers such as BatchNorm statistics included), so that any change of
      a weight, even in place, gives a new key and the features are recomputed;
    - the data (`_data_fingerprint`): class and length of the dataset and of every wrapper around it
      (`IndexedDataset.base`, `Subset.dataset`), the `Subset` indices, and the content of the
      innermost dataset: its labels (`targets`/`labels`) and its samples (`samples` paths with file
      size and mtime, `data`/`images`/`tensors` arrays and images); a dataset with none of these is
      sampled (first, middle and last item);
    - the transform (`_transform_fingerprint`): `repr` of each level's `transform`/`target_transform`
      (a torchvision `Compose` lists every op with its parameters);
    - `normalize` and `extra` (anything else the caller knows the features depend on).

    Same weights, data and transform give the same key, so the cached features are reused. Not in
    the key: the model's source code (a changed `forward` with the same weights is not detected: pass
    a version in `extra` or clear the cache), the device, and the batch size.
    """
    parts = [
        _CACHE_FORMAT,
        _model_fingerprint(model),
        _data_fingerprint(dataset),
        _transform_fingerprint(dataset),
        f"normalize={bool(normalize)}",
        f"extra={extra}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:_KEY_CHARS]


def cached_features(
    model: nn.Module,
    dataset: Any,
    *,
    cache_dir: str | Path | None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    normalize: bool = True,
    dtype: str = "float32",
    desc: str | None = None,
    progress: bool | None = None,
    extra: str = "",
) -> tuple[Tensor, Tensor]:
    """`extract_features` of `model` over `dataset` (in order), kept in `cache_dir/<key>.safetensors`.

    With `cache_dir=None` nothing is cached. Otherwise a cache file of the same key
    (`feature_cache_key`) is loaded (safetensors: no pickle) instead of running the model; when
    there is none the features are extracted and written atomically (temp file, then
    `os.replace`). `dtype="float16"` stores the (already L2-normalised) features in half precision,
    half the disk; the returned features are float32 either way, and are the stored values, so a
    first and a later call return the same tensors. A float32 file also serves a float16 request;
    a float16 file is recomputed for a float32 one. An unreadable or inconsistent cache file is
    reported with one warning and overwritten. A line says when the cache was used or written if
    the progress bar is shown (`progress`, as in `extract_features`).

    Under torchrun every rank must call it with the same dataset: rank 0 computes the key and reads
    the file, and sends what it read to the other ranks; on a miss every rank extracts its shard
    (`sharded_features`), rank 0 writes the file, and the others wait for it at a barrier. Only rank
    0 touches `cache_dir` (so another rank's `cache_dir` does not matter) or prints.

    The model must already live on `device`; its train/eval flags are left as they were.
    Returns (feats float32 [N, D], labels int64 [N]) on the CPU, the same on every rank.
    """
    if dtype not in CACHE_DTYPES:
        raise UserError(f"unknown feature cache dtype {dtype!r}; choose one of: {', '.join(CACHE_DTYPES)}")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    if cache_dir is None:
        return _extract(model, dataset, batch_size, num_workers, device, normalize, desc, progress)

    show = _show_progress(progress) and is_main_process()
    found: dict = {}  # rank 0's key, path and cached (feats, labels) or None

    def look_up() -> bool:
        found["key"] = feature_cache_key(model, dataset, normalize=normalize, extra=extra)
        found["path"] = Path(cache_dir) / f"{found['key']}.safetensors"
        found["cached"] = _usable_cache(found["path"], found["key"], len(dataset), dtype, show)
        return found["cached"] is not None

    # one process decides and the others follow its answer (an error there is raised on every rank)
    if on_main_process(look_up):
        feats, labels = found.get("cached") or (None, None)
        return broadcast_from_main(feats), broadcast_from_main(labels)
    key, path = found.get("key"), found.get("path")

    feats, labels = _extract(model, dataset, batch_size, num_workers, device, normalize, desc, progress)
    stored_feats = feats.to(getattr(torch, dtype)).contiguous()
    if is_main_process():
        metadata = {
            "format": _CACHE_FORMAT,
            "key": key,
            "model": _class_name(model),
            "n": str(stored_feats.shape[0]),
            "dim": str(stored_feats.shape[1]),
            "dtype": dtype,
            "normalize": str(bool(normalize)),
        }
        if _write_cache(path, {"feats": stored_feats, "labels": labels.long().contiguous()}, metadata) and show:
            print(f"features: wrote cache {path}", file=sys.stderr, flush=True)
    barrier()  # the file exists (or failed to) on every rank's return
    return stored_feats.float(), labels.long()


def _extract(model, dataset, batch_size, num_workers, device, normalize, desc, progress) -> tuple[Tensor, Tensor]:
    return sharded_features(model, dataset, batch_size=batch_size, num_workers=num_workers, device=device, normalize=normalize,
                            desc=desc, progress=progress)


def _usable_cache(path: Path, key: str, n: int, dtype: str, show: bool) -> tuple[Tensor, Tensor] | None:
    """(feats, labels) of the cache file at `path` when it exists, is sound and serves `dtype`; else None
    (an unsound file is reported with a warning, and will be overwritten)."""
    if not path.exists():
        return None
    try:
        feats, labels, stored = _read_cache(path, key, n)
    except _BadCache as err:
        warnings.warn(f"features: ignoring unreadable cache {path} ({err}); recomputing", RuntimeWarning, stacklevel=4)
        return None
    if stored != "float32" and stored != dtype:
        return None
    if show:
        print(f"features: reused cache {path}", file=sys.stderr, flush=True)
    return feats, labels


class _BadCache(Exception):
    """A cache file that cannot be read or does not hold what its name promises."""


def _read_cache(path: Path, key: str, n: int) -> tuple[Tensor, Tensor, str]:
    """(feats float32, labels int64, stored dtype) of a cache file, checked against `key` and `n`."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as err:  # truncated, garbled, unreadable
        raise _BadCache(f"{type(err).__name__}: {err}") from None
    feats, labels = tensors.get("feats"), tensors.get("labels")
    stored = metadata.get("dtype", "")
    if metadata.get("key") != key:
        raise _BadCache(f"it was written for key {metadata.get('key')!r}")
    if feats is None or labels is None or feats.ndim != 2 or labels.ndim != 1:
        raise _BadCache("it lacks [N, D] 'feats' or [N] 'labels'")
    if feats.shape[0] != n or labels.shape[0] != n:
        raise _BadCache(f"it holds {feats.shape[0]} features and {labels.shape[0]} labels for a dataset of {n}")
    if stored not in CACHE_DTYPES or feats.dtype != getattr(torch, stored):
        raise _BadCache(f"its features are {feats.dtype}, metadata says {stored!r}")
    return feats.float(), labels.long(), stored


def _write_cache(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> bool:
    """Write atomically: a temp file in the same folder, then `os.replace`. A failure (read-only or
    full disk) is a warning, not an error: the features are still returned. True when written."""
    from safetensors.torch import save_file

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
        return True
    except OSError as err:
        warnings.warn(f"features: could not write cache {path} ({err}); features not cached", RuntimeWarning, stacklevel=3)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


# --- key ingredients ---------------------------------------------------------------------------


def _model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's class and of every state_dict entry: name, dtype, shape, raw bytes."""
    hasher = hashlib.sha256()
    _update(hasher, "model", _class_name(model))
    for name, tensor in model.state_dict().items():
        _update(hasher, "name", name)
        _hash_value(hasher, tensor)
    return hasher.hexdigest()


def _data_fingerprint(dataset: Any) -> str:
    """sha256 of each wrapper level (class, length, Subset indices) and of the innermost dataset's
    content (labels and samples; first/middle/last item when its layout is unknown)."""
    hasher = hashlib.sha256()
    chain = _dataset_chain(dataset)
    for level in chain:
        _update(hasher, "dataset", f"{_class_name(level)} len={_length(level)}")
        indices = getattr(level, "indices", None)
        if indices is not None:
            _update(hasher, "indices", np.asarray(indices, dtype=np.int64).tobytes())
    _hash_content(hasher, chain[-1])
    return hasher.hexdigest()


def _transform_fingerprint(dataset: Any) -> str:
    """The `repr` of every level's transform and target_transform (None where there is none)."""
    reprs = []
    for level in _dataset_chain(dataset):
        for attr in ("transform", "target_transform"):
            if hasattr(level, attr):
                reprs.append(f"{_class_name(level)}.{attr}={getattr(level, attr)!r}")
    text = "\n".join(reprs)
    if " at 0x" in text:
        warnings.warn("features: a dataset transform's repr holds a memory address, so its feature cache key "
                      "changes every run; give the transform a __repr__ to reuse the cache", RuntimeWarning, stacklevel=3)
    return hashlib.sha256(text.encode()).hexdigest()


def _dataset_chain(dataset: Any) -> list[Any]:
    """[dataset, its inner dataset, ...]: follows `IndexedDataset.base` and `Subset.dataset`."""
    chain = [dataset]
    while len(chain) < _MAX_WRAPPER_DEPTH:
        inner = next((getattr(chain[-1], attr) for attr in ("base", "dataset") if _is_dataset(getattr(chain[-1], attr, None))), None)
        if inner is None or any(inner is level for level in chain):
            break
        chain.append(inner)
    return chain


def _hash_content(hasher: Any, dataset: Any) -> None:
    """Labels and samples of a known layout (ImageFolder `samples`, CIFAR/STL `data`, DigitsImages
    `images`, TensorDataset `tensors`); otherwise the first, middle and last items."""
    if isinstance(dataset, (list, tuple, np.ndarray, Tensor)):  # a plain sequence as base: hash it all
        _hash_value(hasher, dataset)
        return
    has_samples = False
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, (list, tuple)):
        _update(hasher, "samples", str(len(samples)))
        for sample in samples:
            path, label = (sample[0], sample[1]) if isinstance(sample, (list, tuple)) else (sample, None)
            _update(hasher, "sample", f"{path}|{label}|{_file_stamp(path)}")
        has_samples = True
    for attr in ("data", "images", "tensors"):
        value = getattr(dataset, attr, None)
        if isinstance(value, (list, tuple, np.ndarray, Tensor)):
            _update(hasher, "attr", attr)
            _hash_value(hasher, value)
            has_samples = True
    for attr in ("targets", "labels"):
        value = getattr(dataset, attr, None)
        if value is not None and not callable(value):
            _update(hasher, "attr", attr)
            _hash_labels(hasher, value)
    if not has_samples:
        n = _length(dataset)
        for index in sorted({0, n // 2, n - 1} if n > 0 else set()):
            _update(hasher, "item", str(index))
            _hash_value(hasher, dataset[index])


def _hash_labels(hasher: Any, labels: Any) -> None:
    try:
        array = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64)
    except (TypeError, ValueError):
        _hash_value(hasher, labels)
        return
    _update(hasher, "labels", np.ascontiguousarray(array).tobytes())


def _hash_value(hasher: Any, value: Any) -> None:
    """Hash a tensor, array, PIL image, number, string or a (nested) list/tuple/dict of them."""
    if isinstance(value, Tensor):
        tensor = value.detach().cpu().contiguous()
        _update(hasher, "tensor", f"{tensor.dtype} {tuple(tensor.shape)}")
        # raw bytes via a uint8 view: works for every dtype, bfloat16 included (numpy has none)
        _update(hasher, "bytes", tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray) and value.dtype != object:
        _update(hasher, "array", f"{value.dtype.str} {value.shape}")
        _update(hasher, "bytes", np.ascontiguousarray(value).tobytes())
    elif _is_pil_image(value):
        _update(hasher, "image", f"{value.mode} {value.size}")
        _update(hasher, "bytes", value.tobytes())
    elif isinstance(value, (list, tuple, np.ndarray)):
        _update(hasher, type(value).__name__, str(len(value)))
        for item in value:
            _hash_value(hasher, item)
    elif isinstance(value, dict):
        _update(hasher, "dict", str(len(value)))
        for name in sorted(value, key=repr):
            _update(hasher, "key", repr(name))
            _hash_value(hasher, value[name])
    else:  # numbers, strings, None; other objects by repr (a repr with an address only prevents reuse)
        _update(hasher, type(value).__name__, repr(value))


def _update(hasher: Any, tag: str, data: str | bytes) -> None:
    """Feed a tagged, length-prefixed field, so that different field sequences never hash alike."""
    raw = data.encode() if isinstance(data, str) else data
    hasher.update(f"{tag}:{len(raw)}:".encode())
    hasher.update(raw)


def _file_stamp(path: Any) -> str:
    try:
        stat = os.stat(path)
    except (OSError, TypeError, ValueError):
        return "missing"
    return f"{stat.st_size}|{stat.st_mtime_ns}"


def _is_dataset(value: Any) -> bool:
    """Something indexable with a length (a Dataset, or a plain list used as one), not a string."""
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(value, (str, bytes, bytearray))


def _is_pil_image(value: Any) -> bool:
    image_module = sys.modules.get("PIL.Image")
    return image_module is not None and isinstance(value, image_module.Image)


def _length(dataset: Any) -> int:
    try:
        return len(dataset)
    except TypeError:
        return -1


def _class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
