"""Teachers written by peer tools: lightly-train's Lightning `.ckpt` and its `exported_models/*.pt`, and
the restricted unpickler that reads files pickling foreign objects without running any of their code.

The files are built here in lightly-train's own layout (`ssl_kd/teachers/layouts/lightly_train.py`
says where in its source each part comes from) from a random timm resnet10t: the weights as a
Lightning state dict under `student_embedding_model.wrapped_model._model.*` beside a queue and a
head, and the timm module itself plus wrapper objects of a class only this module defines pickled
under `lightly_train`, so `torch.load(weights_only=True)` refuses the file, as it refuses the real one.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from _models import images, random_model
from torch import nn

from ssl_kd.checkpoint import load_checkpoint
from ssl_kd.errors import UserError, cli_main
from ssl_kd.safe_unpickle import StandIn, load_with_stand_ins
from ssl_kd.teachers import load_teacher
from ssl_kd.teachers.__main__ import main as teachers_main
from ssl_kd.teachers.formats import layout_named, layouts

PREFIX = "student_embedding_model.wrapped_model._model."
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.2, 0.3)


class TimmWrapper(nn.Module):
    """What lightly-train's TIMMModelWrapper holds: the timm model as `_model`, its pool as `_pool`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._model = model
        self._pool = model.global_pool


class EmbeddingModel(nn.Module):
    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped_model = wrapped
        self.embed_head = nn.Identity()


class Distillation(nn.Module):
    """The attributes lightly-train's `distillation` method saves (its DINOv2 teacher is left out of the file)."""

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        self.student_embedding_model = embedding
        self.student_projection_head = nn.Linear(512, 16)
        self.register_buffer("teacher_queue", torch.randn(32, 16))


class Dino(nn.Module):
    """lightly-train's `dino`: the EMA teacher is the model it exports; the student is a copy."""

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.teacher_embedding_model, self.student_embedding_model = teacher, student
        self.teacher_projection_head, self.student_projection_head = nn.Linear(512, 8), nn.Linear(512, 8)


class RunsCode:
    """Unpickled normally, this runs a shell command and Python code that each write a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsPython:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class TaggedTensor(torch.Tensor):
    """A tensor subclass only this module defines."""


def lightning_checkpoint(method: nn.Module, models: dict[str, nn.Module], **extra) -> dict:
    """A Lightning checkpoint as lightly-train's ModelCheckpoint callback completes it."""
    return {
        "epoch": 4, "global_step": 40, "pytorch-lightning_version": "2.5.1",
        "state_dict": dict(method.state_dict()),  # distillation's on_save_checkpoint makes it a plain dict
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "out/checkpoints"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
        "lr_schedulers": [{"last_epoch": 40}],
        "lightly_train": {
            "version": "0.18.0", "date": "2026-08-20T10:00:00+00:00", "models": models,
            "normalize_args": {"mean": list(MEAN), "std": list(STD)}, "license_info": None,
        },
        **extra,
    }


@pytest.fixture(scope="module")
def source() -> nn.Module:
    return random_model("resnet10t", seed=3, num_classes=1000)  # timm's default head, as lightly-train builds it


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory, source: nn.Module) -> Path:
    """A lightly-train output folder: checkpoints/last.ckpt and exported_models/exported_last.pt."""
    out = tmp_path_factory.mktemp("lightly") / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "exported_models").mkdir()
    wrapped = TimmWrapper(source)
    embedding = EmbeddingModel(wrapped)
    models = {"model": source, "wrapped_model": wrapped, "embedding_model": embedding}
    torch.save(lightning_checkpoint(Distillation(embedding), models), out / "checkpoints" / "last.ckpt")
    torch.save(source.state_dict(), out / "exported_models" / "exported_last.pt")
    return out


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def reference_features(model: nn.Module, x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def assert_same_backbone(teacher, model: nn.Module) -> None:
    expected = backbone_state(model)
    loaded = teacher.backbone.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in expected.items())


