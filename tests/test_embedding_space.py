"""`teacher.embedding=backbone|head|auto`: auto's per-method choice, the one-line refusals, `inspect`, the cache
key, the resume check, and one tiny end-to-end SEED run whose report says it used the head.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from _models import random_model
from head_files import _moco_v2, _root_logging_restored  # noqa: F401  (the fixture applies here too)

from ssl_kd.config import Config, to_dict
from ssl_kd.distillation import HEAD_SPACE_METHODS, embedding_space, in_embedding_space
from ssl_kd.errors import EXIT_BAD_INPUT, UserError, cli_main
from ssl_kd.run_checkpoints import config_differences
from ssl_kd.teachers import load_teacher
from ssl_kd.teachers.__main__ import main as teachers_main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = str(REPO / "ssl_kd" / "assets" / "digits_resnet14t_simclr.pth")  # an ssl_kd file: no head

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


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
    embedding = report.teacher.embedding
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
