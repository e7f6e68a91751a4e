"""ViT teacher layouts (MoCo v3, DINO, iBOT, DINOv2, MAE): each official layout round-trips exactly.

A random timm model is written in the official key layout and nesting, loaded with `load_teacher` (no
--teacher-arch unless said) and compared tensor for tensor and output for output. ViT-S runs at 32-98 px
(the layouts rebuild the file's own `img_size`), DINOv2 also at its native 518 px; ViT-B/L/H/g on meta.
"""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from ssl_kd.errors import UserError
from ssl_kd.teachers import detect_format, load_teacher
from ssl_kd.teachers.formats import infer_arch, layout_named, layouts

MEAN, STD = timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _vit(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    """A random headless timm model in eval mode. Built on the meta device and filled with cheap random
    values (timm's truncated-normal init would dominate these tests' time); norms and scales near 1."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():  # (num_batches_tracked: long, becomes 0)
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
            if name.endswith("running_var") or (tensor.ndim == 1 and name.endswith(("weight", "gamma"))):
                tensor.add_(1.0)
    return model


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))


def _check(path, model: nn.Module, size: int, n: int = 2, **load_kwargs):
    """Load `path`, assert it equals `model` tensor for tensor and output for output; return the teacher."""
    teacher = load_teacher(path, **load_kwargs)
    loaded, reference = teacher.backbone.state_dict(), model.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in loaded.items():
        assert torch.equal(value, reference[key]), key
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(teacher(x).feat, _reference(model, x), atol=1e-6, rtol=0)
    return teacher


def _other(state: dict, prefix: str) -> dict:
    """Other weights of the same shapes (momentum encoder, student): constant, stored as one element each."""
    return {prefix + k: torch.full((), 7, dtype=v.dtype).expand_as(v) for k, v in state.items()}


def _converted(path):
    return layout_named(detect_format(obj := torch.load(path, weights_only=False))).convert(obj)


def _mocov3_file(tmp_path, model: nn.Module, arch: str, head: str, dim: int) -> str:
    """facebookresearch/moco-v3 main_moco.py: projector under the classifier's name, DDP prefixes."""
    mlp = {f"{head}.0.weight": torch.randn(32, dim), f"{head}.3.weight": torch.randn(16, 32)}  # Linear, no bias
    mlp |= {f"{head}.1.{k}": torch.rand(32) for k in ("weight", "bias", "running_mean", "running_var")}
    mlp |= {f"{head}.4.{k}": torch.rand(16) for k in ("running_mean", "running_var")}  # BN, affine=False
    mlp |= {f"{head}.{i}.num_batches_tracked": torch.tensor(5) for i in (1, 4)}
    encoder = {**model.state_dict(), **mlp}
    state = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
    state |= _other(encoder, "module.momentum_encoder.")
    state |= {"module.predictor.0.weight": torch.randn(32, 16), "module.predictor.3.weight": torch.randn(16, 32)}
    ckpt = {"epoch": 300, "arch": arch, "state_dict": state, "optimizer": {"state": {}}, "scaler": {"scale": 1.0}}
    torch.save(ckpt, path := tmp_path / "checkpoint_0299.pth.tar")
    return path


def _mocov3_sincos(side: int, dim: int) -> torch.Tensor:
    """moco-v3 vits.py `build_2d_sincos_position_embedding` (temperature 10000), cls position zero."""
    grid_w, grid_h = torch.meshgrid(torch.arange(side * 1.0), torch.arange(side * 1.0), indexing="ij")
    omega = 1.0 / (10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)))
    out_w, out_h = (torch.einsum("m,d->md", grid.flatten(), omega) for grid in (grid_w, grid_h))
    table = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, dim), table], dim=1)


def test_mocov3_vit_small_has_12_heads(tmp_path) -> None:
    model = _vit("vit_small_patch16_224", img_size=32, num_heads=12)
    with torch.no_grad():
        model.pos_embed.copy_(_mocov3_sincos(2, 384))
    path = _mocov3_file(tmp_path, model, "vit_small", "head", 384)
    teacher = _check(path, model, 32)
    assert (teacher.format, teacher.arch, teacher.meta["epochs"]) == ("mocov3", "vit_small_patch16_224", 300)
    assert teacher.backbone.blocks[0].attn.num_heads == 12
    six_heads, x = _vit("vit_small_patch16_224", img_size=32), torch.rand(1, 3, 32, 32)
    six_heads.load_state_dict(model.state_dict())  # same tensors, timm's 6 heads: other features
    assert not torch.allclose(teacher(x).feat, _reference(six_heads, x), atol=1e-4)
    assert _converted(path).ignored == ["projector base_encoder.head.* (10 tensors, MoCo v3 head)",
                                        "momentum_encoder.* (160 tensors)", "predictor.* (2 tensors)",
                                        "optimizer", "scaler"]

    # convert_to_deit.py keeps only {"model": base_encoder minus head}: the sin-cos table still says MoCo v3
    torch.save({"model": model.state_dict()}, tmp_path / "deit.pth")
    deit = _check(tmp_path / "deit.pth", model, 32)
    assert (deit.format, deit.meta["method"], deit.backbone.blocks[0].attn.num_heads) == ("vit_backbone", "mocov3", 12)


