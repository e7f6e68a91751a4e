"""pipelines/compare.py at a tiny size, and the mean ± std aggregation it reports."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_kd.commands import compare as COMPARE
from ssl_kd.config import Config
from ssl_kd.evaluation.compare import Comparison, SeedRun
from ssl_kd.evaluation.results import DataSummary, ModelScores, Protocol, Summary

REPO = Path(__file__).resolve().parents[1]


def test_summary_is_mean_and_sample_std() -> None:
    s = Summary.of([90.0, 92.0, 97.0])
    assert s.mean == pytest.approx(93.0) and s.std == pytest.approx(statistics.stdev([90, 92, 97])) and s.n == 3
    assert Summary.of([50.0]).std == 0.0


def _seed_run(top1: float, top5: float, **times) -> SeedRun:
    return SeedRun(ModelScores(knn_top1=top1, knn_top5=top5, recall_at_1=50.0, map_at_r=20.0), teacher_embedding="backbone", **times)


def test_rows_and_their_markdown() -> None:
    comparison = Comparison.of({"teacher": [_seed_run(98.0, 100.0)],
                                "dlkd": [_seed_run(96.0, 99.0, train_seconds=10.0, wall_seconds=14.0),
                                         _seed_run(98.0, 100.0, train_seconds=12.0, wall_seconds=17.0)]},
                               methods=["dlkd"], seeds=2, epochs=1, student="resnet10t", teacher={"arch": "resnet14t", "source": "t.pth"},
                               data=DataSummary("digits", 1257, 540, 32), machine="2 CPU threads", protocol=Protocol(20, 0.07))
    dlkd = comparison.row("dlkd")
    assert dlkd.metrics["knn_top1"].mean == 97.0 and dlkd.seconds["train_seconds"].mean == 11.0
    assert dlkd.seconds["wall_seconds"].mean == 15.5 and dlkd.teacher_embedding == "backbone" and dlkd.seeds == 2
    text = comparison.table()
    assert "| dlkd | backbone | 97.0 ± 1.4 | 99.5 ± 0.7 | - | 50.0 ± 0.0 | 20.0 ± 0.0 | 11 | 16 | 2 |" in text
    assert "| teacher | backbone | 98.0 | 100.0 | - | 50.0 | 20.0 | - | - | 1 |" in text
    assert "| row | teacher space | k-NN top-1 (k=20, T=0.07) |" in text and "| MAP@R | train s | wall s | seeds |" in text
    again = Comparison.from_dict(json.loads(json.dumps(comparison.to_dict())))
    assert again == comparison  # compare.json holds all of it


def run_compare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "compare.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_compare_pipeline_tiny(tmp_path: Path) -> None:
    args = ["--methods", "dlkd,ssl_scratch,dlkd@supcon@rotations", "--seeds", "2", "--epochs", "1", "--out", "cmp", "data.subset=48",
            "train.batch_size=16", "data.num_workers=0", "loss.queue_size=32", "eval.linear_probe=false", "eval.knn_ks=[1,20]"]
    result = run_compare(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "cmp"
    report = json.loads((out / "compare.json").read_text())
    assert list(report["table"]) == ["teacher", "dlkd", "ssl_scratch", "dlkd@supcon@rotations", "random-init student", "raw pixels"]
    variant = torch.load(out / "dlkd@supcon@rotations" / "seed0" / "checkpoints" / "last.pt", weights_only=True)["config"]
    assert (variant["loss"]["method"], variant["loss"]["dlkd"]["contrast"], variant["data"]["views"]) == ("dlkd", "supcon", "rotations")
    runs = [json.loads((out / "dlkd" / f"seed{s}" / "result.json").read_text())["knn_top1"] for s in (0, 1)]
    assert report["table"]["dlkd"]["knn_top1"]["mean"] == pytest.approx(sum(runs) / 2)
    assert (out / "compare.png").stat().st_size > 0 and "| ssl_scratch | - |" in (out / "compare.md").read_text()
    assert report["table"]["dlkd"]["teacher_embedding"] == "backbone" and report["table"]["dlkd"]["wall_seconds"]["n"] == 2
    assert 0.0 <= report["table"]["dlkd"]["map_at_r"]["mean"] <= 100.0 and "recall_at_1" in report["table"]["raw pixels"]
    again = run_compare(*args, cwd=tmp_path)  # every run is done: nothing is trained again
    assert again.returncode == 0 and "distilling" not in again.stdout and "done before" in again.stdout


def test_variants_set_their_keys() -> None:
    assert COMPARE.chosen_methods("seed@head,dlkd@supcon@rotations") == ["seed@head", "dlkd@supcon@rotations"]
    run = COMPARE.seeded(Config(), "seed@head", 2, Path("cmp"))
    assert (run.loss.method, run.teacher.embedding, run.train.seed, run.out) == ("seed", "head", 2, str(Path("cmp/seed@head/seed2")))


def test_compare_rejects_unknown_methods(tmp_path: Path) -> None:
    result = run_compare("--methods", "dlkd,nope,dlkd@sideways", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: unknown method(s) nope, dlkd@sideways")
