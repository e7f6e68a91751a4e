"""Distillation: a frozen teacher, a student, a method and its momentum queue, run by the one loop.

`distill(cfg, teacher, run_dir)` builds the student and the method from the config, trains them
with `ssl_kd.loop.fit` on two SSL views of the training split, and exports the student's backbone
as a plain timm state dict (`student_timm.pth` + `student_timm.json`) that
`timm.create_model(name, num_classes=0, checkpoint_path=...)` loads with no ssl_kd code.

Which space the methods see as each teacher's embedding (`teacher.embedding`: backbone | head | auto) is
decided here, per run, by `in_embedding_space` (auto: `HEAD_SPACE_METHODS`), so that `compare.py`'s runs
of several methods on one loaded teacher each get their own; the evaluation keeps scoring the backbone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from .config import Config, to_dict
from .cli import say
from .data import build_dataset, resolve_data_config
from .views import DRAWS_PER_STEP, num_views, view_draw, views_transform
from .loaders import make_loader
from .data import unreadable_check
from .errors import UserError
from .loop import FitResult, autocast_context, fit, resolve_device
from .losses import METHODS, build_method
from .losses.base import DistillMethod, MethodDims
from .objective import DistillObjective
from .evaluation.on_main import on_main_process
from .parallel import is_main_process, world_size
from .provenance import reproducibility_record
from .pretrain import SimCLRObjective
from .queue import MomentumQueue
from .seeded_views import FreshDraws, PooledViews, ViewPool
from .students import Student
from .teacher_cache import build_teacher_cache
from .teachers import Teacher


@dataclass
class DistillResult:
    student: Student
    fit: FitResult
    export_path: Path
    teacher_caches: list[dict] = field(default_factory=list)  # `TeacherCache.describe()` per teacher, when cached
    record: dict = field(default_factory=dict)  # the reproducibility record (`ssl_kd.provenance`)

    @property
    def train_seconds(self) -> float:
        return sum(epoch["seconds"] for epoch in self.fit.history)


SSL_SCRATCH = "ssl_scratch"  # the baseline: the student trained self-supervised (SimCLR) from scratch

# teacher.embedding=auto: the methods whose papers distil the teacher's SSL projection-head output (SEED, Fang et
# al. 2021, and CompRess, Abbasi Koohpayegani et al. 2020, both from MoCo's 128-d head) see the head's output when
# the teacher file carries its head; every other method, and any teacher without a head, the backbone feature.
# This set is the one place that default lives.
HEAD_SPACE_METHODS = frozenset({"seed", "compress", "compress_1q", "compress_2q"})
# Methods that also read the teacher's backbone feature (`Embeddings.feat`): a teacher cache keeps only the
# embedding, so in the head space it would hand them the head's output in its place (see `refuse_head_space`).
READS_TEACHER_FEAT = frozenset({"crd", "dlkd", "dlkd_corr", "rkd"})


def embedding_space(cfg: Config, teacher: Teacher) -> str:
    """"head" or "backbone": the space of `teacher`'s embedding for `cfg.loss.method` under `cfg.teacher.embedding`
    (auto: the head for `HEAD_SPACE_METHODS` when the teacher has one, else the backbone)."""
    choice = cfg.teacher.embedding
    if choice == "auto":
        has_head = getattr(teacher, "projection_head", None) is not None
        return "head" if cfg.loss.method in HEAD_SPACE_METHODS and has_head else "backbone"
    return choice


def in_embedding_space(cfg: Config, teacher: Teacher) -> Teacher:
    """`teacher` with its embedding in the space `embedding_space` names (a view sharing its weights); a `UserError`
    for `head` on a teacher without a usable head, or with a method that cannot take the head space."""
    view = teacher.with_embedding(embedding_space(cfg, teacher))
    if view.embedding == "head":
        refuse_head_space(cfg)
    return view


def refuse_head_space(cfg: Config) -> None:
    """One line for the combinations that would fail, or train on the wrong tensors, in the head space."""
    method = cfg.loss.method
    if cfg.train.teacher_cache and method in READS_TEACHER_FEAT:
        raise UserError(f"train.teacher_cache keeps only the teacher's embedding (with teacher.embedding=head its projection "
                        f"head's output), but {method} also reads its backbone feature; set train.teacher_cache=0 or "
                        "teacher.embedding=backbone")


def embedding_record(teacher: Teacher) -> dict:
    """The report's record of the space a teacher's embedding was in: {"space", "dim", "line"} (+ the head's
    name, source and layers in the head space)."""
    record = {"space": teacher.embedding, "dim": int(teacher.embed_dim), "line": teacher.embedding_line()}
    if teacher.embedding == "head":
        info = teacher.head_info
        record.update(head=info.name, source=info.source, layers=info.layers)
    return record


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
    teacher, extra_teachers = in_embedding_space(cfg, teacher), [in_embedding_space(cfg, t) for t in extra_teachers]
    for k, t in enumerate((teacher, *extra_teachers), start=1):
        if t.embedding == "head" and cfg.loss.method != SSL_SCRATCH:
            say(f"teacher{f' {k}' if k > 1 else ''} embedding: {t.embedding_line()} (teacher.embedding={cfg.teacher.embedding})")
    torch.manual_seed(cfg.train.seed)
    dataset = build_dataset(cfg.data, "train", views_transform(cfg.data))
    student = build_student(cfg, teacher, extra_teachers)
    objective = build_objective(cfg, teacher, student, len(dataset), extra_teachers)
    dataset, tag_epoch = training_views(cfg, dataset, objective, Path(run_dir), device)
    loader = make_loader(dataset, cfg.train.batch_size, train=True, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                         pin_memory=device.type == "cuda", tag_epoch=tag_epoch)
    record_processes(cfg, loader)
    on_epoch_end = (lambda epoch: monitor(student, epoch)) if monitor is not None else None
    record = on_main_process(lambda: reproducibility_record(cfg))
    result = fit(objective, loader, cfg.train, run_dir, to_dict(cfg), device, on_epoch_end=on_epoch_end,
                 data_check=unreadable_check(dataset, cfg.data.max_bad_fraction), record=record)
    export = export_student(student, Path(run_dir)) if is_main_process() else Path(run_dir) / "student_timm.pth"
    caches = [cache.describe() for cache in dataset.caches] if isinstance(dataset, PooledViews) else []
    return DistillResult(student=student, fit=result, export_path=export, teacher_caches=caches, record=record)


def training_views(cfg: Config, dataset, objective: nn.Module, run_dir: Path, device: torch.device):
    """(training dataset, whether its sampler passes the epoch). Without `train.teacher_cache`: `dataset`
    itself, fresh augmentations every epoch (with `data.seeded_views`, each seeded by (seed, image,
    draw): `FreshDraws`). With V = `train.teacher_cache`: every teacher's cache over a
    pool of V draws per image (built, or reused when its key matches; `ssl_kd.teacher_cache`), and a
    `PooledViews` dataset that brings the chosen draws with the teachers' cached rows."""
    size = cfg.train.teacher_cache
    if size < 0:
        raise UserError(f"train.teacher_cache={size}; give the number of cached draws per image (e.g. 10), or 0 for no cache")
    seeded = FreshDraws(view_draw(cfg.data), DRAWS_PER_STEP[cfg.data.views], cfg.train.seed) if cfg.data.seeded_views else None
    if size == 0:
        return (PooledViews(dataset, seeded), True) if seeded else (dataset, False)
    if not isinstance(objective, DistillObjective):
        say(f"train.teacher_cache ignored: {cfg.loss.method} does not use the teacher")
        return (PooledViews(dataset, seeded), True) if seeded else (dataset, False)
    for branch in objective.branches:
        refuse_uncacheable(cfg.loss.method, branch.method)
    draws_per_step = DRAWS_PER_STEP[cfg.data.views]
    if size < draws_per_step:
        raise UserError(f"train.teacher_cache={size} gives {size} draw per image, but data.views={cfg.data.views} trains on "
                        f"{draws_per_step} distinct draws a step; use train.teacher_cache={draws_per_step} or more (10 is typical)")
    pool = ViewPool(view_draw(cfg.data), size=size, draws_per_step=draws_per_step, seed=cfg.train.seed)
    autocast, _ = autocast_context(cfg.train.precision, device)
    directory = cfg.train.teacher_cache_dir or run_dir / "teacher_cache"
    data = resolve_data_config(cfg.data)
    recipe = repr({key: getattr(data, key) for key in VIEW_RECIPE_KEYS})
    caches = [build_teacher_cache(branch.teacher, dataset, pool, directory=directory, recipe=recipe, logits=branch.method.needs_logits,
                                  dtype=cfg.train.teacher_cache_dtype, batch_size=cfg.eval.batch_size,
                                  num_workers=cfg.data.num_workers, device=device, autocast=autocast)
              for branch in objective.branches]
    return PooledViews(dataset, pool, caches), True


