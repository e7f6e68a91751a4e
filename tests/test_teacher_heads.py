"""SSL projection heads: `teacher.embedding=backbone|head|auto`.

Each family's test writes a tiny checkpoint with the head under the official key names (cited per case),
loads it, and checks that in the head space `emb` equals the head computed by hand from the file's own
tensors on the backbone feature (`feat` unchanged, `embed_dim` the head's width), and that the backbone
space is what it always was. Then: auto's per-method choice, the one-line refusals, `inspect`, the cache
key, the resume check, and one tiny end-to-end SEED run whose report says it used the head.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _models import images, random_model

from ssl_kd.config import Config, to_dict
from ssl_kd.distillation import HEAD_SPACE_METHODS, embedding_space, in_embedding_space
from ssl_kd.errors import EXIT_BAD_INPUT, UserError, cli_main
from ssl_kd.features import _batch_features
from ssl_kd.run_checkpoints import config_differences
from ssl_kd.teachers import load_teacher
from ssl_kd.teachers.__main__ import main as teachers_main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = str(REPO / "ssl_kd" / "assets" / "digits_resnet14t_simclr.pth")  # an ssl_kd file: no head
Tensors = dict[str, torch.Tensor]


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """The main job's `setup_logging` points the root logger at this test's captured stderr; put it back, so that no
    later test logs into a closed capture."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


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


@pytest.mark.parametrize("family", FAMILIES)
def test_head_space_is_the_files_head_on_the_backbone_feature(tmp_path: Path, family: str) -> None:
    build, backbone, layout = FAMILIES[family]
    model = backbone()
    path, head, by_hand, width, name = build(tmp_path, model)
    teacher = load_teacher(path)
    assert teacher.format == layout and teacher.head_info is not None and teacher.head_info.name.startswith(name)
    assert (teacher.embedding, teacher.embed_dim, teacher.head_info.dim) == ("backbone", model.num_features, width)
    loaded = teacher.projection_head.state_dict()
    stored = {key if key[0].isdigit() else f"0.{key}": value for key, value in head.items()}  # a bare Linear: index 0
    assert set(loaded) == set(stored)
    for key, value in stored.items():  # the file's own tensors, key for key
        assert torch.equal(loaded[key], value), key

    x = images()
    backbone_out = teacher(x)
    assert torch.equal(backbone_out.emb, backbone_out.feat)  # the backbone space: unchanged
    on_head = teacher.with_embedding("head")
    out = on_head(x)
    assert (on_head.embedding, on_head.embed_dim, on_head.feat_dim) == ("head", width, model.num_features)
    assert torch.equal(out.feat, backbone_out.feat)  # feat stays the backbone feature
    assert out.emb.shape == (2, width)
    assert torch.allclose(out.emb, by_hand(out.feat, head), atol=1e-5, rtol=1e-5)
    assert on_head.backbone is teacher.backbone and not any(p.requires_grad for p in on_head.parameters())
    assert teacher.embedding == "backbone"  # the view leaves the loaded teacher as it was
    assert torch.equal(_batch_features(out), backbone_out.feat)  # what evaluation reads: the backbone feature


def test_teachers_without_a_head_have_none(tmp_path: Path) -> None:
    """A plain timm file, tonylins' SimCLR v1 conversion (supervised fc only), the project's own file: no head."""
    model = random_model("resnet18")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    for path in (tmp_path / "plain.pth", SHIPPED):
        teacher = load_teacher(path)
        assert teacher.projection_head is None and teacher.head_info is None and teacher.info.head_problem is None
        with pytest.raises(UserError, match=r"teacher.embedding=head: .* carries no SSL projection head; "
                                            r"use teacher.embedding=backbone") as err:
            teacher.with_embedding("head")
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_head_that_does_not_fit_is_reported_not_fatal(tmp_path: Path) -> None:
    """A projector whose first layer does not take the backbone's width: the backbone loads, the head is named unusable."""
    model = random_model("resnet18")
    state = _prefixed(model.state_dict(), "encoder.") | _prefixed(_lin(64, 64, "0", bias=False), "projector.")
    torch.save(state, tmp_path / "checkpoint_1.tar")
    teacher = load_teacher(tmp_path / "checkpoint_1.tar")
    assert teacher.projection_head is None and "takes 64 features, but 512 reach it" in teacher.info.head_problem
    with pytest.raises(UserError, match=r"has a projection head that cannot be used \(projector\.\*: layer 0"):
        teacher.with_embedding("head")


