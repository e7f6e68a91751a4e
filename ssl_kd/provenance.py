"""The reproducibility record of a run: what it takes to run it again and get the same student.

`reproducibility_record(cfg)` holds the resolved config, the seed, the number of processes and the
images each takes per step, the versions of the packages that shape the numbers (torch, torchvision,
timm, lightly, faiss, numpy, scikit-learn), Python's, ssl_kd's own, the sha256 of every teacher file,
and the command line. It goes into every checkpoint (`record`) and into report.json
("reproducibility") and report.md.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from importlib import metadata
from pathlib import Path

from .config import Config, to_dict
from .defaults import default_teacher

PACKAGES = ("torch", "torchvision", "timm", "lightly", "faiss-cpu", "faiss-gpu-cu12", "numpy", "scikit-learn", "ssl_kd")
_CHUNK = 1 << 20


def reproducibility_record(cfg: Config, argv: list[str] | None = None) -> dict:
    """The record for `cfg` (call it after `train.world_size` and `train.batch_per_process` are set)."""
    teachers = [str(cfg.teacher.path or default_teacher(cfg.data.name)), *map(str, cfg.teacher.extra)]
    return {
        "config": to_dict(cfg),
        "seed": cfg.train.seed,
        "world_size": cfg.train.world_size,
        "batch_per_process": cfg.train.batch_per_process,
        "versions": {"python": platform.python_version(), **package_versions()},
        "teacher_sha256": {path: file_sha256(path) for path in teachers},
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
    }


def package_versions() -> dict[str, str]:
    """Installed versions of `PACKAGES` (those that are installed)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def file_sha256(path: str) -> str | None:
    """The sha256 of a local file; None for what is not one (a `timm:NAME` download)."""
    file = Path(path)
    if not file.is_file():
        return None
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_line(record: dict) -> str:
    """One Markdown line for report.md."""
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items())
    hashes = ", ".join(f"`{Path(p).name}` {h[:12] if h else '(not a local file)'}" for p, h in record.get("teacher_sha256", {}).items())
    return (f"Reproducibility: seed {record.get('seed')}, {record.get('world_size')} process(es) x {record.get('batch_per_process')} "
            f"images a step; {versions}; teacher sha256 {hashes}; command `{' '.join(record.get('command', []))}`.")
