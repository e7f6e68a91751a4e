"""The pieces every distillation pipeline shares: load the inputs, evaluate teacher vs student vs
baselines with one protocol, describe the machine.

`pipelines/distill_ssl.py` (one run) and `pipelines/compare.py` (methods x seeds) both build on it.
The evaluation splits come from `ssl_kd.evaluation.inputs` and every feature from `cached_features`,
as for the `eval/` entry points. Under torchrun every rank calls these functions: all ranks extract
features (each its shard), rank 0 alone scores, and every rank returns rank 0's numbers.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
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
from .evaluation.suite import (
    RawPixels,
    count_parameters,
    evaluate_model,
    images_per_second,
)
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


def evaluate_all(cfg: Config, inputs: JobInputs, student) -> dict:
    """k-NN, retrieval and linear probe of teacher, student, the random-init student and raw pixels; sizes and speeds
    (measured on rank 0 under torchrun). Every rank returns the same report."""
    train_loader, test_loader = eval_loaders(cfg, inputs)
    teacher = inputs.teacher
    random_student = build_student(cfg, teacher)  # same arch and init seed: the student before distillation
    models = {"teacher": teacher, "student": student, "random_student": random_student, "raw_pixels": RawPixels()}
    models.update({f"teacher_{k}": t for k, t in enumerate(inputs.extra_teachers, start=1)})
    results = {name: evaluate_model(model, train_loader, test_loader, cfg.eval, inputs.device, name) for name, model in models.items()}
    speed = on_main_process(lambda: images_per_second({"teacher": teacher, "student": student.backbone},
                                                      next(iter(test_loader))[0][: cfg.eval.batch_size], inputs.device))
    results["teacher"].update(arch=teacher.arch, params=count_parameters(teacher.backbone), images_per_s=speed["teacher"],
                              source=inputs.teacher_path)
    if cfg.loss.method != SSL_SCRATCH:  # the space the method saw the teacher's embedding in (evaluation: the backbone)
        results["teacher"]["embedding"] = embedding_record(in_embedding_space(cfg, teacher))
    results["student"].update(arch=student.arch, params=count_parameters(student.backbone), images_per_s=speed["student"])
    results["random_student"].update(arch=student.arch, params=count_parameters(random_student.backbone))
    results["raw_pixels"].update(arch="pixels")
    extra = []
    for k, (t, path) in enumerate(zip(inputs.extra_teachers, inputs.extra_paths), start=1):
        results[f"teacher_{k}"].update(arch=t.arch, params=count_parameters(t.backbone), source=path)
        if cfg.loss.method != SSL_SCRATCH:
            results[f"teacher_{k}"]["embedding"] = embedding_record(in_embedding_space(cfg, t))
        extra.append(results[f"teacher_{k}"])
    report = {"teacher": results["teacher"], "student": results["student"],
              "baselines": {"random_student": results["random_student"], "raw_pixels": results["raw_pixels"]},
              "protocol": protocol(cfg)}
    if extra:
        report["extra_teachers"] = extra
    return report


def protocol(cfg: Config) -> dict:
    return {
        "knn_k": cfg.eval.knn_k, "knn_temperature": cfg.eval.knn_temperature,
        "knn": f"weighted k-NN (k={cfg.eval.knn_k}, T={cfg.eval.knn_temperature}) on L2-normalized backbone features, train split as the bank",
        "linear": "linear probe: logistic regression (L-BFGS) on cached features, weight decay chosen on 20% of train",
        "retrieval": "retrieval: test queries against the train split by cosine similarity, same class = relevant; "
                     "recall@K = a relevant item among the K nearest (metric-learning convention), MAP@R (Musgrave et al. 2020)",
    }


def data_summary(cfg: Config, inputs: JobInputs, training: FitResult | None = None) -> dict:
    """The training data (name, image size); "train" / "test" are the sizes of the evaluation's bank and
    query splits, the training data's own unless a separate set (--eval-data) is named under "evaluation".
    "unreadable_images": the training images skipped as unreadable (from `training`'s last epoch), when any."""
    summary = {"name": cfg.data.name, "train": len(inputs.train_eval), "test": len(inputs.test_eval), "image_size": cfg.data.image_size}
    skipped = training.history[-1].get("unreadable_images", 0) if training is not None and training.history else 0
    if skipped:
        summary["unreadable_images"] = skipped
    if cfg.eval_data is not None:
        evaluation = evaluation_data(cfg.data, cfg.eval_data)
        summary["evaluation"] = {"name": evaluation.name, "root": evaluation.root, "image_size": evaluation.image_size}
    return summary


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()} CPU threads ({platform.machine()})"


def ensure_dir(path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
