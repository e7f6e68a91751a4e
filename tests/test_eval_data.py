"""A separate labeled evaluation set (--eval-data): distil on one dataset, measure on another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from ssl_kd.config import DataConfig, load_config
from ssl_kd.evaluation.inputs import evaluation_data

REPO = Path(__file__).resolve().parents[1]


def test_without_eval_data_the_training_data_is_evaluated():
    train = DataConfig(name="digits")
    assert evaluation_data(train, None).name == "digits" and evaluation_data(train, None).image_size == 32


def test_a_separate_set_is_seen_at_the_training_size_unless_told():
    train = DataConfig(name="digits", num_workers=0)
    separate = evaluation_data(train, DataConfig(name="imagefolder", root="/data/x"))
    assert (separate.name, separate.root, separate.image_size, separate.num_workers) == ("imagefolder", "/data/x", 32, 0)
    assert evaluation_data(train, DataConfig(name="imagefolder", root="/x", image_size=64)).image_size == 64
    cfg = load_config(None, ["eval_data.name=imagefolder", "eval_data.root=/x"])
    assert cfg.eval_data.name == "imagefolder" and cfg.data.name == "digits"


def _labeled_folder(root: Path) -> None:
    """Two colour classes of 40 px images in class folders (no train/ split: 20 % held out as queries)."""
    generator = torch.Generator().manual_seed(0)
    for label, colour in enumerate(((220, 40, 40), (40, 40, 220))):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(10):
            noise = torch.randint(0, 30, (40, 40, 3), generator=generator).numpy()
            Image.fromarray((noise + torch.tensor(colour).numpy()).clip(0, 255).astype("uint8")).save(root / f"class{label}" / f"{i}.png")


def test_the_main_job_distils_on_digits_and_reports_on_a_separate_labeled_folder(tmp_path):
    folder, run = tmp_path / "labeled", tmp_path / "run"
    _labeled_folder(folder)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "distill_ssl.py"), "--epochs", "1", "--out", str(run),
                             "--eval-data", "imagefolder", "--eval-data-root", str(folder), "data.subset=64", "train.batch_size=32",
                             "data.num_workers=0", "loss.queue_size=64", "eval.knn_ks=[1,5]", "eval.knn_k=5"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    assert report["data"]["name"] == "digits"
    assert report["data"]["evaluation"] == {"name": "imagefolder", "root": str(folder), "image_size": 32}
    assert (report["data"]["train"], report["data"]["test"]) == (16, 4)  # the folder's bank and queries, not digits'
    assert report["teacher"]["knn"]["num_classes"] == 2
    assert "trained on digits, evaluated on imagefolder" in (run / "report.md").read_text()
