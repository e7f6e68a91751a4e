"""The frozen teacher's outputs on every view of a `ViewPool`, computed once and read lazily from disk.

The teacher never changes, so every epoch of distillation repeats its forward passes. With
`train.teacher_cache=V` each training image gets V reproducible draws (`ssl_kd.seeded_views`); the
teacher embeds all N x V draws once, here, and training reads its rows instead of calling it.

On disk, in `train.teacher_cache_dir/<key>/`:
    emb.npy      [N, V, K, D]  the teacher's embedding of view k of draw v of image i (K views a draw:
                               1 crop, or 4 rotations); float16 by default (a 1.28M x 10 x 2048 cache
                               is ~52 GB), opened as a numpy memmap so rows are read when asked for
    logits.npy   [N, V, K, C]  a supervised teacher's logits, only when the method uses them
    done.npy     [N]           which images are written: an interrupted build resumes from it
    meta.json                  the key, the shapes, and "complete" once every image is written

The key (`teacher_cache_key`) hashes the teacher's weights (its projection head's included), its embedding
space (`teacher.embedding=head`), the data (as `feature_cache_key` does), the
view recipe, V, the seed, the storage dtype and the format: a changed key builds a new cache, an
unchanged one is reused without a write.

Under torchrun every rank calls `build_teacher_cache`: rank 0 computes the key and creates or reopens
the files, each rank embeds its shard of the images still missing, the rows are gathered, and rank 0
alone writes them. The cache folder must be one that every process can read (on several nodes, a
shared filesystem, like the run folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .errors import UserError
from .evaluation.on_main import on_main_process
from .feature_cache import _data_fingerprint, _model_fingerprint
from .feature_shards import PADDING_INDEX, pad_rows
from .parallel import all_gather_cat, barrier, is_main_process, rank, world_size
from .seeded_views import PoolDraws, ViewPool

CACHE_FORMAT = "ssl_kd-teacher-cache-v1"
STORAGE_DTYPES = {"float16": np.float16, "float32": np.float32}
_FLUSH_SECONDS = 30.0  # how often a build makes its progress durable (rows first, then the done flags)


class TeacherCache:
    """A complete cache: `rows(i, draws)` -> the teacher's outputs for those draws of image i.

    Picklable for loader workers: each process opens the memmaps itself, on first use."""

    def __init__(self, directory: Path, built_now: bool = False):
        self.directory, self.built_now = Path(directory), built_now
        meta = json.loads((self.directory / "meta.json").read_text())
        self.build_seconds = meta.get("build_seconds")  # when it was built, by whichever run
        self.key, self.num_images, self.pool_size = meta["key"], meta["num_images"], meta["pool_size"]
        self.views_per_draw, self.dim, self.logit_dim = meta["views_per_draw"], meta["dim"], meta["logit_dim"]
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # memmaps are reopened in each process

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            names = ["emb", "logits"] if self.logit_dim else ["emb"]
            self._arrays = {name: np.load(self.directory / f"{name}.npy", mmap_mode="r") for name in names}
        return self._arrays

    def describe(self) -> dict:
        """For the report: where the cache is, its size, and whether this run built it."""
        return {"directory": str(self.directory), "images": self.num_images, "draws": self.pool_size,
                "views_per_draw": self.views_per_draw, "built_now": self.built_now, "build_seconds": self.build_seconds}

    def rows(self, index: int, draws: list[int]) -> dict[str, Tensor]:
        """{"emb": [len(draws) * K, D]} (and "logits"), view order: draw by draw, a draw's K views in turn,
        as `PooledViews` orders the images. Stored dtype (float16 by default)."""
        return {name: torch.from_numpy(np.ascontiguousarray(array[index, draws]).reshape(len(draws) * self.views_per_draw, -1))
                for name, array in self._open().items()}


def teacher_cache_key(teacher: nn.Module, images: Any, pool: ViewPool, *, recipe: str, dtype: str, logits: bool) -> str:
    """A 24-hex-digit sha256 of everything the cached rows depend on: the teacher's weights (and its input
    size and normalization), the images (`_data_fingerprint`: paths with sizes and mtimes, labels, the subset), the view
    recipe (the augmentation config and the versions of the libraries that implement it), the pool size V,
    the seed, the storage dtype, whether logits are kept, the format version, and the embedding space when it is
    not the backbone (`teacher.embedding=head`: the rows are the projection head's output; the weights alone cannot
    tell, since a teacher carries its head in both spaces)."""
    import lightly
    import torchvision

    mean, std = (getattr(teacher, name, torch.zeros(0)).flatten().tolist() for name in ("mean", "std"))  # not in the state dict
    parts = [CACHE_FORMAT, _model_fingerprint(teacher), f"teacher_image_size={getattr(teacher, 'image_size', None)}",
             f"teacher_mean={mean}", f"teacher_std={std}",
             _data_fingerprint(images), f"recipe={recipe}", f"lightly={lightly.__version__}", f"torchvision={torchvision.__version__}",
             f"pool={pool.size}x{pool.draws_per_step}", f"seed={pool.seed}", f"dtype={dtype}", f"logits={logits}"]
    embedding = getattr(teacher, "embedding", "backbone")
    if embedding != "backbone":  # the head space caches the head's output (backbone keys stay as they were)
        parts.append(f"teacher_embedding={embedding}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def build_teacher_cache(teacher: nn.Module, images: Any, pool: ViewPool, *, directory: str | Path, recipe: str,
                        logits: bool = False, dtype: str = "float16", batch_size: int = 256, num_workers: int = 0,
                        device: torch.device = torch.device("cpu"), autocast=None, progress: bool | None = None) -> TeacherCache:
    """The cache of `teacher` over every draw of `pool` for the images of `images`: reused when its key
    exists and is complete, else built (or an interrupted build finished). `batch_size` counts views per
    teacher forward; `autocast` is the training's autocast context (the teacher then computes as it would
    live). Every rank must call it under torchrun. Returns the opened cache."""
    if dtype not in STORAGE_DTYPES:
        raise UserError(f"train.teacher_cache_dtype={dtype!r} is not one of: {', '.join(STORAGE_DTYPES)}")
    key = on_main_process(lambda: teacher_cache_key(teacher, images, pool, recipe=recipe, dtype=dtype, logits=logits))
    path = Path(directory) / key
    views_per_draw = len(pool.draw(images.load(0)[0], 0, 0))
    dim, logit_dim = int(teacher.embed_dim), (int(getattr(teacher.backbone, "num_classes", 0)) if logits else 0)
    row_shapes = {"emb": (pool.size, views_per_draw, dim), **({"logits": (pool.size, views_per_draw, logit_dim)} if logit_dim else {})}
    pending = on_main_process(lambda: _open_or_create(path, key, len(images), row_shapes, dtype))
    if not pending:
        _say(f"teacher cache: reusing {path} ({len(images)} images x {pool.size} draws)")
        return TeacherCache(path)
    _say(f"teacher cache: embedding {len(pending)} images x {pool.size} draws x {views_per_draw} views -> {path}")
    started = time.time()
    images_per_batch = max(1, batch_size // (pool.size * views_per_draw))
    _fill(teacher, PoolDraws(images, pool), pending, path, row_shapes, dtype, images_per_batch, num_workers, device,
          autocast or contextlib.nullcontext(), progress)
    if is_main_process():
        meta = json.loads((path / "meta.json").read_text())
        _write_json(path / "meta.json", {**meta, "complete": True, "build_seconds": round(time.time() - started, 1)})
    barrier()
    _say(f"teacher cache: built in {time.time() - started:.1f} s")
    return TeacherCache(path, built_now=True)


def _open_or_create(path: Path, key: str, num_images: int, row_shapes: dict[str, tuple[int, ...]], dtype: str) -> list[int]:
    """Rank 0: the images still to embed ([] when the cache is complete); creates the files when there are none."""
    meta_path = path / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and meta.get("num_images") == num_images:
            if meta.get("complete"):
                return []
            done = np.load(path / "done.npy", mmap_mode="r")
            return np.flatnonzero(~done).tolist()
    pool_size, views_per_draw, dim = row_shapes["emb"]
    try:
        path.mkdir(parents=True, exist_ok=True)
        for name, shape in row_shapes.items():
            np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=STORAGE_DTYPES[dtype], shape=(num_images, *shape)).flush()
        np.lib.format.open_memmap(path / "done.npy", mode="w+", dtype=np.bool_, shape=(num_images,)).flush()
        _write_json(meta_path, {"format": CACHE_FORMAT, "key": key, "num_images": num_images, "pool_size": pool_size,
                                "views_per_draw": views_per_draw, "dim": dim,
                                "logit_dim": row_shapes["logits"][-1] if "logits" in row_shapes else 0, "dtype": dtype,
                                "complete": False})
    except OSError as err:
        raise UserError(f"cannot create the teacher cache in {path} ({err.strerror or err}); "
                        "set train.teacher_cache_dir to a writable folder with room for it") from None
    return list(range(num_images))


def _fill(teacher, draws: PoolDraws, pending: list[int], path: Path, row_shapes: dict, dtype: str, images_per_batch: int,
          num_workers: int, device: torch.device, autocast, progress: bool | None) -> None:
    """Every rank embeds its shard of `pending` (positions rank, rank + W, ...); each batch's rows are
    gathered and rank 0 writes them, making its progress durable every `_FLUSH_SECONDS`."""
    shard = pending[rank()::world_size()]
    loader = iter(DataLoader(Subset(draws, shard), batch_size=images_per_batch, shuffle=False, num_workers=num_workers))
    batches = math.ceil(math.ceil(len(pending) / world_size()) / images_per_batch)  # the same on every rank
    writer = _RowWriter(path, list(row_shapes)) if is_main_process() else None
    show = is_main_process() and (progress if progress is not None else sys.stderr.isatty())
    was_training = teacher.training
    teacher.eval()
    try:
        for _ in tqdm(range(batches), desc="teacher cache", disable=not show, leave=False):
            batch = next(loader, None)
            if batch is None:  # this rank's shard is used up: it sends padding only
                rows = {name: torch.zeros((0, *shape)) for name, shape in row_shapes.items()}
                requested = used = torch.zeros(0, dtype=torch.long)
            else:
                stacked, requested, used = batch
                rows = _embed(teacher, stacked, device, autocast, row_shapes)
            gathered = _gather(rows, requested, used, images_per_batch, device)
            _check_storable(gathered, row_shapes, dtype)
            if writer is not None:
                writer.write(gathered, STORAGE_DTYPES[dtype])
        if writer is not None:
            writer.flush()
    finally:
        teacher.train(was_training)


def _embed(teacher, stacked: Tensor, device, autocast, row_shapes: dict) -> dict[str, Tensor]:
    """The teacher on a [b, V * K, 3, H, W] batch of draws -> {"emb": [b, V, K, D], ("logits": [b, V, K, C])}."""
    with torch.inference_mode(), autocast:
        out = teacher(stacked.flatten(0, 1).to(device, non_blocking=True))
    outputs = {"emb": out.emb, "logits": out.logits}
    return {name: outputs[name].float().reshape(stacked.shape[0], *shape).cpu() for name, shape in row_shapes.items()}


def _gather(rows: dict[str, Tensor], requested: Tensor, used: Tensor, images_per_batch: int, device) -> dict[str, Tensor]:
    """Every rank's rows of this batch, each padded to `images_per_batch` (padding index -1), in rank order."""
    gathered = {name: all_gather_cat(pad_rows(value.to(device), images_per_batch)).cpu() for name, value in rows.items()}
    for name, indices in (("requested", requested), ("used", used)):
        gathered[name] = all_gather_cat(pad_rows(indices.long().to(device), images_per_batch, PADDING_INDEX)).cpu()
    return gathered


