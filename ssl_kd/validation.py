"""Value checks the typed config cannot make, run once before any work, so a typo costs seconds.

`ssl_kd.config.load_config` already refuses an unknown key or a value of the wrong type; what it
cannot see is a value of the right type that makes no sense: `train.epochs=-3`, `train.lr=-1`,
`teacher.image_size=0`, `data.num_workers=-1`, a probability of 2, a method that does not exist.
`validate_config(cfg)` checks every such range of a `Config` (the distillation pipelines) or a
`PretrainConfig` (the sections it has) and raises a `UserError` for the first problem found, one line:
`key=value: what is wrong; what to give`. `validate_output_dir(path)` refuses an `--out` that names a
file, or lies where no folder can be made. `check_knn_bank(eval_cfg, bank_size)` is the one check that
needs the data: a k larger than the k-NN bank (the evaluation's train split), called where the bank is
first known (`ssl_kd.job.load_inputs`).

The pipelines call `validate_config` and `validate_output_dir` at the start of their `main`, before
any data, teacher or output folder is touched; nothing here writes anything.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from .config import DLKD_CONTRASTS, EvalConfig
from .errors import UserError

log = logging.getLogger("ssl_kd")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DIST_BACKENDS = ("auto", "nccl", "gloo")  # ssl_kd.parallel.BACKENDS
SEARCH_BACKENDS = ("auto", "torch", "faiss", "hnsw")  # ssl_kd.evaluation.search.BACKENDS
CACHE_DTYPES = ("float16", "float32")  # ssl_kd.teacher_cache.STORAGE_DTYPES
PROBABILITIES = ("hflip", "color_jitter", "grayscale", "blur", "rotation")  # DataConfig augmentation probabilities
DATA_FLAGS = {"data": "--data", "eval_data": "--eval-data"}


def validate_config(cfg: Any) -> None:
    """Raise a `UserError` for the first value of `cfg` (a `Config` or `PretrainConfig`) out of its range."""
    data = getattr(cfg, "data", None)
    if data is not None:
        _check_data(data, "data")
    if getattr(cfg, "eval_data", None) is not None:
        _check_data(cfg.eval_data, "eval_data")
    if getattr(cfg, "train", None) is not None:
        _check_train(cfg.train)
    if getattr(cfg, "eval", None) is not None:
        _check_eval(cfg.eval)
    if getattr(cfg, "loss", None) is not None:
        _check_loss(cfg.loss)
    if getattr(cfg, "teacher", None) is not None:
        _check_teacher(cfg.teacher)
    side = _data_side(data)
    if getattr(cfg, "student", None) is not None:
        _at_least("student.proj_hidden", cfg.student.proj_hidden, 1, "give the projector's hidden width, e.g. 2048")
        _check_model_name("student.arch", cfg.student.arch)
        _check_small_stem(cfg.student.arch, cfg.student.small_stem)
        _check_input_side("student.arch", cfg.student.arch, side, small_stem=cfg.student.small_stem)
    if isinstance(getattr(cfg, "arch", None), str):  # PretrainConfig: the teacher backbone to train
        _check_model_name("arch", cfg.arch)
        _check_input_side("arch", cfg.arch, side)
        _at_least("proj_dim", cfg.proj_dim, 1, "give the projection head's output width, e.g. 128")
        _positive("temperature", cfg.temperature, "give SimCLR's temperature, e.g. 0.2")


def validate_output_dir(path: str | os.PathLike) -> None:
    """Raise a `UserError` when `path` (`--out`) is a file, or no folder can be made or written there.
    Creates nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        fail("out", path, "a file of that name exists, and the run needs a folder there",
             "give --out a folder path (a new one, or a run folder to resume)")
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        fail("out", path, f"{existing} is a file, so no folder can be made under it", "give --out a path outside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "the folder is not writable" if existing == out else f"{existing} is not writable, so the folder cannot be made"
        fail("out", path, what, "give --out a folder you can write to")


def check_knn_bank(eval_cfg: EvalConfig, bank_size: int, data_name: str = "") -> None:
    """Raise a `UserError` when `eval.knn_k` (or a k of `eval.knn_ks` given in place of the default list)
    exceeds the `bank_size` images of the k-NN bank; the default list's larger ks only get a warning
    (they are clipped to the bank, `knn_classify`), so quick looks at a small `data.subset` still run."""
    where = f"the {bank_size} images of the k-NN bank ({data_name + ' ' if data_name else ''}train split)"
    if eval_cfg.knn_k > bank_size:
        fail("eval.knn_k", eval_cfg.knn_k, f"more neighbours than {where}", f"give eval.knn_k={min(20, bank_size)} (at most {bank_size})")
    too_many = [k for k in eval_cfg.knn_ks if k > bank_size]
    if not too_many:
        return
    fitting = [k for k in eval_cfg.knn_ks if k <= bank_size]
    if list(eval_cfg.knn_ks) != EvalConfig().knn_ks:
        fail("eval.knn_ks", _show(eval_cfg.knn_ks), f"k={', '.join(map(str, too_many))} exceed{'s' if len(too_many) == 1 else ''} {where}",
             f"give eval.knn_ks={_show(fitting or [min(20, bank_size)])}")
    log.warning("eval.knn_ks: k=%s exceed %s and are computed as k=%d; set eval.knn_ks=%s to leave them out",
                ", ".join(map(str, too_many)), where, bank_size, _show(fitting))


def fail(key: str, value: Any, problem: str, fix: str):
    """`key=value: problem; fix` as a `UserError`."""
    raise UserError(f"{key}={_show(value)}: {problem}; {fix}")


# --- sections ---------------------------------------------------------------------------------


def _check_data(data: Any, prefix: str) -> None:
    from .data import DATASETS
    from .views import VIEW_MODES

    if data.name not in DATASETS:
        raise UserError(f"unknown dataset '{data.name}'; choose one of: {', '.join(DATASETS)} ({prefix}.name / {DATA_FLAGS[prefix]})")
    _optional_at_least(f"{prefix}.image_size", data.image_size, 1, "give the side in pixels (e.g. 32), or null for the dataset's default")
    _at_least(f"{prefix}.num_workers", data.num_workers, 0, "give 0 (load in the main process) or more loader processes")
    _choice(f"{prefix}.views", data.views, VIEW_MODES)
    if data.min_scale is not None and not 0 < data.min_scale <= 1:
        fail(f"{prefix}.min_scale", data.min_scale, "the smallest crop is a fraction of the image", "give a number above 0, at most 1 (e.g. 0.2)")
    for name in PROBABILITIES:
        value = getattr(data, name)
        if value is not None and not 0 <= value <= 1:
            fail(f"{prefix}.{name}", value, "not a probability", "give a number from 0 to 1, or null for the dataset's default")
    if data.jitter_strength is not None:
        _at_least(f"{prefix}.jitter_strength", data.jitter_strength, 0, "give 0 or more (e.g. 0.5)")
    _at_least(f"{prefix}.rotation_degrees", data.rotation_degrees, 0, "give the largest rotation in degrees, 0 or more (e.g. 15)")
    if not 0 < data.val_fraction < 1:
        fail(f"{prefix}.val_fraction", data.val_fraction, "the held-out test part must be a fraction strictly between 0 and 1",
             "give e.g. 0.2")
    _optional_at_least(f"{prefix}.subset", data.subset, 1, "give the number of images per split to keep, or null for all")
    if not 0 <= data.max_bad_fraction <= 1:
        fail(f"{prefix}.max_bad_fraction", data.max_bad_fraction, "not a fraction", "give a number from 0 to 1 (default 0.01)")


def _check_train(train: Any) -> None:
    _at_least("train.epochs", train.epochs, 1, "give the number of passes over the training data (--epochs N), e.g. 12")
    _at_least("train.batch_size", train.batch_size, 1, "give the images per optimizer step (--batch-size N), e.g. 128")
    _positive("train.lr", train.lr, "give a learning rate above 0, e.g. 2e-3")
    _at_least("train.weight_decay", train.weight_decay, 0, "give 0 (none) or more, e.g. 0.05")
    _at_least("train.warmup_epochs", train.warmup_epochs, 0, "give 0 (no warm-up) or more epochs")
    _at_least("train.grad_clip", train.grad_clip, 0, "give the largest gradient norm, or 0 to not clip")
    _at_least("train.log_every", train.log_every, 0, "give the steps between metrics.jsonl lines, or 0 for epoch lines only")
    _at_least("train.seed", train.seed, 0, "give 0 or more (numpy's generators take no negative seed)")
    _choice("train.precision", train.precision, PRECISIONS)
    _choice("train.dist_backend", train.dist_backend, DIST_BACKENDS)
    _check_device(train.device)
    if train.sync_bn and (train.device == "cpu" or not torch.cuda.is_available()):
        fail("train.sync_bn", "true", "SyncBatchNorm needs CUDA devices (PyTorch's runs on GPUs only)", "set train.sync_bn=false on the CPU")
    _at_least("train.teacher_cache", train.teacher_cache, 0,
              "give the number of cached draws per image (e.g. 10), or 0 for no cache")
    _choice("train.teacher_cache_dtype", train.teacher_cache_dtype, CACHE_DTYPES)
    # checkpoint cadence (ssl_kd.loop), where this version of the config has it
    for name, what in (("checkpoint_every_steps", "steps"), ("checkpoint_every_minutes", "minutes"), ("keep_checkpoints", "checkpoints")):
        if hasattr(train, name):
            _at_least(f"train.{name}", getattr(train, name), 0, f"give 0 (off) or a number of {what}")


def _check_eval(ev: Any) -> None:
    _at_least("eval.knn_k", ev.knn_k, 1, "give the number of neighbours that vote, e.g. 20")
    bad = [k for k in ev.knn_ks if k < 1]
    if bad:
        fail("eval.knn_ks", _show(ev.knn_ks), f"k={', '.join(map(str, bad))} is not a number of neighbours",
             "give positive ks, e.g. eval.knn_ks=[1,10,20,50,200]")
    _positive("eval.knn_temperature", ev.knn_temperature, "give the vote's temperature, e.g. 0.07")
    _at_least("eval.batch_size", ev.batch_size, 1, "give the images per feature-extraction batch, e.g. 256")
    _at_least("eval.monitor_every", ev.monitor_every, 0, "give the epochs between k-NN checks, or 0 for none")
    _choice("eval.search", ev.search, SEARCH_BACKENDS)


def _check_loss(loss: Any) -> None:
    from .distillation import method_names

    if loss.method not in method_names():
        raise UserError(f"unknown method '{loss.method}'; choose one of: {', '.join(method_names())} (--method / loss.method)")
    _at_least("loss.queue_size", loss.queue_size, 1, "give the number of teacher embeddings the queue keeps, e.g. 1024")
    for key, value in _leaves(loss, "loss"):
        name = key.rsplit(".", 1)[-1]
        if "temperature" in name:
            _positive(key, value, "give a temperature above 0")
        elif name == "weight" or name.endswith("_weight") or name in ("beta", "gamma"):
            _at_least(key, value, 0, "give 0 (term off) or more")
    _positive("loss.stkd.mixup_alpha", loss.stkd.mixup_alpha, "give mixup's Beta parameter, e.g. 1.0")
    _choice("loss.dlkd.contrast", loss.dlkd.contrast, DLKD_CONTRASTS)
    _at_least("loss.dlkd.supcon_dim", loss.dlkd.supcon_dim, 1, "give the width of the supcon heads, e.g. 128")
    _choice("loss.compress.queues", loss.compress.queues, (1, 2))
    for key, value in (("loss.compress.momentum", loss.compress.momentum), ("loss.crd.momentum", loss.crd.momentum)):
        if not 0 <= value <= 1:
            fail(key, value, "a momentum is a fraction", "give a number from 0 to 1")
    _at_least("loss.crd.embed_dim", loss.crd.embed_dim, 1, "give the embedding width, e.g. 128")
    _at_least("loss.crd.negatives", loss.crd.negatives, 1, "give the negatives drawn per image, e.g. 4096")
    _at_least("loss.fitnet.hint_stage", loss.fitnet.hint_stage, 0, "give a stage index, 0 or more (e.g. 2)")


def _check_teacher(teacher: Any) -> None:
    from .teachers import layouts  # noqa: F401  (registers every layout)
    from .teachers.formats import layout_named
    from .teachers.hub import is_timm_tag

    _optional_at_least("teacher.image_size", teacher.image_size, 1,
                       "give the side in pixels the teacher sees (e.g. 224), or null for the data's own")
    _choice("teacher.embedding", teacher.embedding, ("auto", "backbone", "head"))
    if teacher.format != "auto":
        layout_named(teacher.format)  # an unknown name: its own one-line error
    for key, path in [("teacher.path", teacher.path), *((f"teacher.extra[{i}]", p) for i, p in enumerate(teacher.extra))]:
        if path is None or is_timm_tag(path):
            continue
        file = Path(path)
        if not file.exists():
            fail(key, path, "the teacher file does not exist", f"check the path (absolute, or relative to {Path.cwd()}) given to --teacher")
        if file.is_dir():
            fail(key, path, "is a directory", "pass the checkpoint file inside it")
    teachers = 1 + len(teacher.extra)
    weights = [float(w) for w in teacher.weights]
    if weights and len(weights) != teachers:
        raise UserError(f"teacher.weights has {len(weights)} values but there are {teachers} teachers; give one per teacher, primary first")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        fail("teacher.weights", _show(teacher.weights), "a teacher's loss weight cannot be negative", "give 0 or more per teacher")
    if weights and not any(weights):
        fail("teacher.weights", _show(teacher.weights), "every teacher weighted 0 leaves nothing to distil", "give at least one weight above 0")


# --- the student's architecture ------------------------------------------------------------------


def _check_model_name(key: str, arch: str) -> None:
    """The message `ssl_kd.students.create_backbone` gives, before any data or teacher is loaded."""
    names = timm.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown model '{arch}' ({key}); {hint}any name from timm.list_models() works")


def _check_small_stem(arch: str, small_stem: bool) -> None:
    """`student.small_stem` on a model without a ResNet stem: the one line `ssl_kd.students` gives, from a
    build on the meta device (no memory, no init), before the data and the teacher load."""
    if small_stem:
        from .backbones import create_backbone

        with torch.device("meta"):
            create_backbone(arch, small_stem=True)


def _check_input_side(key: str, arch: str, side: int | None, small_stem: bool = False) -> None:
    """A model built for one side (it takes timm's `img_size` but no `dynamic_img_size`: BEiT, CaiT, MLP-Mixer,
    ...) refused at any other, by a forward on the meta device (no memory, no compute). Models that take
    any side (CNNs; ViT, Swin and EVA are built with `dynamic_img_size`, `ssl_kd.students`) pass unchecked.
    The student is built as `ssl_kd.distillation.build_student` builds it: without the data's side."""
    from .backbones import _init_parameters, create_backbone

    params = _init_parameters(arch)
    if side is None or "img_size" not in params or "dynamic_img_size" in params:
        return
    try:
        with torch.device("meta"):
            model = create_backbone(arch, small_stem=small_stem)
    except Exception:  # noqa: BLE001  (the meta device cannot build it: the real build will tell)
        return
    try:
        with torch.device("meta"):
            model(torch.empty(2, 3, side, side))
    except Exception as err:  # noqa: BLE001  (timm's own assertion or shape error says what does not fit)
        text = " ".join(str(err).split())
        if "meta" in text.lower() or isinstance(err, NotImplementedError):
            return  # the meta device cannot tell; the real build will
        built = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (None, "its own"))[-1]
        fail(key, arch, f"the model is built for {built} px images, not the data's {side} px ({text[:100]})",
             f"give data.image_size={built}, or a model that takes any side (a CNN such as resnet18, a ViT such as vit_tiny_patch16_224)")


