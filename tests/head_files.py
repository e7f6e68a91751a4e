"""Tiny teacher files that carry an SSL projection head, one per family, under the official key names (cited per
builder), and the head recomputed by hand from the file's own tensors; shared by test_teacher_heads.py and
test_embedding_space.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _models import random_model

Tensors = dict[str, torch.Tensor]


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """The main job's `setup_logging` points the root logger at this test's captured stderr; put it back, so that no
    later test logs into a closed capture. Imported by the test modules that use these files."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

# ------------------------------------------------------------------------------ the head, by hand


def _linear(x: torch.Tensor, t: Tensors, key: str) -> torch.Tensor:
    return F.linear(x, t[f"{key}.weight"], t.get(f"{key}.bias"))


def _bn(x: torch.Tensor, t: Tensors, key: str, eps: float = 1e-5) -> torch.Tensor:
    return F.batch_norm(x, t[f"{key}.running_mean"], t[f"{key}.running_var"], t.get(f"{key}.weight"), t.get(f"{key}.bias"),
                        training=False, eps=eps)


def _lin(n_in: int, n_out: int, key: str, bias: bool = True) -> Tensors:
    out = {f"{key}.weight": torch.randn(n_out, n_in) / n_in ** 0.5}
    return out | ({f"{key}.bias": torch.randn(n_out)} if bias else {})


def _bn_tensors(n: int, key: str, affine: bool = True) -> Tensors:
    out = {f"{key}.running_mean": torch.randn(n) * 0.1, f"{key}.running_var": torch.rand(n) + 0.5,
           f"{key}.num_batches_tracked": torch.tensor(100)}
    return out | ({f"{key}.weight": torch.rand(n) + 0.5, f"{key}.bias": torch.randn(n) * 0.1} if affine else {})


def _prefixed(tensors: Tensors, prefix: str) -> Tensors:
    return {prefix + k: v for k, v in tensors.items()}


# ------------------------------------------------------------------------------ one tiny file per family
# Each builder: (tmp_path, backbone) -> (path, head tensors keyed relative to the head, by-hand head, width, name)


def _moco_v2(tmp: Path, model, arch: str = "resnet18") -> tuple:
    """facebookresearch/moco builder.py with --mlp: encoder_q.fc = Sequential(Linear(d, d), ReLU(), Linear(d, 128))."""
    d = model.num_features
    head = _lin(d, d, "0") | _lin(d, 128, "2")
    q = _prefixed(model.state_dict() | _prefixed(head, "fc."), "module.encoder_q.")
    state = q | {k.replace("encoder_q", "encoder_k"): v + 1 for k, v in q.items() if v.is_floating_point()}
    state |= {"module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save({"epoch": 200, "arch": arch, "state_dict": state, "optimizer": {"state": {}}}, path := tmp / "moco_v2.pth.tar")
    return path, head, lambda f, t: _linear(F.relu(_linear(f, t, "0")), t, "2"), 128, "MoCo v2 fc MLP"


def _moco_v1(tmp: Path, model) -> tuple:
    """MoCo v1: encoder_q = base_encoder(num_classes=128), its fc one Linear."""
    head = _lin(model.num_features, 128, "fc")
    state = _prefixed(model.state_dict() | head, "module.encoder_q.")
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state}, path := tmp / "moco_v1.pth.tar")
    head = {k.removeprefix("fc."): v for k, v in head.items()}
    return path, head, lambda f, t: F.linear(f, t["weight"], t["bias"]), 128, "MoCo v1 fc"


def _spijkervet(tmp: Path, model) -> tuple:
    """Spijkervet/SimCLR simclr/simclr.py: projector = Sequential(Linear(d, d, bias=False), ReLU(), Linear(d, 64, bias=False))."""
    d = model.num_features
    head = _lin(d, d, "0", bias=False) | _lin(d, 64, "2", bias=False)
    torch.save(_prefixed(model.state_dict(), "encoder.") | _prefixed(head, "projector."), path := tmp / "checkpoint_100.tar")
    return path, head, lambda f, t: _linear(F.relu(_linear(f, t, "0")), t, "2"), 64, "SimCLR projector"


