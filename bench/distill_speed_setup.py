"""What bench/distill_speed.py measures on: each config's teacher, data and loader, built as
`ssl_kd.distillation.distill` builds them, the bare step's loss, and the configs' overrides."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from ssl_kd.config import Config  # noqa: E402
from ssl_kd.data import build_dataset, resolve_data_config  # noqa: E402
from ssl_kd.views import views_transform  # noqa: E402
from ssl_kd.loaders import make_loader  # noqa: E402
from ssl_kd.defaults import default_teacher  # noqa: E402
from ssl_kd.distillation import build_objective, build_student  # noqa: E402
from ssl_kd.losses.base import DistillMethod  # noqa: E402
from ssl_kd.teachers import load_teacher  # noqa: E402


class FeatureRegression(DistillMethod):
    """The bare step's loss: MSE between the student's projection and the teacher's embedding (no queue)."""

    def forward(self, student, teacher, queue, ctx) -> dict:
        return {"loss": F.mse_loss(student.emb, teacher.emb.detach())}


@dataclass
class Setup:
    """One config's teacher, data and loader, built as `ssl_kd.distillation.distill` builds them."""

    cfg: Config
    device: torch.device
    teacher: nn.Module
    dataset: object
    loader: object
    extra: dict = field(default_factory=dict)


def build_setup(cfg: Config, device: torch.device) -> Setup:
    torch.manual_seed(cfg.train.seed)
    data = resolve_data_config(cfg.data)
    path = cfg.teacher.path or default_teacher(cfg.data.name)
    teacher = load_teacher(path, arch=cfg.teacher.arch, image_size=cfg.teacher.image_size or data.image_size).to(device)
    dataset = build_dataset(cfg.data, "train", views_transform(cfg.data))
    loader = make_loader(dataset, cfg.train.batch_size, train=True, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                         pin_memory=device.type == "cuda")
    return Setup(cfg, device, teacher, dataset, loader)


def fresh_objective(setup: Setup) -> nn.Module:
    """The config's distillation objective with a newly initialised student (and method, queue)."""
    return build_objective(setup.cfg, setup.teacher, build_student(setup.cfg, setup.teacher), len(setup.dataset))


class BareStep:
    """The floor of a distillation step: teacher forward + student forward (backbone + projector) + an MSE to
    the teacher's embedding + backward + AdamW step, on one batch already in memory; no loader, method,
    queue, clipping or logging; the config's autocast and memory format."""

    def __init__(self, setup: Setup):
        from ssl_kd.loop import autocast_context, build_optimizer, prepare_model, use_channels_last
        from ssl_kd.objective import DistillObjective

        cfg, device = setup.cfg, setup.device
        self.device, self.batch = device, cfg.train.batch_size
        views, _labels, index = next(iter(setup.loader))
        channels_last = use_channels_last(cfg.train, device)
        self.views = [v.to(device).contiguous(memory_format=torch.channels_last) if channels_last else v.to(device) for v in views]
        self.index = index.to(device)
        self.objective = DistillObjective(setup.teacher, build_student(cfg, setup.teacher), FeatureRegression(), None)
        self.model = prepare_model(self.objective, cfg.train, device)
        self.optimizer = build_optimizer(self.objective.trainable, cfg.train)
        self.autocast, _ = autocast_context(cfg.train.precision, device)

    def __call__(self, steps: int) -> float:
        """`steps` bare steps; returns images per second."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            with self.autocast:
                losses, _state = self.model(self.views, self.index)
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            self.optimizer.step()
        sync(self.device)
        return steps * self.batch / (time.perf_counter() - start)


def random_teacher_file(arch: str, folder: Path) -> Path:
    import timm

    path = folder / f"random_{arch}.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(timm.create_model(arch, num_classes=0).state_dict(), path)
    return path


def cifar_train_root(data_root: str, scratch: Path) -> Path:
    """A folder holding train/<class>/*.jpg: `data_root` itself, or the zip unpacked once under `scratch`."""
    root = Path(data_root)
    if root.is_dir():
        return root if (root / "train").is_dir() else root.parent if root.name == "train" else root
    if not zipfile.is_zipfile(root):
        raise SystemExit(f"--data-root {root} is neither a folder nor a zip of train/<class>/*.jpg")
    out = scratch / root.stem
    if not (out / ".complete").exists():
        print(f"unpacking {root} into {out} (once; outside the project)", flush=True)
        with zipfile.ZipFile(root) as archive:
            archive.extractall(out)
        (out / ".complete").touch()
    return out


def config_overrides(name: str, args, teacher_dir: Path) -> list[str]:
    common = ["train.resume=false"]
    if name == "digits":
        return common
    if name == "natural64":
        root = cifar_train_root(args.data_root, Path(tempfile.gettempdir()) / "ssl_kd_distill_speed")
        return common + ["data.name=imagefolder", f"data.root={root}", "data.image_size=64", f"data.subset={args.subset}",
                         f"teacher.path={random_teacher_file('resnet18', teacher_dir)}", "teacher.arch=resnet18"]
    raise SystemExit(f"unknown config {name!r}; choose from digits, natural64")


def describe(setup: Setup) -> str:
    cfg, data = setup.cfg, resolve_data_config(setup.cfg.data)
    return (f"{cfg.data.name} {len(setup.dataset)} images at {data.image_size} px, teacher {setup.teacher.arch} "
            f"({setup.teacher.embed_dim}-d) -> student {cfg.student.arch}, method {cfg.loss.method}, batch "
            f"{cfg.train.batch_size} x 2 views, {len(setup.loader)} steps/epoch, data.num_workers={cfg.data.num_workers}, "
            f"precision {cfg.train.precision}, compile {cfg.train.compile}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"

