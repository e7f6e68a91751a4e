"""Aggregate a methods x seeds comparison: mean ± std tables (Markdown, JSON) and a bar chart.

Input: `runs[method][seed] = {"knn_top1", "knn_top5", "linear_top1"?, "recall_at_1"?, "map_at_r"?, "train_seconds",
"wall_seconds" (training plus the run's evaluation), "teacher_embedding" ("backbone" or "head")}` plus
reference rows (`teacher`, `random-init student` per seed, `raw pixels`). The standard deviation is
the sample one (n - 1) over seeds; with one seed it is 0.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .plots import pyplot, save_figure
from .tables import knn_header, render_table, mean_std, number, protocol_line

METRICS = (("knn_top1", "k-NN top-1"), ("knn_top5", "k-NN top-5"), ("linear_top1", "linear top-1"), ("recall_at_1", "recall@1"),
           ("map_at_r", "MAP@R"))


def summarize(values: list[float]) -> dict:
    """mean, std (n - 1), n and the values themselves."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def aggregate(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Per row (a method, or a reference), each metric summarized over its runs (seeds)."""
    table = {}
    for name, runs in rows.items():
        metrics = {key: summarize([run[key] for run in runs]) for key, _ in METRICS if all(key in run for run in runs)}
        for seconds in ("train_seconds", "wall_seconds"):
            if all(seconds in run for run in runs):
                metrics[seconds] = summarize([run[seconds] for run in runs])
        spaces = {run["teacher_embedding"] for run in runs if "teacher_embedding" in run}
        if spaces:
            metrics["teacher_embedding"] = "/".join(sorted(spaces))
        table[name] = metrics
    return table


def markdown(table: dict[str, dict], k: int, temperature: float) -> str:
    header = ["row", "teacher space", knn_header(k, temperature), *(label for _, label in METRICS[1:]), "train s", "wall s", "seeds"]
    body = []
    for name, metrics in table.items():
        seconds = [number(metrics[key]["mean"], digits=0) if key in metrics else "-" for key in ("train_seconds", "wall_seconds")]
        n = max((m["n"] for m in metrics.values() if isinstance(m, dict)), default=0)
        body.append([name, metrics.get("teacher_embedding", "-"), *(mean_std(metrics.get(key)) for key, _ in METRICS), *seconds, str(n)])
    return render_table(header, body, text_columns=2)


def bar_chart(table: dict[str, dict], path: Path, metric: str = "knn_top1") -> Path:
    """Horizontal bars of `metric` (mean, with ± std error bars), one per row."""
    plt = pyplot()
    names = [name for name, metrics in table.items() if metric in metrics]
    means = [table[name][metric]["mean"] for name in names]
    stds = [table[name][metric]["std"] for name in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(names[::-1], means[::-1], xerr=stds[::-1], color="#4c72b0", capsize=3)
    low = min(means) - 3 * max(max(stds), 1.0)
    ax.set_xlim(max(0.0, low), 100.0)
    ax.set_xlabel(dict(METRICS)[metric] + " (%)")
    for y, (mean, std) in enumerate(zip(means[::-1], stds[::-1])):
        ax.text(mean + std + 0.2, y, f"{mean:.1f}", va="center", fontsize=8)
    return save_figure(fig, path)


def write(out_dir: Path, table: dict[str, dict], meta: dict) -> tuple[Path, Path, Path]:
    out_dir = Path(out_dir)
    json_path, md_path, png_path = out_dir / "compare.json", out_dir / "compare.md", out_dir / "compare.png"
    json_path.write_text(json.dumps({**meta, "table": table}, indent=2))
    title = f"# ssl_kd comparison on {meta['data']['name']}: teacher {meta['teacher']['arch']} -> student {meta['student']}"
    body = [title, "", f"{meta['seeds']} seeds, {meta['epochs']} epochs each, on {meta['machine']}. Mean ± std over seeds.", "",
            markdown(table, meta["protocol"]["knn_k"], meta["protocol"]["knn_temperature"]), "",
            protocol_line(meta["protocol"]), "", "![k-NN top-1](compare.png)", ""]
    md_path.write_text("\n".join(body))
    bar_chart(table, png_path)
    return json_path, md_path, png_path
