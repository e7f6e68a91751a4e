"""Augmented views that are a pure function of (seed, image index, view index): a pool of V draws per image.

The teacher-feature cache (`ssl_kd.teacher_cache`) needs the student to see, in any epoch, exactly
the views the teacher embedded once. So draw v of image i is made under generators seeded from
`sample_seed(seed, i, v)` alone (`seeded`: torch's, numpy's and Python's global generators, the ones
torchvision's and lightly's transforms draw from), never from a worker's running stream: the same
view comes out whatever the number of loader workers, the batch size or the number of processes.

    pool = ViewPool(view_draw(cfg.data), size=V, draws_per_step=2, seed=cfg.train.seed)
    pool.draw(image, i, v)          # draw v of image i: [view] (crops) or its four rotations
    pool.chosen(i, epoch)           # which draws image i trains on in `epoch`: 2 distinct of 0..V-1,
                                    # a pure function of (seed, epoch, i)

`PooledViews` is the training dataset over such a pool: item `(i, epoch)` (the loader's sampler is
`make_loader(..., tag_epoch=True)`) gives the chosen draws' views and, when caches are attached, the
teacher's cached rows for exactly those draws.
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

_CHOICE_STREAM = 1  # a fixed word that keeps the choice of draws apart from the draws' own seeds


def sample_seed(*parts: int) -> int:
    """A 64-bit seed that is a pure function of the integers `parts` (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


@contextlib.contextmanager
def seeded(seed: int):
    """Inside the block torch's, numpy's and Python's global generators start from `seed`; after it
    they continue exactly where they were (the caller's stream is untouched)."""
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)  # the CPU generator the transforms draw from (torch.manual_seed
    # also queues a CUDA seeding with a captured traceback: 1.5 ms a call, more than the augmentation itself)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class ViewPool:
    """V reproducible draws per image and the choice among them per epoch.

    `draw` maps an image to the list of views of one random draw (`ssl_kd.views.view_draw`: one crop,
    or one crop in four rotations); a step trains on `draws_per_step` distinct draws of the pool.
    """

    def __init__(self, draw: Callable, size: int, draws_per_step: int, seed: int):
        if size < draws_per_step:
            raise ValueError(f"a pool of {size} draws per image cannot give {draws_per_step} distinct draws a step")
        self.view_draw, self.size, self.draws_per_step, self.seed = draw, size, draws_per_step, seed

    def draw(self, image, index: int, view: int) -> list[torch.Tensor]:
        """Draw `view` (0..size-1) of image `index`: the same tensors on every call, in any process."""
        with seeded(sample_seed(self.seed, index, view)):
            return self.view_draw(image)

    def chosen(self, index: int, epoch: int) -> list[int]:
        """The draws image `index` trains on in `epoch`: `draws_per_step` distinct ones of the pool, in
        random order, drawn from a generator seeded by (seed, epoch, index)."""
        rng = np.random.default_rng([self.seed, _CHOICE_STREAM, epoch, index])
        return rng.choice(self.size, self.draws_per_step, replace=False).tolist()


class FreshDraws(ViewPool):
    """Seeded draws without a pool: in epoch e image i trains on draws e * k, ..., e * k + k - 1 (k =
    `draws_per_step`), new ones every epoch as with unseeded augmentation, but each a pure function of
    (seed, i, draw) (`data.seeded_views`): the same whatever the workers, and exact on resume."""

    def __init__(self, draw: Callable, draws_per_step: int, seed: int):
        super().__init__(draw, size=draws_per_step, draws_per_step=draws_per_step, seed=seed)

    def chosen(self, index: int, epoch: int) -> list[int]:
        return [epoch * self.draws_per_step + j for j in range(self.draws_per_step)]


class PooledViews(Dataset):
    """The training set over a `ViewPool`: item `(index, epoch)` -> (views, label, index used).

    `images` is a dataset without a transform that has `load(i) -> (image, label, index used)`
    (`ssl_kd.data.IndexedDataset`; an unreadable image is replaced by the next readable one, whose
    draws are then used). With `caches` (one `TeacherCache` per teacher, primary first) the views
    come as `{"views": [...], "teachers": [{"emb": [n_views, D], ...} per teacher]}`: each teacher's
    cached outputs for exactly the chosen draws, in the same view order.
    """

    def __init__(self, images: Dataset, pool: ViewPool, caches: Sequence = ()):
        self.images, self.pool, self.caches = images, pool, list(caches)
        self.classes = getattr(images, "classes", [])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        image, label, used = self.images.load(index)
        draws = self.pool.chosen(used, epoch)
        views = [view for v in draws for view in self.pool.draw(image, used, v)]
        if not self.caches:
            return views, label, used
        return {"views": views, "teachers": [cache.rows(used, draws) for cache in self.caches]}, label, used


class PoolDraws(Dataset):
    """Every draw of every image of a pool, for building the cache: item i -> ([V * views_per_draw, 3, H, W]
    stacked draw-major, i, index used), with the substitution of `images.load`."""

    def __init__(self, images: Dataset, pool: ViewPool):
        self.images, self.pool = images, pool

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, _label, used = self.images.load(index)
        return torch.stack([view for v in range(self.pool.size) for view in self.pool.draw(image, used, v)]), index, used
