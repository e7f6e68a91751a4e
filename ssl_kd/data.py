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
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .config import DataConfig
from .errors import UserError
from .parallel import rank, world_size

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.3
SPLIT_SEED = 0


class IndexedDataset(Dataset):
    """Wraps an `(image, label)` dataset: applies `transform` and also returns the item's index."""

    def __init__(self, base: Dataset, transform: Callable | None, classes: list[str]):
        self.base, self.transform, self.classes = base, transform, classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label), index


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
    if cfg.subset is not None:
        base = Subset(base, range(min(cfg.subset, len(base))))
    if len(base) == 0:
        raise UserError(f"the {split} split of dataset '{cfg.name}' is empty; point --data-root at a folder with images")
    return IndexedDataset(base, transform, classes)


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


def views_transform(cfg: DataConfig, num_views: int = 2):
    """SSL views per image from lightly's SimCLR view transform, sized to the image.

    `data.views="crops"`: `num_views` independent crops (two by default). `"rotations"`: four views,
    one crop turned by 0/90/180/270 degrees (`RotatedViews`; `num_views` does not apply).
    """
    cfg = resolve_data_config(cfg)
    mode = getattr(cfg, "views", "crops")
    if mode not in VIEW_MODES:
        raise UserError(f"data.views={mode!r} is not one of: {', '.join(VIEW_MODES)}")
    from lightly.transforms import SimCLRViewTransform
    from lightly.transforms.multi_view_transform import MultiViewTransform

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
    if mode == "rotations":
        return RotatedViews(view)
    return MultiViewTransform([view] * num_views)


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


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, num_workers: int, seed: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """Training: shuffled, drop-last, sharded over processes; evaluation: ordered and complete.

    Training order: epoch e is the permutation `torch.randperm(n)` drawn from a generator seeded with
    `seed + e` (`DistributedSampler`; the loop calls `set_epoch`), cut to a multiple of the number of
    processes W; process r takes its positions r, r + W, r + 2W, ... . `batch_size` is the GLOBAL
    batch: each process loads `batch_size / W` images a step, and global step i holds the permutation's
    positions [i * batch_size, (i + 1) * batch_size) whatever W is, so 1 and W processes see the same
    batches. Workers persist across epochs and prefetch; `pin_memory` for CUDA.
    """
    options = dict(num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory,
                   prefetch_factor=4 if num_workers > 0 else None)
    if not train:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, **options)
    world = world_size()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank(), shuffle=True, seed=seed, drop_last=True)
    generator = torch.Generator().manual_seed(seed + rank())  # the loader workers' seeds: one stream per process
    return DataLoader(dataset, batch_size=per_process_batch(batch_size, len(dataset), world), sampler=sampler,
                      drop_last=True, generator=generator, **options)
