"""Reports: `report.json` (every number, its protocol and the config), `report.md` and the figures.

One run (`write_report`, called by `pipelines/distill_ssl.py`): rows teacher (then "teacher 2 (<arch>)",
... for `--teacher` repeated), student, and the baselines (the random-init student of the same
architecture and seed, i.e. the student before distillation, and raw pixels). Several runs
(`write_multi_report`, called by `eval/report.py`): the teacher(s), one student row per run, then the
first run's baselines. Accuracies, recall@1 and MAP@R are percent on the test split; the k-NN bank,
the retrieval database and the probe's training set are the train split.

Figures (`write_figures`): loss_curves.png, knn_over_epochs.png (from metrics.jsonl) and
features_<run>.png (a PCA or t-SNE scatter of the student's test features, coloured by class).

`report["teacher"]["embedding"]` (and each extra teacher's) records the space the method saw the teacher's
embedding in (`teacher.embedding`: "backbone", or "head" with the projection head's name and width);
report.md says it in one line. The teacher's own rows always score its backbone feature.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..provenance import record_line
from .plots import plot_feature_scatter, plot_knn_over_epochs, plot_loss_curves, read_metrics
from .tables import knn_header, number, protocol_line, render_table

BASELINES = (("random-init student", "random_student"), ("raw pixels", "raw_pixels"))
COLUMNS = ("params (M)", "images/s", "k-NN top-1", "k-NN top-5", "linear top-1", "recall@1", "MAP@R")


def gap_closed(report: dict) -> float | None:
    """Share of the random-student-to-teacher k-NN gap that distillation closed, in percent."""
    teacher, student = report["teacher"]["knn_top1"], report["student"]["knn_top1"]
    random = report["baselines"]["random_student"]["knn_top1"]
    if teacher - random <= 0:
        return None
    return 100.0 * (student - random) / (teacher - random)


def report_rows(report: dict) -> list[tuple[str, dict]]:
    """(label, numbers) of one run's report, in table order."""
    rows = [("teacher", report["teacher"])]
    rows += [(f"teacher {k} ({r.get('arch', '-')})", r) for k, r in enumerate(report.get("extra_teachers", []), start=2)]
    rows.append(("student", report["student"]))
    rows += [(label, report["baselines"][key]) for label, key in BASELINES if key in report.get("baselines", {})]
    return rows


def markdown_rows(rows: list[tuple[str, dict]], protocol: dict) -> str:
    """A Markdown table of (label, numbers) rows: model, arch, then `COLUMNS`."""
    knn = knn_header(protocol["knn_k"], protocol["knn_temperature"])
    header = ["model", "arch", *(knn if name == "k-NN top-1" else name for name in COLUMNS)]
    body = [[label, r.get("arch", "-"), number(r.get("params"), 1e6, 2), number(r.get("images_per_s"), digits=0),
             *(number(r.get(key)) for key in ("knn_top1", "knn_top5", "linear_top1", "recall_at_1", "map_at_r"))]
            for label, r in rows]
    return render_table(header, body, text_columns=2)


def markdown_table(report: dict) -> str:
    return markdown_rows(report_rows(report), report["protocol"])


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


def figure_lines(figures: dict[str, Path], out_dir: Path) -> list[str]:
    return [f"![{name}]({Path(path).relative_to(out_dir)})" for name, path in figures.items()]


def _evaluation_line(data: dict) -> str:
    """Which images the numbers come from: the training data's splits, or a separate evaluation set."""
    evaluation = data.get("evaluation")
    unreadable = data.get("unreadable_images", 0)
    skipped = f", {unreadable} unreadable training image{'s' if unreadable != 1 else ''} skipped" if unreadable else ""
    if evaluation:
        return (f"trained on {data['name']}{skipped}, evaluated on {evaluation['name']} ({data['train']} bank / {data['test']} query "
                f"images at {evaluation['image_size']} px)")
    return f"{data['train']} train / {data['test']} test images at {data['image_size']} px{skipped}"


def _teacher_cache_line(caches: list[dict]) -> str:
    """" The teacher's outputs came from a cache of V draws per image, built in S s (this run) / reused." or ""."""
    if not caches:
        return ""
    cache = caches[0]
    how = f"built by this run in {cache['build_seconds']:.0f} s" if cache["built_now"] else "reused from an earlier run"
    return (f" The teacher's outputs came from its cache of {cache['draws']} augmented draws per image ({how}); "
            "the teacher was not run during training.")


