"""Datasets: every `data.name`, their splits, their per-dataset defaults, and unreadable images.

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

The view transforms live in `ssl_kd.views`, the loaders in `ssl_kd.loaders`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, Subset
from torchvision.datasets.folder import pil_loader

from .config import DATASET_DEFAULTS, DataConfig, resolve_data_config  # noqa: F401  (re-exported)
from .errors import UserError
from .image_files import READ_ERRORS, FileList, UnreadableCheck, UnreadableImages, image_file_list

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
