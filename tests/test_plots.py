"""ssl_kd.evaluation.plots: reading metrics.jsonl (resume duplicates, a cut last line) and each figure's PNG."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from ssl_kd.evaluation.plots import (
    DPI,
    plot_feature_scatter,
    plot_knn_over_epochs,
    plot_loss_curves,
    read_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _step(step: int, epoch: int, loss: float) -> dict:
    return {"step": step, "epoch": epoch, "lr": 0.01, "loss": loss, "align": loss / 2, "corr": loss / 4}


def _summary(epoch: int, step: int, loss: float, **extra) -> dict:
    return {"epoch": epoch, "step": step, "lr": 0.01, "seconds": 1.5, "loss": loss, "align": loss / 2, "corr": loss / 4, **extra}


def _write(path: Path, records: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _assert_png(path: Path, size: tuple[float, float]) -> None:
    """A non-empty PNG that matplotlib reads back at figsize * dpi pixels (tight_layout keeps the figure size)."""
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (round(size[1] * DPI), round(size[0] * DPI))


def _run(epochs: int = 3, steps_per_epoch: int = 4, knn_every: int | None = None) -> list[dict]:
    records, step = [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            records.append(_step(step, epoch, 10.0 / (step + 1)))
            step += 1
        extra = {"knn_top1": 50.0 + 10 * epoch} if knn_every and epoch % knn_every == 0 else {}
        records.append(_summary(epoch, step, 10.0 / step, **extra))
    return records


def test_read_metrics_splits_dedups_last_wins_and_sorts(tmp_path: Path) -> None:
    # epoch 1 (steps 0..1), then a crash during epoch 2 after step 2, resume from the end of epoch 1
    records = [_step(0, 1, 5.0), _step(1, 1, 4.0), _summary(1, 2, 4.5), _step(2, 2, 3.9),
               _step(2, 2, 3.0), _step(3, 2, 2.0), _summary(2, 4, 2.5), _summary(1, 2, 9.9)]
    steps, summaries = read_metrics(_write(tmp_path / "metrics.jsonl", records))
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    assert steps[2]["loss"] == 3.0  # the resumed (last) occurrence
    assert all("seconds" not in r for r in steps)
    assert [r["epoch"] for r in summaries] == [1, 2]
    assert summaries[0]["loss"] == 9.9 and all("seconds" in r for r in summaries)


def test_read_metrics_skips_a_truncated_last_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "metrics.jsonl", [_step(0, 1, 5.0), _summary(1, 1, 5.0)], tail='{"step": 1, "epoch": 2, "lo')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cut last line is expected, not worth a warning
        steps, summaries = read_metrics(path)
    assert [r["step"] for r in steps] == [0] and [r["epoch"] for r in summaries] == [1]


def test_read_metrics_warns_on_a_bad_middle_line(tmp_path: Path) -> None:
    # a run killed mid-write, then resumed: the next record lands on the cut line
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(_step(0, 1, 5.0)) + "\n" + '{"step": 1, "lo' + json.dumps(_step(1, 1, 4.0)) + "\n"
                    + json.dumps(_step(2, 1, 3.0)) + "\n")
    with pytest.warns(UserWarning, match="line 2"):
        steps, _ = read_metrics(path)
    assert [r["step"] for r in steps] == [0, 2]


def test_loss_curves_single_run_with_parts(tmp_path: Path) -> None:
    path = plot_loss_curves({"dlkd": read_metrics(_write(tmp_path / "m.jsonl", _run()))}, tmp_path / "loss.png")
    assert path == tmp_path / "loss.png"
    _assert_png(path, (11, 4))


def test_loss_curves_several_runs_and_epoch_fallback(tmp_path: Path) -> None:
    summaries_only = [r for r in _run() if "seconds" in r]
    path = plot_loss_curves({"a": _run(), "b": _run(epochs=2), "c (epochs only)": summaries_only}, tmp_path / "sub" / "loss.png")
    _assert_png(path, (6.5, 4))


def test_knn_over_epochs(tmp_path: Path) -> None:
    runs = {"every epoch": _run(knn_every=1), "every 2": _run(epochs=4, knn_every=2), "no knn": _run()}
    path = plot_knn_over_epochs(runs, tmp_path / "knn.png", teacher_top1=92.5)
    assert path == tmp_path / "knn.png"
    _assert_png(path, (6.5, 4))


def test_knn_over_epochs_without_values_writes_nothing(tmp_path: Path) -> None:
    assert plot_knn_over_epochs({"a": _run(), "b": []}, tmp_path / "knn.png", teacher_top1=90.0) is None
    assert not (tmp_path / "knn.png").exists()


def test_pca_scatter_of_two_clusters_with_class_names(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.cat([torch.randn(100, 16, generator=g) + 10, torch.randn(100, 16, generator=g) - 10])
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    path = plot_feature_scatter(feats, labels, tmp_path / "pca.png", class_names=["cat", "dog"], max_points=150, title="two clusters")
    _assert_png(path, (6.5, 5.5))


def test_tsne_scatter(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(size=(20, 8)) + 5 * k for k in range(3)])
    labels = np.repeat(np.arange(3), 20)
    # one OpenMP thread: t-SNE's spinning threads slow down by 10-100x on a loaded 2-core machine (0.2 s vs 5-40 s for 60 points)
    with threadpool_limits(limits=1, user_api="openmp"):
        path = plot_feature_scatter(feats, labels, tmp_path / "tsne.png", method="tsne", class_names={0: "a", 1: "b", 2: "c"})
    _assert_png(path, (6.5, 5.5))


def test_scatter_rejects_unknown_method(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="method"):
        plot_feature_scatter(np.zeros((4, 2)), np.zeros(4), tmp_path / "x.png", method="umap")