# the DataConfig fields the augmented views are made from: part of the teacher cache's key
VIEW_RECIPE_KEYS = ("image_size", "views", "min_scale", "hflip", "color_jitter", "jitter_strength", "grayscale", "blur",
                    "rotation", "rotation_degrees")


def refuse_uncacheable(name: str, method: nn.Module) -> None:
    """One line for a method that needs teacher outputs a cache of embeddings cannot hold."""
    if method.needs_maps:
        raise UserError(f"{name} needs the teacher's stage feature maps, which train.teacher_cache does not keep; "
                        "set train.teacher_cache=0")
    if type(method).batch_transform is not DistillMethod.batch_transform:
        raise UserError(f"{name} changes the images before the teacher sees them (e.g. STKD's mixup), so its teacher outputs "
                        "cannot be cached; set train.teacher_cache=0")


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
        if cfg.data.views != "crops":
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
    dims = MethodDims(student_dim=student.feat_dim, teacher_dim=teacher.embed_dim, num_samples=num_samples, num_classes=num_classes,
                      teacher_feat_dim=getattr(teacher, "feat_dim", teacher.embed_dim))
    method = build_method(cfg.loss, dims)
    if method.needs_logits and not num_classes:
        raise UserError(f"method '{cfg.loss.method}' needs teacher logits, which this teacher does not give")
    if method.needs_maps and not hasattr(teacher.backbone, "forward_intermediates"):
        raise UserError(f"method '{cfg.loss.method}' compares stage feature maps, which the teacher {teacher.arch} "
                        f"({teacher.format}) does not give; choose a method that compares embeddings (e.g. dlkd)")
    queue = MomentumQueue(cfg.loss.queue_size, teacher.embed_dim) if method.needs_queue else None
    return method, queue


