"""DataLoaders: training (shuffled by (seed, epoch), sharded over processes, the global batch, resumable
mid-epoch) and evaluation (ordered and complete)."""

from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .errors import UserError
from .parallel import rank, world_size
from .preemption import STOP_SIGNALS

def per_process_batch(batch_size: int, num_images: int, world: int) -> int:
    """Images each of `world` processes takes per step for a GLOBAL batch of `batch_size` (tiny data:
    the whole set, as one batch, rather than none)."""
    batch_size = min(batch_size, num_images)
    if batch_size < world:
        raise UserError(f"{num_images} training images cannot feed {world} processes; use more images or fewer processes")
    if batch_size % world:
        raise UserError(f"train.batch_size={batch_size} does not split over {world} processes; "
                        f"give a multiple of {world} (it is the global batch, summed over processes)")
    return batch_size // world


class TrainingSampler(DistributedSampler):
    """`DistributedSampler` (shuffled by (seed, epoch), sharded, drop-last) that can start an epoch after its
    first k steps (`skip_batches`, a run resumed mid-epoch) and, with `tag_epoch`, yields `(index, epoch)`
    so the dataset learns the epoch, also in loader workers that persist across epochs
    (`ssl_kd.seeded_views.PooledViews`)."""

    def __init__(self, *args, tag_epoch: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.tag_epoch, self.skip = tag_epoch, 0

    def skip_batches(self, steps: int, batch_size: int) -> None:
        """Leave out this epoch's first `steps` batches of `batch_size` (until the next call)."""
        self.skip = steps * batch_size

    def __iter__(self):
        indices = list(super().__iter__())[self.skip:]
        return iter([(index, self.epoch) for index in indices] if self.tag_epoch else indices)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def leave_stop_signals_to_the_main_process(worker_id: int = 0) -> None:
    """A loader worker's `worker_init_fn`: SIGTERM, SIGUSR1 and SIGINT are ignored in the worker. Schedulers
    (SLURM) and a terminal's Ctrl-C signal the whole process group; a worker killed mid-batch would take the
    run down (the loader's SIGCHLD check raises in the main process) before the main process could write
    its checkpoint (`ssl_kd.preemption`). The main process stops the workers itself when it is done."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, num_workers: int, seed: int = 0,
                pin_memory: bool = False, tag_epoch: bool = False) -> DataLoader:
    """Training: shuffled, drop-last, sharded over processes; evaluation: ordered and complete.

    Training order: epoch e is the permutation `torch.randperm(n)` drawn from a generator seeded with
    `seed + e` (`DistributedSampler`; the loop calls `set_epoch`), cut to a multiple of the number of
    processes W; process r takes its positions r, r + W, r + 2W, ... . `batch_size` is the GLOBAL
    batch: each process loads `batch_size / W` images a step, and global step i holds the permutation's
    positions [i * batch_size, (i + 1) * batch_size) whatever W is, so 1 and W processes see the same
    batches. Workers persist across epochs and prefetch; `pin_memory` for CUDA. `tag_epoch`: the
    dataset is asked for `(index, epoch)` instead of `index` (`TrainingSampler`).
    """
    options = dict(num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory,
                   prefetch_factor=4 if num_workers > 0 else None,
                   worker_init_fn=leave_stop_signals_to_the_main_process if num_workers > 0 else None)
    if not train:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, **options)
    world = world_size()
    sampler = TrainingSampler(dataset, num_replicas=world, rank=rank(), shuffle=True, seed=seed, drop_last=True, tag_epoch=tag_epoch)
    generator = torch.Generator().manual_seed(seed + rank())  # the loader workers' seeds: one stream per process
    return DataLoader(dataset, batch_size=per_process_batch(batch_size, len(dataset), world), sampler=sampler,
                      drop_last=True, generator=generator, **options)
