"""Augmented per-epoch linear probe on a frozen model: the MoCo / SEED linear-evaluation recipe.

Every epoch the frozen model f (eval mode: BatchNorm uses its running statistics and never updates
them; no autograd) runs over freshly augmented train images aug(x), and one linear layer (W, b) on
its pooled feature is trained with SGD on

    L(W, b) = (1/|B|) sum_{i in B} CE(W f(aug(x_i)) + b, y_i) + (wd / 2) (||W||^2 + ||b||^2)

    CE(z, y) = -log softmax(z)_y,   B = a minibatch,   aug = a new random crop (+ flip) per visit,
    wd = the weight decay, applied by SGD to W and b alike (as MoCo's optimizer does; 0 by default).

Recipe (He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020,
`main_lincls.py`; inherited unchanged by Fang et al., "SEED: Self-supervised Distillation for
Visual Representation", ICLR 2021, `main_lincls.py`):
  - W ~ N(0, 0.01^2), b = 0; the features are the RAW pooled backbone features (the model's
    `.feat`, or its Tensor output): no L2 normalisation and no standardisation. MoCo's lr 30 is
    tuned for such raw features of a contrastive ResNet-50; features of a very different scale may
    need another lr (a non-finite loss raises a `UserError` asking for a lower one),
  - SGD, momentum 0.9, lr = 30 x batch_size / 256, weight decay 0, batch 256, 100 epochs,
    lr x 0.1 at 60 % and 80 % of the epochs (epochs 60 and 80 of 100), stepped per epoch,
  - train augmentation: RandomResizedCrop + horizontal flip (`probe_train_transform`); test: the
    deterministic resize + centre crop (`ssl_kd.views.eval_transform`), top-1 / top-5 on the test
    split (ties count against the true label, `rank_of_label`).

Numbers from this probe are NOT comparable with `linear_probe` (cached features extracted once,
standardised, L2-regularised logistic regression solved with L-BFGS, weight decay picked on a
validation split): the two protocols differ in augmentation, optimiser, regularisation and
feature scaling. The result's `protocol` field says which one produced a number. This probe costs
`epochs` forward passes of the model over the train split; the cached one costs one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ssl_kd.config import DataConfig
from ssl_kd.data import resolve_data_config
from ssl_kd.errors import UserError
from ssl_kd.evaluation.knn import rank_of_label
from ssl_kd.features import _batch_features, _show_progress, _split_batch

__all__ = ["PROTOCOL", "augmented_linear_probe", "probe_train_transform"]

PROTOCOL = "augmented per-epoch linear probe (MoCo/SEED recipe)"
SMALL_IMAGE = 64  # sides up to this use the milder crop scale (SimCLR's CIFAR recipe)


def probe_train_transform(data_cfg: DataConfig, *, min_scale: float | None = None):
    """The probe's train augmentation: RandomResizedCrop(image_size) + horizontal flip + ToTensor.

    Crop scale (min_scale, 1): 0.08 above 64 px (MoCo's ImageNet recipe), 0.2 up to 64 px, raised to
    the dataset's own `min_scale` when that is larger (digits: 0.4, a glyph cropped harder loses its
    identity); `min_scale` given here overrides all of that. The flip happens with the dataset's
    `hflip` probability (MoCo: 0.5), not at all where the dataset says no flips (digits: a mirrored 2
    is not a 2). No normalisation: every network normalises its own input.
    """
    cfg = resolve_data_config(data_cfg)
    if min_scale is None:
        min_scale = max(0.08 if cfg.image_size > SMALL_IMAGE else 0.2, float(cfg.min_scale or 0.0))
    if not 0.0 < min_scale <= 1.0:
        raise UserError(f"min_scale must be in (0, 1], got {min_scale}; e.g. 0.08 for 224 px images, 0.2 for 32 px")
    steps: list[Any] = [T.RandomResizedCrop(cfg.image_size, scale=(min_scale, 1.0))]
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip(p=float(cfg.hflip)))
    steps.append(T.ToTensor())
    return T.Compose(steps)


def _num_classes(dataset: Dataset, num_classes: int | None) -> int:
    """Classes of the probe: given, else from the dataset's `classes` or `targets`."""
    if num_classes is None:
        classes = getattr(dataset, "classes", None)
        targets = getattr(dataset, "targets", None)
        if classes:
            num_classes = len(classes)
        elif targets is not None and len(targets):
            num_classes = int(max(targets)) + 1
        else:
            raise UserError("cannot tell the number of classes: the train dataset has no `classes` or `targets`; "
                            "pass num_classes=")
    if num_classes < 2:
        raise UserError(f"a linear probe needs >= 2 classes, got num_classes={num_classes}")
    return int(num_classes)


def _milestone_epochs(milestones: Sequence[float], epochs: int) -> list[int]:
    """Fractions of the run -> the epochs (0-based) from which the lr is 10x lower each."""
    if any(not 0.0 <= m <= 1.0 for m in milestones):
        raise UserError(f"milestones are fractions of the epochs in [0, 1], got {list(milestones)}; e.g. (0.6, 0.8)")
    return sorted(round(m * epochs) for m in milestones)


