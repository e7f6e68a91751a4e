"""Extract frozen features of a whole dataset, for k-NN, retrieval and linear-probe evaluation.

`extract_features` runs a model over a loader; `ssl_kd.feature_shards.sharded_features` runs it over
a whole dataset with every torchrun rank taking a shard; `ssl_kd.feature_cache.cached_features` (the
one entry point of evaluation) keeps the result on disk.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ssl_kd.errors import UserError

__all__ = ["extract_features"]


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """(images, labels) from an `(images, labels)` or `(images, labels, index, ...)` batch."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise UserError("each batch must be (images, labels) or (images, labels, index); "
                        "wrap the dataset so that it returns labels")
    return batch[0], torch.as_tensor(batch[1])


def _batch_features(out: Any) -> Tensor:
    """The [B, D] feature of a model output: a Tensor, or an object with a `.feat` Tensor
    (e.g. `ssl_kd.embeddings.Embeddings`)."""
    feat = getattr(out, "feat", out)
    if not isinstance(feat, Tensor) or feat.ndim != 2:
        shape = tuple(feat.shape) if isinstance(feat, Tensor) else type(feat).__name__
        raise UserError(f"the model returned {shape}, expected [B, D] features; "
                        "return pooled features (or an Embeddings with .feat)")
    return feat


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    normalize: bool = True,
    desc: str | None = None,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Run `model` over every batch of `loader` and collect features and labels.

    The model must already live on `device`; each batch's images are moved there. Batches are
    `(images, labels)` or `(images, labels, index)`; the model output is a [B, D] Tensor or an
    object with a `.feat` attribute. The model runs in eval mode and every submodule gets its
    own previous train/eval flag back afterwards (also on error). With `normalize` the rows are
    L2-normalised. A tqdm bar is shown when `progress` is True, or when it is None and stderr
    is a terminal.

    Returns (feats float32 [N, D], labels int64 [N]) on the CPU, in loader order.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for batch in tqdm(loader, desc=desc, disable=not _show_progress(progress)):
            images, batch_labels = _split_batch(batch)
            feat = _batch_features(model(images.to(device, non_blocking=True)))
            feat = feat.float()
            feats.append((F.normalize(feat, dim=1) if normalize else feat).cpu())
            labels.append(batch_labels.reshape(-1).long().cpu())
    finally:
        for module, mode in modes:
            module.training = mode
    if not feats:
        raise UserError("no images to extract features from: the dataset is empty; "
                        "check the dataset path and split name")
    return torch.cat(feats), torch.cat(labels)
