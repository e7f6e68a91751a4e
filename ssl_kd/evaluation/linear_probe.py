"""Linear probe on cached (frozen) features: multinomial logistic regression in torch.

For standardised features x_i (train mean and std, ddof 0, like sklearn's StandardScaler),
labels y_i in {0..C-1}, weights W [C, D] and bias b [C], the probe minimises

    L(W, b) = (1/n) sum_i CE(W x_i + b, y_i) + lambda * ||W||_F^2        (the bias is not decayed)

    CE(z, y) = -log softmax(z)_y,   n = number of fitting items,   lambda = the weight decay.

Protocol ("cached-features logistic regression (L-BFGS)", after CLIP, Radford et al. 2021,
App. A.3, which fits sklearn's L-BFGS logistic regression on features extracted once without
augmentation and picks the L2 strength on a validation split):
  1. hold out a stratified `val_fraction` of the train split (plain random split when some class
     has a single item),
  2. fit one probe per candidate lambda on the rest, keep the best validation top-1 (ties: the
     larger lambda, i.e. the simpler model),
  3. refit with that lambda on the whole train split, report top-1 / top-5 (%) on the test split.
Problems up to n * D = 2e8 (about 100k x 2048) are solved full-batch with `torch.optim.LBFGS`
(strong-Wolfe line search, deterministic, converges to the unique optimum). Larger ones use
minibatch Adam on the same objective (`epochs` passes, cosine-decayed learning rate): an
approximate optimum, reported as solver "adam-minibatch".

Equivalence with scikit-learn: `LogisticRegression(C=C)` minimises sum_i CE + ||W||^2 / (2C),
i.e. n times the objective above with lambda = 1 / (2 n C), so C = 1 / (2 n lambda).

This is NOT the MoCo/SEED linear-evaluation protocol (SGD on a frozen backbone with augmented
crops, lr 30, 100 epochs, steps at 60/80): numbers from the two protocols are not comparable,
hence the `protocol` field in the result.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from ssl_kd.errors import UserError
from ssl_kd.evaluation.knn import ArrayLike, rank_of_label

__all__ = ["linear_probe", "fit_logistic_regression"]

PROTOCOL = "cached-features logistic regression (L-BFGS)"
FULL_BATCH_LIMIT = 2e8  # largest n * D solved with full-batch L-BFGS
SINGLE_THREAD_LIMIT = 2**23  # n * D up to this (e.g. 4k x 2048) is fitted on one CPU thread
EVAL_CHUNK = 8192


def _as_features(feats: ArrayLike, name: str) -> Tensor:
    x = torch.as_tensor(feats).detach().to("cpu", torch.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise UserError(f"{name} must be non-empty [N, D] arrays, got shape {tuple(x.shape)}; "
                        "check that the split has images and the features are pooled")
    if not torch.isfinite(x).all():
        raise UserError(f"{name} contain NaN or Inf; check the model output before probing")
    return x


def _as_labels(labels: ArrayLike, n: int, name: str) -> Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    y = y.detach().to("cpu").long().view(-1)
    if y.numel() != n:
        raise UserError(f"{name} has {y.numel()} entries but there are {n} feature rows; "
                        "pass one label per feature row")
    if int(y.min()) < 0:
        raise UserError(f"{name} contain negative values; labels must be class indices 0..C-1")
    return y


def _standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """Scale both splits with the train mean and std (ddof 0); constant features keep std 1."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def _validation_split(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (fit, val): stratified when every class has >= 2 items and each split can hold
    one of every class, else a plain random split."""
    y = labels.numpy()
    n = len(y)
    if not 0.0 < val_fraction < 1.0 or n < 2:
        raise UserError(f"cannot hold out val_fraction={val_fraction} of {n} train items; "
                        "use 0 < val_fraction < 1 and >= 2 items, or pass one weight decay")
    counts = np.bincount(y)
    n_classes = int((counts > 0).sum())
    n_val = math.ceil(val_fraction * n)  # sklearn's rounding for a float test_size
    stratified = counts[counts > 0].min() >= 2 and min(n_val, n - n_val) >= n_classes
    fit, val = train_test_split(np.arange(n), test_size=val_fraction, random_state=seed,
                                stratify=y if stratified else None)
    return torch.from_numpy(fit), torch.from_numpy(val)


def _objective(linear: nn.Linear, x: Tensor, y: Tensor, weight_decay: float) -> Tensor:
    return F.cross_entropy(linear(x), y) + weight_decay * linear.weight.square().sum()


def _new_linear(dim: int, num_classes: int, device: str | torch.device) -> nn.Linear:
    linear = nn.Linear(dim, num_classes, device=device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def _fit_lbfgs(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int,
               device: str | torch.device) -> nn.Linear:
    """Full-batch L-BFGS (strong Wolfe) from a zero init; the problem is convex."""
    x, y = x.to(device), y.to(device)
    linear = _new_linear(x.shape[1], num_classes, device)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _objective(linear, x, y, weight_decay)
        loss.backward()
        return loss

    with _cpu_threads(1 if x.device.type == "cpu" and x.numel() <= SINGLE_THREAD_LIMIT else None):
        opt.step(closure)
    return linear


@contextlib.contextmanager
def _cpu_threads(count: int | None):
    """Run with `count` torch CPU threads (None: unchanged). Small L-BFGS problems are thousands of tiny
    matmuls: on one thread they run several times faster than on a busy machine's shared threads."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit_minibatch(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, *,
                   epochs: int, batch_size: int, lr: float, seed: int,
                   device: str | torch.device) -> nn.Linear:
    """Minibatch Adam on the same objective (weight decay as an explicit L2 term, not AdamW's
    decoupled decay), cosine-decayed lr; data stay on the CPU and move one batch at a time."""
    linear = _new_linear(x.shape[1], num_classes, device)
    opt = torch.optim.Adam(linear.parameters(), lr=lr)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(x.shape[0], generator=gen).split(batch_size):
            opt.zero_grad()
            _objective(linear, x[batch].to(device), y[batch].to(device), weight_decay).backward()
            opt.step()
            sched.step()
    return linear


