"""The catalogue of bad inputs (docs/bad-inputs.md) on the main job: each one exit status 2, one line on
stderr naming the problem and the fix, no traceback, nothing written; and a ViT student at 32 px.

The job runs in-process (`ssl_kd.errors.cli_main` around `pipelines/distill_ssl.py`'s `main`), so a row
costs what its check costs: the config checks fail before any data is read, the data checks before the
teacher loads, and none of them trains.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from ssl_kd import validation
from ssl_kd.commands import compare as COMPARE
from ssl_kd.commands import distill as DISTILL
from ssl_kd.commands import pretrain as PRETRAIN
from ssl_kd.config import EvalConfig, PretrainConfig, load_config
from ssl_kd.errors import EXIT_BAD_INPUT, UserError, cli_main
from ssl_kd.validation import check_knn_bank, validate_config, validate_output_dir

REPO = Path(__file__).resolve().parents[1]
TEACHER = str(REPO / "ssl_kd" / "assets" / "digits_resnet14t_simclr.pth")
TINY = ["data.subset=64", "train.batch_size=32", "data.num_workers=0", "loss.queue_size=32", "eval.knn_ks=[1,20]"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The files the rows name: broken teachers and configs, tiny image folders, a plain file."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "empty").mkdir()
    for label in ("a", "b"):
        (root / "images" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(root / "images" / label / f"{i}.png")
    (root / "unlabeled").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(root / "unlabeled" / f"{i}.png")
    backbone = timm.create_model("resnet10t", num_classes=0).state_dict()
    backbone.pop("layer4.0.conv2.weight")  # a damaged backbone: no stock architecture fits its shapes
    torch.save(backbone, root / "t.pth")
    (root / "corrupt.pth").write_bytes(bytes(range(256)) * 16)
    (root / "empty.pth").write_bytes(b"")
    import fractions

    # its only "weight" is a pickled object: a teacher load reads foreign objects as inert stand-ins, and finds no tensor
    torch.save({"state_dict": {"conv1.weight": fractions.Fraction(1, 3)}, "meta": fractions.Fraction(1, 3)},
               root / "pickled.pth")
    (root / "bad.yaml").write_text("train:\n  epochs: [3\n")
    (root / "list.yaml").write_text("- train\n- data\n")
    (root / "afile").write_text("not a folder\n")
    return root


def run_main(module, args: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `module.main(args)` run as the command line runs it."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(lambda: module.main(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def assert_one_line(code: int, err: str, phrases: list[str]) -> str:
    lines = err.strip().splitlines()
    assert code == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


FLAG_KEYS = {"--epochs": "train.epochs", "--batch-size": "train.batch_size"}


def with_tiny(args: list[str]) -> list[str]:
    """`args` after the tiny sizes it does not set itself (overrides win over flags: a row's own must stay)."""
    given = {FLAG_KEYS.get(a, a.split("=")[0]) for a in args}
    return [item for item in ["train.epochs=1", *TINY] if item.split("=")[0] not in given] + args


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the row is about a machine without CUDA")

# (args, key words of the one line); every row is in docs/bad-inputs.md, in this order
CATALOGUE = [
    pytest.param(["--epochs", "-3"], ["train.epochs=-3", "at least 1", "--epochs"], id="epochs-negative"),
    pytest.param(["--epochs", "0"], ["train.epochs=0", "at least 1"], id="epochs-zero"),
    pytest.param(["--batch-size", "0"], ["train.batch_size=0", "at least 1", "--batch-size"], id="batch-size-zero"),
    pytest.param(["train.lr=-1"], ["train.lr=-1.0", "above 0"], id="lr-negative"),
    pytest.param(["train.lr=nan"], ["train.lr=nan", "finite"], id="lr-nan"),
    pytest.param(["train.weight_decay=-0.1"], ["train.weight_decay=-0.1", "negative"], id="weight-decay-negative"),
    pytest.param(["loss.queue_size=0"], ["loss.queue_size=0", "at least 1"], id="queue-size-zero"),
    pytest.param(["data.num_workers=-1"], ["data.num_workers=-1", "negative", "give 0"], id="num-workers-negative"),
    pytest.param(["teacher.image_size=0"], ["teacher.image_size=0", "at least 1", "null"], id="teacher-image-size-zero"),
    pytest.param(["data.image_size=0"], ["data.image_size=0", "at least 1"], id="data-image-size-zero"),
    pytest.param(["eval.knn_k=0"], ["eval.knn_k=0", "at least 1"], id="knn-k-zero"),
    pytest.param(["eval.knn_k=5000"], ["eval.knn_k=5000", "64 images of the k-NN bank", "eval.knn_k=20"], id="knn-k-above-bank"),
    pytest.param(["eval.knn_ks=[1,20,2000]"], ["eval.knn_ks=[1,20,2000]", "k=2000", "eval.knn_ks=[1,20]"], id="knn-ks-above-bank"),
    pytest.param(["eval.knn_temperature=0"], ["eval.knn_temperature=0.0", "above 0"], id="knn-temperature-zero"),
    pytest.param(["eval.batch_size=0"], ["eval.batch_size=0", "at least 1"], id="eval-batch-size-zero"),
    pytest.param(["eval.monitor_every=-1"], ["eval.monitor_every=-1", "negative"], id="monitor-every-negative"),
    pytest.param(["eval.search=annoy"], ["eval.search=annoy", "auto, torch, faiss, hnsw"], id="search-backend"),
    pytest.param(["data.val_fraction=1.5"], ["data.val_fraction=1.5", "between 0 and 1"], id="val-fraction"),
    pytest.param(["data.max_bad_fraction=2"], ["data.max_bad_fraction=2.0", "not a fraction"], id="max-bad-fraction"),
    pytest.param(["data.subset=0"], ["data.subset=0", "at least 1"], id="subset-zero"),
    pytest.param(["data.min_scale=0"], ["data.min_scale=0.0", "above 0"], id="min-scale-zero"),
    pytest.param(["data.hflip=1.5"], ["data.hflip=1.5", "not a probability"], id="hflip-probability"),
    pytest.param(["data.views=patches"], ["data.views=patches", "crops, rotations"], id="views"),
    pytest.param(["train.precision=fp64"], ["train.precision=fp64", "auto, fp32, bf16, fp16"], id="precision"),
    pytest.param(["train.device=gpu"], ["train.device=gpu", "cuda:N"], id="device-name"),
    pytest.param(["train.device=cuda"], ["train.device=cuda", "CUDA is not available", "train.device=cpu"], id="device-no-cuda",
                 marks=NO_CUDA),
    pytest.param(["train.sync_bn=true"], ["train.sync_bn=true", "CUDA", "train.sync_bn=false"], id="sync-bn-cpu", marks=NO_CUDA),
    pytest.param(["train.dist_backend=mpi"], ["train.dist_backend=mpi", "auto, nccl, gloo"], id="dist-backend"),
    pytest.param(["train.seed=-1"], ["train.seed=-1", "negative"], id="seed-negative"),
    pytest.param(["train.teacher_cache=-1"], ["train.teacher_cache=-1", "0 for no cache"], id="teacher-cache-negative"),
    pytest.param(["train.teacher_cache_dtype=bfloat16"], ["train.teacher_cache_dtype=bfloat16", "float16, float32"],
                 id="teacher-cache-dtype"),
    pytest.param(["loss.dlkd.contrast_temperature=0"], ["loss.dlkd.contrast_temperature=0.0", "above 0"], id="temperature-zero"),
    pytest.param(["loss.dlkd.align_weight=-1"], ["loss.dlkd.align_weight=-1.0", "negative", "term off"], id="loss-weight-negative"),
    pytest.param(["loss.dlkd.contrast=labels"], ["loss.dlkd.contrast=labels", "queue", "supcon"], id="dlkd-contrast-unknown"),
    pytest.param(["loss.compress.queues=3"], ["loss.compress.queues=3", "1, 2"], id="compress-queues"),
    pytest.param(["--out", "afile"], ["out=afile", "file of that name exists", "folder"], id="out-is-file"),
    pytest.param(["--out", "afile/run"], ["out=afile/run", "afile is a file"], id="out-under-file"),
    pytest.param(["train.epoch=3"], ["unknown config key 'train.epoch'", "did you mean 'train.epochs'"], id="unknown-key"),
    pytest.param(["train.epochs=abc"], ["bad value for 'train.epochs'", "type"], id="wrong-type"),
    pytest.param(["train.epochs"], ["not key=value", "train.epochs=5"], id="override-not-key-value"),
    pytest.param(["--config", "nope.yaml"], ["config file nope.yaml does not exist"], id="config-missing"),
    pytest.param(["--config", "bad.yaml"], ["bad.yaml is not valid YAML", "fix its syntax"], id="config-bad-yaml"),
    pytest.param(["--config", "list.yaml"], ["must hold a mapping of sections"], id="config-not-mapping"),
    pytest.param(["--teacher", "missing.pth"], ["teacher.path=missing.pth", "does not exist"], id="teacher-missing"),
    pytest.param(["--teacher", "images"], ["teacher.path=images", "is a directory"], id="teacher-directory"),
    pytest.param(["--teacher", "empty.pth"], ["empty.pth is empty (0 bytes)"], id="teacher-empty-file"),
    pytest.param(["--teacher", "corrupt.pth"], ["corrupt.pth is not a readable PyTorch checkpoint"], id="teacher-corrupt"),
    pytest.param(["--teacher", "pickled.pth"], ["pickles fractions.Fraction", "--trust-checkpoint"], id="teacher-foreign-pickle"),
    pytest.param(["--teacher", "t.pth"], ["does not say its architecture", "--teacher-arch"], id="teacher-no-arch"),
    pytest.param(["--teacher", "t.pth", "--teacher-arch", "resnet_nonexistent"], ["is not a timm model name"], id="teacher-arch-unknown"),
    pytest.param(["--teacher-format", "nope"], ["unknown teacher format 'nope'"], id="teacher-format-unknown"),
    pytest.param(["--teacher-format", "moco"], ["not a moco checkpoint", "layouts that match it: ssl_kd"], id="teacher-format-wrong"),
    pytest.param(["--teacher", TEACHER, "--teacher", TEACHER, "teacher.weights=[1,0.5,2]"],
                 ["teacher.weights has 3 values but there are 2 teachers"], id="teacher-weights-length"),
    pytest.param(["teacher.weights=[0]"], ["teacher.weights=[0.0]", "nothing to distil"], id="teacher-weights-zero"),
    pytest.param(["--method", "nope"], ["unknown method 'nope'", "dlkd"], id="method-unknown"),
    pytest.param(["--data", "imagenet21k"], ["unknown dataset 'imagenet21k'", "--data"], id="dataset-unknown"),
    pytest.param(["--eval-data", "imagenet21k"], ["unknown dataset 'imagenet21k'", "--eval-data"], id="eval-dataset-unknown"),
    pytest.param(["--student", "resnet_nonexistent"], ["unknown model 'resnet_nonexistent'", "student.arch"], id="student-unknown"),
    pytest.param(["--student", "beit_base_patch16_224"], ["student.arch=beit_base_patch16_224", "224 px", "32 px", "data.image_size=224"],
                 id="student-fixed-size"),
    pytest.param(["--student", "convnext_atto", "student.small_stem=true"], ["student.small_stem needs a ResNet", "small_stem=false"],
                 id="small-stem-not-resnet"),
    pytest.param(["--data", "cifar10"], ["dataset 'cifar10' needs a folder", "--data-root"], id="data-root-missing"),
    pytest.param(["--data", "imagefolder", "--data-root", "missing_dir", "--teacher", "t.pth"], ["data root missing_dir is not a folder"],
                 id="data-root-not-folder"),
    pytest.param(["--data", "imagefolder", "--data-root", "empty", "--teacher", "t.pth"], ["no images in empty"], id="imagefolder-empty"),
    pytest.param(["--data", "imagefolder", "--data-root", "images"], ["no default teacher for dataset 'imagefolder'", "--teacher"],
                 id="no-default-teacher"),
    pytest.param(["--data", "folder", "--data-root", "unlabeled", "--teacher", "t.pth"], ["unlabeled images", "--eval-data"],
                 id="unlabeled-without-eval-data"),
    pytest.param(["--eval-data", "folder", "--eval-data-root", "unlabeled"], ["dataset 'folder' holds unlabeled images"],
                 id="eval-data-unlabeled"),
]


@pytest.mark.parametrize("args, phrases", CATALOGUE)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(inputs: Path, tmp_path: Path, monkeypatch, capsys, args, phrases) -> None:
    monkeypatch.chdir(inputs)
    before = sorted(p.name for p in inputs.iterdir())
    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    code, _, err = run_main(DISTILL, [*out, *with_tiny(args)], capsys)
    assert_one_line(code, err, phrases)
    assert not (tmp_path / "run").exists()  # no run folder for a bad input
    assert sorted(p.name for p in inputs.iterdir()) == before and (inputs / "afile").read_text() == "not a folder\n"


def test_out_in_a_read_only_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: give the answer the kernel gives everyone else
        real = os.access
        monkeypatch.setattr(validation.os, "access", lambda path, mode: False if Path(path) == locked else real(path, mode))
    try:
        code, _, err = run_main(DISTILL, ["--out", str(locked / "run"), *with_tiny([])], capsys)
    finally:
        locked.chmod(0o755)
    assert_one_line(code, err, [f"out={locked / 'run'}", "is not writable", "folder you can write to"])
    assert not (locked / "run").exists()


def test_the_other_pipelines_check_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(COMPARE, ["--epochs", "-3", "--out", "cmp"], capsys)
    assert_one_line(code, err, ["train.epochs=-3"])
    code, _, err = run_main(PRETRAIN, ["--out", "pre", "data.num_workers=-1"], capsys)
    assert_one_line(code, err, ["data.num_workers=-1"])
    code, _, err = run_main(PRETRAIN, ["--out", "pre", "temperature=0"], capsys)
    assert_one_line(code, err, ["temperature=0.0", "above 0"])
    code, _, err = run_main(PRETRAIN, ["--out", "pre", "--arch", "resnet_nonexistent"], capsys)
    assert_one_line(code, err, ["unknown model 'resnet_nonexistent' (arch)"])
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "pre").exists()


