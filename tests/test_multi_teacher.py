"""Several teachers at once (`--teacher A --teacher B`): each with its own projector, method, queue
and weight; the primary's names and keys stay those of a single-teacher run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from ssl_kd.config import Config, load_config
from ssl_kd.distillation import build_objective, build_student
from ssl_kd.errors import UserError
from ssl_kd.teachers import load_teacher

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "distill_ssl.py"
DIGITS_TEACHER = REPO / "ssl_kd" / "assets" / "digits_resnet14t_simclr.pth"


def random_timm_teacher(path: Path) -> Path:
    """A plain timm state dict of a random resnet10t: the second teacher."""
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), path)
    return path


def test_two_teachers_end_to_end(tmp_path: Path) -> None:
    second = random_timm_teacher(tmp_path / "r10t.pth")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--teacher", str(DIGITS_TEACHER), "--teacher", str(second), "--epochs", "1", "--out", str(run),
            "data.subset=48", "train.batch_size=16", "data.num_workers=0", "loss.queue_size=32", "eval.linear_probe=false"]
    result = subprocess.run([sys.executable, str(PIPELINE), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = metrics[-1]
    for name in ("loss", "align", "contrast", "t0/loss", "t1/loss", "t1/align", "t1/contrast"):
        assert name in final, (name, sorted(final))

    report = json.loads((run / "report.json").read_text())
    assert report["teacher"]["arch"] == "resnet14t" and report["teacher"]["source"] == str(DIGITS_TEACHER)
    [extra] = report["extra_teachers"]
    assert extra["arch"] == "resnet10t" and extra["source"] == str(second) and 0.0 <= extra["knn_top1"] <= 100.0
    assert report["config"]["teacher"]["extra"] == [str(second)]
    assert "| teacher 2 (resnet10t) |" in (run / "report.md").read_text()

    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["trainable"]
    assert any(k.startswith("student.extra_projectors.0.") for k in state)
    assert any(k.startswith("queue.") for k in state) and any(k.startswith("queue_1.") for k in state)
    assert any(k.startswith("student.projector.") for k in state)
    assert state["student.extra_projectors.0.3.weight"].shape[0] == 512  # sized to resnet10t's features
    assert not any(k.startswith("teacher") or k.startswith("extra_teachers") for k in state)


def objective_loss(cfg: Config, teachers: list, views: list[torch.Tensor], index: torch.Tensor) -> dict:
    torch.manual_seed(cfg.train.seed)
    student = build_student(cfg, teachers[0], teachers[1:])
    objective = build_objective(cfg, teachers[0], student, 64, teachers[1:])
    with torch.no_grad():
        losses, _ = objective(views, index)
    return losses


def test_weights(tmp_path: Path) -> None:
    overrides = ["loss.queue_size=32", "student.proj_hidden=64"]
    cfg = load_config(None, [*overrides, "teacher.weights=[1,0]"])
    size = cfg.data.image_size
    teachers = [load_teacher(str(DIGITS_TEACHER), image_size=size),
                load_teacher(str(random_timm_teacher(tmp_path / "r10t.pth")), image_size=size)]
    torch.manual_seed(1)
    views = [torch.rand(8, 3, size, size) for _ in range(2)]
    index = torch.arange(8)

    both = objective_loss(cfg, teachers, views, index)
    single_cfg = load_config(None, overrides)
    single_cfg.data = cfg.data
    alone = objective_loss(single_cfg, teachers[:1], views, index)
    assert torch.allclose(both["loss"], alone["loss"]) and torch.allclose(both["t0/loss"], alone["loss"])
    assert torch.allclose(both["align"], alone["align"])
    assert float(both["t1/loss"]) != 0.0  # the second teacher has a loss, weighted by 0

    bad = load_config(None, [*overrides, "teacher.weights=[1,0.5,2]"])
    bad.data = cfg.data
    with pytest.raises(UserError, match="teacher.weights"):
        objective_loss(bad, teachers, views, index)
