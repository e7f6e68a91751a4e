"""A methods x seeds comparison: one `SeedRun` per (row, seed), aggregated into a `Comparison` with
mean ± std tables (compare.md, compare.json) and a bar chart (compare.png).

A row is a method (or `method@variant`), or a reference: the teacher, the random-init student (one per
seed), raw pixels. The standard deviation is the sample one (n - 1) over seeds; with one seed it is 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plots import pyplot, save_figure
from .results import SCORE_KEYS, DataSummary, ModelScores, Protocol, Record, Summary
from .tables import knn_header, mean_std, number, render_table

METRIC_LABELS = {"knn_top1": "k-NN top-1", "knn_top5": "k-NN top-5", "linear_top1": "linear top-1", "recall_at_1": "recall@1",
                 "map_at_r": "MAP@R"}
SECONDS = ("train_seconds", "wall_seconds")


@dataclass
class SeedRun(Record):
    """One (row, seed) of the comparison: its headline scores, its training and wall seconds (training plus
    the run's evaluation; none for the references) and the space the method saw the teacher's embedding in
    ("backbone", "head", "-" for ssl_scratch). Its `to_dict()` is the run folder's result.json."""

    scores: ModelScores
    train_seconds: float | None = None
    wall_seconds: float | None = None
    teacher_embedding: str | None = None

    def to_dict(self) -> dict[str, Any]:
        record = {**self.scores.headline(), "train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds,
                  "teacher_embedding": self.teacher_embedding}
        return {key: value for key, value in record.items() if value is not None}

    @classmethod
    def from_dict(cls, record: dict) -> SeedRun:
        return cls(ModelScores.from_dict(record), record.get("train_seconds"), record.get("wall_seconds"),
                   record.get("teacher_embedding"))


@dataclass
class ComparisonRow:
    """One row over its seeds: each metric every seed measured, as a `Summary`; the seconds likewise."""

    name: str
    metrics: dict[str, Summary]
    seconds: dict[str, Summary] = field(default_factory=dict)  # "train_seconds", "wall_seconds"
    teacher_embedding: str | None = None  # "backbone", "head", or both joined by "/" when seeds differ

    @classmethod
    def of(cls, name: str, runs: list[SeedRun]) -> ComparisonRow:
        headlines = [run.scores.headline() for run in runs]
        metrics = {key: Summary.of([h[key] for h in headlines]) for key in SCORE_KEYS if all(key in h for h in headlines)}
        seconds = {key: Summary.of([getattr(run, key) for run in runs]) for key in SECONDS
                   if all(getattr(run, key) is not None for run in runs)}
        spaces = sorted({run.teacher_embedding for run in runs if run.teacher_embedding is not None})
        return cls(name, metrics, seconds, "/".join(spaces) if spaces else None)

    @property
    def seeds(self) -> int:
        return max((s.n for s in self.metrics.values()), default=0)

    def cells(self) -> list[str]:
        seconds = [number(self.seconds[key].mean, digits=0) if key in self.seconds else "-" for key in SECONDS]
        return [self.name, self.teacher_embedding or "-", *(mean_std(self.metrics.get(key)) for key in SCORE_KEYS), *seconds,
                str(self.seeds)]

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {key: s.to_dict() for key, s in {**self.metrics, **self.seconds}.items()}
        if self.teacher_embedding is not None:
            record["teacher_embedding"] = self.teacher_embedding
        return record

    @classmethod
    def from_dict(cls, name: str, record: dict) -> ComparisonRow:
        return cls(name, {key: Summary.from_dict(record[key]) for key in SCORE_KEYS if key in record},
                   {key: Summary.from_dict(record[key]) for key in SECONDS if key in record}, record.get("teacher_embedding"))


@dataclass(kw_only=True)
class Comparison(Record):
    """Every row of a comparison, and what it compared: methods, seeds, epochs, student, teacher, data, machine, protocol."""

    rows: list[ComparisonRow]
    methods: list[str]
    seeds: int
    epochs: int
    student: str
    teacher: dict  # {"arch", "source"}
    data: DataSummary
    machine: str
    protocol: Protocol

    @classmethod
    def of(cls, runs: dict[str, list[SeedRun]], **meta) -> Comparison:
        return cls(rows=[ComparisonRow.of(name, seed_runs) for name, seed_runs in runs.items()], **meta)

    def row(self, name: str) -> ComparisonRow:
        return next(row for row in self.rows if row.name == name)

    def table(self) -> str:
        header = ["row", "teacher space", knn_header(self.protocol.knn_k, self.protocol.knn_temperature),
                  *(METRIC_LABELS[key] for key in SCORE_KEYS[1:]), "train s", "wall s", "seeds"]
        return render_table(header, [row.cells() for row in self.rows], text_columns=2)

    def to_markdown(self) -> str:
        title = f"# ssl_kd comparison on {self.data.name}: teacher {self.teacher['arch']} -> student {self.student}"
        return "\n".join([title, "", f"{self.seeds} seeds, {self.epochs} epochs each, on {self.machine}. Mean ± std over seeds.", "",
                          self.table(), "", self.protocol.line(), "", "![k-NN top-1](compare.png)", ""])

    def to_dict(self) -> dict[str, Any]:
        return {"methods": self.methods, "seeds": self.seeds, "epochs": self.epochs, "student": self.student, "teacher": self.teacher,
                "data": self.data.to_dict(), "machine": self.machine, "protocol": self.protocol.to_dict(),
                "table": {row.name: row.to_dict() for row in self.rows}}

    @classmethod
    def from_dict(cls, record: dict) -> Comparison:
        return cls(rows=[ComparisonRow.from_dict(name, row) for name, row in record["table"].items()], methods=record["methods"],
                   seeds=record["seeds"], epochs=record["epochs"], student=record["student"], teacher=record["teacher"],
                   data=DataSummary.from_dict(record["data"]), machine=record["machine"], protocol=Protocol.from_dict(record["protocol"]))

    def save(self, out_dir: str | Path) -> tuple[Path, Path, Path]:
        """compare.json, compare.md and compare.png in `out_dir`."""
        out_dir = Path(out_dir)
        json_path, md_path, png_path = out_dir / "compare.json", out_dir / "compare.md", out_dir / "compare.png"
        json_path.write_text(self.to_json())
        md_path.write_text(self.to_markdown())
        bar_chart(self.rows, png_path)
        return json_path, md_path, png_path


def bar_chart(rows: list[ComparisonRow], path: Path, metric: str = "knn_top1") -> Path:
    """Horizontal bars of `metric` (mean, with ± std error bars), one per row that measured it."""
    plt = pyplot()
    shown = [row for row in rows if metric in row.metrics][::-1]  # the first row on top
    names, means, stds = [r.name for r in shown], [r.metrics[metric].mean for r in shown], [r.metrics[metric].std for r in shown]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(names, means, xerr=stds, color="#4c72b0", capsize=3)
    ax.set_xlim(max(0.0, min(means) - 3 * max(max(stds), 1.0)), 100.0)
    ax.set_xlabel(METRIC_LABELS[metric] + " (%)")
    for y, (mean, std) in enumerate(zip(means, stds)):
        ax.text(mean + std + 0.2, y, f"{mean:.1f}", va="center", fontsize=8)
    return save_figure(fig, path)
