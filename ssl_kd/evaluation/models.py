"""Any model to evaluate, from one path: a distilled student or a teacher checkpoint of any format.

    load_eval_model("runs/r18")                          # a run directory: its student_timm.pth
    load_eval_model("runs/r18/student_timm.pth")         # the exported student (+ student_timm.json beside it)
    load_eval_model("moco_v2_800ep_pretrain.pth.tar")    # a teacher file: every layout load_teacher reads

Every result is a `FrozenEncoder` (`ssl_kd/encoder.py`: eval mode, no autograd) that takes images in
[0, 1], applies its own mean/std and returns `Embeddings` whose `.feat` is the pooled backbone
feature, so the evaluation entry points measure teacher and student with the same code. A teacher
file gives a `Teacher` (a `FrozenEncoder` with the file's head, classifier and load record); a student
export gives a plain `FrozenEncoder` (format "ssl_kd student export", source the .pth path), rebuilt
exactly as it was trained: `timm.create_model(timm_name, num_classes=0)` (plus the small-stem surgery
when the JSON says so), strict state-dict load, and the mean/std the student normalized with.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..backbones import create_backbone
from ..checkpoint import load_checkpoint
from ..encoder import FrozenEncoder
from ..errors import UserError
from ..teachers import load_teacher

STUDENT_FILE, STUDENT_INFO = "student_timm.pth", "student_timm.json"


def student_info_path(path: Path) -> Path | None:
    """The JSON that describes the student export `path` (X.pth -> X.json beside it), if there is one."""
    candidate = path.with_suffix(".json")
    return candidate if candidate.is_file() else None


def load_eval_model(path: str | Path, *, arch: str | None = None, format: str = "auto", trust: bool = False,
                    image_size: int | None = None) -> FrozenEncoder:
    """The frozen model behind `path` (a run directory, a student export or a teacher checkpoint); a
    teacher checkpoint or `timm:NAME.TAG` gives a `Teacher`, a student export a plain `FrozenEncoder`."""
    if str(path).startswith("timm:"):
        return load_teacher(str(path), arch, format, trust=trust, image_size=image_size)
    path = Path(path)
    if path.is_dir():
        if not (path / STUDENT_FILE).is_file():
            raise UserError(f"{path} is a directory without {STUDENT_FILE}; pass a finished run directory or a checkpoint file")
        path = path / STUDENT_FILE
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run directory, a student_timm.pth or a teacher checkpoint")
    info_path = student_info_path(path) if path.suffix == ".pth" else None
    if info_path is not None and format == "auto":
        return load_student_export(path, info_path, image_size=image_size)
    return load_teacher(path, arch, format, trust=trust, image_size=image_size)


def load_student_export(path: Path, info_path: Path, *, image_size: int | None = None) -> FrozenEncoder:
    """A `student_timm.pth` rebuilt from its JSON (timm name, small stem, mean/std) as a `FrozenEncoder`."""
    try:
        info = json.loads(info_path.read_text())
        name, small_stem, mean, std = info["timm_name"], bool(info.get("small_stem", False)), info["mean"], info["std"]
    except (ValueError, KeyError) as err:
        raise UserError(f"{info_path} is not a student export description ({err}); re-export the run or pass --teacher-format") from None
    backbone = create_backbone(name, small_stem=small_stem)
    state = load_checkpoint(path)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit {name} from {info_path} ({' '.join(str(err).split())[:160]}); "
                        "keep the .pth and .json of one export together") from None
    return FrozenEncoder(backbone, arch=name, mean=mean, std=std, image_size=image_size, format="ssl_kd student export",
                         source=str(path))
