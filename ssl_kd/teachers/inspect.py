"""What a teacher file holds and how it loads: `python -m ssl_kd.teachers inspect FILE`.

`inspect_teacher` does the same strict load as training (`load_teacher`), so a file it accepts is a
file `pipelines/distill_ssl.py` will load, and returns a plain dict; `format_info` turns that dict
into the lines the command prints. A file read with inert stand-ins for pickled foreign objects
(`ssl_kd/safe_unpickle.py`) gets a `stood in for:` line naming every class and function stood in for.
The `projection head:` line says whether the file carries an SSL projection head that
`teacher.embedding=head` can use, its layers and its width.
"""

from __future__ import annotations

import os
from typing import Any

from .load import load_teacher

ARCH_ORIGINS = {
    "file": "from the file's own arch field",
    "shapes": "inferred from the weights' shapes",
    "flag": "from --teacher-arch",
    "timm tag": "from the timm name",
}


def inspect_teacher(
    path_or_name: str | os.PathLike, arch: str | None = None, format: str = "auto", *, trust: bool = False
) -> dict[str, Any]:
    """Load the teacher strictly (a `UserError` if it does not load) and describe it."""
    teacher = load_teacher(path_or_name, arch=arch, format=format, trust=trust)
    info = teacher.info
    return {
        "source": teacher.source,
        "format": teacher.format,
        "arch": teacher.arch,
        "arch_origin": info.arch_origin,
        "embed_dim": teacher.embed_dim,
        "tensors_loaded": info.loaded,
        "tensors_in_file": info.in_file,
        "ignored": list(info.ignored),
        "stood_in": list(getattr(info, "stood_in", [])),
        "mean": [round(v, 4) for v in teacher.mean.flatten().tolist()],
        "std": [round(v, 4) for v in teacher.std.flatten().tolist()],
        "input_size": teacher.input_size,
        "has_logits": teacher.has_logits,
        "num_classes": int(getattr(teacher.backbone, "num_classes", 0)) if teacher.has_logits else 0,
        "parameters": sum(p.numel() for p in teacher.backbone.parameters()),
        "meta": dict(teacher.meta),
        "projection_head": _head(teacher),
    }


def _head(teacher) -> dict[str, Any] | None:
    """The projection head the teacher carries ({name, source, layers, dim}), {"problem"} when the file's
    cannot be built, else None."""
    head = getattr(teacher, "head_info", None)
    if head is not None:
        return {"name": head.name, "source": head.source, "layers": head.layers, "dim": head.dim}
    problem = getattr(teacher.info, "head_problem", None)
    return {"problem": problem} if problem else None


def head_line(head: dict[str, Any] | None) -> str:
    """`present (Linear 2048->2048, ReLU, Linear 2048->128; 128-d): MoCo v2 fc MLP, encoder_q.fc.*` or `none in this file`."""
    if head is None:
        return "none in this file"
    if "problem" in head:
        return f"in the file but not usable ({head['problem']})"
    return f"present ({head['layers']}; {head['dim']}-d): {head['name']}, {head['source']}; teacher.embedding=head uses it"


def format_info(info: dict[str, Any]) -> list[str]:
    """The report as aligned `name: value` lines."""
    logits = f"yes ({info['num_classes']} classes)" if info["has_logits"] else "no"
    rows = [
        ("file", info["source"]),
        ("format", info["format"]),
        ("arch", f"{info['arch']} ({ARCH_ORIGINS.get(info['arch_origin'], info['arch_origin'])})"),
        ("embed dim", info["embed_dim"]),
        ("tensors", f"{info['tensors_loaded']} loaded of {info['tensors_in_file']} in the file"),
        ("ignored", ", ".join(info["ignored"]) or "nothing"),
    ]
    if info.get("stood_in"):
        names = info["stood_in"]
        rows.append(("stood in for", f"{', '.join(names)} ({len(names)} pickled, read as inert stand-ins, never run)"))
    rows += [
        ("mean", _triple(info["mean"])),
        ("std", _triple(info["std"])),
        ("input size", f"{info['input_size']} px" if info["input_size"] else "not recorded (teacher sees the data's size)"),
        ("logits", logits),
        ("projection head", head_line(info.get("projection_head"))),
        ("parameters", f"{info['parameters']:,} ({info['parameters'] / 1e6:.1f} M)"),
    ]
    if info["meta"]:
        rows.append(("meta", ", ".join(f"{k}={v}" for k, v in info["meta"].items())))
    # aligned on the other names: the long "projection head:" label leaves the familiar columns where they were
    width = max(len(name) for name, _ in rows if name != "projection head") + 1
    return [f"{name + ':':<{width}} {value}" for name, value in rows]


def _triple(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
