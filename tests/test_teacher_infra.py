"""Teacher infrastructure: safe loading and its allowlist, safetensors, supervised classifier teachers,
teacher-side input resizing, forced layouts, `timm:` names and the pipeline flags that reach them.

Every file is written here from a random timm model; nothing is downloaded (the `timm:` wiring is
checked with `timm.create_model` patched).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from _models import images, random_model
from safetensors.torch import save_file
from torch import nn

from ssl_kd.checkpoint import load_checkpoint
from ssl_kd.config import Config, load_config
from ssl_kd.errors import UserError
from ssl_kd.teachers import load_teacher, save_teacher

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class ForeignConfig:
    """A class only this test module defines: what a training script's config object looks like to us."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


def _model(arch: str = "resnet10t", num_classes: int = 0, seed: int = 0) -> nn.Module:
    return random_model(arch, seed=seed, num_classes=num_classes)


_images = images


def _normalise(x: torch.Tensor, mean=timm.data.IMAGENET_DEFAULT_MEAN, std=timm.data.IMAGENET_DEFAULT_STD) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.fixture(scope="module")
def r10() -> nn.Module:
    return _model()


# --------------------------------------------------------------------------------- safe loading


def test_allowlisted_types_load_by_default(tmp_path: Path, r10: nn.Module) -> None:
    """A timm train.py / DINO-style file: `args` Namespace and numpy scalars load without --trust-checkpoint."""
    args = argparse.Namespace(arch="resnet10t", lr=0.1, epochs=np.int64(100))
    ckpt = {"arch": "resnet10t", "state_dict": r10.state_dict(), "args": args, "metric": np.float64(71.5),
            "best": np.float32(0.5), "seen": np.bool_(True), "version": 2}
    torch.save(ckpt, tmp_path / "train.pth")
    loaded = load_checkpoint(tmp_path / "train.pth")
    assert loaded["args"] == args and loaded["metric"] == np.float64(71.5) and loaded["seen"]
    teacher = load_teacher(tmp_path / "train.pth")
    assert teacher.arch == "resnet10t" and "args" not in teacher.info.ignored  # a namespace holds no weights


