"""The evaluation inputs, built one way for every caller: both splits with the eval transform, and their features.

The train split is the k-NN bank, the retrieval database and the linear probe's training set; the
test split holds the queries. Both use the deterministic eval transform (`ssl_kd.views.eval_transform`).
`ssl_kd.job` (the pipelines' report and k-NN monitor), `ssl_kd.evaluation.entry` (the `eval/` entry
points) and `eval/report.py` all build them here, and get features through `cached_features`, which
also runs under torchrun (every rank extracts a shard; see `ssl_kd.feature_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import DataConfig
from ..data import build_dataset, resolve_data_config
from ..views import eval_transform
from ..feature_cache import cached_features

SPLITS = ("train", "test")


@dataclass(frozen=True)
class EvalSplits:
    train: Dataset  # the k-NN bank / retrieval database / probe training set (eval transform)
    test: Dataset  # the queries (eval transform)

    @property
    def classes(self) -> list[str]:
        return list(self.test.classes)


def evaluation_data(train: DataConfig, eval_data: DataConfig | None) -> DataConfig:
    """The data evaluation runs on: `eval_data` (a separate labeled set) when given, else the training
    data. A separate set is seen at the training data's image size unless its own `image_size` says
    otherwise, and loads with the training data's `num_workers`."""
    if eval_data is None:
        return resolve_data_config(train)
    size = eval_data.image_size or resolve_data_config(train).image_size
    return resolve_data_config(replace(eval_data, image_size=size, num_workers=train.num_workers))


def eval_split(data: DataConfig, split: str) -> Dataset:
    """The `split` ("train" or "test") of `data` with the deterministic eval transform."""
    return build_dataset(data, split, eval_transform(data))


def eval_splits(data: DataConfig) -> EvalSplits:
    """Both splits of `data` with the eval transform."""
    return EvalSplits(*(eval_split(data, split) for split in SPLITS))


def split_features(
    model: nn.Module,
    splits: EvalSplits,
    *,
    cache_dir: str | None,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    dtype: str = "float32",
    name: str | None = None,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train feats, train labels, test feats, test labels) of `model`, L2-normalized, from `cache_dir`
    when it holds them (None: no cache); see `cached_features`. Every rank must call it under torchrun."""
    out: list[Tensor] = []
    for split in SPLITS:
        desc = f"{name} features ({split})" if name else f"features ({split})"
        out += cached_features(model, getattr(splits, split), cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers,
                               device=device, dtype=dtype, desc=desc, progress=progress)
    return tuple(out)
