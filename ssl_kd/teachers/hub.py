"""timm names: architecture checks, and `timm:` teachers (`timm:vit_small_patch16_224.dino`).

A `timm:` teacher is a timm pretrained tag, downloaded by timm: it needs internet (or a timm / Hugging
Face cache) the first time. The name and tag are checked against timm's registry before anything is
fetched, so a typo is a one-line `UserError` at once, offline too. The model is built headless
(`num_classes=0`); mean, std and input size come from its pretrained cfg.
"""

from __future__ import annotations

import difflib
import logging

import timm
from timm.models import get_pretrained_cfg, split_model_name_tag

from ..errors import UserError
from .teacher import LoadInfo, Teacher, note_resolution

log = logging.getLogger("ssl_kd")

TIMM_PREFIX = "timm:"


def is_timm_tag(path_or_name: object) -> bool:
    """Whether `load_teacher` should treat its argument as a `timm:` name rather than a file."""
    return isinstance(path_or_name, str) and path_or_name.startswith(TIMM_PREFIX)


def check_timm_arch(arch: str) -> str:
    """`arch` if timm knows it, else a `UserError` with up to 3 close names."""
    if timm.is_model(arch):
        return arch
    base, names = split_model_name_tag(arch)[0], timm.list_models()
    longer = sorted((name for name in names if name.startswith(base)), key=lambda name: (len(name), name))
    close = list(dict.fromkeys(longer[:3] + difflib.get_close_matches(base, names, n=3)))[:3]
    suggestion = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"{arch!r} is not a timm model name{suggestion}; see timm.list_models()")


def check_pretrained_tag(name: str) -> str:
    """`name` ("arch" or "arch.tag") if timm has pretrained weights for it, else a `UserError`."""
    arch, tag = split_model_name_tag(name)
    check_timm_arch(arch)
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag (...) for ..."
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tags = timm.list_pretrained(f"{arch}.*")
        what = f"tag '{tag}'" if tag else "pretrained weights"
        choices = f"choose one of: {', '.join(tags[:8])}" if tags else "use a checkpoint file instead"
        raise UserError(f"timm has no {what} for {arch}; {choices}")
    return name


def load_timm_tag(
    path_or_name: str, arch: str | None = None, format: str = "auto", image_size: int | None = None
) -> Teacher:
    """Build `timm.create_model(name, pretrained=True, num_classes=0)` as a frozen `Teacher`."""
    name = path_or_name[len(TIMM_PREFIX) :]
    if format != "auto":
        raise UserError(f"--teacher-format {format} applies to checkpoint files, not to {path_or_name}; drop it")
    check_pretrained_tag(name)
    if arch and split_model_name_tag(arch)[0] != split_model_name_tag(name)[0]:
        raise UserError(f"--teacher-arch is {arch} but the teacher is {path_or_name}; drop --teacher-arch")
    try:
        backbone = timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError) as err:  # no network, no cache, a damaged download
        message = " ".join(str(err).split())[:120]
        raise UserError(
            f"cannot fetch {path_or_name} ({type(err).__name__}: {message}); it needs internet or a timm/Hugging Face "
            "cache; without one, pass a checkpoint file instead"
        ) from None
    cfg = backbone.pretrained_cfg
    size = cfg.get("input_size")
    n = sum(1 for _ in backbone.state_dict())
    log.info("teacher %s: timm pretrained weights, arch %s, %d tensors loaded", path_or_name, name, n)
    return note_resolution(Teacher(
        backbone,
        arch=name,
        mean=cfg.get("mean") or timm.data.IMAGENET_DEFAULT_MEAN,
        std=cfg.get("std") or timm.data.IMAGENET_DEFAULT_STD,
        input_size=int(size[-1]) if size else None,
        image_size=image_size,
        format="timm-pretrained",
        meta={"tag": cfg.get("tag"), "hf_hub_id": cfg.get("hf_hub_id")},
        source=path_or_name,
        info=LoadInfo(arch_origin="timm tag", loaded=n, in_file=n),
    ))