def test_mocov3_conv_stem_is_refused(tmp_path) -> None:
    state = {"cls_token": torch.zeros(1, 1, 384), "patch_embed.proj.0.weight": torch.zeros(24, 3, 3, 3)}
    torch.save({"arch": "vit_conv_small", "state_dict": _other(state, "module.base_encoder.")}, tmp_path / "c.pth")
    with pytest.raises(UserError, match="convolutional patch stem, which no timm ViT has"):
        load_teacher(tmp_path / "c.pth")


def _dino_file(tmp_path, model: nn.Module, args, loss="dino_loss", ddp_teacher=False, extra_teacher=None) -> str:
    """facebookresearch/dino main_dino.py (and bytedance/ibot main_ibot.py, `loss="ibot_loss"`)."""
    head = {"head.mlp.0.weight": torch.randn(32, model.num_features), "head.mlp.0.bias": torch.randn(32),
            "head.last_layer.weight_g": torch.rand(64, 1), "head.last_layer.weight_v": torch.randn(64, 32)}
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()} | head
    teacher = {f"module.{k}": v for k, v in teacher.items()} if ddp_teacher else teacher | (extra_teacher or {})
    student = _other({k.removeprefix("module."): v for k, v in teacher.items()}, "module.")
    student |= {"module.backbone.masked_embed": torch.randn(1, 384)} if loss == "ibot_loss" else {}
    torch.save({"student": student, "teacher": teacher, "optimizer": {"state": {}}, "epoch": 100, "args": args,
                loss: {"center": torch.randn(1, 64)}, "fp16_scaler": {"scale": 1.0}}, path := tmp_path / "ckpt.pth")
    return path


@pytest.mark.parametrize("patch, namespace", [(16, False), (8, True)])
def test_dino_training_checkpoint_takes_the_teacher(tmp_path, patch: int, namespace: bool) -> None:
    """DINO saves `args` as an argparse.Namespace (allowlisted for a safe load); also as a plain dict."""
    model, arch = _vit(f"vit_small_patch{patch}_224", img_size=32), f"vit_small_patch{patch}_224"
    args = {"arch": "vit_small", "patch_size": patch, "out_dim": 64}
    path = _dino_file(tmp_path, model, argparse.Namespace(**args) if namespace else args)
    with torch.serialization.safe_globals([argparse.Namespace]):
        teacher = _check(path, model, 32)
    assert (teacher.format, teacher.arch, teacher.input_size) == ("dino", arch, 32)
    assert teacher.meta == {"method": "dino", "epochs": 100}
    assert _converted(path).ignored == ["teacher head.* (4 tensors)", "student", "optimizer", "dino_loss",
                                        "fp16_scaler"]
    path = _dino_file(tmp_path, model, {"arch": "vit_base", "patch_size": patch})
    with pytest.raises(UserError, match=f"says its arch is vit_base_patch{patch}_224 but its weights' shapes say"):
        load_teacher(path)


@pytest.mark.parametrize("masked_in_teacher", [False, True])
def test_ibot_training_checkpoint(tmp_path, masked_in_teacher: bool) -> None:
    """bytedance/ibot main_ibot.py: DINO's wrapper, `ibot_loss`, `masked_embed` in the student's backbone."""
    model, masked = _vit("vit_small_patch16_224", img_size=32), {"backbone.masked_embed": torch.randn(1, 384)}
    masked = masked if masked_in_teacher else {}
    path = _dino_file(tmp_path, model, {"arch": "vit_small", "patch_size": 16}, "ibot_loss", extra_teacher=masked)
    teacher = _check(path, model, 32)
    assert (teacher.format, teacher.arch, teacher.meta["method"]) == ("ibot", "vit_small_patch16_224", "ibot")
    note = "teacher backbone.masked_embed (iBOT masked-modelling token)"
    assert (note in _converted(path).ignored) == masked_in_teacher