# ------------------------------------------------------------------------------ auto, and the refusals


@pytest.fixture(scope="module")
def moco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _moco_v2(tmp_path_factory.mktemp("moco"), random_model("resnet10t"), "resnet10t")[0]


def _cfg(method: str, embedding: str = "auto", **train) -> Config:
    cfg = Config()
    cfg.loss.method, cfg.teacher.embedding = method, embedding
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_auto_picks_the_head_for_seed_and_compress_only(moco: Path) -> None:
    assert HEAD_SPACE_METHODS == {"seed", "compress", "compress_1q", "compress_2q"}
    teacher, headless = load_teacher(moco), load_teacher(SHIPPED)
    for method in ("seed", "compress", "compress_1q", "compress_2q"):
        assert embedding_space(_cfg(method), teacher) == "head"
        assert embedding_space(_cfg(method), headless) == "backbone"
        assert embedding_space(_cfg(method, "backbone"), teacher) == "backbone"
        assert in_embedding_space(_cfg(method), teacher).embed_dim == 128
    for method in ("dlkd", "kd", "rkd", "crd"):
        assert embedding_space(_cfg(method), teacher) == "backbone"
        assert in_embedding_space(_cfg(method), teacher) is teacher
    assert embedding_space(_cfg("dlkd", "head"), teacher) == "head"


def test_head_space_refusals(moco: Path) -> None:
    teacher = load_teacher(moco)
    in_embedding_space(_cfg("dlkd", "head"), teacher)  # DLKD's corr reads feat, its align emb: fine live
    cases = [(_cfg("dlkd", "head", teacher_cache=4), "train.teacher_cache keeps only the teacher's embedding"),
             (_cfg("rkd", "head", teacher_cache=4), "rkd also reads its backbone feature")]
    for cfg, phrase in cases:
        with pytest.raises(UserError, match=phrase):
            in_embedding_space(cfg, teacher)
    in_embedding_space(_cfg("seed", "head", teacher_cache=4), teacher)  # SEED reads emb only: cacheable


def test_crd_and_dlkd_supcon_size_their_teacher_layer_to_the_backbone_feature_in_the_head_space(moco: Path) -> None:
    """Both read teacher.feat (the backbone's 512-d) through a linear layer, whatever width the head gives emb."""
    from ssl_kd.distillation import build_objective, build_student

    teacher = load_teacher(moco)
    for method, contrast in (("crd", "queue"), ("dlkd", "supcon")):
        cfg = _cfg(method, "head")
        cfg.loss.dlkd.contrast, cfg.loss.queue_size, cfg.student.proj_hidden = contrast, 8, 32
        view = in_embedding_space(cfg, teacher)
        assert (view.embed_dim, view.feat_dim) == (128, 512)
        student = build_student(cfg, view)
        objective = build_objective(cfg, view, student, 16)
        out = objective([torch.rand(4, 3, 32, 32) for _ in range(2)], torch.arange(4))
        losses = out[0] if isinstance(out, tuple) else out
        assert torch.isfinite(losses["loss"]), method


def test_validation_and_resume_check() -> None:
    from ssl_kd.validation import validate_config

    with pytest.raises(UserError, match=r"teacher.embedding=projector: not a known choice; give one of: auto, backbone, head"):
        validate_config(_cfg("seed", "projector"))
    saved, now = to_dict(_cfg("seed", "head")), to_dict(_cfg("seed", "backbone"))
    assert config_differences(saved, now) == ["teacher.embedding ('head' -> 'backbone')"]  # a resume is refused


def test_cache_key_tells_the_spaces_apart(moco: Path) -> None:
    from ssl_kd.data import build_dataset, resolve_data_config
    from ssl_kd.seeded_views import ViewPool
    from ssl_kd.teacher_cache import teacher_cache_key
    from ssl_kd.views import view_draw

    cfg = Config()
    cfg.data.subset = 8
    cfg.data = resolve_data_config(cfg.data)
    dataset, pool = build_dataset(cfg.data, "train", None), ViewPool(view_draw(cfg.data), 2, 2, 0)
    teacher = load_teacher(moco)

    def key(t) -> str:
        return teacher_cache_key(t, dataset, pool, recipe="r", dtype="float16", logits=False)

    assert key(teacher) != key(teacher.with_embedding("head")) and key(teacher) == key(load_teacher(moco))


