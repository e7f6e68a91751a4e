"""Augmented per-epoch linear probe: learns a linear image property, leaves the frozen model alone,
applies the lr schedule, turns a diverging run into a UserError; the probe's train transform."""

import copy

import pytest
import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssl_kd.config import DataConfig
from ssl_kd.embeddings import Embeddings
from ssl_kd.errors import UserError
from ssl_kd.evaluation.augmented_probe import PROTOCOL, augmented_linear_probe, probe_train_transform

NUM_CLASSES = 4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny problems: one thread is fastest and does not stall on the busy 2-core test machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """Conv + BN + global pool: the pooled feature is an affine function of the channel means (up to
    the zero-padded border), so a class set by the channels' brightness is linearly decodable."""

    def __init__(self, embeddings: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.body[1].running_mean.uniform_(-0.1, 0.1)
        self.body[1].running_var.uniform_(0.5, 1.5)
        self.embeddings = embeddings

    def forward(self, x):
        feat = self.body(x)
        return Embeddings(feat=feat, emb=feat) if self.embeddings else feat


class BrightChannel(Dataset):
    """8x8 RGB images of noisy pixels around 0.2; in class c < 3 channel c is bright (around 0.8),
    class 3 is all dark. Yields (image, label, index), `transform` applied anew at every visit."""

    def __init__(self, n: int, seed: int, transform=None):
        gen = torch.Generator().manual_seed(seed)
        self.targets = (torch.arange(n) % NUM_CLASSES).tolist()
        self.classes = [str(c) for c in range(NUM_CLASSES)]
        self.images = 0.2 + 0.1 * torch.randn(n, 3, 8, 8, generator=gen)
        for i, c in enumerate(self.targets):
            if c < 3:
                self.images[i, c] += 0.6
        self.images.clamp_(0, 1)
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        image = self.images[i] if self.transform is None else self.transform(self.images[i])
        return image, self.targets[i], i


def _augment():
    return T.Compose([T.RandomResizedCrop(8, scale=(0.2, 1.0), antialias=True), T.RandomHorizontalFlip()])


def _probe(model, **kw):
    train = BrightChannel(192, seed=0, transform=_augment())
    test = DataLoader(BrightChannel(96, seed=1), batch_size=64)
    kw = {"epochs": 6, "batch_size": 64, "lr": 4.0, "progress": False, **kw}
    return augmented_linear_probe(model, train, test, **kw)


@pytest.mark.parametrize("embeddings", [False, True])
def test_learns_a_linear_property_and_leaves_the_model_alone(embeddings):
    model = TinyNet(embeddings)
    model.train()  # the probe must still run it in eval mode (BN statistics frozen) and restore the flag
    state = copy.deepcopy(model.state_dict())
    rng = torch.random.get_rng_state()

    result = _probe(model)
    assert result["top1"] >= 90.0
    assert result["top5"] == 100.0  # 4 classes
    assert result["protocol"] == PROTOCOL
    assert (result["epochs"], result["lr"], result["num_train"], result["num_test"]) == (6, 4.0, 192, 96)
    assert (result["num_classes"], result["feature_dim"]) == (NUM_CLASSES, 8)
    assert result["seconds"] > 0
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # weights and BN running stats (and counter)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)  # seeded from `seed`, caller's RNG untouched


def test_reproducible_from_the_seed():
    first, second = _probe(TinyNet(), epochs=2), _probe(TinyNet(), epochs=2)
    assert first["train_loss"] == second["train_loss"] and first["top1"] == second["top1"]


def test_lr_scaled_by_batch_size_and_stepped_at_the_milestones():
    result = _probe(TinyNet(), epochs=5, lr=2.0, batch_size=64)  # milestones 0.6, 0.8 of 5 epochs: 3, 4
    base = 2.0 * 64 / 256
    assert result["effective_lr"] == base
    assert result["milestone_epochs"] == [3, 4]
    assert result["lr_per_epoch"] == pytest.approx([base, base, base, base / 10, base / 100])
    assert len(result["train_loss"]) == 5


def test_diverging_lr_is_a_user_error():
    with pytest.raises(UserError, match="lower lr") as err:
        _probe(TinyNet(), lr=1e38, epochs=3)
    assert "\n" not in str(err.value)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="milestones"):
        _probe(TinyNet(), milestones=(60, 80))
    with pytest.raises(UserError, match="lr"):
        _probe(TinyNet(), lr=0.0)


def test_train_transform_follows_the_dataset_defaults():
    digits = str(probe_train_transform(DataConfig(name="digits")))
    assert "RandomHorizontalFlip" not in digits and "scale=(0.4, 1.0)" in digits  # no flips; digits' own milder crops
    cifar = str(probe_train_transform(DataConfig(name="cifar10")))
    assert "RandomHorizontalFlip(p=0.5)" in cifar and "scale=(0.2, 1.0)" in cifar and "size=(32, 32)" in cifar
    imagenet = str(probe_train_transform(DataConfig(name="imagefolder")))
    assert "scale=(0.08, 1.0)" in imagenet and "size=(224, 224)" in imagenet
    assert "Normalize" not in imagenet  # the models normalise their own input
