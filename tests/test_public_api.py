"""The Python API (`import ssl_kd`): a user's own nn.Module as the teacher, distilled and measured end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ssl_kd
from ssl_kd.teachers.teacher import ModuleBackbone

TINY = ["data.subset=64", "train.epochs=1", "train.batch_size=32", "data.num_workers=0", "loss.queue_size=32",
        "eval.knn_ks=[1,20]", "eval.linear_probe=false", "eval.monitor_every=0", "student.proj_hidden=64"]


class SmallCNN(nn.Module):
    """Not a timm model: two convolutions, global pooling, a 24-d feature."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def test_the_public_names_resolve() -> None:
    assert set(ssl_kd.__all__) >= {"Config", "load_config", "Teacher", "load_teacher", "distill", "evaluate"}
    assert callable(ssl_kd.distill) and ssl_kd.Teacher.from_module is not None
    with pytest.raises(AttributeError):
        ssl_kd.not_a_name  # noqa: B018


def test_a_custom_module_distils_end_to_end(tmp_path) -> None:
    torch.manual_seed(0)
    net = SmallCNN()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    teacher = ssl_kd.Teacher.from_module(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert (teacher.feat_dim, teacher.embed_dim, teacher.format, teacher.arch) == (24, 24, "nn.Module", "SmallCNN")
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(teacher(x).emb, net((x - 0.5) / 0.25))  # the teacher applies the mean/std it was given

    config = ssl_kd.load_config(overrides=TINY)
    run = ssl_kd.distill(teacher, config, out=tmp_path / "run")
    assert run.export_path.is_file() and run.fit.steps == 2  # 64 images, batch 32, one epoch
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # frozen: not a weight moved
    scores = ssl_kd.evaluate(run.student, config, name="student")
    teacher_scores = ssl_kd.evaluate(teacher, config, name="teacher")
    for result in (scores, teacher_scores):
        assert isinstance(result, ssl_kd.ModelScores) and {"knn_top1", "knn_top5", "recall_at_1", "map_at_r"} <= set(result.headline())
        assert all(0.0 <= value <= 100.0 for value in result.headline().values())


def test_a_config_in_code_needs_no_set_up(tmp_path) -> None:
    """`Config()` made in code, its data fields left at null: `distill` fills the dataset's defaults itself."""
    config = ssl_kd.Config()
    config.data.subset, config.data.num_workers, config.train.epochs, config.train.batch_size = 64, 0, 1, 32
    config.loss.queue_size, config.student.proj_hidden, config.eval.monitor_every = 32, 64, 0
    assert config.data.image_size is None
    run = ssl_kd.distill(ssl_kd.Teacher.from_module(SmallCNN(), (0.5,) * 3, (0.25,) * 3), config, out=tmp_path / "run")
    assert run.fit.steps == 2 and config.data.image_size is None  # the caller's config is left as it was
    assert ssl_kd.load_config(overrides=TINY).data.image_size == 32  # a loaded config comes resolved


def test_the_module_output_must_be_features() -> None:
    with pytest.raises(ValueError, match=r"returned \(2, 16, 8, 8\) for 2 images; Teacher.from_module needs features \[B, D\]"):
        ssl_kd.Teacher.from_module(nn.Conv2d(3, 16, 3, stride=2, padding=1), (0.5,) * 3, (0.25,) * 3, probe_size=16)
    backbone = ModuleBackbone(nn.Flatten(), num_features=7)
    with pytest.raises(ValueError, match=r"returned \(2, 48\) for 2 images"):
        backbone(torch.rand(2, 3, 4, 4))
    assert ssl_kd.Teacher.from_module(SmallCNN(), (0.5,) * 3, (0.25,) * 3, feat_dim=24).feat_dim == 24


def test_a_method_on_stage_maps_refuses_a_module_without_them(tmp_path) -> None:
    config = ssl_kd.load_config(overrides=[*TINY, "loss.method=fitnet"])
    with pytest.raises(ssl_kd.UserError, match="compares stage feature maps, which the teacher SmallCNN"):
        ssl_kd.distill(ssl_kd.Teacher.from_module(SmallCNN(), (0.5,) * 3, (0.25,) * 3), config, out=tmp_path / "run")


def test_an_output_path_that_is_a_file_is_refused_before_any_work(tmp_path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(ssl_kd.UserError, match="a file of that name exists"):
        ssl_kd.distill(ssl_kd.Teacher.from_module(SmallCNN(), (0.5,) * 3, (0.25,) * 3), ssl_kd.load_config(overrides=TINY),
                       out=tmp_path / "taken")
