"""The main job end to end, at tiny sizes: the embedded default, a user's ImageFolder with a
MoCo v2 checkpoint, resume, and every bad input as one line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "distill_ssl.py"
TINY = ["data.subset=96", "train.batch_size=32", "data.num_workers=0", "loss.queue_size=64", "eval.knn_ks=[1,20]"]


def run_pipeline(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(PIPELINE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_default_job_end_to_end(tmp_path: Path) -> None:
    result = run_pipeline("--epochs", "1", "--out", str(tmp_path / "run"), *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    for row in (report["teacher"], report["student"], report["baselines"]["random_student"], report["baselines"]["raw_pixels"]):
        assert 0.0 <= row["knn_top1"] <= 100.0
        assert 0.0 <= row["linear_top1"] <= 100.0
    assert report["teacher"]["arch"] == "resnet14t" and report["student"]["arch"] == "resnet10t"
    assert report["student"]["params"] < report["teacher"]["params"]
    assert report["config"]["train"]["epochs"] == 1 and report["config"]["data"]["subset"] == 96
    assert report["teacher"]["knn_top1"] > 80.0  # the shipped teacher is a real one, even on 96 images
    assert "| teacher |" in result.stdout and "| raw pixels |" in result.stdout
    for name in ("config.yaml", "metrics.jsonl", "report.md", "checkpoints/last.pt", "student_timm.pth", "student_timm.json"):
        assert (run / name).exists(), name
    # the exported student loads with timm alone
    info = json.loads((run / "student_timm.json").read_text())
    model = timm.create_model(info["timm_name"], num_classes=0, checkpoint_path=str(run / "student_timm.pth"))
    assert model.num_features == 512


def _tiny_imagefolder(root: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for label, colour in enumerate(((220, 40, 40), (40, 40, 220))):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(8 if split == "train" else 4):
                noise = torch.randint(0, 30, (40, 40, 3), generator=generator).numpy()
                pixels = (noise + torch.tensor(colour).numpy()).clip(0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _moco_v2_checkpoint(path: Path) -> None:
    encoder = timm.create_model("resnet50", num_classes=0)
    state = {f"module.encoder_q.{k}": v for k, v in encoder.state_dict().items()}
    state.update({"module.encoder_q.fc.0.weight": torch.randn(2048, 2048), "module.encoder_q.fc.0.bias": torch.zeros(2048),
                  "module.encoder_q.fc.2.weight": torch.randn(128, 2048), "module.encoder_q.fc.2.bias": torch.zeros(128),
                  "module.queue": torch.randn(128, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)


def test_user_imagefolder_with_moco_v2_teacher(tmp_path: Path) -> None:
    _tiny_imagefolder(tmp_path / "images")
    _moco_v2_checkpoint(tmp_path / "moco_v2.pth")
    result = run_pipeline(
        "--teacher", "moco_v2.pth", "--teacher-arch", "resnet50", "--data", "imagefolder", "--data-root", "images",
        "--student", "resnet10t", "--epochs", "1", "--out", "run", "data.image_size=32", "train.batch_size=8",
        "data.num_workers=0", "loss.queue_size=32", "eval.knn_ks=[1,5]", "eval.knn_k=5", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"] == {"name": "imagefolder", "train": 16, "test": 8, "image_size": 32}
    assert report["teacher"]["arch"] == "resnet50" and report["teacher"]["feature_dim"] == 2048
    assert report["baselines"]["raw_pixels"]["knn_top1"] == 100.0  # red vs blue images: pixels separate them


def test_resume_continues_from_last_checkpoint(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    first = run_pipeline("--epochs", "1", "--out", out, *TINY, "eval.linear_probe=false", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_pipeline("--epochs", "2", "--out", out, *TINY, "eval.linear_probe=false", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stdout and "epoch 1/2" not in second.stdout and "epoch 2/2" in second.stdout
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "seconds" in line]
    assert epochs == [1, 2]


@pytest.mark.parametrize(
    "args, phrase",
    [  # the whole catalogue runs in-process in test_bad_inputs.py; these two prove the real process's exit
        (["--teacher", "missing.pth"], "does not exist"),
        (["--teacher", "t.pth"], "does not say its architecture; pass --teacher-arch"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], phrase: str) -> None:
    (tmp_path / "empty").mkdir()
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(tmp_path / "images" / label / f"{i}.png")
    backbone = timm.create_model("resnet10t", num_classes=0).state_dict()
    backbone.pop("layer4.0.conv2.weight")  # a damaged backbone: no stock architecture fits its shapes
    torch.save(backbone, tmp_path / "t.pth")
    result = run_pipeline(*args, "--out", "run", *TINY, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("error: ") and phrase in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
