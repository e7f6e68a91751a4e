"""load_eval_model: a student export (small stem included) is rebuilt exactly, teacher files of any layout
load through load_teacher, and bad paths or a mismatched export are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from ssl_kd.config import StudentConfig
from ssl_kd.distillation import export_student
from ssl_kd.errors import UserError
from ssl_kd.evaluation.models import load_eval_model
from ssl_kd.students import Student


@pytest.mark.parametrize("arch, small_stem", [("resnet10t", False), ("resnet18", True)])
def test_student_export_gives_the_students_features(tmp_path: Path, arch: str, small_stem: bool) -> None:
    student = Student(StudentConfig(arch=arch, small_stem=small_stem, proj_hidden=32), 16, mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for module in student.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    export_student(student, tmp_path)
    images = torch.rand(3, 3, 32, 32)
    student.eval()
    for path in (tmp_path, tmp_path / "student_timm.pth"):
        model = load_eval_model(path)
        assert model.arch == arch and not any(p.requires_grad for p in model.parameters())
        assert torch.equal(model(images).feat, student(images).feat)


def test_teacher_files_go_through_load_teacher(tmp_path: Path) -> None:
    encoder = timm.create_model("resnet18", num_classes=0)
    state = {f"module.encoder_q.{k}": v for k, v in encoder.state_dict().items()}  # MoCo v1/v2 layout
    torch.save({"arch": "resnet18", "state_dict": state}, tmp_path / "moco.pth")
    model = load_eval_model(tmp_path / "moco.pth")
    assert model.arch == "resnet18" and model.format == "moco"
    encoder.eval()
    images = torch.rand(2, 3, 32, 32)
    expected = encoder((images - model.mean) / model.std)
    assert torch.allclose(model(images).feat, expected, atol=1e-6)


def test_bad_paths_and_mismatched_exports(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_eval_model(tmp_path / "nothing.pth")
    with pytest.raises(UserError, match="without student_timm.pth"):
        load_eval_model(tmp_path)
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "student_timm.pth")
    (tmp_path / "student_timm.json").write_text(json.dumps({"timm_name": "resnet18", "mean": [0.5] * 3, "std": [0.5] * 3}))
    with pytest.raises(UserError, match="does not fit resnet18"):
        load_eval_model(tmp_path)
    (tmp_path / "student_timm.json").write_text("{}")
    with pytest.raises(UserError, match="is not a student export description"):
        load_eval_model(tmp_path)