def _separius_name(key: str) -> str:
    """Separius/SimCLRv2-Pytorch resnet.py names of a torchvision Bottleneck ResNet (see test_teacher_layouts_cnn)."""
    if key.startswith(("conv1.", "bn1.")):
        return {"conv1": "net.0.0", "bn1": "net.0.1.0"}[key.split(".")[0]] + key[key.index("."):]
    stage, block, rest = key[5], key.split(".")[1], key.split(".", 2)[2]
    renames = (("downsample.0.", "projection.shortcut."), ("downsample.1.", "projection.bn.0."), ("conv1.", "net.0."),
               ("bn1.", "net.1.0."), ("conv2.", "net.2."), ("bn2.", "net.3.0."), ("conv3.", "net.4."), ("bn3.", "net.5.0."))
    old, new = next((old, new) for old, new in renames if rest.startswith(old))
    return f"net.{stage}.blocks.{block}.{new}{rest[len(old):]}"


def _simclr_v2(tmp: Path, model) -> tuple:
    """Separius convert.py: {"resnet", "head"}; resnet.py ContrastiveHead: layers = [Linear(d, d, bias=False), BN, ReLU] x2
    + [Linear(d, 128, bias=False), BN] -> layers.{0,3,6} Linear, {1,4,7} BatchNorm1d (from TF head_contrastive/nl_{0,1,2})."""
    d = model.num_features
    head = (_lin(d, d, "0", bias=False) | _bn_tensors(d, "1") | _lin(d, d, "3", bias=False) | _bn_tensors(d, "4")
            | _lin(d, 128, "6", bias=False) | _bn_tensors(128, "7"))
    resnet = {_separius_name(k): v for k, v in model.state_dict().items()}
    torch.save({"resnet": resnet, "head": _prefixed(head, "layers.")}, path := tmp / "r26_1x_sk0.pth")

    def by_hand(f, t):
        f = F.relu(_bn(_linear(f, t, "0"), t, "1"))
        f = F.relu(_bn(_linear(f, t, "3"), t, "4"))
        return _bn(_linear(f, t, "6"), t, "7")

    return path, head, by_hand, 128, "SimCLRv2 contrastive head"


def _lightning(state: Tensors) -> dict:
    return {"epoch": 99, "global_step": 1000, "pytorch-lightning_version": "2.2.1", "state_dict": state,
            "optimizer_states": [{"state": {}}], "lr_schedulers": [{}], "hyper_parameters": {"cfg": {"method": "byol"}}}


def _solo_learn(tmp: Path, model) -> tuple:
    """vturrisi/solo-learn solo/methods/byol.py: projector = Sequential(Linear, BatchNorm1d, ReLU, Linear); the momentum
    copies and the online linear probe beside it."""
    d = model.num_features
    head = _lin(d, 256, "0") | _bn_tensors(256, "1") | _lin(256, 32, "3")
    state = _prefixed(model.state_dict(), "backbone.") | _prefixed(head, "projector.")
    state |= _prefixed({k: v + 1 for k, v in head.items()}, "momentum_projector.") | _prefixed(_lin(d, 10, "0"), "classifier.")
    torch.save(_lightning(state), path := tmp / "solo.ckpt")
    return path, head, lambda f, t: _linear(F.relu(_bn(_linear(f, t, "0"), t, "1")), t, "3"), 32, "solo-learn projector"


def _lightly(tmp: Path, model) -> tuple:
    """lightly ProjectionHead (lightly/models/modules/heads.py), e.g. BYOLProjectionHead: layers = Sequential(Linear(bias=False
    after a BN block), BatchNorm1d, ReLU, Linear) -> projection_head.layers.{0,1,3}."""
    d = model.num_features
    head = _lin(d, 64, "0", bias=False) | _bn_tensors(64, "1") | _lin(64, 16, "3")
    state = _prefixed(model.state_dict(), "backbone.") | _prefixed(head, "projection_head.layers.")
    state |= _prefixed({k: v + 1 for k, v in head.items()}, "projection_head_momentum.layers.")
    torch.save(_lightning(state), path := tmp / "lightly.ckpt")
    return path, head, lambda f, t: _linear(F.relu(_bn(_linear(f, t, "0"), t, "1")), t, "3"), 16, "lightly projection head"


def _swav(tmp: Path, model) -> tuple:
    """facebookresearch/swav src/resnet50.py: projection_head = Sequential(Linear(d, hidden), BatchNorm1d, ReLU(inplace),
    Linear(hidden, 128)), then prototypes; the released file is a bare module.-prefixed state dict."""
    d = model.num_features
    head = _lin(d, 64, "0") | _bn_tensors(64, "1") | _lin(64, 128, "3")
    state = model.state_dict() | _prefixed(head, "projection_head.") | {"prototypes.weight": torch.randn(300, 128)}
    torch.save(_prefixed(state, "module."), path := tmp / "swav_800ep_pretrain.pth.tar")
    return path, head, lambda f, t: _linear(F.relu(_bn(_linear(f, t, "0"), t, "1")), t, "3"), 128, "SwAV projection head"


