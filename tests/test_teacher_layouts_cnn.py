"""CNN teacher layouts: SimCLR v1/v2, Spijkervet, Lightning (solo-learn, lightly), SwAV, BYOL, SimSiam, timm train.py.

Each test builds a random timm (or torchvision) ResNet, writes it with the exact key names and
nesting of the official release (cited per test), loads it with `load_teacher` and checks that every
backbone tensor and the pooled feature equal the reference. Nothing is downloaded. resnet18 at 32x32
everywhere; resnet50 (1x, and one 2x) only for the ResNet-50-only SimCLR conversions. Architecture
inference: end to end for resnet18/50, on `meta`-device state dicts for the rest (resnet34, ...).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from ssl_kd.errors import UserError
from ssl_kd.teachers import Teacher, detect_format, load_teacher
from ssl_kd.teachers.formats import infer_arch, layouts
from ssl_kd.teachers.layouts.resnet_arch import resnet_recipe

NO_NORM = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _reference(arch: str = "resnet18", num_classes: int = 0, seed: int = 0, small_stem: int | None = None) -> nn.Module:
    """A random timm ResNet with non-trivial BN statistics; `small_stem=p`: the CIFAR stem SSL repos
    patch in (conv1 3x3, stride 1, padding p; max-pool removed)."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    if small_stem is not None:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=small_stem, bias=False)
        model.maxpool = nn.Identity()
    return _randomise_bn(model)


def _wide_reference(width: int, device: str = "cpu") -> nn.Module:
    """SimCLR's ResNet-50 Wx (tonylins resnet_wider.py): every width times W, the 7x7 stem included."""
    torch.manual_seed(0)
    stem = 64 * width
    channels = tuple(c * width for c in (64, 128, 256, 512))
    model = timm.create_model("resnet50", pretrained=False, num_classes=1000, channels=channels, device=device)
    block = model.layer1[0]
    model.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False, device=device)
    model.bn1 = nn.BatchNorm2d(stem, device=device)
    block.conv1 = nn.Conv2d(stem, block.conv1.out_channels, 1, bias=False, device=device)
    block.downsample[0] = nn.Conv2d(stem, block.downsample[0].out_channels, 1, bias=False, device=device)
    return _randomise_bn(model)