@pytest.mark.parametrize("legacy", [False, True])
def test_foreign_class_is_stood_in_or_trusted(tmp_path: Path, r10: nn.Module, legacy: bool,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A plain reader refuses the foreign class; a teacher load reads the weights around it with an inert
    stand-in (tests/test_peer_checkpoints.py has the rest); --trust-checkpoint unpickles it for real."""
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": r10.state_dict(), "arch": "resnet10t", "config": ForeignConfig(0.3)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and f"{__name__}.ForeignConfig" in message and "--trust-checkpoint" in message

    teacher = load_teacher(path)
    assert teacher.arch == "resnet10t" and teacher.info.stood_in == [f"{__name__}.ForeignConfig"]
    assert all(torch.equal(v, r10.state_dict()[k]) for k, v in teacher.backbone.state_dict().items())

    with caplog.at_level(logging.WARNING, logger="ssl_kd"):
        teacher = load_teacher(path, trust=True)
    assert teacher.arch == "resnet10t" and teacher.info.stood_in == []
    assert any("--trust-checkpoint" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_blocked_function_is_refused_and_never_called(tmp_path: Path) -> None:
    marker = tmp_path / "made_by_the_checkpoint"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    torch.save({"weights": torch.ones(2), "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match=r"pickles os\.makedirs, which safe loading refuses.*--trust-checkpoint"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_numpy_arrays_are_not_allowlisted(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1), "rng": np.zeros(3)}, tmp_path / "np.pth")
    with pytest.raises(UserError, match="multiarray._reconstruct, which safe loading refuses"):
        load_checkpoint(tmp_path / "np.pth")


# --------------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_is_exact(tmp_path: Path, r10: nn.Module) -> None:
    state = {k: v.contiguous() for k, v in r10.state_dict().items()}
    state["conv1.0.weight"] = state["conv1.0.weight"].half()  # dtypes survive as stored
    save_file(state, tmp_path / "r10.safetensors")
    loaded = load_checkpoint(tmp_path / "r10.safetensors")
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in state.items())

    save_file({k: v.contiguous() for k, v in r10.state_dict().items()}, tmp_path / "r10f.safetensors")
    teacher = load_teacher(tmp_path / "r10f.safetensors", arch="resnet10t")
    assert teacher.format == "timm" and not teacher.has_logits
    assert all(torch.equal(v, r10.state_dict()[k]) for k, v in teacher.backbone.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "bad.safetensors")


# --------------------------------------------------------------------------------- classifier teachers


@pytest.mark.parametrize("wrap", ["bare", "state_dict"])
def test_supervised_classifier_gives_its_logits(tmp_path: Path, wrap: str) -> None:
    model = _model(num_classes=10)
    state = model.state_dict()
    torch.save(state if wrap == "bare" else {"state_dict": state, "epoch": 90}, tmp_path / "sup.pth")
    teacher = load_teacher(tmp_path / "sup.pth", arch="resnet10t")
    assert teacher.has_logits and teacher.info.ignored == []  # the head is loaded, not ignored
    x = _images()
    out = teacher(x)
    with torch.no_grad():
        expected_logits = model(_normalise(x))
    assert out.logits.shape == (2, 10) and torch.allclose(out.logits, expected_logits, atol=1e-5)
    assert torch.allclose(out.feat, _pooled(model, _normalise(x)), atol=1e-6) and out.emb is out.feat


def test_ssl_heads_never_become_logits(tmp_path: Path, r10: nn.Module) -> None:
    """A MoCo v1 `fc` (128 x 512) is a projector: dropped, no logits."""
    state = {f"module.encoder_q.{k}": v for k, v in r10.state_dict().items()}
    state.update({"module.encoder_q.fc.weight": torch.randn(128, 512), "module.encoder_q.fc.bias": torch.zeros(128),
                  "module.queue": torch.randn(128, 64)})
    torch.save({"arch": "resnet10t", "state_dict": state}, tmp_path / "moco.pth")
    teacher = load_teacher(tmp_path / "moco.pth")
    assert not teacher.has_logits and teacher(_images()).logits is None


# --------------------------------------------------------------------------------- resolution


def test_teacher_resizes_its_input_only_when_asked(tmp_path: Path, r10: nn.Module,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = save_teacher(tmp_path / "t.pth", r10, "resnet10t", mean=MEAN, std=STD, input_size=64, half=False)
    x = _images(size=32)
    as_given = load_teacher(path)  # image_size None: the teacher sees the data's 32 px
    assert as_given.input_size == 64 and as_given.image_size is None
    assert torch.allclose(as_given(x).feat, _pooled(r10, _normalise(x, MEAN, STD)), atol=1e-6)

    with caplog.at_level(logging.WARNING, logger="ssl_kd"):
        at_32 = load_teacher(path, image_size=32)
    assert "trained at 64 px but will see 32 px images; set teacher.image_size=64" in caplog.text
    assert torch.equal(at_32(x).feat, as_given(x).feat)  # already 32 px: no resize

    resized = load_teacher(path, image_size=64)
    big = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(resized(x).feat, _pooled(r10, _normalise(big, MEAN, STD)), atol=1e-5)
    assert not torch.allclose(resized(x).feat, as_given(x).feat, atol=1e-3)


# --------------------------------------------------------------------------------- formats


def test_teacher_format_forces_a_layout(tmp_path: Path, r10: nn.Module) -> None:
    path = save_teacher(tmp_path / "t.pth", r10, "resnet10t", mean=MEAN, std=STD, input_size=32, half=False)
    assert load_teacher(path).format == "ssl_kd"
    forced = load_teacher(path, format="timm")  # read as a plain state dict: the file's mean/std are not used
    assert forced.format == "timm" and forced.arch == "resnet10t"
    assert torch.allclose(forced.mean.flatten(), torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN))
    torch.save(r10.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(UserError, match=r"plain.pth: not a moco checkpoint \(a dict with keys conv1.*layouts that match it: timm"):
        load_teacher(tmp_path / "plain.pth", arch="resnet10t", format="moco")
    with pytest.raises(UserError, match="unknown teacher format 'nope'; choose one of: auto, .*moco.*timm"):
        load_teacher(tmp_path / "not_even_there.pth", format="nope")  # checked before the file is read


# --------------------------------------------------------------------------------- timm: names


def test_timm_names_are_checked_offline() -> None:
    with pytest.raises(UserError, match="timm has no tag 'nope' for resnet10t; choose one of: resnet10t.c3_in1k"):
        load_teacher("timm:resnet10t.nope")
    with pytest.raises(UserError, match="'resnet_10t' is not a timm model name"):
        load_teacher("timm:resnet_10t.c3_in1k")
    with pytest.raises(UserError, match="--teacher-format moco applies to checkpoint files"):
        load_teacher("timm:resnet10t.c3_in1k", format="moco")


def test_timm_tag_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    create = timm.create_model

    def offline_create(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        return create(name, pretrained=False, **kwargs)  # same model and pretrained cfg, random weights

    monkeypatch.setattr(timm, "create_model", offline_create)
    teacher = load_teacher("timm:resnet10t.c3_in1k", image_size=32)
    assert calls == [("resnet10t.c3_in1k", True, {"num_classes": 0})]
    assert (teacher.arch, teacher.format, teacher.input_size, teacher.image_size) == ("resnet10t.c3_in1k", "timm-pretrained", 176, 32)
    assert torch.allclose(teacher.mean.flatten(), torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN))
    assert not teacher.has_logits and teacher(_images()).feat.shape == (2, 512)

    def no_network(name, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(UserError, match="cannot fetch timm:resnet10t.c3_in1k .*needs internet"):
        load_teacher("timm:resnet10t.c3_in1k")


# --------------------------------------------------------------------------------- config and pipeline flags


def _pipeline_config(argv: list[str]) -> Config:
    from ssl_kd.cli import config_from_args
    from ssl_kd.commands import distill as module

    return config_from_args(module.parse_args(argv), module.FLAGS, Config)


def test_pipeline_teacher_flags_reach_the_config() -> None:
    cfg = _pipeline_config(["--teacher", "t.pth", "--teacher-format", "moco", "--trust-checkpoint", "teacher.image_size=224"])
    assert (cfg.teacher.format, cfg.teacher.trust_checkpoint, cfg.teacher.image_size) == ("moco", True, 224)
    default = _pipeline_config([])
    assert (default.teacher.format, default.teacher.trust_checkpoint, default.teacher.image_size) == ("auto", False, None)
    with pytest.raises(UserError, match="teacher.image_size"):
        load_config(None, ["teacher.image_size=big"])