def _data_side(data: Any) -> int | None:
    if data is None:
        return None
    from .data import DATASET_DEFAULTS

    return data.image_size or DATASET_DEFAULTS.get(data.name, {}).get("image_size")


# --- helpers ------------------------------------------------------------------------------------


def _check_device(name: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        fail("train.device", name, "not a device name", "give auto, cpu, cuda or cuda:N")


def _leaves(section: Any, prefix: str) -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every number in a config dataclass, nested sections included."""
    for f in fields(section):
        value = getattr(section, f.name)
        if is_dataclass(value):
            yield from _leaves(value, f"{prefix}.{f.name}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}.{f.name}", value


def _at_least(key: str, value: float, low: float, fix: str) -> None:
    if (isinstance(value, float) and not math.isfinite(value)) or value < low:
        problem = "cannot be negative" if low == 0 else f"must be at least {low}"
        fail(key, value, problem, fix)


def _optional_at_least(key: str, value: float | None, low: float, fix: str) -> None:
    if value is not None:
        _at_least(key, value, low, fix)


def _positive(key: str, value: float, fix: str) -> None:
    if not (math.isfinite(value) and value > 0):
        fail(key, value, "must be above 0" if math.isfinite(value) else "is not a finite number", fix)


def _choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        fail(key, value, "not a known choice", f"give one of: {', '.join(map(str, choices))}")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)