def materialize_lazy_modules(objective: DistillObjective, cfg: Config) -> None:
    """Give lazily shaped heads (FitNet's regressor) their shapes before the optimizer is built, by one
    no-grad forward on blank images, so that weight decay and the optimizer state see real tensors."""
    if not any(isinstance(p, UninitializedParameter) for p in objective.trainable.parameters()):
        return
    device = next(objective.teacher.parameters()).device
    blank = [torch.zeros(2, 3, cfg.data.image_size, cfg.data.image_size, device=device) for _ in range(num_views(cfg.data))]
    objective.to(device).eval()
    with torch.no_grad():
        objective(blank, torch.zeros(2, dtype=torch.long, device=device))
    objective.train()


def export_student(student: Student, run_dir: Path) -> Path:
    """The backbone as a plain timm state dict plus a JSON naming the timm model to build."""
    path = run_dir / "student_timm.pth"
    torch.save({k: v.detach().cpu() for k, v in student.backbone.state_dict().items()}, path)
    kwargs = dict(getattr(student, "model_kwargs", {}))  # e.g. a ViT's dynamic_img_size, to take the data's side
    extra = "".join(f", {key}={value!r}" for key, value in kwargs.items())
    info = {"timm_name": student.arch, "num_classes": 0, "small_stem": student.small_stem, "model_kwargs": kwargs,
            "mean": student.mean.flatten().tolist(), "std": student.std.flatten().tolist(),
            "load": f"timm.create_model('{student.arch}', num_classes=0{extra}, checkpoint_path='student_timm.pth')"}
    (run_dir / "student_timm.json").write_text(json.dumps(info, indent=2))
    return path
