"""Figures of a run (or of several runs side by side), each written as one PNG (Agg backend, no display).

- `plot_loss_curves`: the total training loss against the optimizer step, one line per run; with a
  single run, a second panel shows its named loss parts (e.g. `align`, `corr`, `contrast`). The
  per-step records of `metrics.jsonl` are used; a run without them falls back to its per-epoch
  summaries (plotted at the step reached at the end of each epoch).
- `plot_knn_over_epochs`: the student's k-NN top-1 (%) on the test split against the epoch, for every
  run whose epoch summaries carry `knn_top1` (possibly only every few epochs), with the teacher's
  top-1 as a dashed horizontal line when given.
- `plot_feature_scatter`: a 2-d projection (PCA, or t-SNE) of frozen features, one colour per class:
  how well the embedding separates the classes, at a glance.

`read_metrics` reads a run's `metrics.jsonl` into (per-step records, per-epoch summaries); the
summaries are the records with a "seconds" key. A resumed run appends, so a step or an epoch can
appear twice: the last occurrence wins.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# Keys of a metrics record that are bookkeeping or evaluation, not loss parts.
NON_LOSS_KEYS = frozenset({"step", "epoch", "lr", "seconds", "loss"})
DPI = 120


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(per-step records sorted by step, per-epoch summaries sorted by epoch) from a metrics.jsonl.

    Duplicates (a resumed run re-logging a step or an epoch) keep the last occurrence. A line that is
    not valid JSON is skipped: silently when it is the last one (a run killed mid-write), with a
    warning otherwise (a resume appending after such a cut line).
    """
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    steps: dict[int, dict] = {}
    epochs: dict[int, dict] = {}
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                warnings.warn(f"{path}: skipping line {number}, which is not valid JSON", stacklevel=2)
            continue
        if not isinstance(record, dict):
            continue
        if "seconds" in record and "epoch" in record:
            epochs[int(record["epoch"])] = record
        elif "step" in record:
            steps[int(record["step"])] = record
    return [steps[k] for k in sorted(steps)], [epochs[k] for k in sorted(epochs)]


def _split(records) -> tuple[list[dict], list[dict]]:
    """Accept either the (steps, summaries) pair of `read_metrics` or one flat list of records."""
    if isinstance(records, tuple) and len(records) == 2 and all(isinstance(part, list) for part in records):
        return records
    steps = [r for r in records if "seconds" not in r and "step" in r]
    summaries = [r for r in records if "seconds" in r]
    return sorted(steps, key=lambda r: r["step"]), sorted(summaries, key=lambda r: r["epoch"])


def _loss_parts(records: list[dict]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in NON_LOSS_KEYS and not key.startswith("knn_") and isinstance(value, (int, float)):
                names[key] = None
    return list(names)


def pyplot():
    """pyplot on the Agg backend (headless), imported on first use: the one matplotlib set-up of every figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write at the reports' DPI (its folder made), close."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def plot_loss_curves(runs: Mapping[str, list[dict]], path: str | Path) -> Path:
    """Total loss against step, one line per run label; with one run, its loss parts in a second panel.

    `runs[label]` is that run's records: a flat list (steps and summaries mixed, as in metrics.jsonl)
    or the pair returned by `read_metrics`. Step records are used; a run without any falls back to
    its epoch summaries, and so does a run with no more step records than summaries (a short run).
    """
    curves = {}
    for label, records in runs.items():
        steps, summaries = _split(records)
        per_step = len(steps) > len(summaries)  # a short run may log fewer steps than it has epochs
        chosen = [r for r in (steps if per_step else summaries) if "loss" in r and "step" in r]
        if chosen:
            curves[label] = (chosen, per_step)
    parts = _loss_parts(next(iter(curves.values()))[0]) if len(curves) == 1 else []
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if parts else 1, figsize=(11 if parts else 6.5, 4), squeeze=False)
    ax = axes[0][0]
    for label, (records, per_step) in curves.items():
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], marker=None if per_step else "o", markersize=3,
                label=label if per_step else f"{label} (epoch means)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    if parts:
        ax = axes[0][1]
        records = next(iter(curves.values()))[0]
        for name in parts:
            points = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=None if len(points) > 30 else "o", markersize=3, label=name)
        ax.set_xlabel("step")
        ax.set_title(f"loss parts: {next(iter(curves))}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_knn_over_epochs(runs: Mapping[str, list[dict]], path: str | Path, teacher_top1: float | None = None) -> Path | None:
    """k-NN top-1 (%) against epoch for every run with any `knn_top1`; None (nothing written) when none has one.

    `runs[label]` is a flat list of records or the pair from `read_metrics`; the values are taken from
    the epoch summaries (or any record with both "epoch" and "knn_top1"), in percent as in report.json.
    """
    curves = {}
    for label, records in runs.items():
        steps, summaries = _split(records)
        points = {int(r["epoch"]): float(r["knn_top1"]) for r in summaries or steps
                  if "epoch" in r and isinstance(r.get("knn_top1"), (int, float))}
        if points:
            curves[label] = sorted(points.items())
    if not curves:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, label=label)
    if teacher_top1 is not None:
        ax.axhline(teacher_top1, color="black", linestyle="--", linewidth=1, label=f"teacher ({teacher_top1:.1f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("k-NN top-1 (%)")
    ax.set_title("student k-NN top-1 on the test split")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _class_name(class_names, label) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    if isinstance(class_names, Sequence) and isinstance(label, (int, np.integer)) and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def plot_feature_scatter(feats, labels, path: str | Path, *, method: str = "pca", class_names=None, max_points: int = 2000,
                         seed: int = 0, title: str | None = None) -> Path:
    """2-d projection of `feats` [N, D] (tensor or array), coloured by `labels` [N].

    `method` is "pca" or "tsne" (init="pca", perplexity min(30, (n - 1) / 3)). At most `max_points`
    points, a random subsample drawn with `seed`. `class_names` (a sequence indexed by label, or a
    mapping label -> name) names the legend entries; the legend is drawn for at most 20 classes.
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', not {method!r}")
    x = _to_numpy(feats).astype(np.float64).reshape(len(feats), -1)
    y = _to_numpy(labels).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    if len(x) < 2:
        raise ValueError("need at least 2 points to project")
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), size=max_points, replace=False))
        x, y = x[keep], y[keep]
    if x.shape[1] < 2:
        x = np.concatenate([x, np.zeros((len(x), 2 - x.shape[1]))], axis=1)
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(x)
        ratio = pca.explained_variance_ratio_
        axis_labels = (f"PC1 ({100 * ratio[0]:.1f}%)", f"PC2 ({100 * ratio[1]:.1f}%)")
    else:
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed).fit_transform(x)
        axis_labels = ("t-SNE 1", "t-SNE 2")
    classes = np.unique(y)
    plt = pyplot()
    if len(classes) <= 10:
        colors = plt.get_cmap("tab10")(np.arange(len(classes)))
    elif len(classes) <= 20:
        colors = plt.get_cmap("tab20")(np.arange(len(classes)))
    else:
        colors = plt.get_cmap("turbo")(np.linspace(0, 1, len(classes)))
    size = 12 if len(x) <= 500 else 5
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for color, cls in zip(colors, classes):
        mask = y == cls
        ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=color, alpha=0.7, linewidths=0, label=_class_name(class_names, cls.item()))
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title or f"{method.upper() if method == 'pca' else 't-SNE'} of {len(x)} features, {len(classes)} classes")
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best", ncol=2 if len(classes) > 10 else 1)
    return save_figure(fig, path)
