"""Teacher loading: every supported layout round-trips exactly; bad input is a one-line UserError.

Each test builds its own random timm model and writes it in the layout under test; nothing is
downloaded. resnet18 at 32x32 keeps the whole file fast on a CPU.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import timm
import torch
from _models import images, random_model
from torch import nn

from ssl_kd.embeddings import Embeddings
from ssl_kd.errors import UserError
from ssl_kd.teachers import Teacher, detect_format, load_teacher, save_teacher

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _reference(arch: str = "resnet18", seed: int = 0, num_classes: int = 0) -> nn.Module:
    return random_model(arch, seed=seed, num_classes=num_classes)


_images = images


def _normalise(x: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    mean = torch.tensor(mean or timm.data.IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(std or timm.data.IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _expected(model: nn.Module, x: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """The reference model's pooled, pre-classifier feature of the normalised images."""
    with torch.no_grad():
        return model.forward_head(model.forward_features(_normalise(x, mean, std)), pre_logits=True)


def _assert_same_backbone(teacher: Teacher, model: nn.Module) -> None:
    loaded, reference = teacher.backbone.state_dict(), model.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, reference[key]), key


def _moco_file(tmp_path: Path, model: nn.Module, version: str = "v2", arch: str | None = "resnet18") -> Path:
    """A MoCo v1/v2 training checkpoint in the official layout (facebookresearch/moco main_moco.py)."""
    backbone = model.state_dict()
    dim = model.num_features
    head = (
        {"fc.0.weight": torch.randn(dim, dim), "fc.0.bias": torch.randn(dim),
         "fc.2.weight": torch.randn(128, dim), "fc.2.bias": torch.randn(128)}
        if version == "v2"
        else {"fc.weight": torch.randn(128, dim), "fc.bias": torch.randn(128)}
    )
    state = {f"module.encoder_q.{k}": v for k, v in {**backbone, **head}.items()}
    for k, v in {**backbone, **head}.items():
        state[f"module.encoder_k.{k}"] = v + 1 if v.is_floating_point() else v
    state["module.queue"] = torch.randn(128, 4096)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    ckpt = {"epoch": 200, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.03}]}}
    if arch:
        ckpt["arch"] = arch
    path = tmp_path / f"moco_{version}.pth.tar"
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain resnet18 state dict without arch information, shared by the error tests."""
    path = tmp_path_factory.mktemp("r18") / "r18.pth"
    torch.save(_reference().state_dict(), path)
    return path


# --------------------------------------------------------------------------------- ssl_kd format


@pytest.mark.parametrize("half", [False, True])
def test_ssl_kd_round_trip(tmp_path: Path, half: bool) -> None:
    model = _reference()
    path = save_teacher(tmp_path / "t.pth", model, "resnet18", mean=MEAN, std=STD, input_size=32,
                        meta={"method": "simclr", "epochs": 5, "command": ["a", "b"], "out": tmp_path}, half=half)
    stored = torch.load(path, weights_only=True)
    assert detect_format(stored) == "ssl_kd"
    assert stored["state_dict"]["conv1.weight"].dtype == (torch.float16 if half else torch.float32)
    assert stored["state_dict"]["bn1.num_batches_tracked"].dtype == torch.long

    teacher = load_teacher(path)
    assert (teacher.format, teacher.arch, teacher.embed_dim, teacher.input_size) == ("ssl_kd", "resnet18", 512, 32)
    assert teacher.meta == {"method": "simclr", "epochs": 5, "command": ["a", "b"], "out": str(tmp_path)}
    assert teacher.source == str(path)
    x = _images()
    out = teacher(x)
    assert isinstance(out, Embeddings) and out.logits is None and out.feat is out.emb
    reference = copy.deepcopy(model)
    if half:  # the file holds fp16 copies: the teacher equals the reference rounded to fp16, in fp32
        rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        reference.load_state_dict(rounded)
    assert all(v.dtype == reference.state_dict()[k].dtype for k, v in teacher.backbone.state_dict().items())
    _assert_same_backbone(teacher, reference)
    assert torch.allclose(out.feat, _expected(reference, x, MEAN, STD), atol=1e-6)


def test_ssl_kd_keeps_out_of_range_tensors_in_fp32(tmp_path: Path) -> None:
    model = _reference("resnet10t")
    model.bn1.running_var.fill_(1e6)  # beyond fp16's 65504: must not become inf
    teacher = load_teacher(save_teacher(tmp_path / "t.pth", model, "resnet10t", mean=MEAN, std=STD, input_size=None))
    assert torch.equal(teacher.backbone.bn1.running_var, model.bn1.running_var)
    assert teacher.input_size is None


def test_ssl_kd_bad_values(tmp_path: Path) -> None:
    model = _reference("resnet10t")
    with pytest.raises(UserError, match="teacher std must be 3 numbers > 0"):
        save_teacher(tmp_path / "t.pth", model, "resnet10t", mean=MEAN, std=(0.2, 0.0, 0.3), input_size=32)
    with pytest.raises(UserError, match="'resnet10x' is not a timm model name"):
        save_teacher(tmp_path / "t.pth", model, "resnet10x", mean=MEAN, std=STD, input_size=32)
    record = torch.load(save_teacher(tmp_path / "t.pth", model, "resnet10t", mean=MEAN, std=STD, input_size=32))
    torch.save({**record, "ssl_kd_teacher": 2}, tmp_path / "future.pth")
    with pytest.raises(UserError, match="version 2 is not readable by this ssl_kd.*upgrade ssl_kd"):
        load_teacher(tmp_path / "future.pth")


# --------------------------------------------------------------------------------- MoCo v1 / v2


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_moco_layout(tmp_path: Path, version: str, caplog: pytest.LogCaptureFixture) -> None:
    model = _reference()
    path = _moco_file(tmp_path, model, version)
    assert detect_format(torch.load(path, weights_only=True)) == "moco"
    with caplog.at_level(logging.INFO, logger="ssl_kd"):
        teacher = load_teacher(path)
    assert (teacher.format, teacher.arch) == ("moco", "resnet18")
    assert teacher.meta == {"method": f"moco{version}", "epochs": 200}
    _assert_same_backbone(teacher, model)
    x = _images()
    assert torch.equal(teacher(x).feat, _expected(model, x))

    lines = [r.getMessage() for r in caplog.records if r.name == "ssl_kd"]
    assert len(lines) == 1
    n = len(model.state_dict())
    n_head = 4 if version == "v2" else 2
    for part in ("format moco", "arch resnet18", f"{n} tensors loaded", f"encoder_k.* ({n + n_head} tensors)",
                 f"encoder_q.fc.* ({n_head} tensors", "queue", "queue_ptr", "optimizer"):
        assert part in lines[0], part


def test_moco_without_module_prefix_and_matching_arch(tmp_path: Path) -> None:
    model = _reference()
    path = _moco_file(tmp_path, model)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, path)
    _assert_same_backbone(load_teacher(path, arch="resnet18"), model)


# --------------------------------------------------------------------------------- timm / torchvision


@pytest.mark.parametrize("wrap", ["bare", "module", "state_dict", "model"])
def test_timm_state_dict_with_classifier(tmp_path: Path, wrap: str) -> None:
    model = _reference("resnet10t", num_classes=10)
    state = model.state_dict()
    prefixed = {f"module.{k}": v for k, v in state.items()}
    obj = {
        "bare": state,
        "module": prefixed,
        "state_dict": {"state_dict": prefixed, "epoch": 3, "optimizer": {"state": {}}},
        "model": {"model": state, "epoch": 3},
    }[wrap]
    torch.save(obj, tmp_path / "c.pth")
    assert detect_format(obj) == "timm"
    teacher = load_teacher(tmp_path / "c.pth", arch="resnet10t")
    assert teacher.format == "timm" and teacher.embed_dim == 512
    x = _images()
    assert torch.equal(teacher(x).feat, _expected(model, x))

    assert load_teacher(tmp_path / "c.pth").arch == "resnet10t"  # inferred from the shapes


def test_timm_vit_head_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "vit.pth")
    with caplog.at_level(logging.INFO, logger="ssl_kd"):
        teacher = load_teacher(tmp_path / "vit.pth", arch="vit_tiny_patch16_224")
    assert teacher.embed_dim == 192
    assert "ignored: classifier head.* (2 tensors)" in caplog.text
    x = _images(1, 224)
    assert torch.allclose(teacher(x).feat, _expected(model, x), atol=1e-6)


def test_torchvision_resnet_is_a_timm_state_dict(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    teacher = load_teacher(tmp_path / "tv.pth", arch="resnet18")
    model.fc = nn.Identity()
    x = _images()
    with torch.no_grad():
        expected = model(_normalise(x))
    assert torch.allclose(teacher(x).feat, expected, atol=1e-6)


# --------------------------------------------------------------------------------- frozen


def test_teacher_is_frozen_and_stays_in_eval(tmp_path: Path) -> None:
    model = _reference("resnet10t")
    teacher = load_teacher(save_teacher(tmp_path / "t.pth", model, "resnet10t", mean=MEAN, std=STD, input_size=32))
    assert not any(p.requires_grad for p in teacher.parameters())
    x = _images(4)
    before = teacher(x).emb

    parent = nn.ModuleDict({"teacher": teacher, "student": nn.Linear(3 * 32 * 32, 512)})
    parent.train()
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert parent["student"].training
    after = teacher(x).emb
    assert torch.equal(before, after)  # BatchNorm used running stats, and did not update them

    loss = (parent["student"](x.flatten(1)) - after).pow(2).mean()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert parent["student"].weight.grad is not None


# --------------------------------------------------------------------------------- errors


def test_error_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_teacher(tmp_path / "nope.pth")


def test_error_truncated_file(tmp_path: Path) -> None:
    path = save_teacher(tmp_path / "t.pth", _reference("resnet10t"), "resnet10t", mean=MEAN, std=STD, input_size=32)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_teacher(path)


@pytest.mark.parametrize(
    "text",
    ["PK\x03\x04 looks like a zip but is not\n", "these are not weights\n", "hello", '{"arch": "resnet50"}\n'],
)
def test_error_text_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_teacher(path)


def test_error_wrong_arch_names_both(r18_file: Path) -> None:
    with pytest.raises(UserError, match="its weights' shapes say resnet18 but --teacher-arch is resnet34"):
        load_teacher(r18_file, arch="resnet34")


def test_error_missing_keys(tmp_path: Path) -> None:
    state = {k: v for k, v in _reference().state_dict().items() if not k.startswith("layer4.")}
    torch.save(state, tmp_path / "cut.pth")
    message = r"does not fit timm resnet18: \d+ missing keys \(layer4\.0\..*wrong --teacher-arch\?"
    with pytest.raises(UserError, match=message):
        load_teacher(tmp_path / "cut.pth", arch="resnet18")


def test_error_arch_disagreement(tmp_path: Path) -> None:
    path = _moco_file(tmp_path, _reference())
    with pytest.raises(UserError, match="says its arch is resnet18 but --teacher-arch is resnet50"):
        load_teacher(path, arch="resnet50")


def test_moco_without_arch_field_infers_it_from_shapes(tmp_path: Path) -> None:
    path = _moco_file(tmp_path, _reference(), arch=None)
    assert load_teacher(path).arch == "resnet18"
    assert load_teacher(path, arch="resnet18").arch == "resnet18"
    with pytest.raises(UserError, match="resnet34"):
        load_teacher(path, arch="resnet34")


def test_error_shape_mismatch(tmp_path: Path) -> None:
    state = _reference().state_dict()
    state["layer1.0.bn1.weight"] = torch.ones(32)
    torch.save(state, tmp_path / "odd.pth")
    message = r"shape mismatch at layer1\.0\.bn1\.weight: checkpoint \[32\] vs model \[64\]"
    with pytest.raises(UserError, match=message):
        load_teacher(tmp_path / "odd.pth", arch="resnet18")


def test_error_unknown_arch(r18_file: Path) -> None:
    message = r"'resnet_18' is not a timm model name \(did you mean resnet18.*see timm.list_models\(\)"
    with pytest.raises(UserError, match=message):
        load_teacher(r18_file, arch="resnet_18")


def test_error_unknown_format(tmp_path: Path) -> None:
    junk = {"name": "x", "values": [1, 2, 3], "nested": {"a": "b"}}
    torch.save(junk, tmp_path / "junk.pth")
    with pytest.raises(UserError, match="unrecognised checkpoint layout .*supported layouts: ssl_kd .*moco .*timm"):
        load_teacher(tmp_path / "junk.pth")
    with pytest.raises(UserError):
        detect_format([1, 2])


def test_error_messages_are_one_line(r18_file: Path) -> None:
    for arch in ("resnet34", "resnet_18"):
        with pytest.raises(UserError) as info:
            load_teacher(r18_file, arch=arch)
        assert "\n" not in str(info.value)


def test_resaved_teacher_keeps_model_kwargs_and_stem_surgery(tmp_path: Path) -> None:
    """A loaded teacher written again with save_teacher comes back identical: timm kwargs (a ViT at
    32 px) and the CIFAR-stem rebuild both travel in the ssl_kd file."""
    from ssl_kd.backbones import use_small_stem

    vit = timm.create_model("vit_small_patch16_224", num_classes=0, img_size=32)
    cifar = timm.create_model("resnet18", num_classes=0)
    use_small_stem(cifar, padding=1)
    x = torch.rand(2, 3, 32, 32)
    for name, model in (("vit", vit), ("cifar", cifar)):
        torch.save(model.state_dict(), tmp_path / f"{name}.pth")
        first = load_teacher(tmp_path / f"{name}.pth")
        save_teacher(tmp_path / f"{name}_again.pth", first.backbone, first.arch, mean=[0.5] * 3, std=[0.5] * 3,
                     input_size=32, meta=first.meta, model_kwargs=first.model_kwargs, half=False)
        again = load_teacher(tmp_path / f"{name}_again.pth")
        assert again.model_kwargs == first.model_kwargs
        assert torch.equal(again.backbone(x), model.eval()(x))
