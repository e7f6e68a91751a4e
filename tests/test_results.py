"""The typed results: scores, protocol, one run's report and several runs' report: their numbers, their
Markdown, and report.json read back (including the layout earlier versions wrote)."""

from __future__ import annotations

import json

import pytest

from ssl_kd.config import EvalConfig
from ssl_kd.evaluation.report import MultiRunReport, RunReport, RunScores
from ssl_kd.evaluation.results import DataSummary, ModelScores, Protocol, TrainingSummary


def scores(top1: float, **description) -> ModelScores:
    return ModelScores(knn_top1=top1, knn_top5=99.0, recall_at_1=top1 - 1, map_at_r=top1 / 2, **description)


def run_report(student_top1: float = 90.0, source: str = "teacher.pth") -> RunReport:
    measured = RunScores(teacher=scores(96.0, arch="resnet14t", params=2_000_000, images_per_s=100.0, source=source),
                         student=scores(student_top1, arch="resnet10t", params=500_000, images_per_s=400.0, linear_top1=91.5),
                         baselines={"random_student": scores(60.0, arch="resnet10t"), "raw_pixels": scores(50.0, arch="pixels")},
                         protocol=Protocol(knn_k=20, knn_temperature=0.07))
    return RunReport.of(measured, method="dlkd", data=DataSummary("digits", 1257, 540, 32),
                        training=TrainingSummary(epochs=3, steps=30, seconds=61.0), machine="2 CPU threads (x86_64)",
                        config={"teacher": {"embedding": "auto"}})


def test_the_protocol_text_is_built_from_its_fields() -> None:
    protocol = Protocol.from_config(EvalConfig(knn_k=10, knn_temperature=0.1, linear_probe=False))
    line = protocol.line()
    assert line.startswith("Protocol: weighted k-NN (k=10, T=0.1) on L2-normalized backbone features") and "linear probe" not in line
    assert "linear probe: cached-features logistic regression (L-BFGS)" in Protocol(20, 0.07).line()
    assert Protocol.from_dict(protocol.to_dict()) == protocol
    written_before = {"knn_k": 20, "knn_temperature": 0.07, "knn": "...", "linear": "...", "retrieval": "..."}  # no "linear_probe" key
    assert Protocol.from_dict(written_before) == Protocol(20, 0.07, linear_probe=True)


def test_one_run_report_numbers_and_markdown() -> None:
    report = run_report()
    assert report.gap_closed() == pytest.approx(100 * (90 - 60) / (96 - 60))
    assert report.summary_lines() == ["student k-NN top-1 is 93.8% of the teacher's",
                                      "distillation closed 83.3% of the gap between the random-init student and the teacher",
                                      "the student has 4.00x fewer parameters and runs 4.00x faster at inference"]
    markdown = report.to_markdown()
    assert markdown.startswith("# ssl_kd report: dlkd on digits\n\nTeacher `teacher.pth` -> student `resnet10t`; "
                               "1257 train / 540 test images at 32 px; 3 epochs in 61 s on 2 CPU threads (x86_64).")
    assert "| student | resnet10t | 0.50 | 400 | 90.0 | 99.0 | 91.5 | 89.0 | 45.0 |" in markdown
    assert "| raw pixels | pixels | - | - | 50.0 | 99.0 | - | 49.0 | 25.0 |" in markdown
    assert "| model | arch | params (M) | images/s | k-NN top-1 (k=20, T=0.07) |" in markdown
    assert Protocol(20, 0.07).line() in markdown


def test_report_json_reads_back_as_it_was_written(tmp_path) -> None:
    report = run_report()
    report.teacher.embedding = {"space": "head", "dim": 128, "line": "head (MoCo v2 fc MLP, 128-d)"}
    json_path, md_path = report.save(tmp_path)
    assert RunReport.read(json_path) == report and json_path.read_text() == report.to_json()
    saved = json.loads(json_path.read_text())
    assert saved["student"]["knn_top1"] == 90.0 and saved["baselines"]["raw_pixels"]["arch"] == "pixels"
    assert "linear_top1" not in saved["teacher"]  # a number not measured is left out, not written as null
    assert "Teacher embedding: head (MoCo v2 fc MLP, 128-d), from teacher.embedding=auto;" in md_path.read_text()


def test_several_runs_show_each_teacher_once() -> None:
    combined = MultiRunReport({"a": run_report(90.0), "b": run_report(80.0), "c": run_report(70.0, source="other.pth")})
    labels = [label for label, _ in combined.rows()]
    assert labels == ["teacher (resnet14t)", "teacher (resnet14t)", "student: a (dlkd)", "student: b (dlkd)", "student: c (dlkd)",
                      "random-init student", "raw pixels"]
    assert [s.knn_top1 for label, s in combined.rows() if label.startswith("student")] == [90.0, 80.0, 70.0]
    assert "- b: dlkd on digits, 3 epochs, 61 s on 2 CPU threads (x86_64)" in combined.to_markdown()
    assert MultiRunReport.from_dict(json.loads(json.dumps(combined.to_dict()))) == combined
