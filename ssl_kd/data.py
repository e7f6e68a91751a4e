"""Datasets and view transforms.

Every dataset yields `(image, label, index)`; images leave the transforms as float tensors in [0, 1]
with no normalization (each network normalizes its own input with its own mean/std, so a teacher
and a student that expect different statistics each get the right input).

Datasets (the `data.name` config key):
- `digits`: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes, ships with
  scikit-learn: no download). Fixed split: stratified 70/30 with `random_state=0`, i.e. 1,257
  train / 540 test. Images are scaled from 0..16 to 0..255 and upsampled bilinearly to
  `data.image_size` (32 by default), 3 channels.
- `cifar10`, `cifar100`, `stl10`: torchvision, in `data.root`, downloaded when missing
  (`data.download=true`, needs internet).
- `imagefolder`: any folder of class sub-folders. ImageNet layout (`root/train/<class>/*`,
  `root/val/<class>/*`) when `root/train` exists; else `root/<class>/*` split into train/test by
  a fixed stratified `data.val_fraction`.
- `folder`: every image under `data.root`, recursively, unlabeled (label -1), a train split only
  (evaluate on a labeled set: `--eval-data`). The file list is scanned once and cached
  (`ssl_kd.image_files`, `data.file_list_dir`); zero-byte files are left out.

Unreadable images (any file-based dataset): `IndexedDataset.load` replaces an image PIL cannot read
by the next readable one and records it in shared memory, visible across loader workers;
`unreadable_check` is the training loop's check that stops the run past `data.max_bad_fraction`.

Views: `view_draw(cfg)` is one random draw (one crop, or one crop in four rotations); a training step
takes `DRAWS_PER_STEP[data.views]` draws (`views_transform`: `num_views(cfg)` views an image). The
teacher cache draws them reproducibly instead (`ssl_kd.seeded_views`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.datasets.folder import pil_loader

from .config import DataConfig
from .errors import UserError
from .image_files import READ_ERRORS, FileList, UnreadableCheck, UnreadableImages, image_file_list
from .parallel import rank, world_size

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.3
SPLIT_SEED = 0


class IndexedDataset(Dataset):
    """Wraps an `(image, label)` dataset: applies `transform`, returns `(image, label, index used)`,
    and replaces an image that cannot be read by the next readable one (`load`).

    `unreadable` (`ssl_kd.image_files.UnreadableImages`, shared memory made here, so DataLoader
    workers, forked or spawned, write into what the training process reads) records every image found
    unreadable; `excluded` are files left out before indexing (the zero-byte files of a `folder`
    scan), which count as unreadable too."""

    def __init__(self, base: Dataset, transform: Callable | None, classes: list[str], excluded: Sequence[str] = ()):
        self.base, self.transform, self.classes = base, transform, classes
        self.unreadable = UnreadableImages(len(base), excluded)

    def __len__(self) -> int:
        return len(self.base)

    def load(self, index: int) -> tuple[Any, int, int]:
        """Base sample `index` as (image, label, index used), the image fully decoded and untransformed.

        When it cannot be read (PIL's `READ_ERRORS`: OSError incl. unidentified and truncated files,
        ValueError, SyntaxError, DecompressionBombError) it is marked unreadable and the next readable
        index (index + 1, index + 2, ..., wrapping around) is returned instead, with that image's label
        and index; images already marked are passed over without another read."""
        size = len(self.base)
        for offset in range(size):
            candidate = (index + offset) % size
            if self.unreadable.is_marked(candidate):
                continue
            try:
                image, label = self.base[candidate]
                if isinstance(image, Image.Image):
                    image.load()  # a lazily opened image fails here, inside the try, rather than in the transform
            except READ_ERRORS as err:
                self.unreadable.mark(candidate, err)
                continue
            return image, int(label), candidate
        raise UserError(f"none of the {size} images can be read (e.g. {', '.join(self.unreadable.examples(self.sample_path))}); "
                        "check that the files are images PIL opens")

    def __getitem__(self, index: int):
        image, label, used = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, label, used

    def sample_path(self, index: int) -> str | None:
        """The file behind sample `index`, where the base dataset reads files (None for in-memory data)."""
        return _sample_path(self.base, index)


def _sample_path(dataset: Dataset, index: int) -> str | None:
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    if isinstance(dataset, FolderImages):
        return dataset.files.path(index)
    samples = getattr(dataset, "samples", None)  # torchvision's ImageFolder: [(path, label), ...]
    return str(samples[index][0]) if isinstance(samples, list) else None


def unreadable_check(dataset: Dataset, max_bad_fraction: float) -> UnreadableCheck | None:
    """`fit`'s `data_check` for a training dataset (an `IndexedDataset`, or a dataset wrapping one as
    `.dataset`, `.base` or `.images`, e.g. `seeded_views.PooledViews`): stops the run past
    `max_bad_fraction` unreadable images (see `UnreadableCheck`); None when no `IndexedDataset` is found."""
    for _ in range(32):  # wrappers around wrappers, bounded
        if isinstance(dataset, IndexedDataset):
            return UnreadableCheck(dataset.unreadable, max_bad_fraction, dataset.sample_path)
        inner = (getattr(dataset, attr, None) for attr in ("dataset", "base", "images"))
        dataset = next((candidate for candidate in inner if isinstance(candidate, Dataset)), None)
        if dataset is None:
            return None
    return None


UNLABELED = -1  # the label of every image of an unlabeled dataset


class FolderImages(Dataset):
    """The images of a `FileList`, unlabeled: `(RGB PIL image, -1)`; `empty_files` are its zero-byte files."""

    def __init__(self, files: FileList):
        self.files = files
        self.empty_files = files.empty_paths()

    def __len__(self) -> int:
        return len(self.files.files)

    def __getitem__(self, index: int):
        return pil_loader(self.files.path(index)), UNLABELED

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(path, label) pairs, as torchvision's ImageFolder has them: what the feature and teacher caches'
        keys hash (with each file's size and mtime)."""
        return [(self.files.path(index), UNLABELED) for index in range(len(self))]