def _dino_file(tmp: Path, backbone: Tensors, head: Tensors, args: dict, ddp_teacher: bool) -> Path:
    """facebookresearch/dino main_dino.py: {student, teacher, args, ...}, each MultiCropWrapper(backbone, DINOHead)."""
    wrapped = _prefixed(backbone, "backbone.") | _prefixed(head, "head.mlp.")
    wrapped |= {"head.last_layer.weight_g": torch.ones(512, 1), "head.last_layer.weight_v": torch.randn(512, 256)}
    teacher = _prefixed(wrapped, "module.") if ddp_teacher else wrapped
    student = _prefixed({k: v + 1 if v.is_floating_point() else v for k, v in wrapped.items()}, "module.")
    torch.save({"student": student, "teacher": teacher, "optimizer": {"state": {}}, "epoch": 100, "args": args,
                "dino_loss": {"center": torch.zeros(1, 512)}}, path := tmp / "checkpoint.pth")
    return path


def _dino_vit(tmp: Path, model) -> tuple:
    """DINO ViT-Ti/16 (vision_transformer.py DINOHead, use_bn=False): mlp = Linear(D, 2048), GELU, Linear(2048, 2048), GELU,
    Linear(2048, 256) -> head.mlp.{0,2,4}; hidden width 64 here. The teacher is not DDP-wrapped (no BatchNorm)."""
    d = model.num_features
    head = _lin(d, 64, "0") | _lin(64, 64, "2") | _lin(64, 256, "4")
    path = _dino_file(tmp, model.state_dict(), head, {"arch": "vit_tiny", "patch_size": 16}, ddp_teacher=False)
    return path, head, lambda f, t: _linear(F.gelu(_linear(F.gelu(_linear(f, t, "0")), t, "2")), t, "4"), 256, "DINO head MLP"


def _dino_resnet_bn(tmp: Path, model) -> tuple:
    """DINO ResNet with use_bn=True: mlp = Linear, BatchNorm1d, GELU, Linear, BatchNorm1d, GELU, Linear -> head.mlp.{0,1,3,4,6};
    a BatchNorm backbone makes main_dino.py DDP-wrap the teacher too (module.)."""
    d = model.num_features
    head = _lin(d, 64, "0") | _bn_tensors(64, "1") | _lin(64, 64, "3") | _bn_tensors(64, "4") | _lin(64, 256, "6")
    path = _dino_file(tmp, model.state_dict(), head, {"arch": "resnet18"}, ddp_teacher=True)

    def by_hand(f, t):
        f = F.gelu(_bn(_linear(f, t, "0"), t, "1"))
        return _linear(F.gelu(_bn(_linear(f, t, "3"), t, "4")), t, "6")

    return path, head, by_hand, 256, "DINO head MLP"


def _vit_tiny() -> torch.nn.Module:
    """A random ViT-Ti/16 at 32 px (built on the meta device, filled cheaply: timm's init would dominate the test)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0)
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(1 + 0.02 * torch.randn(tensor.shape, generator=generator) if "norm" in name or name.endswith("gamma")
                             else 0.02 * torch.randn(tensor.shape, generator=generator))
    return model


FAMILIES: dict[str, tuple[Callable, Callable[[], torch.nn.Module], str]] = {  # builder, backbone, format
    "moco-v2": (_moco_v2, lambda: random_model("resnet18"), "moco"),
    "moco-v1": (_moco_v1, lambda: random_model("resnet18"), "moco"),
    "simclr-spijkervet": (_spijkervet, lambda: random_model("resnet18"), "simclr-spijkervet"),
    "simclr-v2-separius": (_simclr_v2, lambda: random_model("resnet26"), "simclr-v2"),
    "lightning-solo-learn": (_solo_learn, lambda: random_model("resnet18"), "lightning"),
    "lightning-lightly": (_lightly, lambda: random_model("resnet18"), "lightning"),
    "swav": (_swav, lambda: random_model("resnet18"), "swav"),
    "dino-vit": (_dino_vit, _vit_tiny, "dino"),
    "dino-resnet-bn": (_dino_resnet_bn, lambda: random_model("resnet18"), "dino"),
}
