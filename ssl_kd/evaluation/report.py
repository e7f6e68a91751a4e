"""Reports: `report.json` (every number, its protocol and the config), `report.md` and the figures.

One run (`RunReport`, built by `ssl-kd distill`): rows teacher (then "teacher 2 (<arch>)", ... for
`--teacher` repeated), student, and the baselines (the random-init student of the same architecture
and seed, i.e. the student before distillation, and raw pixels). Several runs (`MultiRunReport`,
built by `ssl-kd report`): the teacher(s), one student row per run, then the first run's baselines.
Both are made of `ModelScores` rows and a `Protocol` (`ssl_kd.evaluation.results`), and have
`to_dict()` / `from_dict()` (report.json, older files included), `to_markdown()` and `save()`.

Figures (`write_figures`): loss_curves.png, knn_over_epochs.png (from metrics.jsonl) and
features_<run>.png (a PCA or t-SNE scatter of the student's test features, coloured by class).

`teacher.embedding` (and each extra teacher's) records the space the method saw the teacher's
embedding in ("backbone", or "head" with the projection head's name and width); report.md says it
in one line. The teacher's own rows always score its backbone feature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..provenance import record_line
from .plots import plot_feature_scatter, plot_knn_over_epochs, plot_loss_curves, read_metrics
from .results import DataSummary, ModelScores, Protocol, Record, TrainingSummary
from .tables import knn_header, number, render_table

BASELINES = (("random-init student", "random_student"), ("raw pixels", "raw_pixels"))  # (row label, key in `baselines`)
COLUMNS = ("params (M)", "images/s", "k-NN top-1", "k-NN top-5", "linear top-1", "recall@1", "MAP@R")


def scores_table(rows: list[tuple[str, ModelScores]], protocol: Protocol) -> str:
    """A Markdown table of (label, scores) rows: model, arch, then `COLUMNS`."""
    header = ["model", "arch", *(knn_header(protocol.knn_k, protocol.knn_temperature) if name == "k-NN top-1" else name
                                 for name in COLUMNS)]
    body = [[label, s.arch or "-", number(s.params, 1e6, 2), number(s.images_per_s, digits=0),
             *(number(getattr(s, key)) for key in ("knn_top1", "knn_top5", "linear_top1", "recall_at_1", "map_at_r"))]
            for label, s in rows]
    return render_table(header, body, text_columns=2)


def figure_lines(figures: dict[str, Path], out_dir: Path) -> list[str]:
    return [f"![{name}]({Path(path).relative_to(out_dir)})" for name, path in figures.items()]


def save_report(out_dir: Path, report: Record, markdown: str) -> tuple[Path, Path]:
    """report.json (`report.to_json()`) and report.md in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(report.to_json())
    md_path.write_text(markdown)
    return json_path, md_path


@dataclass(kw_only=True)
class RunScores(Record):
    """Teacher vs student vs baselines of one run, under one protocol (what `ssl_kd.job.evaluate_all` measures)."""

    teacher: ModelScores
    student: ModelScores
    baselines: dict[str, ModelScores]  # "random_student", "raw_pixels" (`BASELINES`)
    protocol: Protocol
    extra_teachers: list[ModelScores] = field(default_factory=list)

    def rows(self) -> list[tuple[str, ModelScores]]:
        """(label, scores) in table order."""
        rows = [("teacher", self.teacher)]
        rows += [(f"teacher {k} ({t.arch or '-'})", t) for k, t in enumerate(self.extra_teachers, start=2)]
        rows.append(("student", self.student))
        rows += [(label, self.baselines[key]) for label, key in BASELINES if key in self.baselines]
        return rows

    def table(self) -> str:
        return scores_table(self.rows(), self.protocol)

    def gap_closed(self) -> float | None:
        """Share of the random-student-to-teacher k-NN gap that distillation closed, in percent."""
        random = self.baselines.get("random_student")
        if random is None or self.teacher.knn_top1 - random.knn_top1 <= 0:
            return None
        return 100.0 * (self.student.knn_top1 - random.knn_top1) / (self.teacher.knn_top1 - random.knn_top1)

    def summary_lines(self) -> list[str]:
        teacher, student = self.teacher, self.student
        lines = [f"student k-NN top-1 is {100 * student.knn_top1 / teacher.knn_top1:.1f}% of the teacher's"]
        closed = self.gap_closed()
        if closed is not None:
            lines.append(f"distillation closed {closed:.1f}% of the gap between the random-init student and the teacher")
        if teacher.params and student.params:
            faster = (f" and runs {student.images_per_s / teacher.images_per_s:.2f}x faster at inference"
                      if teacher.images_per_s and student.images_per_s else "")
            lines.append(f"the student has {teacher.params / student.params:.2f}x fewer parameters{faster}")
        return lines


