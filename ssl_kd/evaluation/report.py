"""The run report: `report.json` (every number, its protocol and the config) and `report.md`.

Rows: teacher (then "teacher 2 (<arch>)", ... for `--teacher` repeated), student, and the baselines (the random-init student of the same architecture and
seed, i.e. the student before distillation, and raw pixels). Accuracies are percent on the test
split; the k-NN bank and the probe's training set are the train split.
"""

from __future__ import annotations

import json
from pathlib import Path

ROWS = (("teacher", ("teacher",)), ("student", ("student",)), ("random-init student", ("baselines", "random_student")),
        ("raw pixels", ("baselines", "raw_pixels")))


def row(report: dict, path: tuple[str, ...]) -> dict | None:
    node = report
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def gap_closed(report: dict) -> float | None:
    """Share of the random-student-to-teacher k-NN gap that distillation closed, in percent."""
    teacher, student, random = report["teacher"]["knn_top1"], report["student"]["knn_top1"], report["baselines"]["random_student"]["knn_top1"]
    if teacher - random <= 0:
        return None
    return 100.0 * (student - random) / (teacher - random)


def markdown_table(report: dict) -> str:
    k, temperature = report["protocol"]["knn_k"], report["protocol"]["knn_temperature"]
    header = f"| model | arch | params (M) | images/s | k-NN top-1 (k={k}, T={temperature}) | k-NN top-5 | linear top-1 |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|"]
    extra = [(f"teacher {k} ({r.get('arch', '-')})", r) for k, r in enumerate(report.get("extra_teachers", []), start=2)]
    rows = [(label, row(report, path)) for label, path in ROWS[:1]] + extra + [(label, row(report, path)) for label, path in ROWS[1:]]
    for label, r in rows:
        if r is None:
            continue
        params = f"{r['params'] / 1e6:.2f}" if r.get("params") else "-"
        speed = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "-"
        linear = f"{r['linear_top1']:.1f}" if "linear_top1" in r else "-"
        lines.append(f"| {label} | {r.get('arch', '-')} | {params} | {speed} | {r['knn_top1']:.1f} | {r['knn_top5']:.1f} | {linear} |")
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    teacher, student = report["teacher"], report["student"]
    lines = [f"student k-NN top-1 is {100 * student['knn_top1'] / teacher['knn_top1']:.1f}% of the teacher's"]
    closed = gap_closed(report)
    if closed is not None:
        lines.append(f"distillation closed {closed:.1f}% of the gap between the random-init student and the teacher")
    if teacher.get("params") and student.get("params"):
        lines.append(f"the student has {teacher['params'] / student['params']:.2f}x fewer parameters"
                     + (f" and runs {student['images_per_s'] / teacher['images_per_s']:.2f}x faster at inference"
                        if teacher.get("images_per_s") and student.get("images_per_s") else ""))
    return lines


def write_report(out_dir: Path, report: dict) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2))
    data = report["data"]
    md = [
        f"# ssl_kd report: {report['method']} on {data['name']}",
        "",
        f"Teacher `{report['teacher']['source']}` -> student `{report['student']['arch']}`; "
        f"{data['train']} train / {data['test']} test images at {data['image_size']} px; "
        f"{report['training']['epochs']} epochs in {report['training']['seconds']:.0f} s on {report['machine']}.",
        "",
        markdown_table(report),
        "",
        *[f"- {line}" for line in summary_lines(report)],
        "",
        f"Protocol: {report['protocol']['knn']}; {report['protocol']['linear']}.",
        "",
    ]
    md_path.write_text("\n".join(md))
    return json_path, md_path