def test_defaults_are_valid(tmp_path: Path) -> None:
    validate_config(load_config(str(REPO / "configs" / "digits-default.yaml")))
    validate_config(load_config(str(REPO / "configs" / "digits-teacher.yaml"), schema=PretrainConfig))
    validate_output_dir(tmp_path / "new" / "run")  # creates nothing
    validate_output_dir(tmp_path)  # an existing folder (a run to resume)
    assert not (tmp_path / "new").exists()


def test_the_default_knn_ks_beyond_a_small_bank_only_warn(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ssl_kd"):
        check_knn_bank(EvalConfig(), 48, "digits")  # default ks [1, 10, 20, 50, 200]: a quick look at data.subset=48
    assert "k=50, 200 exceed the 48 images" in caplog.text and "eval.knn_ks=[1,10,20]" in caplog.text
    with pytest.raises(UserError, match=r"eval.knn_ks=\[1,100\]: k=100 exceeds the 48 images"):
        check_knn_bank(EvalConfig(knn_ks=[1, 100]), 48, "digits")
    with pytest.raises(UserError, match="eval.knn_k=49: more neighbours than the 48 images"):
        check_knn_bank(EvalConfig(knn_k=49, knn_ks=[1]), 48)
    check_knn_bank(EvalConfig(knn_k=48, knn_ks=[1, 48]), 48)


def test_vit_student_trains_a_step_at_32_px(tmp_path: Path, monkeypatch, capsys) -> None:
    """timm's ViT is built for 224 px; the student is built as the ViT teachers are (dynamic_img_size), so
    it takes the 32 px digits, and its export loads back for evaluation at 32 px."""
    monkeypatch.chdir(tmp_path)
    args = ["--student", "vit_tiny_patch16_224", "--epochs", "1", "--out", "run", "data.subset=16", "train.batch_size=16",
            "data.num_workers=0", "loss.queue_size=16", "student.proj_hidden=64", "eval.knn_k=5", "eval.knn_ks=[1,5]",
            "eval.linear_probe=false", "eval.monitor_every=0"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(lambda: DISTILL.main(args))
    _, err = capsys.readouterr()
    assert exit_info.value.code == 0, err[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["student"]["arch"] == "vit_tiny_patch16_224" and report["training"]["steps"] == 1
    assert torch.isfinite(torch.tensor(report["training"]["final"]["loss"]))

    from ssl_kd.evaluation.models import load_eval_model

    exported = load_eval_model(tmp_path / "run")
    assert exported(torch.rand(2, 3, 32, 32)).feat.shape == (2, 192)
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=0, checkpoint_path=str(tmp_path / "run" / "student_timm.pth"))
    assert plain.num_features == 192  # stock shapes: the export loads with plain timm
    info = json.loads((tmp_path / "run" / "student_timm.json").read_text())
    at_data_size = timm.create_model(info["timm_name"], num_classes=0, checkpoint_path=str(tmp_path / "run" / "student_timm.pth"),
                                     **info["model_kwargs"])  # what the JSON's load line says
    assert "dynamic_img_size=True" in info["load"] and at_data_size(torch.rand(2, 3, 32, 32)).shape == (2, 192)