def embedding_line(report: dict) -> str:
    """` Teacher embedding: head (MoCo v2 fc MLP, 128-d), from teacher.embedding=auto; ...` or "" (older reports, ssl_scratch)."""
    teachers = [("Teacher", report["teacher"])]
    teachers += [(f"teacher {k}", r) for k, r in enumerate(report.get("extra_teachers", []), start=2)]
    parts = [f"{label} embedding: {r['embedding']['line']}" for label, r in teachers if isinstance(r.get("embedding"), dict)]
    if not parts:
        return ""
    choice = (report.get("config") or {}).get("teacher", {}).get("embedding")
    origin = f", from teacher.embedding={choice}" if choice else ""
    return (f" {'; '.join(parts)}{origin}; the teacher rows evaluate the backbone feature, as the SSL protocol does.")


def write_report(out_dir: Path, report: dict, figures: dict[str, Path] | None = None) -> tuple[Path, Path]:
    """report.json and report.md of one run (the figures, already written, are linked from the Markdown)."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2))
    data = report["data"]
    md = [
        f"# ssl_kd report: {report['method']} on {data['name']}",
        "",
        f"Teacher `{report['teacher']['source']}` -> student `{report['student']['arch']}`; "
        f"{_evaluation_line(data)}; "
        f"{report['training']['epochs']} epochs in {report['training']['seconds']:.0f} s on {report['machine']}."
        f"{_teacher_cache_line(report['training'].get('teacher_cache', []))}{embedding_line(report)}",
        "",
        markdown_table(report),
        "",
        *[f"- {line}" for line in summary_lines(report)],
        "",
        protocol_line(report["protocol"]),
        *([record_line(report["reproducibility"]), ""] if report.get("reproducibility") else []),
        "",
        *figure_lines(figures or {}, out_dir),
        "",
    ]
    md_path.write_text("\n".join(md))
    return json_path, md_path


def write_figures(out_dir: Path, metrics: dict[str, Path], teacher_top1: float | None = None,
                  features: dict[str, tuple] | None = None, scatter: str = "pca") -> dict[str, Path]:
    """loss_curves.png and knn_over_epochs.png from each run's metrics.jsonl ({label: path}), and
    features_<label>.png for each {label: (feats, labels, class_names)}. Returns {figure name: path}."""
    out_dir = Path(out_dir)
    runs = {label: read_metrics(path) for label, path in metrics.items() if Path(path).is_file()}
    figures: dict[str, Path] = {}
    if runs:
        figures["training loss"] = plot_loss_curves(runs, out_dir / "loss_curves.png")
        knn = plot_knn_over_epochs({label: summaries for label, (_, summaries) in runs.items()}, out_dir / "knn_over_epochs.png",
                                   teacher_top1=teacher_top1)
        if knn is not None:
            figures["student k-NN top-1 over epochs"] = knn
    for label, (feats, labels, class_names) in (features or {}).items():
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        figures[f"{label} test features ({scatter.upper()})"] = plot_feature_scatter(
            feats, labels, out_dir / f"features_{name}.png", method=scatter, class_names=class_names,
            title=f"{label}: test features ({scatter.upper()})")
    return figures


def multi_report(reports: dict[str, dict]) -> dict:
    """The combined report of several runs ({label: report.json}): rows, protocol, and every run's numbers."""
    first = next(iter(reports.values()))
    rows, teachers = [], set()
    for label, report in reports.items():
        source = report["teacher"].get("source")
        if source not in teachers:
            teachers.add(source)
            rows.append((f"teacher ({report['teacher'].get('arch', '-')})", report["teacher"]))
    rows += [(f"student: {label} ({report.get('method', '-')})", report["student"]) for label, report in reports.items()]
    rows += [(label, first["baselines"][key]) for label, key in BASELINES if key in first.get("baselines", {})]
    return {"rows": [{"label": label, **r} for label, r in rows], "protocol": first["protocol"], "runs": reports}


def write_multi_report(out_dir: Path, combined: dict, figures: dict[str, Path]) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(combined, indent=2, default=str))
    rows = [(r["label"], r) for r in combined["rows"]]
    runs = [f"- {label}: {r.get('method', '-')} on {r['data']['name']}, {r['training']['epochs']} epochs, "
            f"{r['training']['seconds']:.0f} s on {r.get('machine', '-')}" for label, r in combined["runs"].items()]
    md = ["# ssl_kd report", "", markdown_rows(rows, combined["protocol"]), "", *runs, "", protocol_line(combined["protocol"]), "",
          *figure_lines(figures, out_dir), ""]
    md_path.write_text("\n".join(md))
    return json_path, md_path
