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

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from .config import Config, to_dict
from .data import build_dataset, make_loader, views_transform
from .errors import UserError
from .losses import METHODS, build_method
from .losses.base import MethodDims, StepContext
from .loop import FitResult, fit, resolve_device
from .pretrain import SimCLRObjective
from .queue import MomentumQueue
from .students import Student
from .teachers import Teacher


class DistillObjective(nn.Module):
    """One step: teacher and student embed all views; the method turns them into a loss."""

    def __init__(self, teacher: Teacher, student: Student, method: nn.Module, queue: MomentumQueue | None):
        super().__init__()
        self.teacher = teacher  # frozen; not part of `trainable`, so never optimized nor checkpointed
        parts = {"student": student, "method": method}
        if queue is not None:
            parts["queue"] = queue
        self.trainable = nn.ModuleDict(parts)
        method.bind_student(student)
        self._step: tuple | None = None

    @property
    def student(self) -> Student:
        return self.trainable["student"]

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict:
        method = self.trainable["method"]
        views = method.batch_transform(views)
        images = torch.cat(views)
        maps = getattr(method, "needs_maps", False)  # FitNet, SP: the backbones' stage maps too
        with torch.no_grad():
            teacher_out = self.teacher(images, maps=maps)
        student_out = self.student(images, maps=maps)
        ctx = StepContext(num_views=len(views), index=index, images=images)
        queue = self.trainable["queue"].get() if "queue" in self.trainable else None
        out = method(student_out, teacher_out, queue, ctx)
        self._step = (student_out, teacher_out, ctx)
        return out

    def after_step(self) -> None:
        """After the optimizer step: enqueue (the queue's rows took part in this step's graph) and let
        the method update its own state."""
        student_out, teacher_out, ctx = self._step
        method = self.trainable["method"]
        if "queue" in self.trainable:
            self.trainable["queue"].enqueue(method.queue_items(teacher_out).detach())
        method.after_step(student_out, teacher_out, ctx)
        self._step = None


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


def build_student(cfg: Config, teacher: Teacher) -> Student:
    """The student, initialised from `student.init_seed` (the random-init baseline uses the same call)."""
    return Student(cfg.student, teacher.embed_dim, teacher.mean.flatten().tolist(), teacher.std.flatten().tolist())


def distill(cfg: Config, teacher: Teacher, run_dir: Path) -> DistillResult:
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    dataset = build_dataset(cfg.data, "train", views_transform(cfg.data))
    loader = make_loader(dataset, cfg.train.batch_size, train=True, num_workers=cfg.data.num_workers, seed=cfg.train.seed)
    student = build_student(cfg, teacher)
    objective = build_objective(cfg, teacher, student, len(dataset))
    result = fit(objective, loader, cfg.train, run_dir, to_dict(cfg), device)
    export = export_student(student, Path(run_dir))
    return DistillResult(student=student, fit=result, export_path=export)


def build_objective(cfg: Config, teacher: Teacher, student: Student, num_samples: int) -> nn.Module:
    """The distillation objective for `cfg.loss.method`, or SimCLR on the student for `ssl_scratch`."""
    if cfg.loss.method not in method_names():
        raise UserError(f"unknown method '{cfg.loss.method}'; choose one of: {', '.join(method_names())} (--method / loss.method)")
    if cfg.loss.method == SSL_SCRATCH:
        if getattr(cfg.data, "views", "crops") != "crops":
            raise UserError("ssl_scratch trains SimCLR on two crops; set data.views=crops")  # same data, views and budget; the teacher only takes part in the report
        return SimCLRObjective(student.backbone, student.mean.flatten().tolist(), student.std.flatten().tolist())
    num_classes = getattr(teacher.backbone, "num_classes", 0) if getattr(teacher, "has_logits", False) else 0
    dims = MethodDims(student_dim=student.feat_dim, teacher_dim=teacher.embed_dim, num_samples=num_samples, num_classes=num_classes)
    method = build_method(cfg.loss, dims)
    if method.needs_logits and not num_classes:
        raise UserError(f"method '{cfg.loss.method}' needs teacher logits, which this teacher does not give")
    queue = MomentumQueue(cfg.loss.queue_size, teacher.embed_dim) if method.needs_queue else None
    objective = DistillObjective(teacher, student, method, queue)
    materialize_lazy_modules(objective, cfg)
    return objective


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
    objective._step = None


def export_student(student: Student, run_dir: Path) -> Path:
    """The backbone as a plain timm state dict plus a JSON naming the timm model to build."""
    path = run_dir / "student_timm.pth"
    torch.save({k: v.detach().cpu() for k, v in student.backbone.state_dict().items()}, path)
    info = {"timm_name": student.arch, "num_classes": 0, "small_stem": student.small_stem,
            "mean": student.mean.flatten().tolist(), "std": student.std.flatten().tolist(),
            "load": f"timm.create_model('{student.arch}', num_classes=0, checkpoint_path='student_timm.pth')"}
    (run_dir / "student_timm.json").write_text(json.dumps(info, indent=2))
    return path
