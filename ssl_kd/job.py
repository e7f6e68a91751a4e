"""The pieces every distillation pipeline shares: load the inputs, evaluate teacher vs student vs
baselines with one protocol, describe the machine.

`pipelines/distill_ssl.py` (one run) and `pipelines/compare.py` (methods x seeds) both build on it.
The evaluation splits come from `ssl_kd.evaluation.inputs` and every feature from `cached_features`,
as for the `eval/` entry points. Under torchrun every rank calls these functions: all ranks extract
features (each its shard), rank 0 alone scores, and every rank returns rank 0's numbers.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .config import Config
from .data import require_labels
from .loaders import make_loader
from .defaults import default_teacher
from .distillation import SSL_SCRATCH, build_student, embedding_record, in_embedding_space, refuse_head_space
from .evaluation.inputs import EvalSplits, eval_splits, evaluation_data, split_features
from .evaluation.knn import knn_classify
from .evaluation.on_main import on_main_process
from .evaluation.report import RunScores
from .evaluation.results import DataSummary, ModelScores, Protocol
from .evaluation.suite import RawPixels, count_parameters, evaluate_model, images_per_second
from .feature_cache import cached_features
from .loop import FitResult, resolve_device
from .teachers import Teacher, load_teacher
from .validation import check_knn_bank


@dataclass
class JobInputs:
    teacher: Teacher
    teacher_path: str
    train_eval: torch.utils.data.Dataset  # train split, eval transform (k-NN bank, probe training set)
    test_eval: torch.utils.data.Dataset  # test split, eval transform (queries)
    device: torch.device
    extra_teachers: list[Teacher] = field(default_factory=list)  # --teacher repeated (teacher.extra)
    extra_paths: list[str] = field(default_factory=list)


def load_inputs(cfg: Config) -> JobInputs:
    """Data first (cheap, fails fast on a bad folder or on unlabeled evaluation data), then the teacher,
    moved to the device."""
    device = resolve_device(cfg.train.device)
    evaluation = evaluation_data(cfg.data, cfg.eval_data)
    require_labels(evaluation)  # before any training: k-NN, retrieval and the probe need labels
    splits = eval_splits(evaluation)
    teacher_path = str(cfg.teacher.path or default_teacher(cfg.data.name))
    check_knn_bank(cfg.eval, len(splits.train), evaluation.name)  # a k larger than the bank: one line, before the teacher loads
    need_head = cfg.teacher.embedding == "head"  # on every teacher; a file without one is refused before its load line
    if need_head and cfg.loss.method != SSL_SCRATCH:
        refuse_head_space(cfg)  # a method that cannot take the head space: before any teacher loads
    teacher = load_teacher(teacher_path, arch=cfg.teacher.arch, format=cfg.teacher.format, trust=cfg.teacher.trust_checkpoint,
                           image_size=cfg.teacher.image_size or cfg.data.image_size, need_head=need_head).to(device)
    extra_paths = [str(p) for p in cfg.teacher.extra]  # arch and layout from each file (teacher.arch/format are the primary's)
    extra = [load_teacher(p, trust=cfg.teacher.trust_checkpoint, image_size=cfg.teacher.image_size or cfg.data.image_size,
                          need_head=need_head).to(device)
             for p in extra_paths]
    for t in (teacher, *extra):  # the space each will be distilled in resolves (as `distill` resolves it again)
        in_embedding_space(cfg, t)
    return JobInputs(teacher, teacher_path, splits.train, splits.test, device, extra, extra_paths)


def eval_loaders(cfg: Config, inputs: JobInputs):
    """Ordered loaders over both splits in `cfg.eval.batch_size` batches: what `evaluate_model` takes."""
    train = make_loader(inputs.train_eval, cfg.eval.batch_size, train=False, num_workers=cfg.data.num_workers)
    test = make_loader(inputs.test_eval, cfg.eval.batch_size, train=False, num_workers=cfg.data.num_workers)
    return train, test


def knn_monitor(cfg: Config, inputs: JobInputs):
    """`monitor(student, epoch)` for `distill`: the student's weighted k-NN top-1 on the test split (k and T
    of the protocol, train split as the bank) every `eval.monitor_every` epochs and after the last one, as
    {"knn_top1": percent}; None when `eval.monitor_every` is 0. It draws nothing from torch's global random
    generator, so a monitored run trains exactly as an unmonitored one. Nothing is cached (the student
    changes every epoch). Under torchrun every rank calls it after each epoch: all ranks extract the
    features, rank 0 runs the k-NN, and every rank returns its number. Pass the plain student, not a
    DistributedDataParallel wrapper (ranks run different numbers of batches)."""
    every = cfg.eval.monitor_every
    if every <= 0:
        return None
    splits = EvalSplits(inputs.train_eval, inputs.test_eval)

    def knn_top1(train_feats, train_labels, test_feats, test_labels) -> dict:
        knn = knn_classify(train_feats, train_labels, test_feats, test_labels, ks=(cfg.eval.knn_k,), temperature=cfg.eval.knn_temperature)
        return {"knn_top1": round(knn.top1, 3)}

    def monitor(student, epoch: int) -> dict:
        if epoch % every and epoch != cfg.train.epochs:
            return {}
        feats = split_features(student, splits, cache_dir=None, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers,
                               device=inputs.device, progress=False)
        return on_main_process(lambda: knn_top1(*feats))

    return monitor


def test_features(cfg: Config, inputs: JobInputs, model) -> tuple:
    """(features, labels, class names) of the test split, for the feature scatter of the report (not cached)."""
    feats, labels = cached_features(model, inputs.test_eval, cache_dir=None, batch_size=cfg.eval.batch_size,
                                    num_workers=cfg.data.num_workers, device=inputs.device, progress=False)
    return feats, labels, list(inputs.test_eval.classes)


def evaluate_all(cfg: Config, inputs: JobInputs, student) -> RunScores:
    """k-NN, retrieval and linear probe of teacher, student, the random-init student and raw pixels; sizes and speeds
    (measured on rank 0 under torchrun). Every rank returns the same scores."""
    train_loader, test_loader = eval_loaders(cfg, inputs)
    teacher = inputs.teacher
    random_student = build_student(cfg, teacher)  # same arch and init seed: the student before distillation

    def evaluate(model, name: str) -> ModelScores:
        return evaluate_model(model, train_loader, test_loader, cfg.eval, inputs.device, name)

    def evaluate_teacher(t: Teacher, name: str, source: str, **speed) -> ModelScores:
        embedding = None if cfg.loss.method == SSL_SCRATCH else embedding_record(in_embedding_space(cfg, t))  # the method's space
        return replace(evaluate(t, name), arch=t.arch, params=count_parameters(t.backbone), source=source, embedding=embedding, **speed)

    speed = on_main_process(lambda: images_per_second({"teacher": teacher, "student": student.backbone},
                                                      next(iter(test_loader))[0][: cfg.eval.batch_size], inputs.device))
    return RunScores(
        teacher=evaluate_teacher(teacher, "teacher", inputs.teacher_path, images_per_s=speed["teacher"]),
        student=replace(evaluate(student, "student"), arch=student.arch, params=count_parameters(student.backbone),
                        images_per_s=speed["student"]),
        baselines={"random_student": replace(evaluate(random_student, "random_student"), arch=student.arch,
                                             params=count_parameters(random_student.backbone)),
                   "raw_pixels": replace(evaluate(RawPixels(), "raw_pixels"), arch="pixels")},
        protocol=Protocol.from_config(cfg.eval),
        extra_teachers=[evaluate_teacher(t, f"teacher_{k}", path)
                        for k, (t, path) in enumerate(zip(inputs.extra_teachers, inputs.extra_paths), start=1)],
    )


def data_summary(cfg: Config, inputs: JobInputs, training: FitResult | None = None) -> DataSummary:
    """The training data (name, image size), the sizes of the evaluation's bank and query splits, the separate
    evaluation set (--eval-data) when one is named, and the training images `training`'s last epoch skipped
    as unreadable."""
    skipped = training.history[-1].get("unreadable_images", 0) if training is not None and training.history else 0
    evaluation = None
    if cfg.eval_data is not None:
        data = evaluation_data(cfg.data, cfg.eval_data)
        evaluation = {"name": data.name, "root": data.root, "image_size": data.image_size}
    return DataSummary(name=cfg.data.name, train=len(inputs.train_eval), test=len(inputs.test_eval), image_size=cfg.data.image_size,
                       unreadable_images=skipped, evaluation=evaluation)


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()} CPU threads ({platform.machine()})"


def ensure_dir(path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
