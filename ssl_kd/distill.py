"""Distillation: a frozen teacher, a student, a method and its momentum queue, run by the one loop.

`distill(cfg, teacher, run_dir)` builds the student and the method from the config, trains them
with `ssl_kd.loop.fit` on two SSL views of the training split, and exports the student's backbone
as a plain timm state dict (`student_timm.pth` + `student_timm.json`) that
`timm.create_model(name, num_classes=0, checkpoint_path=...)` loads with no ssl_kd code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from .config import Config, to_dict
from .data import build_dataset, make_loader, views_transform
from .errors import UserError
from .loop import FitResult, fit, resolve_device
from .losses import METHODS, build_method
from .losses.base import MethodDims
from .objective import DistillObjective
from .parallel import is_main_process, world_size
from .pretrain import SimCLRObjective
from .queue import MomentumQueue
from .students import Student
from .teachers import Teacher


@dataclass
class DistillResult:
    student: Student
    fit: FitResult
    export_path: Path

    @property
    def train_seconds(self) -> float:
        return sum(epoch["seconds"] for epoch in self.fit.history)


SSL_SCRATCH = "ssl_scratch"  # the baseline: the student trained self-supervised (SimCLR) from scratch


def method_names() -> list[str]:
    """Every `--method` choice: the registered distillation methods and the SSL-from-scratch baseline."""
    return sorted([*METHODS, SSL_SCRATCH])


def build_student(cfg: Config, teacher: Teacher, extra_teachers: list[Teacher] = ()) -> Student:
    """The student, initialised from `student.init_seed` (the random-init baseline uses the same call)."""
    return Student(cfg.student, teacher.embed_dim, teacher.mean.flatten().tolist(), teacher.std.flatten().tolist(),
                   extra_dims=tuple(t.embed_dim for t in extra_teachers))


def distill(cfg: Config, teacher: Teacher, run_dir: Path, extra_teachers: list[Teacher] = (),
            monitor: Callable[[nn.Module, int], dict] | None = None) -> DistillResult:
    """Train the student on `cfg`, export it. `monitor(student, epoch)` runs after every epoch and its
    numbers join that epoch's summary in metrics.jsonl (see `ssl_kd.job.knn_monitor`)."""
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    dataset = build_dataset(cfg.data, "train", views_transform(cfg.data))
    loader = make_loader(dataset, cfg.train.batch_size, train=True, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                         pin_memory=device.type == "cuda")
    record_processes(cfg, loader)
    student = build_student(cfg, teacher, extra_teachers)
    objective = build_objective(cfg, teacher, student, len(dataset), extra_teachers)
    on_epoch_end = (lambda epoch: monitor(student, epoch)) if monitor is not None else None
    result = fit(objective, loader, cfg.train, run_dir, to_dict(cfg), device, on_epoch_end=on_epoch_end)
    export = export_student(student, Path(run_dir)) if is_main_process() else Path(run_dir) / "student_timm.pth"
    return DistillResult(student=student, fit=result, export_path=export)


def record_processes(cfg: Config, loader) -> None:
    """Write into the config (and so into config.yaml, checkpoints and the report) how many processes
    train and how many images each takes per step; train.batch_size is their product, the global batch."""
    cfg.train.world_size = world_size()
    cfg.train.batch_per_process = loader.batch_size


def teacher_weights(cfg: Config, num_teachers: int) -> list[float]:
    weights = [float(w) for w in cfg.teacher.weights] or [1.0] * num_teachers
    if len(weights) != num_teachers:
        raise UserError(f"teacher.weights has {len(weights)} values but there are {num_teachers} teachers; give one per teacher, primary first")
    return weights


def build_objective(cfg: Config, teacher: Teacher, student: Student, num_samples: int, extra_teachers: list[Teacher] = ()) -> nn.Module:
    """The distillation objective for `cfg.loss.method`, or SimCLR on the student for `ssl_scratch`."""
    if cfg.loss.method not in method_names():
        raise UserError(f"unknown method '{cfg.loss.method}'; choose one of: {', '.join(method_names())} (--method / loss.method)")
    weights = teacher_weights(cfg, 1 + len(extra_teachers))
    if cfg.loss.method == SSL_SCRATCH:
        if getattr(cfg.data, "views", "crops") != "crops":
            raise UserError("ssl_scratch trains SimCLR on two crops; set data.views=crops")  # same data, views and budget; the teacher only takes part in the report
        return SimCLRObjective(student.backbone, student.mean.flatten().tolist(), student.std.flatten().tolist())
    parts = [_method_for(cfg, t, student, num_samples) for t in (teacher, *extra_teachers)]
    (method, queue), extra = parts[0], [(t, m, q) for t, (m, q) in zip(extra_teachers, parts[1:])]
    objective = DistillObjective(teacher, student, method, queue, extra=extra, weights=weights)
    materialize_lazy_modules(objective, cfg)
    return objective


def _method_for(cfg: Config, teacher: Teacher, student: Student, num_samples: int) -> tuple[nn.Module, MomentumQueue | None]:
    """One teacher's method instance (sized to that teacher) and its momentum queue, if it needs one."""
    num_classes = getattr(teacher.backbone, "num_classes", 0) if getattr(teacher, "has_logits", False) else 0
    dims = MethodDims(student_dim=student.feat_dim, teacher_dim=teacher.embed_dim, num_samples=num_samples, num_classes=num_classes)
    method = build_method(cfg.loss, dims)
    if method.needs_logits and not num_classes:
        raise UserError(f"method '{cfg.loss.method}' needs teacher logits, which this teacher does not give")
    queue = MomentumQueue(cfg.loss.queue_size, teacher.embed_dim) if method.needs_queue else None
    return method, queue


def materialize_lazy_modules(objective: DistillObjective, cfg: Config) -> None:
    """Give lazily shaped heads (FitNet's regressor) their shapes before the optimizer is built, by one
    no-grad forward on blank images, so that weight decay and the optimizer state see real tensors."""
    if not any(isinstance(p, UninitializedParameter) for p in objective.trainable.parameters()):
        return
    device = next(objective.teacher.parameters()).device
    num_views = 4 if cfg.data.views == "rotations" else 2
    blank = [torch.zeros(2, 3, cfg.data.image_size, cfg.data.image_size, device=device) for _ in range(num_views)]
    objective.to(device).eval()
    with torch.no_grad():
        objective(blank, torch.zeros(2, dtype=torch.long, device=device))
    objective.train()


def export_student(student: Student, run_dir: Path) -> Path:
    """The backbone as a plain timm state dict plus a JSON naming the timm model to build."""
    path = run_dir / "student_timm.pth"
    torch.save({k: v.detach().cpu() for k, v in student.backbone.state_dict().items()}, path)
    info = {"timm_name": student.arch, "num_classes": 0, "small_stem": student.small_stem,
            "mean": student.mean.flatten().tolist(), "std": student.std.flatten().tolist(),
            "load": f"timm.create_model('{student.arch}', num_classes=0, checkpoint_path='student_timm.pth')"}
    (run_dir / "student_timm.json").write_text(json.dumps(info, indent=2))
    return path