@dataclass(kw_only=True)
class RunReport(RunScores):
    """One finished distillation run: its scores, and what ran on what, for how long, how to reproduce it."""

    method: str
    data: DataSummary
    training: TrainingSummary
    machine: str
    config: dict = field(default_factory=dict)
    reproducibility: dict = field(default_factory=dict)
    total_seconds: float | None = None

    @classmethod
    def of(cls, scores: RunScores, **run) -> RunReport:
        """The report of a run whose evaluation gave `scores`; `run` holds the other fields."""
        return cls(**{f.name: getattr(scores, f.name) for f in fields(RunScores)}, **run)

    def embedding_line(self) -> str:
        """` Teacher embedding: head (MoCo v2 fc MLP, 128-d), from teacher.embedding=auto; ...` or "" (ssl_scratch)."""
        teachers = [("Teacher", self.teacher), *((f"teacher {k}", t) for k, t in enumerate(self.extra_teachers, start=2))]
        parts = [f"{label} embedding: {t.embedding['line']}" for label, t in teachers if t.embedding]
        if not parts:
            return ""
        choice = self.config.get("teacher", {}).get("embedding")
        origin = f", from teacher.embedding={choice}" if choice else ""
        return f" {'; '.join(parts)}{origin}; the teacher rows evaluate the backbone feature, as the SSL protocol does."

    def to_markdown(self, figures: dict[str, Path] | None = None, out_dir: Path | None = None) -> str:
        """report.md: the title, what ran on what, the table, the summary, the protocol, the figures (paths relative to `out_dir`)."""
        ran = (f"Teacher `{self.teacher.source}` -> student `{self.student.arch}`; {self.data.line()}; "
               f"{self.training.epochs} epochs in {self.training.seconds:.0f} s on {self.machine}."
               f"{self.training.cache_line()}{self.embedding_line()}")
        md = [f"# ssl_kd report: {self.method} on {self.data.name}", "", ran, "", self.table(), "",
              *(f"- {line}" for line in self.summary_lines()), "", self.protocol.line(),
              *([record_line(self.reproducibility), ""] if self.reproducibility else []), "",
              *figure_lines(figures or {}, Path(out_dir or ".")), ""]
        return "\n".join(md)

    def to_dict(self) -> dict[str, Any]:
        record = {"teacher": self.teacher.to_dict(), "student": self.student.to_dict(),
                  "baselines": {key: s.to_dict() for key, s in self.baselines.items()}, "protocol": self.protocol.to_dict(),
                  "method": self.method, "config": self.config, "machine": self.machine,
                  "data": self.data.to_dict(), "training": self.training.to_dict(),
                  "reproducibility": self.reproducibility, "total_seconds": self.total_seconds}
        if self.extra_teachers:
            record["extra_teachers"] = [t.to_dict() for t in self.extra_teachers]
        return {key: value for key, value in record.items() if value is not None}

    @classmethod
    def from_dict(cls, record: dict) -> RunReport:
        return cls(method=record.get("method", "-"), teacher=ModelScores.from_dict(record["teacher"]),
                   student=ModelScores.from_dict(record["student"]),
                   baselines={key: ModelScores.from_dict(s) for key, s in record.get("baselines", {}).items()},
                   protocol=Protocol.from_dict(record["protocol"]),
                   extra_teachers=[ModelScores.from_dict(t) for t in record.get("extra_teachers", [])],
                   data=DataSummary.from_dict(record["data"]), training=TrainingSummary.from_dict(record["training"]),
                   machine=record.get("machine", "-"), config=record.get("config", {}),
                   reproducibility=record.get("reproducibility") or {}, total_seconds=record.get("total_seconds"))

    @classmethod
    def read(cls, path: str | Path) -> RunReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, out_dir: str | Path, figures: dict[str, Path] | None = None) -> tuple[Path, Path]:
        """report.json and report.md in `out_dir` (the figures, already written there, are linked from the Markdown)."""
        out_dir = Path(out_dir)
        return save_report(out_dir, self, self.to_markdown(figures, out_dir))


@dataclass
class MultiRunReport(Record):
    """Several finished runs ({label: RunReport}) side by side: each distinct teacher once, one student row
    per run, the first run's baselines, under the first run's protocol."""

    runs: dict[str, RunReport]

    def rows(self) -> list[tuple[str, ModelScores]]:
        first = next(iter(self.runs.values()))
        rows, teachers = [], set()
        for run in self.runs.values():
            if run.teacher.source not in teachers:
                teachers.add(run.teacher.source)
                rows.append((f"teacher ({run.teacher.arch or '-'})", run.teacher))
        rows += [(f"student: {label} ({run.method})", run.student) for label, run in self.runs.items()]
        rows += [(label, first.baselines[key]) for label, key in BASELINES if key in first.baselines]
        return rows

    @property
    def protocol(self) -> Protocol:
        return next(iter(self.runs.values())).protocol

    def table(self) -> str:
        return scores_table(self.rows(), self.protocol)

    def run_lines(self) -> list[str]:
        return [f"- {label}: {run.method} on {run.data.name}, {run.training.epochs} epochs, {run.training.seconds:.0f} s on "
                f"{run.machine}" for label, run in self.runs.items()]

    def to_markdown(self, figures: dict[str, Path] | None = None, out_dir: Path | None = None) -> str:
        md = ["# ssl_kd report", "", self.table(), "", *self.run_lines(), "", self.protocol.line(), "",
              *figure_lines(figures or {}, Path(out_dir or ".")), ""]
        return "\n".join(md)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [{"label": label, **s.to_dict()} for label, s in self.rows()], "protocol": self.protocol.to_dict(),
                "runs": {label: run.to_dict() for label, run in self.runs.items()}}

    @classmethod
    def from_dict(cls, record: dict) -> MultiRunReport:
        return cls({label: RunReport.from_dict(run) for label, run in record["runs"].items()})

    def save(self, out_dir: str | Path, figures: dict[str, Path] | None = None) -> tuple[Path, Path]:
        out_dir = Path(out_dir)
        return save_report(out_dir, self, self.to_markdown(figures, out_dir))


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