class DigitsImages(Dataset):
    """scikit-learn's digits as PIL images of side `image_size`, one split of the fixed 70/30 split."""

    def __init__(self, split: str, image_size: int):
        from sklearn.datasets import load_digits

        digits = load_digits()
        indices = np.arange(len(digits.target))
        train_idx, test_idx = train_test_split(
            indices, test_size=DIGITS_TEST_FRACTION, stratify=digits.target, random_state=DIGITS_SPLIT_SEED
        )
        chosen = train_idx if split == "train" else test_idx
        pixels = (digits.images[chosen] * (255.0 / 16.0)).round().astype(np.uint8)
        self.images = [
            Image.fromarray(p, mode="L").resize((image_size, image_size), Image.BILINEAR).convert("RGB") for p in pixels
        ]
        self.targets = digits.target[chosen].tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


def build_dataset(cfg: DataConfig, split: str, transform: Callable | None) -> IndexedDataset:
    """The `split` ("train" or "test") of the dataset `cfg.name`, with `transform` applied."""
    cfg = resolve_data_config(cfg)
    base, classes = DATASETS[cfg.name](cfg, split)
    excluded = getattr(base, "empty_files", ())
    if cfg.subset is not None:
        base = Subset(base, range(min(cfg.subset, len(base))))
    if len(base) == 0:
        raise UserError(f"the {split} split of dataset '{cfg.name}' is empty; point --data-root at a folder with images")
    return IndexedDataset(base, transform, classes, excluded)


UNLABELED_DATASETS = ("folder",)


def require_labels(cfg: DataConfig) -> None:
    """Evaluation (k-NN monitor, k-NN, retrieval, probe) needs labels: an unlabeled dataset is a `UserError`."""
    if cfg.name in UNLABELED_DATASETS:
        raise UserError(f"dataset '{cfg.name}' holds unlabeled images (a train split only), and evaluation (k-NN monitor, "
                        "k-NN, retrieval, linear probe) needs labels; pass a labeled set with --eval-data NAME "
                        "--eval-data-root DIR (e.g. --eval-data imagefolder --eval-data-root /data/labeled)")


def _folder(cfg: DataConfig, split: str):
    if split != "train":
        require_labels(cfg)
    return FolderImages(image_file_list(_require_root(cfg), cfg.file_list_dir)), []


def _digits(cfg: DataConfig, split: str):
    return DigitsImages(split, cfg.image_size), [str(c) for c in range(10)]