# --------------------------------------------------------------------------------- lightly-train checkpoint


def test_weights_only_refuses_the_file_and_run_checkpoints_still_do(out: Path) -> None:
    ckpt = out / "checkpoints" / "last.ckpt"
    with pytest.raises(Exception, match="timm.models.resnet.ResNet"):
        torch.load(ckpt, map_location="cpu", weights_only=True)
    with pytest.raises(UserError, match=r"pickles timm\.models\.resnet\.ResNet, which safe loading refuses.*--trust"):
        load_checkpoint(ckpt)  # the plain reader (run checkpoints, exported students) keeps refusing


def test_lightly_train_checkpoint_loads_exactly_without_running_its_code(out: Path, source: nn.Module,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ssl_kd"):
        teacher = load_teacher(out / "checkpoints" / "last.ckpt")
    assert teacher.format == "lightly_train" and teacher.arch == "resnet10t" and teacher.info.arch_origin == "shapes"
    assert not teacher.has_logits  # the never-trained classifier is dropped
    assert_same_backbone(teacher, source)
    x = images(2, 32)
    assert torch.equal(teacher(x).feat, reference_features(source, x))  # the file's normalize_args are used
    assert teacher.meta == {"weights": "student_embedding_model", "lightly_train": "0.18.0", "epochs": 4}
    ignored = teacher.info.ignored
    for entry in ("student_projection_head.* (2 tensors)", "teacher_queue", "classifier fc.* (2 tensors)",
                  "optimizer_states"):
        assert entry in ignored, ignored
    stood_in = teacher.info.stood_in
    assert stood_in[:3] == ["timm.models.resnet.ResNet", "timm.models.resnet.BasicBlock",
                            "timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d"]
    assert f"{__name__}.TimmWrapper" in stood_in and f"{__name__}.EmbeddingModel" in stood_in
    assert "torch.nn.modules.conv.Conv2d" in stood_in
    line = next(r.getMessage() for r in caplog.records if "format lightly_train" in r.getMessage())
    assert "stood in for (pickled, never run): timm.models.resnet.ResNet" in line


def test_dino_checkpoint_gives_the_ema_teacher(tmp_path: Path, source: nn.Module) -> None:
    student = random_model("resnet10t", seed=4, num_classes=1000)
    teacher_embedding, student_embedding = EmbeddingModel(TimmWrapper(source)), EmbeddingModel(TimmWrapper(student))
    models = {"model": source, "wrapped_model": teacher_embedding.wrapped_model, "embedding_model": teacher_embedding}
    torch.save(lightning_checkpoint(Dino(teacher_embedding, student_embedding), models), tmp_path / "dino.ckpt")
    teacher = load_teacher(tmp_path / "dino.ckpt")
    assert teacher.format == "lightly_train" and teacher.meta["weights"] == "teacher_embedding_model"
    assert_same_backbone(teacher, source)
    assert f"student_embedding_model.* ({len(student.state_dict())} tensors)" in teacher.info.ignored
    assert "teacher_projection_head.* (2 tensors)" in teacher.info.ignored


def test_torchvision_wrapper_keys_and_the_simclr_head(tmp_path: Path, source: nn.Module) -> None:
    """lightly-train's torchvision ResNet wrapper keeps the net as `_features` (IntermediateLayerGetter, no fc);
    simclr's `projection_head.layers.*` (lightly's SimCLRProjectionHead: Linear-BN-ReLU-Linear-BN) is the head."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(512, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 8, bias=False), nn.BatchNorm1d(8)).eval()
    for bn in (head[1], head[4]):
        nn.init.normal_(bn.weight), nn.init.normal_(bn.bias), nn.init.normal_(bn.running_mean)
        bn.running_var.uniform_(0.5, 2.0)
    state = {f"embedding_model.wrapped_model._features.{k}": v for k, v in backbone_state(source).items()}
    state |= {f"projection_head.layers.{k}": v for k, v in head.state_dict().items()}
    torch.save({"epoch": 1, "global_step": 9, "state_dict": state}, tmp_path / "simclr.ckpt")  # no pickled objects
    teacher = load_teacher(tmp_path / "simclr.ckpt")
    assert teacher.format == "lightly_train" and teacher.info.stood_in == []
    assert teacher.meta["weights"] == "embedding_model" and "torchvision" in teacher.meta["backbone"]
    assert teacher.info.ignored == [] and teacher.head_info.dim == 8
    assert_same_backbone(teacher, source)
    x = images(2, 32)
    with torch.no_grad():
        out = teacher.with_embedding("head").eval()(x)
        torch.testing.assert_close(out.emb, head(out.feat), rtol=0, atol=1e-6)


def test_detectors_never_raise() -> None:
    odd = [None, 3, [1], {}, {"state_dict": 3}, {"state_dict": {}}, {"state_dict": {PREFIX + "x": "not a tensor"}},
           {"lightly_train": {"normalize_args": 5}, "state_dict": {PREFIX + "conv1.weight": torch.zeros(1)}},
           {"state_dict": StandIn()}, StandIn(), {1: torch.zeros(1)}]
    for layout in (layout for layout in layouts() if layout.name.startswith("lightly_train")):
        for obj in odd:
            assert layout.detect(obj) in (True, False), layout.name
    assert layout_named("lightly_train").detect(odd[7]) and not layout_named("lightly_train").detect(odd[6])


def test_a_file_that_would_run_code_never_does(tmp_path: Path, source: nn.Module) -> None:
    shell_marker, python_marker = tmp_path / "made_by_os_system", tmp_path / "made_by_exec"
    wrapped = TimmWrapper(source)
    models = {"model": source, "wrapped_model": wrapped, "embedding_model": EmbeddingModel(wrapped)}
    path = tmp_path / "evil.ckpt"
    torch.save(lightning_checkpoint(Distillation(models["embedding_model"]), models,
                                    hparams={"hook": RunsCode(shell_marker), "more": [RunsPython(python_marker)]}), path)

    teacher = load_teacher(path)
    assert not shell_marker.exists() and not python_marker.exists()
    assert_same_backbone(teacher, source)  # the tensors are still read
    assert f"{os.system.__module__}.system" in teacher.info.stood_in and "builtins.exec" in teacher.info.stood_in

    obj, _ = load_with_stand_ins(path)
    call = obj["hparams"]["hook"]
    assert isinstance(call, StandIn) and call.stand_in_for == f"{os.system.__module__}.system"
    assert call.args == (f"touch {shell_marker}",)  # recorded, never called
    assert not shell_marker.exists() and not python_marker.exists()

    torch.load(path, map_location="cpu", weights_only=False)  # the full unpickle --trust-checkpoint would do
    assert shell_marker.exists() and python_marker.read_text() == "ran"  # ... does run the file's code


def test_legacy_serialization_and_a_foreign_tensor_subclass(tmp_path: Path, source: nn.Module) -> None:
    tagged = torch.arange(6.0).as_subclass(TaggedTensor)
    torch.save({"state_dict": source.state_dict(), "tagged": tagged, "model": source}, tmp_path / "old.pth",
               _use_new_zipfile_serialization=False)
    obj, stood_in = load_with_stand_ins(tmp_path / "old.pth")
    assert type(obj["tagged"]) is torch.Tensor and torch.equal(obj["tagged"], torch.arange(6.0))
    assert stood_in[:2] == [f"{__name__}.TaggedTensor", "timm.models.resnet.ResNet"]
    assert all(torch.equal(obj["state_dict"][k], v) for k, v in source.state_dict().items())


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_archives_are_never_read_here(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), tmp_path / "scripted.pt")  # code, which torch.load would run
    with pytest.raises(ValueError, match="TorchScript"):
        load_with_stand_ins(tmp_path / "scripted.pt")


def test_trust_is_still_the_full_unpickle(out: Path, source: nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ssl_kd"):
        teacher = load_teacher(out / "checkpoints" / "last.ckpt", trust=True)
    assert teacher.info.stood_in == [] and teacher.format == "lightly_train"
    assert_same_backbone(teacher, source)
    assert any("--trust-checkpoint" in r.getMessage() for r in caplog.records)


def test_trust_needs_the_writer_installed_safe_loading_does_not(tmp_path: Path, source: nn.Module,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue as a new user met it: lightly_train is not installed here, so --trust-checkpoint cannot even
    unpickle the file; safe loading reads it, standing in for lightly-train's classes."""
    name = "lightly_train._models.timm.timm"
    wrapper_class = type("TIMMModelWrapper", (TimmWrapper,), {"__module__": name})
    with monkeypatch.context() as patch:  # lightly_train importable only while the file is written
        for index, part in enumerate(name.split(".")):
            patch.setitem(sys.modules, ".".join(name.split(".")[: index + 1]), types.ModuleType(part))
        sys.modules[name].TIMMModelWrapper = wrapper_class
        wrapped = wrapper_class(source)
        models = {"model": source, "wrapped_model": wrapped, "embedding_model": EmbeddingModel(wrapped)}
        torch.save(lightning_checkpoint(Distillation(models["embedding_model"]), models), tmp_path / "last.ckpt")
    with pytest.raises(UserError, match="cannot be imported here.*drop --trust-checkpoint"):
        load_teacher(tmp_path / "last.ckpt", trust=True)
    teacher = load_teacher(tmp_path / "last.ckpt")
    assert f"{name}.TIMMModelWrapper" in teacher.info.stood_in
    assert_same_backbone(teacher, source)


def test_weights_only_inside_pickled_objects_are_refused(tmp_path: Path, source: nn.Module) -> None:
    torch.save(source, tmp_path / "whole_model.pth")  # torch.save(model): no tensor outside the pickled module
    with pytest.raises(UserError) as info:
        load_teacher(tmp_path / "whole_model.pth")
    message = str(info.value)
    assert "\n" not in message and "pickles timm.models.resnet.ResNet" in message
    assert "holds no tensors outside those objects" in message and "--trust-checkpoint" in message


# --------------------------------------------------------------------------------- exported model


def test_exported_model_is_claimed_by_its_place(out: Path, source: nn.Module, tmp_path: Path) -> None:
    exported = out / "exported_models" / "exported_last.pt"
    teacher = load_teacher(exported)
    assert teacher.format == "lightly_train_export" and teacher.arch == "resnet10t" and not teacher.has_logits
    assert teacher.info.ignored == ["classifier fc.* (2 tensors)"] and teacher.info.stood_in == []
    assert_same_backbone(teacher, source)
    x = images(2, 32)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # not in the file; lightly-train's default too
    assert torch.equal(teacher(x).feat, reference_features(source, x, *imagenet))

    elsewhere = shutil.copy(exported, tmp_path / "resnet.pt")  # renamed, it is any plain timm classifier file
    plain = load_teacher(elsewhere)
    assert plain.format == "timm" and plain.has_logits
    forced = load_teacher(elsewhere, format="lightly_train_export")
    assert forced.format == "lightly_train_export" and not forced.has_logits


def test_inspect_names_what_was_stood_in_for(out: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        cli_main(lambda: teachers_main(["inspect", str(out / "checkpoints" / "last.ckpt")]))
    stdout, err = capsys.readouterr()
    assert exited.value.code == 0, err
    lines = stdout.splitlines()
    assert "format:       lightly_train" in lines
    stood = next(line for line in lines if line.startswith("stood in for:"))
    assert stood.startswith("stood in for: timm.models.resnet.ResNet, ") and f"{__name__}.TimmWrapper" in stood
    assert "read as inert stand-ins, never run" in stood
    assert "meta:         weights=student_embedding_model, lightly_train=0.18.0, epochs=4" in lines
