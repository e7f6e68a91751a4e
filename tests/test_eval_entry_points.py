"""The eval/ entry points on a tiny finished run: the same numbers as the run's report, on the student
and on the teacher file, the feature cache reused, the combined report and its figures, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ssl_kd.defaults import default_teacher
from ssl_kd.errors import UserError
from ssl_kd.evaluation.plots import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.subset=96", "train.batch_size=32", "data.num_workers=0", "loss.queue_size=64", "eval.knn_ks=[1,20]",
        "eval.monitor_every=1"]
COMMON = ["--num-workers", "0", "--batch-size", "64"]


def script(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem + "_entry", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    script("pipelines/distill_ssl.py").main(["--epochs", "2", "--out", str(out), *TINY])
    return out


def test_knn_and_retrieval_reproduce_the_run_report(run: Path, tmp_path: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    cache = tmp_path / "cache"
    knn = script("eval/knn.py").main([str(run), "--ks", "20,1", "--cache-dir", str(cache), "--out", str(tmp_path / "knn.json"), *COMMON])
    assert knn["knn"]["top1"] == pytest.approx(report["student"]["knn_top1"], abs=1e-9)
    assert knn["knn"]["per_k"]["1"]["top1"] == pytest.approx(report["student"]["knn"]["per_k"]["1"]["top1"], abs=1e-9)
    assert knn["data"] == "digits" and knn["train"] == 96 and knn["test"] == 96  # the run's own data config
    confusion = json.loads((tmp_path / "knn.json").read_text())["classwise"]["confusion"]
    assert sum(map(sum, confusion)) == 96
    written = sorted(cache.iterdir())
    assert len(written) == 2  # train and test features
    stamps = [p.stat().st_mtime_ns for p in written]
    retrieval = script("eval/retrieval.py").main([str(run), "--cache-dir", str(cache), *COMMON])
    assert retrieval["retrieval"]["recall@1"] == pytest.approx(report["student"]["recall_at_1"], abs=1e-9)
    assert retrieval["retrieval"]["map@R"] == pytest.approx(report["student"]["map_at_r"], abs=1e-9)
    assert sorted(cache.iterdir()) == written and [p.stat().st_mtime_ns for p in written] == stamps  # reused, not rewritten


def test_linear_probe_protocols(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    cached = script("eval/linear_probe.py").main([str(run), "--cache-dir", "none", *COMMON])
    assert cached["linear"]["top1"] == pytest.approx(report["student"]["linear_top1"], abs=1e-9)  # deterministic L-BFGS
    augment = script("eval/linear_probe.py").main([str(run), "--protocol", "augment", "--epochs", "2", "--lr", "1.0", *COMMON])
    assert augment["linear"]["protocol"].startswith("augmented") and augment["linear"]["epochs"] == 2
    assert 0.0 <= augment["linear"]["top1"] <= 100.0


def test_the_same_command_measures_the_teacher_file(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    knn = script("eval/knn.py").main([str(default_teacher("digits")), "--subset", "96", "--ks", "20", "--cache-dir", "none", *COMMON])
    assert knn["arch"] == "resnet14t"
    assert knn["knn"]["top1"] == pytest.approx(report["teacher"]["knn_top1"], abs=1e-9)


def test_monitor_logs_knn_each_epoch_and_the_last_equals_the_report(run: Path) -> None:
    _, summaries = read_metrics(run / "metrics.jsonl")
    assert [s["epoch"] for s in summaries] == [1, 2] and all("knn_top1" in s for s in summaries)
    report = json.loads((run / "report.json").read_text())
    assert summaries[-1]["knn_top1"] == pytest.approx(report["student"]["knn_top1"], abs=1e-3)


def test_run_writes_its_figures_and_links_them(run: Path) -> None:
    markdown = (run / "report.md").read_text()
    for name in ("loss_curves.png", "knn_over_epochs.png", "features_student.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in markdown
    assert "| recall@1 | MAP@R |" in markdown


def test_combined_report_of_two_runs(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    combined = script("eval/report.py").main([str(run), str(run), "--labels", "a,b", "--out", str(out), "--cache-dir", "none"])
    labels = [label for label, _ in combined.rows()]
    assert labels == ["teacher (resnet14t)", "student: a (dlkd)", "student: b (dlkd)", "random-init student", "raw pixels"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["rows"][1]["knn_top1"] == json.loads((run / "report.json").read_text())["student"]["knn_top1"]
    for name in ("report.md", "loss_curves.png", "knn_over_epochs.png", "features_a.png", "features_b.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("entry, argv, phrase", [
    ("eval/report.py", ["{tmp}"], "has no report.json"),
    ("eval/knn.py", ["{tmp}/missing.pth"], "does not exist"),
    ("eval/knn.py", ["{tmp}"], "without student_timm.pth"),
    ("eval/knn.py", ["{run}", "--ks", "0"], "--ks must be"),
    ("eval/knn.py", ["{run}", "--ks", "20,5000"], r"k=5000 exceeds the \d+ images of the train split searched; give --ks 20"),
    ("eval/retrieval.py", ["{run}", "--ks", "1,5000"], "k=5000 exceeds the"),
    ("eval/report.py", ["{run}", "--labels", "a,b"], "--labels needs 1"),
])
def test_bad_input_is_a_user_error(run: Path, tmp_path: Path, entry: str, argv: list[str], phrase: str) -> None:
    argv = [a.format(tmp=tmp_path, run=run) for a in argv]
    with pytest.raises(UserError, match=phrase):
        script(entry).main([*argv, "--cache-dir", "none"])