def _randomise_bn(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if hasattr(model, "forward_head"):  # timm: the pooled pre-logits feature, with or without a head
            return model.forward_head(model.forward_features(x), pre_logits=True)
        return model(x)  # torchvision with fc = Identity


def _assert_loaded(teacher: Teacher, model: nn.Module) -> None:
    """Every teacher tensor equals the reference's, and the backbones compute the same feature."""
    reference = model.state_dict()
    for key, value in teacher.backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(_features(teacher.backbone, x), _features(model, x), atol=1e-6)


def _head(dim: int, *indices: int, prefix: str) -> dict[str, torch.Tensor]:
    """Random Linear/BN tensors at `prefix.{i}.*` (projector/predictor stand-ins)."""
    return {f"{prefix}.{i}.{p}": torch.randn(dim, dim) if p == "weight" else torch.randn(dim)
            for i in indices for p in ("weight", "bias")}


def _load(tmp_path: Path, obj, caplog: pytest.LogCaptureFixture, name: str = "ckpt.pth", **kwargs):
    """Save `obj` as `name`, load it as a teacher; the teacher and its one INFO line."""
    torch.save(obj, tmp_path / name)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ssl_kd"):
        teacher = load_teacher(tmp_path / name, **kwargs)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher ")]
    assert len(lines) == 1
    return teacher, lines[0]


def _norm(teacher: Teacher) -> tuple:
    return tuple(teacher.mean.flatten().tolist()), tuple(teacher.std.flatten().tolist())


@pytest.fixture(scope="module")
def r50() -> nn.Module:
    return _reference("resnet50", num_classes=1000)


# ------------------------------------------------------------------------------ SimCLR v1 / v2, Spijkervet


def _downsample_first(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors with each block's `downsample.*` listed before its convs (tonylins, Separius)."""
    blocks: dict[str, dict] = {}
    for key, value in state_dict.items():
        match = re.match(r"layer\d\.\d+\.", key)
        blocks.setdefault(match.group(0) if match else key, {})[key] = value
    first = [sorted(group.items(), key=lambda kv: ".downsample." not in kv[0]) for group in blocks.values()]
    return {k: v for group in first for k, v in group}


def test_simclr_v1_tonylins_1x(tmp_path: Path, r50: nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    """tonylins/simclr-converter: {'state_dict'} in resnet_wider.py order (downsample first), TF fc head."""
    teacher, line = _load(tmp_path, {"state_dict": _downsample_first(r50.state_dict())}, caplog, "resnet50-1x.pth")
    assert (teacher.format, teacher.arch, teacher.meta["width"]) == ("simclr-v1", "resnet50", "1x")
    assert _norm(teacher) == NO_NORM  # SimCLR (TF) trains on [0, 1] images, not mean/std normalised
    assert not teacher.has_logits and "supervised head fc.* (2 tensors)" in line
    _assert_loaded(teacher, r50)
    assert detect_format({"state_dict": r50.state_dict()}) == "timm"  # torchvision order, 64-wide stem


def test_simclr_v1_tonylins_2x_wide(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = _wide_reference(2)
    teacher, _ = _load(tmp_path, {"state_dict": _downsample_first(model.state_dict())}, caplog, arch="resnet50")
    assert (teacher.format, teacher.arch, teacher.meta["width"]) == ("simclr-v1", "resnet50", "2x")
    assert teacher.embed_dim == 4096
    assert teacher.backbone.conv1.weight.shape == (128, 3, 7, 7)
    _assert_loaded(teacher, model)


_SEPARIUS = (  # torchvision name -> Separius resnet.py name, inside a block (projection registered first)
    ("downsample.0.", "projection.shortcut."), ("downsample.1.", "projection.bn.0."), ("conv1.", "net.0."),
    ("bn1.", "net.1.0."), ("conv2.", "net.2."), ("bn2.", "net.3.0."), ("conv3.", "net.4."), ("bn3.", "net.5.0."),
)


def _separius_name(key: str) -> str:
    """Separius/SimCLRv2-Pytorch resnet.py names: net.0 = stem (conv, BatchNormRelu), net.S.blocks.B.*, fc."""
    if key.startswith(("conv1.", "bn1.", "fc.")):
        stem = {"conv1": "net.0.0", "bn1": "net.0.1.0", "fc": "fc"}
        return stem[key.split(".")[0]] + key[key.index("."):]
    stage, block, rest = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key).groups()
    tv, new = next((tv, new) for tv, new in _SEPARIUS if rest.startswith(tv))
    return f"net.{stage}.blocks.{block}.{new}{rest[len(tv):]}"


def test_simclr_v2_separius(tmp_path: Path, r50: nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    resnet = {_separius_name(k): v for k, v in _downsample_first(r50.state_dict()).items()}
    head = {f"layers.{i}.weight": torch.randn(8, 8) for i in (0, 3, 6)}
    teacher, line = _load(tmp_path, {"resnet": resnet, "head": head}, caplog, "r50_1x_sk0.pth")
    assert (teacher.format, teacher.arch, teacher.info.arch_origin) == ("simclr-v2", "resnet50", "shapes")
    assert _norm(teacher) == NO_NORM and "supervised head resnet.fc.* (2 tensors), head" in line
    _assert_loaded(teacher, r50)


def test_simclr_v2_selective_kernel_is_refused(tmp_path: Path) -> None:
    resnet = {"net.0.0.weight": torch.randn(32, 3, 3, 3), "net.0.1.0.weight": torch.randn(32),
              "net.0.2.weight": torch.randn(32, 32, 3, 3), "fc.weight": torch.randn(1000, 2048)}
    torch.save({"resnet": resnet, "head": {}}, tmp_path / "r50_1x_sk1.pth")
    with pytest.raises(UserError, match=r"r50_1x_sk1.pth: .*selective-kernel \(sk1\).*use an sk0 file"):
        load_teacher(tmp_path / "r50_1x_sk1.pth")


def test_simclr_spijkervet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Spijkervet/SimCLR save_model: bare {encoder.* (fc = Identity: no fc keys), projector.{0,2}.weight}."""
    model = _reference()
    state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    state.update({"projector.0.weight": torch.randn(512, 512), "projector.2.weight": torch.randn(64, 512)})
    teacher, line = _load(tmp_path, state, caplog, "checkpoint_100.tar")
    assert (teacher.format, teacher.arch, _norm(teacher)) == ("simclr-spijkervet", "resnet18", NO_NORM)
    assert "projector.* (2 tensors)" in line
    _assert_loaded(teacher, model)


# ------------------------------------------------------------------------------ Lightning


def _lightning(state_dict: dict, **extra) -> dict:
    """A PyTorch Lightning .ckpt around a LightningModule state dict (hyper_parameters as plain dicts)."""
    return {"epoch": 399, "global_step": 78000, "pytorch-lightning_version": "2.2.1", "state_dict": state_dict,
            "loops": {}, "callbacks": {}, "optimizer_states": [{"state": {}}], "lr_schedulers": [{}], **extra}


@pytest.mark.parametrize("library", ["solo-learn", "lightly"])
def test_lightning_small_image_stem(tmp_path: Path, library: str, caplog: pytest.LogCaptureFixture) -> None:
    """CIFAR runs: solo-learn's conv1 has padding 2 (solo/methods/base.py), lightly-style code padding 1."""
    padding = 2 if library == "solo-learn" else 1
    model = _reference(small_stem=padding)
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    if library == "solo-learn":
        state.update({f"momentum_backbone.{k}": v + 1 for k, v in model.state_dict().items()})
        state.update({**_head(512, 0, 1, 3, prefix="projector"), **_head(512, 0, prefix="classifier")})
        expected = ["momentum_backbone.* (120 tensors)", "projector.* (6 tensors)", "classifier.* (2 tensors)"]
    else:
        state.update(_head(512, 0, 2, prefix="projection_head"))
        expected = ["projection_head.* (4 tensors)"]
    hparams = {"cfg": {"method": "byol", "data": {"dataset": "cifar10"}}}
    teacher, line = _load(tmp_path, _lightning(state, hyper_parameters=hparams), caplog, "last.ckpt")
    assert (teacher.format, teacher.arch, teacher.input_size) == ("lightning", "resnet18", 32)
    assert teacher.backbone.conv1.padding == (padding, padding) and isinstance(teacher.backbone.maxpool, nn.Identity)
    assert f"padding {padding}" in teacher.meta["surgery"] and teacher.meta["small_stem_padding"] == padding
    assert (teacher.meta["epochs"], teacher.meta["method"]) == (399, "byol")
    for part in [*expected, "optimizer_states", "hyper_parameters"]:
        assert part in line, part
    _assert_loaded(teacher, model)


def test_lightning_lightly_sequential_backbone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """lightly docs: backbone = nn.Sequential(*list(torchvision_resnet.children())[:-1]) -> numeric keys."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    resnet = _randomise_bn(torchvision.models.resnet18())
    state = {f"backbone.{k}": v for k, v in nn.Sequential(*list(resnet.children())[:-1]).state_dict().items()}
    state.update(_head(512, 0, 2, prefix="projection_head"))
    teacher, _ = _load(tmp_path, _lightning(state), caplog, "lightly.ckpt")
    assert (teacher.format, teacher.arch) == ("lightning", "resnet18")
    resnet.fc = nn.Identity()
    _assert_loaded(teacher, resnet)


def test_lightning_encoder_prefix_spijkervet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Spijkervet main_pl.py: the ResNet under encoder.* and again under model.encoder.*; old solo-learn too."""
    model = _reference()
    state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    state.update({f"model.{k}": v for k, v in state.items()})
    state.update({"model.projector.0.weight": torch.randn(512, 512), "model.projector.2.weight": torch.randn(64, 512)})
    teacher, line = _load(tmp_path, _lightning(state), caplog, "simclr.ckpt")
    assert (teacher.format, teacher.arch) == ("lightning", "resnet18") and "model.* (122 tensors)" in line
    _assert_loaded(teacher, model)


# ------------------------------------------------------------------------------ SwAV / BYOL / SimSiam


@pytest.mark.parametrize("kind", ["released", "training"])
def test_swav(tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """facebookresearch/swav: module. + torchvision names (no fc), projection_head.{0,1,3}, prototypes."""
    model = _reference()
    state = {**model.state_dict(), **_head(512, 0, 1, 3, prefix="projection_head")}
    state = {f"module.{k}": v for k, v in {**state, "prototypes.weight": torch.randn(3000, 128)}.items()}
    obj = state if kind == "released" else {"epoch": 800, "state_dict": state, "optimizer": {"state": {}}}
    teacher, line = _load(tmp_path, obj, caplog, "swav_800ep_pretrain.pth.tar")
    assert (teacher.format, teacher.arch, teacher.meta["method"]) == ("swav", "resnet18", "swav")
    assert "projection_head.* (6 tensors), prototypes.* (1 tensors)" in line
    _assert_loaded(teacher, model)


@pytest.mark.parametrize("wrapper", ["", "learner."])
def test_byol_pytorch_learner(tmp_path: Path, wrapper: str, caplog: pytest.LogCaptureFixture) -> None:
    """lucidrains/byol-pytorch BYOL learner saved whole (optionally inside a LightningModule as `learner`)."""
    model = _reference(num_classes=1000)  # the wrapped torchvision net keeps its (untrained) fc
    net = model.state_dict()
    state = {**{f"net.{k}": v for k, v in net.items()}, **{f"online_encoder.net.{k}": v for k, v in net.items()}}
    state.update({f"online_encoder.{k}": v for k, v in _head(512, 0, 1, 3, prefix="projector").items()})
    state.update({f"target_encoder.net.{k}": v + 1 for k, v in net.items()})
    state.update(_head(256, 0, 1, 3, prefix="online_predictor"))
    state = {wrapper + k: v for k, v in state.items()}
    teacher, line = _load(tmp_path, _lightning(state) if wrapper else state, caplog, "byol.pt")
    assert (teacher.format, teacher.arch, teacher.has_logits) == ("byol-pytorch", "resnet18", False)
    for part in ("online_encoder.net.fc.* (never trained) (2 tensors)", "net.* (122 tensors)",
                 "target_encoder.* (122 tensors)", "online_predictor.* (6 tensors)"):
        assert part in line, part
    _assert_loaded(teacher, model)


def test_byol_sthalles(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """sthalles/PyTorch-BYOL trainer.save_model: online_network.encoder = Sequential(resnet children[:-1])."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    resnet = _randomise_bn(torchvision.models.resnet18())
    encoder = nn.Sequential(*list(resnet.children())[:-1])
    online = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    online.update(_head(512, 0, 1, 3, prefix="projetion.net"))  # sic: the repo's head is `projetion`
    obj = {"online_network_state_dict": online, "encoder_state_dict": encoder.state_dict(),
           "target_network_state_dict": online, "optimizer_state_dict": {"state": {}, "param_groups": []}}
    teacher, line = _load(tmp_path, obj, caplog, "model.pth")
    assert (teacher.format, teacher.arch, _norm(teacher)) == ("byol-sthalles", "resnet18", NO_NORM)
    assert "projetion.* (6 tensors), encoder_state_dict, target_network_state_dict" in line
    resnet.fc = nn.Identity()
    _assert_loaded(teacher, resnet)


def test_simsiam(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """facebookresearch/simsiam: module.encoder.* with the projector in encoder.fc, module.predictor.*."""
    model = _reference()
    state = {f"encoder.{k}": v for k, v in {**model.state_dict(), **_head(512, 0, 1, 3, 4, 6, 7, prefix="fc")}.items()}
    state = {f"module.{k}": v for k, v in {**state, **_head(512, 0, 1, 3, prefix="predictor")}.items()}
    obj = {"epoch": 100, "arch": "resnet18", "state_dict": state, "optimizer": {"state": {}}}
    teacher, line = _load(tmp_path, obj, caplog, "checkpoint_0099.pth.tar")
    assert (teacher.format, teacher.arch, teacher.meta) == ("simsiam", "resnet18", {"method": "simsiam", "epochs": 100})
    assert "projector encoder.fc.* (12 tensors), predictor.* (6 tensors), optimizer" in line
    _assert_loaded(teacher, model)


# ------------------------------------------------------------------------------ timm train.py


@pytest.mark.parametrize("ema", [True, False])
def test_timm_train_checkpoint(tmp_path: Path, ema: bool, caplog: pytest.LogCaptureFixture) -> None:
    """timm CheckpointSaver: state_dict (+ state_dict_ema); EMA loaded when present, as timm does."""
    live, averaged = _reference(num_classes=10), _reference(num_classes=10, seed=1)
    obj = {"epoch": 299, "arch": "resnet18", "state_dict": live.state_dict(), "optimizer": {"state": {}},
           "version": 2, "args": {"model": "resnet18", "model_ema": ema}}  # real files pickle a Namespace
    if ema:
        obj["state_dict_ema"] = averaged.state_dict()
    teacher, line = _load(tmp_path, obj, caplog, "model_best.pth.tar")
    assert (teacher.format, teacher.arch) == ("timm", "resnet18")
    assert teacher.meta.get("weights") == ("state_dict_ema" if ema else None)
    assert ("state_dict (the non-EMA weights; state_dict_ema was loaded" in line) == ema
    _assert_loaded(teacher, averaged if ema else live)


# ------------------------------------------------------------------------------ architecture inference


@pytest.mark.parametrize(
    "arch",
    ["resnet18", "resnet34", "resnet50", "resnet101", "resnet10t", "resnet26d", "wide_resnet50_2", "resnext50_32x4d"],
)
def test_infer_arch_from_shapes(arch: str) -> None:
    assert infer_arch(timm.create_model(arch, num_classes=0, device="meta").state_dict()) == arch


def test_infer_arch_variants_needing_surgery() -> None:
    """CIFAR and wide stems are no stock timm model: the inferer says nothing, the recipe rebuilds them."""
    cifar = _reference(small_stem=1).state_dict()
    assert infer_arch(cifar) is None
    recipe = resnet_recipe(cifar)
    assert (recipe.arch, recipe.model_kwargs, len(recipe.surgeries)) == ("resnet18", {}, 1)
    wide = _wide_reference(4, device="meta").state_dict()  # SimCLR v1 4x
    recipe = resnet_recipe(wide)
    assert (recipe.arch, recipe.model_kwargs) == ("resnet50", {"channels": (256, 512, 1024, 2048)})
    assert recipe.notes == ("stem widened to 256 channels",)


def test_wrong_teacher_arch_names_both(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = {**_reference().state_dict(), "prototypes.weight": torch.randn(30, 128)}
    state = {f"module.{k}": v for k, v in state.items()}
    teacher, _ = _load(tmp_path, state, caplog, "swav.pth", arch="resnet18")
    assert teacher.arch == "resnet18"
    with pytest.raises(UserError, match="weights' shapes say resnet18 but --teacher-arch is resnet34"):
        load_teacher(tmp_path / "swav.pth", arch="resnet34")


def test_detectors_never_raise() -> None:
    odd = [None, 3, "x", [1, 2], {}, {"state_dict": 3}, {"state_dict": {}}, {"resnet": {"a": 1}}, {"resnet": {}},
           {"state_dict": {"backbone.x": "not a tensor"}}, {"online_network_state_dict": {1: torch.zeros(1)}},
           {"state_dict": {"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(3)}},
           {"state_dict": {"layer1.0.conv1.weight": torch.zeros(2), "bn1.weight": torch.zeros(2)}}]
    names = ("simclr-v1", "simclr-v2", "simclr-spijkervet", "lightning", "swav", "byol-pytorch", "byol-sthalles")
    for layout in (layout for layout in layouts() if layout.name in (*names, "simsiam", "timm")):
        for obj in odd:
            assert layout.detect(obj) in (True, False), layout.name
    assert infer_arch({"layer1.0.conv1.weight": torch.zeros(2), "bn1.weight": torch.zeros(2)}) is None