@pytest.mark.parametrize("arch, size", [("vit_small_patch16_224", 224), ("vit_small_patch8_224", 64),
                                        ("vit_base_patch16_224", 32), ("vit_base_patch8_224", 32)])
def test_released_vit_backbone_arch_from_shapes(tmp_path, arch: str, size: int) -> None:
    """DINO's dino_vit{small,base}{16,8}_pretrain.pth: bare backbone, no arch anywhere (S/16 at 224 px;
    the others at small sides for speed). ViT-L/g: inference and conversion on meta, below."""
    torch.save((model := _vit(arch, img_size=size)).state_dict(), tmp_path / "dino.pth")
    teacher = _check(tmp_path / "dino.pth", model, size, n=1)
    assert (teacher.format, teacher.arch, teacher.input_size) == ("vit_backbone", arch, size)
    out = teacher(torch.rand(2, 3, size // 2, size // 2)).feat  # any multiple of the patch (dynamic_img_size)
    assert out.shape == (2, model.num_features) and torch.isfinite(out).all()


@pytest.mark.parametrize("layout", ["mocov3", "dino", "released dino"])
def test_resnet50_layouts(tmp_path, layout: str) -> None:
    """MoCo v3 (projector in fc), DINO training (DDP-wrapped teacher), DINO's bare release (no fc)."""
    model = _vit("resnet50")
    if layout == "mocov3":
        path = _mocov3_file(tmp_path, model, "resnet50", "fc", 2048)
    elif layout == "dino":
        path = _dino_file(tmp_path, model, {"arch": "resnet50"}, ddp_teacher=True)
    else:
        torch.save(model.state_dict(), path := tmp_path / "dino_resnet50_pretrain.pth")
    teacher = _check(path, model, 32, arch="resnet50")
    assert teacher.arch == "resnet50" and (teacher.format == layout or layout == "released dino")


def _dinov2_official(state: dict, chunks: int = 0) -> dict:
    """timm-keyed DINOv2 weights in the official layout (hub files; training files with `chunks`)."""
    state, dim, device = dict(state), state["cls_token"].shape[-1], state["cls_token"].device
    if "reg_token" in state:  # the file has a cls position, which timm folds into cls_token
        pos0 = torch.randn(1, 1, dim).to(device)
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"], state["pos_embed"] = state["cls_token"] - pos0, torch.cat([pos0, state["pos_embed"]], 1)
    state["mask_token"] = torch.zeros(1, dim, device=device)
    out = {}
    for key, value in state.items():
        if dim == 1536:  # ViT-g: SwiGLU
            key = key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        if chunks and key.startswith("blocks."):  # dinov2 BlockChunk: blocks.<chunk>.<global index>.*
            key = f"blocks.{int(key.split('.')[1]) // chunks}.{key[len('blocks.'):]}"
        out[key] = value
    return out


@pytest.mark.parametrize("arch, size", [("vit_small_patch14_dinov2", 518), ("vit_small_patch14_reg4_dinov2", 98)])
def test_dinov2_released_backbone(tmp_path, arch: str, size: int) -> None:
    """dinov2_vits14[_reg4]_pretrain.pth at its native 518 px (the _reg4 one at 98 px, for speed)."""
    model = _vit(arch, img_size=size)
    raw = _dinov2_official(model.state_dict())
    if "register_tokens" in raw:  # the reference cls token is what timm computes: raw cls + cls position
        with torch.no_grad():
            model.cls_token.copy_(raw["cls_token"] + raw["pos_embed"][:, :1])
    torch.save(raw, path := tmp_path / "dinov2_vits14_pretrain.pth")
    teacher = _check(path, model, size, n=1)
    assert (teacher.format, teacher.arch, teacher.input_size) == ("dinov2", arch, size)
    converted = _converted(path)
    assert ("img_size" in converted.model_kwargs) == (size != 518)  # 518 is timm's default for DINOv2
    assert converted.ignored[0].startswith("mask_token")


def test_dinov2_teacher_checkpoint_with_chunked_blocks(tmp_path) -> None:
    model = _vit("vit_small_patch14_dinov2", img_size=56)
    raw = _dinov2_official(model.state_dict(), chunks=4)
    assert "blocks.2.8.norm1.weight" in raw
    teacher = {f"backbone.{k}": v for k, v in raw.items()} | {f"{head}_head.mlp.0.weight": torch.randn(8, 384)
                                                               for head in ("dino", "ibot")}
    torch.save({"teacher": teacher}, path := tmp_path / "teacher_checkpoint.pth")
    loaded = _check(path, model, 56)
    assert (loaded.format, loaded.arch, loaded.input_size) == ("dinov2", "vit_small_patch14_dinov2", 56)


def test_mae_pretrain_checkpoint_drops_the_decoder(tmp_path) -> None:
    # MAE releases ViT-B/L/H; a ViT-S in the same layout keeps the file (and the test) small.
    model = _vit("vit_small_patch16_224", img_size=32)
    decoder = {"mask_token": torch.randn(1, 1, 64), "decoder_embed.weight": torch.randn(64, 384),
               "decoder_pos_embed": torch.randn(1, 5, 64), "decoder_blocks.0.norm1.weight": torch.randn(64),
               "decoder_norm.weight": torch.randn(64), "decoder_pred.weight": torch.randn(768, 64)}
    ckpt = {"model": model.state_dict() | decoder, "optimizer": {"state": {}}, "epoch": 799,
            "scaler": {"scale": 1.0}, "args": {"model": "mae_vit_small_patch16", "mask_ratio": 0.75}}
    torch.save(ckpt, path := tmp_path / "mae_pretrain_vit_small_full.pth")
    teacher = _check(path, model, 32)
    assert (teacher.format, teacher.arch, teacher.meta["epochs"]) == ("mae", "vit_small_patch16_224", 799)
    assert _converted(path).ignored[:2] == ["decoder mask_token", "decoder decoder_embed.* (1 tensors)"]
    torch.save({"model": model.state_dict()}, path := tmp_path / "mae_pretrain_vit_small.pth")  # encoder only
    assert _check(path, model, 32).format == "vit_backbone"


@pytest.mark.parametrize("arch", [f"vit_{name}" for name in (
    "tiny_patch16_224", "small_patch16_224", "small_patch8_224", "base_patch16_224", "base_patch8_224",
    "large_patch16_224", "huge_patch14_224", "small_patch14_dinov2", "small_patch14_reg4_dinov2",
    "base_patch14_dinov2", "large_patch14_reg4_dinov2", "giant_patch14_dinov2", "giant_patch14_reg4_dinov2")])
def test_arch_inference_and_conversion_on_meta(arch: str) -> None:
    """Shapes name the model, in timm keys and in the official layout; the official keys convert exactly."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    state = model.state_dict()
    assert infer_arch(state) == arch
    if "dinov2" in arch:
        raw = _dinov2_official(state)
        assert detect_format(raw) == "dinov2"
        converted = layout_named("dinov2").convert(raw)
        assert converted.inferred_arch == arch and "img_size" not in converted.model_kwargs
        fitted = converted.adapt(converted.state_dict, model)
        assert {k: v.shape for k, v in fitted.items()} == {k: v.shape for k, v in state.items()}


def test_pos_embed_is_resampled_to_the_built_grid() -> None:
    """A 518 px DINOv2 file into a model built at 224 px, and a 32 px DINO ViT into one at 64 px."""
    for arch, saved, built in (("vit_small_patch14_dinov2", 518, 224), ("vit_small_patch16_224", 32, 64)):
        source = _vit(arch, img_size=saved)
        obj = _dinov2_official(source.state_dict()) if "dinov2" in arch else source.state_dict()
        converted = layout_named(detect_format(obj)).convert(obj)
        target = _vit(arch, seed=1, img_size=built)
        target.load_state_dict(converted.adapt(dict(converted.state_dict), target), strict=True)
        grid = built // source.patch_embed.patch_size[0]
        expected = resample_abs_pos_embed(source.pos_embed.detach(), (grid, grid), num_prefix_tokens=1)
        assert torch.allclose(target.pos_embed, expected, atol=1e-6)
        out = _reference(target, torch.rand(1, 3, built, built))
        assert out.shape == (1, 384) and torch.isfinite(out).all()


def test_plain_vit_classifier_and_odd_objects_are_not_claimed() -> None:
    vit_layouts = [l for l in layouts() if l.name in {"mocov3", "dino", "ibot", "dinov2", "mae", "vit_backbone"}]
    assert len(vit_layouts) == 6
    with torch.device("meta"):
        classifier = timm.create_model("vit_tiny_patch16_224", num_classes=5).state_dict()
    odd = [[1, 2], {}, {"teacher": 5, "student": {}}, {"teacher": {"backbone.x": "s"}}, {"state_dict": {1: 2}},
           {"model": {"cls_token": torch.zeros(1)}}, {"teacher": {"cls_token": torch.zeros(1)}, "student": {}},
           {"model": classifier}, classifier]
    for index, obj in enumerate(odd):
        assert not any(layout.detect(obj) for layout in vit_layouts), index
    assert detect_format({"model": classifier}) == "timm"  # a ViT classifier stays the `timm` layout's
