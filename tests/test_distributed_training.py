"""Distillation under torchrun: 2 gloo processes on the CPU against 1 process with the same global batch.

The worker (tests/ddp_train_worker.py) trains on tiny digits with deterministic views and per-sample
norms (PyTorch's SyncBatchNorm is GPU-only, so BatchNorm's statistics would otherwise be each
process's half batch); everything else, the gathered batch statistics, DDP's gradient average, the
sampler's split of the global batch and the queues, is the real thing.

Tolerances. The two runs add the same numbers in different orders (a gathered matmul against one
matmul, two half-batch gradients averaged against one), so they agree to float32 round-off, about
1e-6 relative in a step's loss. AdamW divides every gradient entry by its running RMS, so an entry
whose gradient is at round-off level moves by up to lr in either direction in each run, and those
differences feed the next steps: we compare every step's loss (relative 1e-3, measured at most 6e-4
over these three steps) and the whole update of the trainable weights, ||d2 - d1|| / ||d1|| with
d = final - initial (below 5%, measured at most 2%).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchrun_helpers import REPO, run_torchrun

WORKER = REPO / "tests" / "ddp_train_worker.py"
TINY = ["data.subset=96", "train.batch_size=32", "loss.queue_size=64", "student.proj_hidden=64"]
# every method whose batch statistics are global; RKD with its (per-process) angle term off
EQUIVALENT = ["dlkd", "ckd", "dist", "sp", "rkd", "compress_2q"]


def _train(tmp: Path, name: str, nproc: int, methods: list[str], run_dir: str, *overrides: str) -> Path:
    out = tmp / name
    result = run_torchrun(WORKER, str(out), run_dir, ",".join(methods), *TINY, *overrides, nproc=nproc, cwd=tmp, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _records(out: Path, method: str, nproc: int) -> list[dict]:
    return [json.loads((out / f"{method}_rank{r}.json").read_text()) for r in range(nproc)]


def _step_losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "seconds" not in line]


def _trainable(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["trainable"]


@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    methods = [*EQUIVALENT, "crd"]
    overrides = ["train.epochs=1", "loss.rkd.angle_weight=0"]
    two = _train(tmp, "two", 2, methods, str(tmp / "run_two_{rank}"), *overrides)
    one = _train(tmp, "one", 1, methods, str(tmp / "run_one_{rank}"), *overrides)
    return tmp, two, one


@pytest.mark.parametrize("method", [*EQUIVALENT, "crd"])
def test_every_queue_and_bank_is_identical_on_both_processes_after_every_step(two_and_one, method):
    _, two, _ = two_and_one
    rank0, rank1 = _records(two, method, 2)
    assert len(rank0["steps"]) == 3 and rank0["steps"] == rank1["steps"]
    assert all(rank0["steps"][0].values())  # at least one queue or bank digest per step
    assert rank0["world_size"] == 2 and rank0["batch_per_process"] == 16  # train.batch_size is the global batch


@pytest.mark.parametrize("method", EQUIVALENT)
def test_two_processes_train_as_one_process_with_the_same_global_batch(two_and_one, method):
    tmp, two, one = two_and_one
    losses_two, losses_one = _step_losses(tmp / "run_two_0" / method), _step_losses(tmp / "run_one_0" / method)
    assert len(losses_two) == len(losses_one) == 3
    assert losses_two == pytest.approx(losses_one, rel=1e-3)

    initial = torch.load(one / f"{method}_initial.pt", weights_only=True)
    final_two, final_one = _trainable(tmp / "run_two_0" / method), _trainable(tmp / "run_one_0" / method)
    weights = [k for k, v in initial.items() if v.is_floating_point() and "queue" not in k and "bank" not in k]
    update_one = torch.cat([(final_one[k] - initial[k]).flatten() for k in weights])
    update_two = torch.cat([(final_two[k] - initial[k]).flatten() for k in weights])
    assert ((update_two - update_one).norm() / update_one.norm()).item() < 0.05

    if method != "compress_2q" and "queue.embeddings" in final_one:  # the same teacher rows, gathered in rank order
        queue_two, queue_one = torch.load(two / f"{method}_queue.pt"), torch.load(one / f"{method}_queue.pt")
        assert queue_two.shape == queue_one.shape
        assert (queue_two @ queue_one.T).max(dim=1).values.min() > 0.9999


def test_only_rank_zero_writes(two_and_one):
    tmp, _, _ = two_and_one
    assert (tmp / "run_two_0" / "dlkd" / "checkpoints" / "last.pt").is_file()
    assert (tmp / "run_two_0" / "dlkd" / "metrics.jsonl").is_file()
    assert not (tmp / "run_two_1").exists()


def test_a_checkpoint_of_two_processes_resumes_with_one_and_back(tmp_path):
    shared = str(tmp_path / "run")
    first = _train(tmp_path, "a", 2, ["dlkd"], shared, "train.epochs=1")
    [after_two] = {json.dumps(r["steps"][-1]) for r in _records(first, "dlkd", 2)}

    second = _train(tmp_path, "b", 1, ["dlkd"], shared, "train.epochs=2")
    [record] = _records(second, "dlkd", 1)
    assert record["resumed_from_epoch"] == 1 and len(record["steps"]) == 3
    assert json.dumps(record["first_step"]) == after_two  # the queue as two processes left it

    third = _train(tmp_path, "c", 2, ["dlkd"], shared, "train.epochs=3")
    records = _records(third, "dlkd", 2)
    assert all(r["resumed_from_epoch"] == 2 and len(r["steps"]) == 3 for r in records)
    assert all(r["first_step"] == record["steps"][-1] for r in records)  # both ranks start from one process's queue
    assert records[0]["steps"] == records[1]["steps"]


def test_the_main_job_runs_under_torchrun(tmp_path):
    """`torchrun --nproc-per-node 2 pipelines/distill_ssl.py`: one report, written once, that records both processes."""
    run = tmp_path / "run"
    result = run_torchrun(REPO / "pipelines" / "distill_ssl.py", "--epochs", "1", "--out", str(run), "data.subset=96",
                          "train.batch_size=32", "data.num_workers=0", "loss.queue_size=64", "eval.knn_ks=[1,20]",
                          nproc=2, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("| teacher |") == 1  # rank 0 alone prints the table
    report = json.loads((run / "report.json").read_text())
    assert report["training"]["world_size"] == 2 and report["training"]["batch_per_process"] == 16
    assert report["config"]["train"]["world_size"] == 2
    assert 0.0 <= report["student"]["knn_top1"] <= 100.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written beside the run folder
