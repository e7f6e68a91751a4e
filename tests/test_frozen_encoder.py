"""`FrozenEncoder`, the one frozen-model base: a student export loads as one (not as a `Teacher`), gives
plain timm's features on its own normalisation, stays frozen and in eval mode, resizes like
`F.interpolate(antialias=True)`, and gives the same feature with stage maps; a `Teacher` is one."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from _models import images, random_model
from torch import nn

import ssl_kd
from ssl_kd.config import StudentConfig
from ssl_kd.distillation import export_student
from ssl_kd.encoder import FrozenEncoder
from ssl_kd.evaluation.models import load_eval_model
from ssl_kd.students import Student
from ssl_kd.teachers import Teacher

ARCH, MEAN, STD = "resnet10t", (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a student export (student_timm.pth + student_timm.json) of a fresh resnet10t."""
    folder = tmp_path_factory.mktemp("student_export")
    export_student(Student(StudentConfig(arch=ARCH, proj_hidden=32), 16, mean=MEAN, std=STD), folder)
    return folder


def _plain_timm(run_dir: Path) -> nn.Module:
    """The exported weights in a hand-built timm model, in eval mode."""
    return timm.create_model(ARCH, num_classes=0, checkpoint_path=str(run_dir / "student_timm.pth")).eval()


def test_a_student_export_is_a_frozen_encoder_not_a_teacher(run_dir: Path) -> None:
    model = load_eval_model(run_dir)
    assert isinstance(model, FrozenEncoder) and not isinstance(model, Teacher)
    assert (model.arch, model.format, model.source) == (ARCH, "ssl_kd student export", str(run_dir / "student_timm.pth"))
    assert model.feat_dim == model.embed_dim == 512 and not model.has_logits and model.image_size is None
    x = images(3)
    out = model(x)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = _plain_timm(run_dir)((x - mean) / std)
    assert torch.equal(out.feat, expected) and torch.equal(out.emb, expected)
    assert out.logits is None and out.maps is None and not out.feat.requires_grad


def test_it_stays_frozen_and_in_eval_mode(run_dir: Path) -> None:
    model = load_eval_model(run_dir)
    x = images(4)
    before = model(x).feat
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not any(m.training for m in model.modules())
    nn.Sequential(model).train(True)  # a parent's train() does not reach it either
    assert not any(m.training for m in model.modules())
    assert torch.equal(model(x).feat, before)  # BatchNorm kept its running statistics
    with pytest.raises(TypeError, match="float images"):
        model((x * 255).to(torch.uint8))


@pytest.mark.parametrize("side", [24, 48])
def test_image_size_resizes_like_antialiased_interpolate(side: int) -> None:
    backbone = random_model(ARCH)
    encoder = FrozenEncoder(backbone, arch=ARCH, mean=MEAN, std=STD, image_size=side)
    x = images(2, size=32)
    resized = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        expected = backbone((resized - encoder.mean) / encoder.std)
    assert torch.equal(encoder(x).feat, expected)


def test_maps_come_from_the_same_pass_with_the_same_feature(run_dir: Path) -> None:
    model = load_eval_model(run_dir)
    x = images(2)
    with_maps = model(x, maps=True)
    assert with_maps.maps and all(m.shape[0] == 2 and m.dim() == 4 for m in with_maps.maps)
    torch.testing.assert_close(with_maps.feat, model(x).feat)


def test_a_teacher_is_a_frozen_encoder_head_included() -> None:
    head = nn.Sequential(nn.Linear(512, 8), nn.Dropout(0.5))
    teacher = Teacher(random_model(ARCH), arch=ARCH, mean=MEAN, std=STD, projection_head=head).train()
    assert isinstance(teacher, FrozenEncoder) and ssl_kd.FrozenEncoder is FrozenEncoder
    assert not any(p.requires_grad for p in teacher.parameters()) and not head.training
