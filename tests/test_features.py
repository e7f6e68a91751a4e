"""extract_features: normalised rows, loader order, train/eval flags restored, batch shapes."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ssl_kd.errors import UserError
from ssl_kd.features import extract_features


class TinyNet(nn.Module):
    """Conv + BN + pool + linear: BN makes train vs eval mode change the output."""

    def __init__(self, dim: int = 5):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, dim))

    def forward(self, x):
        return self.body(x)


@dataclass
class Out:
    feat: torch.Tensor
    emb: torch.Tensor


class WithIndex(Dataset):
    """(image, label, index) items, like datasets used for memory banks."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i], i


def _data(n: int = 10):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.arange(n) * 3 % 7


def test_rows_are_normalised_in_loader_order_and_modes_restored():
    model = TinyNet()
    model.body[1].eval()  # a frozen BN inside a model in train mode must stay frozen
    images, labels = _data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=4, shuffle=False)

    feats, out_labels = extract_features(model, loader, progress=False)
    assert feats.shape == (10, 5) and feats.dtype == torch.float32
    assert out_labels.dtype == torch.int64 and torch.equal(out_labels, labels)
    assert torch.allclose(feats.norm(dim=1), torch.ones(10), atol=1e-5)
    assert model.training and not model.body[1].training and model.body[0].training

    model.eval()
    with torch.no_grad():
        expected = nn.functional.normalize(model(images), dim=1)
    assert torch.allclose(feats, expected, atol=1e-5)  # eval-mode BN was used


def test_three_tuple_batches_and_embeddings_like_outputs():
    images, labels = _data()
    net = TinyNet().eval()

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return Out(feat=self.net(x) * 10, emb=torch.zeros(len(x), 2))

    loader = DataLoader(WithIndex(images, labels), batch_size=3)
    feats, out_labels = extract_features(Wrapped(), loader, normalize=False, progress=False)
    assert torch.equal(out_labels, labels)
    with torch.no_grad():
        assert torch.allclose(feats, net(images) * 10, atol=1e-5)
    assert not net.training  # eval before, eval after


def test_modes_are_restored_when_the_model_fails():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken().train()
    loader = DataLoader(TensorDataset(*_data(2)), batch_size=2)
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(model, loader, progress=False)
    assert model.training


def test_empty_loader_raises_user_error():
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0)), batch_size=4)
    with pytest.raises(UserError, match="no images to extract features from"):
        extract_features(TinyNet(), empty, progress=False)


def test_unpooled_output_raises_user_error():
    loader = DataLoader(TensorDataset(*_data(2)), batch_size=2)
    with pytest.raises(UserError, match="expected \\[B, D\\] features"):
        extract_features(nn.Conv2d(3, 2, 3), loader, progress=False)