def _check_storable(gathered: dict[str, Tensor], row_shapes: dict, dtype: str) -> None:
    """Every rank sees the same gathered rows, so every rank stops together when they cannot be stored."""
    limit = float(np.finfo(STORAGE_DTYPES[dtype]).max)
    for name in row_shapes:
        value = gathered[name]
        if not torch.isfinite(value).all() or value.abs().max() > limit:
            raise UserError(f"the teacher's {name} are not finite in {dtype}; use train.teacher_cache_dtype=float32")


class _RowWriter:
    """Rank 0's writes into the memmaps: rows at their image index, then the done flags, durable every
    `_FLUSH_SECONDS` (rows are flushed before the flags that vouch for them)."""

    def __init__(self, path: Path, names: list[str]):
        self.arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r+") for name in names}
        self.done = np.load(path / "done.npy", mmap_mode="r+")
        self.last_flush = time.time()

    def write(self, gathered: dict[str, Tensor], dtype) -> None:
        real = gathered["used"] != PADDING_INDEX
        used = gathered["used"][real].numpy()
        for name, array in self.arrays.items():
            array[used] = gathered[name][real].numpy().astype(dtype)
        self.done[used] = True
        self.done[gathered["requested"][real].numpy()] = True  # an unreadable image: its substitute's rows stand in
        if time.time() - self.last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        for array in self.arrays.values():
            array.flush()
        self.done.flush()
        self.last_flush = time.time()


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def _say(message: str) -> None:
    if is_main_process():
        print(message, flush=True)