def _torchvision(name: str) -> Callable:
    def build(cfg: DataConfig, split: str):
        import torchvision.datasets as tvd

        root = _require_root(cfg)
        try:
            if name == "stl10":
                dataset = tvd.STL10(root, split=split, download=cfg.download)
            else:
                dataset = getattr(tvd, name.upper())(root, train=(split == "train"), download=cfg.download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted..."
            raise UserError(
                f"{name} not found in {root} ({' '.join(str(err).split())[:120]}); set data.download=true "
                "(needs internet) or put the files there"
            ) from None
        except OSError as err:  # no network, refused connection, full disk ...
            raise UserError(f"could not download {name} to {root} ({err}); check the connection or put the files there") from None
        return dataset, list(getattr(dataset, "classes", []))

    return build


def _imagefolder(cfg: DataConfig, split: str):
    from torchvision.datasets import ImageFolder

    root = Path(_require_root(cfg))
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder; pass --data-root DIR holding one sub-folder per class")
    if (root / "train").is_dir():
        train = _image_folder(ImageFolder, root / "train")
        if split == "train":
            return train, train.classes
        folder = _first_dir(root, ("val", "test"), split)
        held_out = _image_folder(ImageFolder, folder)
        _use_train_labels(held_out, train, folder)
        return held_out, train.classes
    dataset = _image_folder(ImageFolder, root)
    train_idx, test_idx = _stratified_split(dataset.targets, cfg.val_fraction)
    subset = Subset(dataset, train_idx if split == "train" else test_idx)
    return subset, dataset.classes


def _image_folder(cls, folder: Path):
    try:
        dataset = cls(str(folder))
    except FileNotFoundError as err:
        raise UserError(f"no images in {folder} ({err}); put images in one sub-folder per class, e.g. {folder}/cat/1.jpg") from None
    if len(dataset) == 0:
        raise UserError(f"no images in {folder}; put images in one sub-folder per class, e.g. {folder}/cat/1.jpg")
    return dataset


def _use_train_labels(held_out, train, folder: Path) -> None:
    """Number the held-out split's classes as the train split does (ImageFolder numbers the folders it sees)."""
    unknown = sorted(set(held_out.classes) - set(train.classes))
    if unknown:
        raise UserError(f"{folder} has classes that train/ lacks ({', '.join(unknown[:3])}); give both splits the same class folders")
    mapping = [train.class_to_idx[name] for name in held_out.classes]
    held_out.samples = [(path, mapping[label]) for path, label in held_out.samples]
    held_out.imgs = held_out.samples
    held_out.targets = [label for _, label in held_out.samples]
    held_out.classes, held_out.class_to_idx = train.classes, train.class_to_idx


def _first_dir(root: Path, names: tuple[str, ...], split: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise UserError(f"{root} has train/ but no {' or '.join(names)}/ folder for the {split} split; add one (ImageNet layout)")


def _stratified_split(targets: list[int], test_fraction: float) -> tuple[list[int], list[int]]:
    indices = np.arange(len(targets))
    counts = np.bincount(targets)
    stratify = targets if counts.min() >= 2 and len(targets) * test_fraction >= len(counts) else None
    train_idx, test_idx = train_test_split(indices, test_size=test_fraction, stratify=stratify, random_state=SPLIT_SEED)
    return train_idx.tolist(), test_idx.tolist()


def _require_root(cfg: DataConfig) -> str:
    if not cfg.root:
        raise UserError(f"dataset '{cfg.name}' needs a folder; pass --data-root DIR (data.root)")
    return cfg.root


DATASETS: dict[str, Callable] = {
    "digits": _digits,
    "cifar10": _torchvision("cifar10"),
    "cifar100": _torchvision("cifar100"),
    "stl10": _torchvision("stl10"),
    "imagefolder": _imagefolder,
    "folder": _folder,
}


# Per-dataset defaults for the DataConfig fields left at None.
_NATURAL = dict(min_scale=0.08, hflip=0.5, color_jitter=0.8, jitter_strength=1.0, grayscale=0.2, blur=0.5, rotation=0.0)
_SMALL = dict(_NATURAL, min_scale=0.2, jitter_strength=0.5, blur=0.0)  # 32 px: SimCLR's CIFAR recipe
DATASET_DEFAULTS: dict[str, dict] = {
    # grey 8x8 glyphs: no flips (a mirrored 2 is not a 2), no colour, slight rotations
    "digits": dict(image_size=32, min_scale=0.4, hflip=0.0, color_jitter=0.8, jitter_strength=0.5, grayscale=0.0, blur=0.0, rotation=0.5),
    "cifar10": dict(_SMALL, image_size=32),
    "cifar100": dict(_SMALL, image_size=32),
    "stl10": dict(_NATURAL, image_size=96),
    "imagefolder": dict(_NATURAL, image_size=224),
    "folder": dict(_NATURAL, image_size=224),
}


def resolve_data_config(cfg: DataConfig) -> DataConfig:
    """Fill the fields left at None with the dataset's defaults (an unknown dataset is an error)."""
    if cfg.name not in DATASET_DEFAULTS:
        raise UserError(f"unknown dataset '{cfg.name}'; choose one of: {', '.join(DATASETS)} (data.name / --data)")
    filled = {key: value for key, value in DATASET_DEFAULTS[cfg.name].items() if getattr(cfg, key) is None}
    return replace(cfg, **filled)


VIEW_MODES = ("crops", "rotations")


class RotatedViews:
    """One augmented view of the image, then that view turned by 0, 90, 180 and 270 degrees.

    Returns 4 tensors: view k = `torch.rot90(view_0, k, dims=(-2, -1))` (counter-clockwise), so view
    0 is the unrotated one, DLKD's anchors. DLKD's own code (research/methods.md s.1.1) rotates first
    and crops each rotation separately; here the four views share one crop and differ only by the turn.
    """

    def __init__(self, view: Callable):
        self.view = view

    def __call__(self, image) -> list[torch.Tensor]:
        base = self.view(image)
        return [torch.rot90(base, k, dims=(-2, -1)) for k in range(4)]


def view_draw(cfg: DataConfig):
    """One random draw of SSL views from an image: lightly's SimCLR view transform, sized to the image.

    Returns a callable image -> list of tensors: `data.views="crops"`: one crop ([view]);
    `"rotations"`: one crop turned by 0/90/180/270 degrees (`RotatedViews`, four views). What a step
    takes is `DRAWS_PER_STEP[cfg.views]` draws. All randomness comes from torch's and numpy's global
    generators (lightly's blur and rotation use numpy), so seeding both fixes a draw
    (`ssl_kd.seeded_views`).
    """
    cfg = resolve_data_config(cfg)
    if cfg.views not in VIEW_MODES:
        raise UserError(f"data.views={cfg.views!r} is not one of: {', '.join(VIEW_MODES)}")
    from lightly.transforms import SimCLRViewTransform

    view = SimCLRViewTransform(
        input_size=cfg.image_size,
        cj_prob=cfg.color_jitter,
        cj_strength=cfg.jitter_strength,
        min_scale=cfg.min_scale,
        random_gray_scale=cfg.grayscale,
        gaussian_blur=cfg.blur,
        hf_prob=cfg.hflip,
        rr_prob=cfg.rotation,
        rr_degrees=cfg.rotation_degrees,
        normalize=None,
    )
    return RotatedViews(view) if cfg.views == "rotations" else SingleView(view)


class SingleView:
    """A view transform as a draw: image -> [view]."""

    def __init__(self, view: Callable):
        self.view = view

    def __call__(self, image) -> list[torch.Tensor]:
        return [self.view(image)]


# draws a step takes per image: two independent crops, or one crop in its four rotations
DRAWS_PER_STEP = {"crops": 2, "rotations": 1}
VIEWS_PER_DRAW = {"crops": 1, "rotations": 4}


class MultiDraw:
    """`draws` independent draws of `draw`, their views concatenated (image -> list of tensors)."""

    def __init__(self, draw: Callable, draws: int):
        self.draw, self.draws = draw, draws

    def __call__(self, image) -> list[torch.Tensor]:
        return [view for _ in range(self.draws) for view in self.draw(image)]


def num_views(cfg: DataConfig) -> int:
    """Views per image a training step sees: 2 crops, or 4 rotations of one crop."""
    return DRAWS_PER_STEP[cfg.views] * VIEWS_PER_DRAW[cfg.views]


def views_transform(cfg: DataConfig):
    """The training transform: image -> the `num_views(cfg)` views of a step (`view_draw`, drawn
    `DRAWS_PER_STEP` times from torch's and numpy's global generators)."""
    draw, draws = view_draw(cfg), DRAWS_PER_STEP[resolve_data_config(cfg).views]
    return draw if draws == 1 else MultiDraw(draw, draws)


def eval_transform(cfg: DataConfig):
    """Deterministic: resize the short side (with the usual 0.875 crop ratio above 64 px), centre crop."""
    cfg = resolve_data_config(cfg)
    resize = cfg.image_size if cfg.image_size <= 64 else int(round(cfg.image_size / 0.875))
    return T.Compose([T.Resize(resize), T.CenterCrop(cfg.image_size), T.ToTensor()])


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
                   prefetch_factor=4 if num_workers > 0 else None)
    if not train:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, **options)
    world = world_size()
    sampler = TrainingSampler(dataset, num_replicas=world, rank=rank(), shuffle=True, seed=seed, drop_last=True, tag_epoch=tag_epoch)
    generator = torch.Generator().manual_seed(seed + rank())  # the loader workers' seeds: one stream per process
    return DataLoader(dataset, batch_size=per_process_batch(batch_size, len(dataset), world), sampler=sampler,
                      drop_last=True, generator=generator, **options)