def _check_labels(labels: Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise UserError(f"labels must be class indices 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}; "
                        "pass num_classes= covering every label")


def _features(model: nn.Module, images: Tensor, device: str | torch.device) -> Tensor:
    with torch.no_grad():
        return _batch_features(model(images.to(device, non_blocking=True))).float()


def _train_epoch(model: nn.Module, fc: nn.Linear, loader: DataLoader, opt: torch.optim.Optimizer,
                 num_classes: int, device: str | torch.device) -> float:
    """One pass over freshly augmented train images; returns the mean minibatch loss."""
    total, count = 0.0, 0
    for batch in loader:
        images, labels = _split_batch(batch)
        labels = labels.reshape(-1).long()
        _check_labels(labels, num_classes)
        loss = F.cross_entropy(fc(_features(model, images, device)), labels.to(device))
        if not torch.isfinite(loss):
            raise UserError(f"the probe's loss became {float(loss.detach())} at lr {opt.param_groups[0]['lr']:g}; "
                            "lower lr (features of a large scale need a smaller one than MoCo's 30)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
    return total / max(count, 1)


@torch.no_grad()
def _evaluate(model: nn.Module, fc: nn.Linear, loader, num_classes: int, device: str | torch.device) -> tuple[float, float, int]:
    """(top-1 %, top-5 %, number of test items); fewer than 5 classes give top-5 = 100."""
    ranks = []
    for batch in loader:
        images, labels = _split_batch(batch)
        labels = labels.reshape(-1).long()
        _check_labels(labels, num_classes)
        ranks.append(rank_of_label(fc(_features(model, images, device)), labels.to(device)).cpu())
    if not ranks:
        raise UserError("the test loader is empty; check the dataset path and split name")
    rank = torch.cat(ranks)
    return 100.0 * int((rank == 0).sum()) / len(rank), 100.0 * int((rank < 5).sum()) / len(rank), len(rank)


def augmented_linear_probe(
    model: nn.Module,
    train_dataset: Dataset,
    test_loader,
    *,
    epochs: int = 100,
    lr: float = 30.0,
    batch_size: int = 256,
    milestones: Sequence[float] = (0.6, 0.8),
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    seed: int = 0,
    progress: bool | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Linear-probe accuracy of the frozen `model` by the MoCo/SEED recipe (module docstring).

    `model` must already live on `device`; it runs in eval mode without autograd, its parameters and
    buffers (BatchNorm statistics included) are left unchanged, and every submodule gets its own
    train/eval flag back afterwards. `train_dataset` yields `(image, label[, index])` with the
    augmentation in its transform (`probe_train_transform`), so each epoch sees new crops;
    `test_loader` yields deterministic test batches (`ssl_kd.views.eval_transform`). The lr used is
    `lr * batch_size / 256`, times 0.1 from each of the `milestones` (fractions of `epochs`).
    `num_classes` defaults to the dataset's `classes` (or its largest `targets` + 1). Crops, shuffling
    and the fc init are drawn from `seed` (the caller's global RNG state is restored afterwards).
    A tqdm bar over the epochs shows when `progress` is True, or when it is None and stderr is a
    terminal.

    Returns a JSON-ready dict: "top1", "top5" (percent, test split), "protocol", "epochs", "lr" (as
    given), "effective_lr" (lr * batch_size / 256), "milestone_epochs", "lr_per_epoch" and
    "train_loss" (mean minibatch loss, per epoch), "batch_size", "weight_decay", "num_train",
    "num_test", "num_classes", "feature_dim", "seconds" (wall time of the whole probe).
    """
    start = time.perf_counter()
    if epochs < 1 or batch_size < 1:
        raise UserError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    if not lr > 0 or not math.isfinite(lr):
        raise UserError(f"lr must be a positive number, got {lr}; MoCo's recipe uses 30 (x batch_size / 256)")
    if len(train_dataset) == 0:
        raise UserError("the train dataset is empty; check the dataset path and split name")
    n_classes = _num_classes(train_dataset, num_classes)
    milestone_epochs = _milestone_epochs(milestones, epochs)
    effective_lr = lr * batch_size / 256

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=True, drop_last=False,
                                num_workers=num_workers, persistent_workers=num_workers > 0,
                                generator=torch.Generator().manual_seed(seed))
            first_images, _ = _split_batch(next(iter(DataLoader(train_dataset, batch_size=2))))
            feature_dim = _features(model, first_images, device).shape[1]
            fc = nn.Linear(feature_dim, n_classes, device=device)
            nn.init.normal_(fc.weight, mean=0.0, std=0.01)
            nn.init.zeros_(fc.bias)
            opt = torch.optim.SGD(fc.parameters(), lr=effective_lr, momentum=momentum, weight_decay=weight_decay)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestone_epochs, gamma=0.1)
            lr_per_epoch, train_loss = [], []
            bar = tqdm(range(epochs), desc="augmented linear probe", disable=not _show_progress(progress))
            with torch.enable_grad():
                for _ in bar:
                    lr_per_epoch.append(opt.param_groups[0]["lr"])
                    train_loss.append(_train_epoch(model, fc, loader, opt, n_classes, device))
                    bar.set_postfix(loss=f"{train_loss[-1]:.3f}")
                    sched.step()
            top1, top5, num_test = _evaluate(model, fc, test_loader, n_classes, device)  # its iterator draws a seed too
    finally:
        for module, mode in modes:
            module.training = mode
    return {"top1": top1, "top5": top5, "protocol": PROTOCOL, "epochs": epochs, "lr": float(lr),
            "effective_lr": effective_lr, "milestone_epochs": milestone_epochs, "lr_per_epoch": lr_per_epoch,
            "train_loss": train_loss, "batch_size": batch_size, "weight_decay": float(weight_decay),
            "num_train": len(train_dataset), "num_test": num_test, "num_classes": n_classes,
            "feature_dim": int(feature_dim), "seconds": time.perf_counter() - start}