def fit_logistic_regression(
    x: Tensor, y: Tensor, num_classes: int, weight_decay: float, *, max_iter: int = 200,
    device: str | torch.device = "cpu", full_batch_limit: float = FULL_BATCH_LIMIT,
    epochs: int = 30, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
) -> nn.Linear:
    """Fit W, b minimising mean CE + weight_decay * ||W||^2 on features x [n, D], labels y [n].

    Full-batch L-BFGS when n * D <= `full_batch_limit`, else minibatch Adam (`epochs`,
    `batch_size`, `lr`). Returns the fitted `nn.Linear(D, num_classes)` on `device`.
    """
    with torch.enable_grad():
        if x.shape[0] * x.shape[1] <= full_batch_limit:
            return _fit_lbfgs(x, y, num_classes, weight_decay, max_iter, device)
        return _fit_minibatch(x, y, num_classes, weight_decay, epochs=epochs,
                              batch_size=batch_size, lr=lr, seed=seed, device=device)


@torch.no_grad()
def _accuracy(linear: nn.Linear, x: Tensor, y: Tensor) -> tuple[float, float]:
    """(top-1 %, top-5 %) of the probe on x, y; fewer than 5 classes give top-5 = 100."""
    device = linear.weight.device
    ranks = torch.cat([rank_of_label(linear(xb.to(device)), yb.to(device)).cpu()
                       for xb, yb in zip(x.split(EVAL_CHUNK), y.split(EVAL_CHUNK))])
    return 100.0 * int((ranks == 0).sum()) / len(ranks), 100.0 * int((ranks < 5).sum()) / len(ranks)


def _select_weight_decay(x: Tensor, y: Tensor, num_classes: int, weight_decays: Sequence[float],
                         val_fraction: float, seed: int, fit_kw: dict[str, Any]
                         ) -> tuple[float, dict[float, float]]:
    """Best weight decay on a held-out part of the train split (ties: the larger one)."""
    if len(weight_decays) == 1:
        return float(weight_decays[0]), {}
    fit_idx, val_idx = _validation_split(y, val_fraction, seed)
    val_top1 = {}
    for wd in weight_decays:
        probe = fit_logistic_regression(x[fit_idx], y[fit_idx], num_classes, wd, **fit_kw)
        val_top1[float(wd)] = _accuracy(probe, x[val_idx], y[val_idx])[0]
    best = max(val_top1, key=lambda wd: (val_top1[wd], wd))
    return best, val_top1


def linear_probe(
    train_feats: ArrayLike,
    train_labels: ArrayLike,
    test_feats: ArrayLike,
    test_labels: ArrayLike,
    *,
    weight_decays: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2),
    val_fraction: float = 0.2,
    max_iter: int = 200,
    seed: int = 0,
    standardize: bool = True,
    device: str | torch.device = "cpu",
    full_batch_limit: float = FULL_BATCH_LIMIT,
    epochs: int = 30,
    batch_size: int = 1024,
    lr: float = 1e-3,
) -> dict[str, Any]:
    """Linear-probe accuracy of frozen features (protocol in the module docstring).

    Returns a JSON-ready dict: "top1", "top5" (percent, test split), "weight_decay" (chosen),
    "val_top1" ({weight decay: validation top-1 %}, empty when a single weight decay is given:
    then no split is made), "protocol", "solver" ("lbfgs" | "adam-minibatch"), "num_train",
    "num_test", "num_classes", "standardize".
    `full_batch_limit` (on n * D), `epochs`, `batch_size` and `lr` only concern the minibatch
    solver; "solver" names the one used for the final refit on the whole train split.
    """
    x_train = _as_features(train_feats, "train features")
    x_test = _as_features(test_feats, "test features")
    if x_train.shape[1] != x_test.shape[1]:
        raise UserError(f"feature dimensions differ: train {x_train.shape[1]} vs test "
                        f"{x_test.shape[1]}; extract both splits with the same model")
    y_train = _as_labels(train_labels, x_train.shape[0], "train_labels")
    y_test = _as_labels(test_labels, x_test.shape[0], "test_labels")
    if y_train.unique().numel() < 2:
        raise UserError("the train split has a single class; a linear probe needs >= 2 classes")
    if not weight_decays or min(weight_decays) < 0:
        raise UserError(f"weight_decays must be a non-empty list of values >= 0, got "
                        f"{list(weight_decays)}; e.g. (1e-6, 1e-4, 1e-2)")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if standardize:
        x_train, x_test = _standardize(x_train, x_test)

    fit_kw = dict(max_iter=max_iter, device=device, full_batch_limit=full_batch_limit,
                  epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    wd, val_top1 = _select_weight_decay(x_train, y_train, num_classes, weight_decays,
                                        val_fraction, seed, fit_kw)
    probe = fit_logistic_regression(x_train, y_train, num_classes, wd, **fit_kw)
    top1, top5 = _accuracy(probe, x_test, y_test)
    full_batch = x_train.numel() <= full_batch_limit
    return {"top1": top1, "top5": top5, "weight_decay": wd, "val_top1": val_top1,
            "protocol": PROTOCOL, "solver": "lbfgs" if full_batch else "adam-minibatch",
            "num_train": x_train.shape[0], "num_test": x_test.shape[0],
            "num_classes": num_classes, "standardize": standardize}
