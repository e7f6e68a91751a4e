"""The Python API: distil a teacher (a checkpoint, or any `nn.Module`) and measure a model, from a script.

    import ssl_kd

    teacher = ssl_kd.load_teacher("moco_v2_800ep_pretrain.pth.tar")          # any layout `ssl-kd inspect` reads
    teacher = ssl_kd.Teacher.from_module(my_net, mean=(0.5,) * 3, std=(0.25,) * 3)  # or your own network
    config = ssl_kd.load_config(overrides=["data.name=cifar10", "data.root=~/data", "train.epochs=20"])
    run = ssl_kd.distill(teacher, config, out="runs/mine")           # trains, checkpoints, exports
    scores = ssl_kd.evaluate(run.student, config)                     # ModelScores: k-NN, retrieval, linear probe (%)

`distill` is `ssl-kd distill` without the report: the same config (validated and resolved here, so a
config built in code needs no further set-up), the same checkpoints and resume, the same
`student_timm.pth`. `evaluate` is the protocol every report row uses. Both run in the calling process
on `config.train.device`; for several GPUs or nodes launch `torchrun ... ssl-kd distill` instead.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from .config import Config
from .data import require_labels, resolve_data_config
from .distillation import DistillResult
from .distillation import distill as _distill
from .evaluation.inputs import eval_splits, evaluation_data
from .evaluation.results import ModelScores
from .evaluation.suite import evaluate_model
from .loaders import make_loader
from .loop import resolve_device
from .teachers import Teacher, load_teacher
from .validation import check_knn_bank, validate_config, validate_output_dir


def resolved(config: Config | None) -> Config:
    """A copy of `config` (default: `Config()`) with the dataset's defaults filled in, validated."""
    cfg = copy.deepcopy(config) if config is not None else Config()
    cfg.data = resolve_data_config(cfg.data)
    validate_config(cfg)
    return cfg


def distill(teacher: Teacher | str | Path, config: Config | None = None, out: str | Path | None = None,
            extra_teachers: list[Teacher] = ()) -> DistillResult:
    """Distil `teacher` (a `Teacher`, or a checkpoint path / `timm:NAME.TAG`) into the student `config`
    describes, on its data, writing checkpoints and `student_timm.pth` to `out` (default `config.out`).
    A run folder with a checkpoint resumes from it. Returns the trained student, the fit summary and
    the export path."""
    cfg = resolved(config)
    if out is not None:
        cfg.out = str(out)
    validate_output_dir(cfg.out)
    if not isinstance(teacher, Teacher):
        teacher = load_teacher(str(teacher), arch=cfg.teacher.arch, format=cfg.teacher.format,
                               trust=cfg.teacher.trust_checkpoint, image_size=cfg.teacher.image_size or cfg.data.image_size)
    return _distill(cfg, teacher, Path(cfg.out), list(extra_teachers))


def evaluate(model: nn.Module, config: Config | None = None, name: str = "model") -> ModelScores:
    """Weighted k-NN top-1/top-5, recall@1, MAP@R and (with `eval.linear_probe`) the linear probe's
    top-1 of `model`'s features, in percent, on `config`'s evaluation data (`eval_data`, else the
    training data's train split as the bank and its test split as the queries), as a `ModelScores`
    (`.knn_top1`, ..., `.headline()`, `.to_dict()`). `model` maps images
    in [0, 1] to features or to `Embeddings` (a `Teacher`, a `Student`)."""
    cfg = resolved(config)
    data = evaluation_data(cfg.data, cfg.eval_data)
    require_labels(data)
    splits = eval_splits(data)
    check_knn_bank(cfg.eval, len(splits.train), data.name)
    train, test = (make_loader(split, cfg.eval.batch_size, train=False, num_workers=data.num_workers)
                   for split in (splits.train, splits.test))
    return evaluate_model(model, train, test, cfg.eval, resolve_device(cfg.train.device), name)
