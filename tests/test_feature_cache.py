"""cached_features / feature_cache_key: reuse while nothing changed, recompute when weights, data,
transform or storage precision change, survive corrupt files, reject unknown dtypes."""

import warnings

import pytest
import torch
import torchvision.transforms as T
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ssl_kd.data import IndexedDataset
from ssl_kd.errors import UserError
from ssl_kd.feature_cache import cached_features, feature_cache_key
from ssl_kd.features import extract_features

N = 9


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))


def _counted(model: nn.Module) -> list[int]:
    """A list whose length is the number of images the model has seen (a forward hook)."""
    seen: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: seen.extend([1] * inputs[0].shape[0]))
    return seen


def _images(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed))


def _labels(n: int = N) -> torch.Tensor:
    return torch.arange(n) % 3


def _tensor_data() -> TensorDataset:
    return TensorDataset(_images(), _labels())


def _indexed(transform=None, labels=None) -> IndexedDataset:
    """An IndexedDataset (as built by ssl_kd.data) around a plain list of (image, label)."""
    labels = _labels().tolist() if labels is None else labels
    return IndexedDataset(list(zip(_images(), labels)), transform, [str(c) for c in range(3)])


class Targets(Dataset):
    """DigitsImages-like: `.images` and `.targets`."""

    def __init__(self, images, targets):
        self.images, self.targets = list(images), list(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


class Opaque(Dataset):
    """A dataset with no known attributes: the key samples its first, middle and last items."""

    def __init__(self, images, labels):
        self._x, self._y = images, labels

    def __len__(self):
        return len(self._y)

    def __getitem__(self, i):
        return self._x[i], self._y[i]


def _files(tmp_path):
    return sorted(p.name for p in tmp_path.glob("*.safetensors"))


def test_first_call_writes_the_cache_and_returns_extract_features_result(tmp_path):
    model, data = _model(), _tensor_data()
    feats, labels = cached_features(model, data, cache_dir=tmp_path, batch_size=4, progress=False)

    expected, expected_labels = extract_features(model, DataLoader(data, batch_size=4), progress=False)
    assert feats.dtype == torch.float32 and feats.shape == (N, 4)
    assert labels.dtype == torch.int64 and torch.equal(labels, _labels())
    assert torch.equal(feats, expected) and torch.equal(labels, expected_labels)
    assert torch.allclose(feats.norm(dim=1), torch.ones(N), atol=1e-5)

    key = feature_cache_key(model, data, normalize=True)
    assert _files(tmp_path) == [f"{key}.safetensors"]
    assert 16 <= len(key) <= 64 and int(key, 16) >= 0
    with safe_open(str(tmp_path / f"{key}.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
        assert sorted(handle.keys()) == ["feats", "labels"]
    assert meta["key"] == key and meta["n"] == str(N) and meta["dim"] == "4" and meta["dtype"] == "float32"
    assert meta["model"].endswith("Sequential")
    assert not list(tmp_path.glob("*.tmp"))  # the temp file was renamed away


def test_second_call_reuses_the_cache_without_running_the_model(tmp_path, capsys):
    model, data = _model(), _tensor_data()
    seen = _counted(model)
    first = cached_features(model, data, cache_dir=tmp_path, batch_size=4, progress=False)
    assert len(seen) == N

    second = cached_features(model, data, cache_dir=tmp_path, batch_size=2, progress=True)
    assert len(seen) == N  # no forward call at all
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert second[0].dtype == torch.float32 and second[1].dtype == torch.int64
    assert "features: reused cache" in capsys.readouterr().err


def test_the_cache_is_quiet_without_progress(tmp_path, capsys):
    model, data = _model(), _tensor_data()
    cached_features(model, data, cache_dir=tmp_path, progress=False)
    cached_features(model, data, cache_dir=tmp_path, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_an_equal_model_built_separately_gets_the_same_key(tmp_path):
    data = _tensor_data()
    assert feature_cache_key(_model(0), data) == feature_cache_key(_model(0), _tensor_data())
    assert feature_cache_key(_model(0), data) != feature_cache_key(_model(1), data)
    assert feature_cache_key(_model(0), data) != feature_cache_key(_model(0), data, normalize=False)
    assert feature_cache_key(_model(0), data) != feature_cache_key(_model(0), data, extra="image_size=32")


def test_changing_one_weight_in_place_recomputes(tmp_path):
    model, data = _model(), _tensor_data()
    seen = _counted(model)
    before, _ = cached_features(model, data, cache_dir=tmp_path, progress=False)
    key_before = feature_cache_key(model, data)

    with torch.no_grad():
        model[1].weight[0, 0] += 0.5
    assert feature_cache_key(model, data) != key_before
    after, _ = cached_features(model, data, cache_dir=tmp_path, batch_size=4, progress=False)
    assert len(seen) == 2 * N
    assert not torch.allclose(before, after)
    assert torch.equal(after, extract_features(model, DataLoader(data, batch_size=4), progress=False)[0])
    assert len(_files(tmp_path)) == 2


def test_buffers_and_bfloat16_weights_are_part_of_the_key():
    data = _tensor_data()
    bn = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12), nn.Linear(12, 4))
    key = feature_cache_key(bn, data)
    bn[1].running_mean[3] = 0.25
    assert feature_cache_key(bn, data) != key

    half = _model().to(torch.bfloat16)
    key = feature_cache_key(half, data)
    assert key == feature_cache_key(_model().to(torch.bfloat16), data)
    assert key != feature_cache_key(_model(), data)  # same values, other dtype
    with torch.no_grad():
        half[1].bias[2] += 1
    assert feature_cache_key(half, data) != key


def test_changing_the_transform_gives_a_new_key(tmp_path):
    model = _model()
    seen = _counted(model)
    a = _indexed(T.Compose([T.Normalize([0.5] * 3, [0.25] * 3)]))
    b = _indexed(T.Compose([T.Normalize([0.5] * 3, [0.5] * 3)]))
    assert feature_cache_key(model, a) == feature_cache_key(model, _indexed(T.Compose([T.Normalize([0.5] * 3, [0.25] * 3)])))
    assert feature_cache_key(model, a) != feature_cache_key(model, b)
    assert feature_cache_key(model, a) != feature_cache_key(model, _indexed(None))

    fa, _ = cached_features(model, a, cache_dir=tmp_path, progress=False)
    fb, _ = cached_features(model, b, cache_dir=tmp_path, progress=False)
    assert len(seen) == 2 * N and len(_files(tmp_path)) == 2
    assert not torch.allclose(fa, fb)


def test_different_labels_give_a_new_key(tmp_path):
    model = _model()
    other = _labels().clone()
    other[N // 2 + 1] += 1  # not the first, middle or last item
    assert feature_cache_key(model, _tensor_data()) != feature_cache_key(model, TensorDataset(_images(), other))
    assert feature_cache_key(model, _indexed()) != feature_cache_key(model, _indexed(labels=other.tolist()))
    assert feature_cache_key(model, Targets(_images(), _labels().tolist())) != feature_cache_key(model, Targets(_images(), other.tolist()))

    seen = _counted(model)
    _, labels_a = cached_features(model, _indexed(), cache_dir=tmp_path, progress=False)
    _, labels_b = cached_features(model, _indexed(labels=other.tolist()), cache_dir=tmp_path, progress=False)
    assert len(seen) == 2 * N
    assert torch.equal(labels_a, _labels()) and torch.equal(labels_b, other)


def test_different_images_and_subsets_give_a_new_key():
    model = _model()
    images = _images()
    changed = images.clone()
    changed[N // 2 + 1, 0, 0, 0] += 1e-3
    assert feature_cache_key(model, TensorDataset(images, _labels())) != feature_cache_key(model, TensorDataset(changed, _labels()))
    assert feature_cache_key(model, Targets(images, _labels())) != feature_cache_key(model, Targets(changed, _labels()))

    data = _tensor_data()
    assert feature_cache_key(model, Subset(data, [0, 1, 2])) == feature_cache_key(model, Subset(_tensor_data(), range(3)))
    assert feature_cache_key(model, Subset(data, [0, 1, 2])) != feature_cache_key(model, Subset(data, [0, 1, 3]))


def test_an_unknown_dataset_is_fingerprinted_by_first_middle_and_last_item():
    model = _model()
    images = _images()
    key = feature_cache_key(model, Opaque(images, _labels()))
    assert key == feature_cache_key(model, Opaque(images.clone(), _labels().clone()))
    for index in (0, N // 2, N - 1):
        changed = images.clone()
        changed[index] += 1
        assert feature_cache_key(model, Opaque(changed, _labels())) != key, index
    assert feature_cache_key(model, Opaque(images[:-1], _labels()[:-1])) != key


def test_image_folder_samples_are_fingerprinted_with_size_and_mtime(tmp_path):
    """ImageFolder-like `samples`: (path, label); the file's size and mtime join the key."""
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(b"x" * (i + 1))
        paths.append(str(path))

    class Folder(Opaque):
        def __init__(self, samples):
            super().__init__(None, [label for _, label in samples])
            self.samples = samples

    model = _model()
    samples = [(p, i % 2) for i, p in enumerate(paths)]
    key = feature_cache_key(model, Folder(samples))
    assert feature_cache_key(model, Folder(list(samples))) == key
    assert feature_cache_key(model, Folder([(p, 1 - label) for p, label in samples])) != key
    (tmp_path / "1.png").write_bytes(b"longer content")
    assert feature_cache_key(model, Folder(samples)) != key


def test_float16_storage_is_smaller_and_close(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 64))
    data = TensorDataset(_images(64), torch.arange(64) % 5)
    dir32, dir16 = tmp_path / "f32", tmp_path / "f16"
    f32, l32 = cached_features(model, data, cache_dir=dir32, dtype="float32", progress=False)
    f16, l16 = cached_features(model, data, cache_dir=dir16, dtype="float16", progress=False)

    (file32,), (file16,) = list(dir32.glob("*.safetensors")), list(dir16.glob("*.safetensors"))
    assert file16.name == file32.name  # the storage precision is not part of the key
    assert file16.stat().st_size < 0.7 * file32.stat().st_size
    with safe_open(str(file16), framework="pt") as handle:
        assert handle.get_tensor("feats").dtype == torch.float16 and handle.metadata()["dtype"] == "float16"
    assert f16.dtype == torch.float32 and torch.equal(l16, l32)
    assert (f16 - f32).abs().max() < 1e-3 and not torch.equal(f16, f32)

    seen = _counted(model)
    again, _ = cached_features(model, data, cache_dir=dir16, dtype="float16", progress=False)
    assert len(seen) == 0 and torch.equal(again, f16)  # the first call already returned the stored values


def test_a_float16_file_is_not_reused_for_a_float32_request(tmp_path):
    model, data = _model(), _tensor_data()
    seen = _counted(model)
    cached_features(model, data, cache_dir=tmp_path, dtype="float16", progress=False)
    f32, _ = cached_features(model, data, cache_dir=tmp_path, dtype="float32", batch_size=4, progress=False)
    assert len(seen) == 2 * N
    assert torch.equal(f32, extract_features(model, DataLoader(data, batch_size=4), progress=False)[0])
    cached_features(model, data, cache_dir=tmp_path, dtype="float16", progress=False)  # float32 file serves float16
    assert len(seen) == 3 * N  # (the extract_features call above ran the model once more)


def test_a_corrupt_cache_file_is_recomputed_and_overwritten(tmp_path):
    model, data = _model(), _tensor_data()
    good, _ = cached_features(model, data, cache_dir=tmp_path, progress=False)
    (path,) = list(tmp_path.glob("*.safetensors"))
    path.write_bytes(path.read_bytes()[:40])

    seen = _counted(model)
    with pytest.warns(RuntimeWarning, match="unreadable cache") as record:
        feats, labels = cached_features(model, data, cache_dir=tmp_path, progress=False)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert len(seen) == N and torch.equal(feats, good) and torch.equal(labels, _labels())

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = cached_features(model, data, cache_dir=tmp_path, progress=False)  # rewritten: no warning
    assert len(seen) == N and torch.equal(again, good)


def test_a_cache_file_of_the_wrong_length_is_recomputed(tmp_path):
    from safetensors.torch import save_file

    model, data = _model(), _tensor_data()
    key = feature_cache_key(model, data)
    meta = {"key": key, "dtype": "float32", "n": "2", "dim": "4", "model": "x"}
    save_file({"feats": torch.zeros(2, 4), "labels": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / f"{key}.safetensors"), metadata=meta)
    with pytest.warns(RuntimeWarning, match="dataset of 9"):
        feats, _ = cached_features(model, data, cache_dir=tmp_path, progress=False)
    assert feats.shape == (N, 4) and torch.allclose(feats.norm(dim=1), torch.ones(N), atol=1e-5)


def test_an_unknown_dtype_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="float32, float16") as info:
        cached_features(_model(), _tensor_data(), cache_dir=tmp_path, dtype="bfloat16")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError):
        cached_features(_model(), _tensor_data(), cache_dir=None, dtype="fp16")


def test_without_cache_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, data = _model(), _indexed()
    feats, labels = cached_features(model, data, cache_dir=None, batch_size=2, normalize=False, progress=False)
    expected = model(_images()).detach()
    assert torch.allclose(feats, expected, atol=1e-6) and torch.equal(labels, _labels())
    assert list(tmp_path.iterdir()) == []


def test_train_eval_modes_are_kept(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12), nn.Linear(12, 4))
    model.train()
    model[1].eval()
    data = _tensor_data()
    cached_features(model, data, cache_dir=tmp_path, progress=False)
    cached_features(model, data, cache_dir=tmp_path, progress=False)
    assert model.training and not model[1].training and model[2].training
