"""Datasets and transforms: the fixed digits split, SSL views, ImageFolder layouts, clear errors."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from ssl_kd.config import DataConfig
from ssl_kd.data import DATASETS, build_dataset
from ssl_kd.views import MultiDraw, eval_transform, num_views, view_draw, views_transform
from ssl_kd.loaders import make_loader
from ssl_kd.errors import UserError


@pytest.fixture(scope="module")
def digits_8px():
    """Both splits at 8 px (no resampling: each image maps back to exactly one source image)."""
    cfg = DataConfig(name="digits", image_size=8)
    return build_dataset(cfg, "train", None), build_dataset(cfg, "test", None)


def test_digits_split_sizes_disjoint_and_complete(digits_8px):
    train, test = digits_8px
    assert (len(train), len(test)) == (1257, 540)
    source = load_digits()
    expected = {tuple((row * (255.0 / 16.0)).round().astype(np.uint8)) for row in source.data}
    assert len(expected) == 1797  # every source image is distinct

    def keys(ds):
        return [tuple(np.asarray(ds[i][0].convert("L")).reshape(-1)) for i in range(len(ds))]

    train_keys, test_keys = keys(train), keys(test)
    assert len(set(train_keys)) == 1257 and len(set(test_keys)) == 540
    assert not set(train_keys) & set(test_keys)  # disjoint
    assert set(train_keys) | set(test_keys) == expected  # together they are the whole dataset
    # labels travel with their images
    label_of = {tuple((row * (255.0 / 16.0)).round().astype(np.uint8)): y for row, y in zip(source.data, source.target)}
    assert all(label_of[k] == train[i][1] for i, k in enumerate(train_keys))
    assert all(label_of[k] == test[i][1] for i, k in enumerate(test_keys))


def test_digits_split_is_stratified(digits_8px):
    train, test = digits_8px
    train_counts = Counter(train[i][1] for i in range(len(train)))
    test_counts = Counter(test[i][1] for i in range(len(test)))
    assert set(train_counts) == set(test_counts) == set(range(10))
    for c in range(10):
        share = test_counts[c] / (train_counts[c] + test_counts[c])
        assert abs(share - 0.3) < 0.02, (c, share)
    assert train.classes == test.classes == [str(c) for c in range(10)]


@pytest.mark.parametrize("size", [32, 16])
def test_digits_images_are_3xSxS_in_unit_range(size):
    cfg = DataConfig(name="digits", image_size=size)
    ds = build_dataset(cfg, "test", eval_transform(cfg))
    image, label, index = ds[5]
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    assert isinstance(label, int) and 0 <= label < 10 and index == 5
    batch, labels, indices = next(iter(make_loader(ds, 8, train=False, num_workers=0)))
    assert batch.shape == (8, 3, size, size) and torch.equal(indices, torch.arange(8))


def test_digits_split_is_reproducible():
    cfg = DataConfig(name="digits", image_size=8)
    a, b = build_dataset(cfg, "test", None), build_dataset(cfg, "test", None)
    assert [a[i][1] for i in range(len(a))] == [b[i][1] for i in range(len(b))]
    assert all(np.array_equal(np.asarray(a[i][0]), np.asarray(b[i][0])) for i in range(0, len(a), 37))


def test_views_transform_gives_two_different_views_of_one_image():
    cfg = DataConfig(name="digits", image_size=24, min_scale=0.3)
    torch.manual_seed(0)
    ds = build_dataset(cfg, "train", views_transform(cfg))
    views, label, index = ds[3]
    assert isinstance(views, (list, tuple)) and len(views) == 2
    for view in views:
        assert view.shape == (3, 24, 24) and 0.0 <= view.min() and view.max() <= 1.0
    assert not torch.allclose(views[0], views[1])  # two random augmentations
    assert index == 3 and label == ds.base[3][1]
    assert num_views(cfg) == 2 and len(MultiDraw(view_draw(cfg), 3)(ds.base[3][0])) == 3
    # the loader stacks each view separately: ([V0, V1], labels, index)
    batch_views, labels, indices = next(iter(make_loader(ds, 4, train=True, num_workers=0)))
    assert len(batch_views) == 2 and batch_views[0].shape == (4, 3, 24, 24) and labels.shape == (4,)


# --------------------------------------------------------------------------------------------
# ImageFolder


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def _class_folders(root, counts: dict[str, int]):
    for ci, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _png(root / name / f"{i}.png", 40 * ci + i)


def test_imagefolder_train_val_layout(tmp_path):
    _class_folders(tmp_path / "train", {"cat": 3, "dog": 4})
    _class_folders(tmp_path / "val", {"cat": 2, "dog": 1})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), image_size=8)
    train = build_dataset(cfg, "train", eval_transform(cfg))
    test = build_dataset(cfg, "test", eval_transform(cfg))
    assert (len(train), len(test)) == (7, 3)
    assert sorted(train[i][1] for i in range(7)) == [0, 0, 0, 1, 1, 1, 1]
    assert sorted(test[i][1] for i in range(3)) == [0, 0, 1]
    assert train.classes == test.classes == ["cat", "dog"]
    assert train[0][0].shape == (3, 8, 8)


def test_imagefolder_val_labels_follow_the_train_classes(tmp_path):
    # a val/ folder lacking one class must keep the train label of the others (no silent relabel)
    _class_folders(tmp_path / "train", {"cat": 2, "dog": 2})
    _class_folders(tmp_path / "val", {"dog": 2})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path))
    test = build_dataset(cfg, "test", None)
    assert [test[i][1] for i in range(len(test))] == [1, 1]  # dog is class 1 in train/


def test_imagefolder_test_folder_also_works(tmp_path):
    _class_folders(tmp_path / "train", {"a": 2, "b": 2})
    _class_folders(tmp_path / "test", {"a": 1, "b": 1})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path))
    assert len(build_dataset(cfg, "test", None)) == 2


def test_imagefolder_train_without_val_is_a_user_error(tmp_path):
    _class_folders(tmp_path / "train", {"a": 2, "b": 2})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path))
    with pytest.raises(UserError, match="val"):
        build_dataset(cfg, "test", None)


def test_imagefolder_flat_layout_is_split_by_val_fraction(tmp_path):
    _class_folders(tmp_path, {"ant": 10, "bee": 10})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), val_fraction=0.2)
    train, test = build_dataset(cfg, "train", None), build_dataset(cfg, "test", None)
    assert (len(train), len(test)) == (16, 4)
    assert train.classes == test.classes == ["ant", "bee"]
    assert Counter(test[i][1] for i in range(4)) == {0: 2, 1: 2}  # stratified
    pixels = lambda ds: {np.asarray(ds[i][0])[0, 0, 0] for i in range(len(ds))}  # noqa: E731 - unique per image
    assert not pixels(train) & pixels(test) and len(pixels(train) | pixels(test)) == 20
    # a different fraction gives a different split size
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), val_fraction=0.5)
    assert len(build_dataset(cfg, "test", None)) == 10


def test_empty_imagefolder_is_a_user_error(tmp_path):
    cfg = DataConfig(name="imagefolder", root=str(tmp_path))
    with pytest.raises(UserError):
        build_dataset(cfg, "train", None)
    (tmp_path / "cat").mkdir()  # a class folder without images
    with pytest.raises(UserError):
        build_dataset(cfg, "train", None)


def test_imagefolder_missing_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        build_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "nope")), "train", None)
    with pytest.raises(UserError):
        build_dataset(DataConfig(name="imagefolder", root=None), "train", None)


def test_unknown_dataset_lists_the_names():
    with pytest.raises(UserError) as err:
        build_dataset(DataConfig(name="mnist"), "train", None)
    assert "mnist" in str(err.value)
    for name in DATASETS:
        assert name in str(err.value)


def test_cifar10_without_download_and_files_is_a_user_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.utils as tv_utils

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(cifar, "download_and_extract_archive", no_download, raising=False)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", no_download)
    monkeypatch.setattr(tv_utils, "download_url", no_download)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), download=False)
    with pytest.raises(UserError, match="cifar10"):
        build_dataset(cfg, "train", None)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_make_loader_train_drops_last_and_shrinks_for_tiny_data():
    data = [(torch.tensor([float(i)]), 0, i) for i in range(10)]
    assert len(make_loader(data, 4, train=True, num_workers=0)) == 2  # drop_last
    assert len(make_loader(data, 4, train=False, num_workers=0)) == 3
    assert len(make_loader(data, 32, train=True, num_workers=0)) == 1  # one full batch, not none