# ------------------------------------------------------------------------------ inspect, and the main job


def _run(module_main, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        cli_main(lambda: module_main(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_inspect_shows_the_head(moco: Path, tmp_path: Path, capsys) -> None:
    status, out, _ = _run(teachers_main, ["inspect", str(moco)], capsys)
    assert status == 0
    assert ("projection head: present (Linear 512->512, ReLU, Linear 512->128; 128-d): MoCo v2 fc MLP, encoder_q.fc.*"
            in out)
    assert "format:     moco" in out  # the other rows keep their alignment
    status, out, _ = _run(teachers_main, ["inspect", SHIPPED], capsys)
    assert status == 0 and "projection head: none in this file" in out


def _distill_main():
    spec = importlib.util.spec_from_file_location("_heads_distill_ssl", REPO / "pipelines" / "distill_ssl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


TINY = ["train.epochs=1", "data.subset=64", "train.batch_size=32", "data.num_workers=0", "loss.queue_size=32",
        "eval.knn_ks=[1,20]", "student.proj_hidden=64"]


def test_head_on_a_headless_file_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    status, _, err = _run(_distill_main(), ["--out", str(tmp_path / "run"), "--teacher", SHIPPED, "teacher.embedding=head",
                                            *TINY], capsys)
    lines = err.strip().splitlines()
    assert status == EXIT_BAD_INPUT and len(lines) == 1 and "Traceback" not in err, err
    for phrase in ("error: teacher.embedding=head:", SHIPPED, "carries no SSL projection head", "teacher.embedding=backbone"):
        assert phrase in lines[0], phrase
    assert not (tmp_path / "run").exists()


def test_seed_run_distils_the_head_and_reports_it(moco: Path, tmp_path: Path, capsys) -> None:
    """The main job, tiny: SEED on a MoCo v2 file picks its head (auto); the student's projector is 128-d and the
    head stays out of the trained (checkpointed) parts; the report says head."""
    report = _distill_main()(["--out", str(tmp_path / "run"), "--teacher", str(moco), "--method", "seed",
                              "eval.linear_probe=false", *TINY])
    out = capsys.readouterr().out
    assert "teacher embedding: head (MoCo v2 fc MLP, 128-d) (teacher.embedding=auto)" in out
    embedding = report["teacher"]["embedding"]
    assert embedding == {"space": "head", "dim": 128, "line": "head (MoCo v2 fc MLP, 128-d)", "head": "MoCo v2 fc MLP",
                         "source": "encoder_q.fc.*", "layers": "Linear 512->512, ReLU, Linear 512->128"}
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["teacher"]["embedding"]["space"] == "head" and saved["config"]["teacher"]["embedding"] == "auto"
    assert "Teacher embedding: head (MoCo v2 fc MLP, 128-d), from teacher.embedding=auto;" in (tmp_path / "run" / "report.md").read_text()
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False, map_location="cpu")
    trainable = checkpoint["trainable"]
    assert not any("projection_head" in key for key in trainable)  # the head is the frozen teacher's, not trained
    last = [v for k, v in trainable.items() if k.startswith("student.projector.") and k.endswith("weight")][-1]
    assert last.shape[0] == 128


def test_a_teacher_pretrained_here_keeps_its_simclr_head(tmp_path):
    """pipelines/pretrain_ssl.py saves lightly's SimCLRProjectionHead with the backbone: `head` is exactly it."""
    import timm

    from ssl_kd.pretrain import SimCLRObjective
    from ssl_kd.teachers import load_teacher, save_teacher

    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", num_classes=0)
    objective = SimCLRObjective(backbone, (0.5,) * 3, (0.25,) * 3, proj_dim=16).eval()
    path = save_teacher(tmp_path / "teacher.pth", backbone, "resnet10t", mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32,
                        half=False, head=objective.projection_head_record())
    teacher = load_teacher(str(path), image_size=32)
    assert teacher.head_info.dim == 16 and teacher.head_info.name == "SimCLR projection MLP (lightly)"
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = objective.trainable["head"](backbone((images - objective.mean) / objective.std))
        torch.testing.assert_close(teacher.with_embedding("head")(images).emb, expected, rtol=0, atol=0)
