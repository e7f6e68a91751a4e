"""The main job stopped as a cluster stops it, in a subprocess: SIGKILL in the middle of an epoch after a
step checkpoint, SIGTERM (exit 75), and SIGTERM to torchrun with 2 processes. Rerunning the same command
finishes the run, and the student equals the uninterrupted run's bit for bit.

Steps are counted from `metrics.jsonl` (`train.log_every=1`: one record per step, appended by every run
in the folder), so the steps a resumed run did again are the ones logged twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchrun_helpers import REPO, free_port, wait_or_kill

from ssl_kd.checkpoint import load_checkpoint
STEPS_PER_EPOCH, EPOCHS, EVERY = 8, 2, 3
TINY = ["--epochs", str(EPOCHS), "--batch-size", "32", f"data.subset={32 * STEPS_PER_EPOCH}", "data.num_workers=2",
        "loss.queue_size=64", "student.proj_hidden=64", "eval.monitor_every=0", "eval.linear_probe=false",
        "eval.knn_ks=[20]", "train.device=cpu", "train.log_every=1", f"train.checkpoint_every_steps={EVERY}"]


def start(run: Path, *extra: str, nproc: int = 1) -> subprocess.Popen:
    """The main job on the embedded default at a tiny size (2 loader workers, views seeded per sample)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    script = [str(REPO / "pipelines" / "distill_ssl.py"), "--out", str(run), *TINY, *extra]
    if nproc > 1:
        env["OMP_NUM_THREADS"] = "1"
        launcher = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
                    "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
        script = [*launcher, *script, "data.num_workers=0"]
    return subprocess.Popen([sys.executable, *script], cwd=run.parent, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Wait for the job (its whole process group killed if it runs past `timeout`); its status and stderr."""
    _, stderr = wait_or_kill(process, timeout, "the job")
    return process.returncode, stderr


def logged_steps(run: Path) -> list[int]:
    """The step of every per-step record in metrics.jsonl, in the order the runs wrote them."""
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    records = [json.loads(line) for line in lines if line.endswith("}")]  # a line being written is left for later
    return [r["step"] for r in records if "seconds" not in r]


def wait_until_logged(run: Path, process: subprocess.Popen, step: int, timeout: float = 180) -> int:
    """Poll until step `step` is logged (its step is done); how many steps are logged then."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = logged_steps(run)
        if step in steps:
            return len(steps)
        if process.poll() is not None:
            raise AssertionError(f"the job ended (status {process.returncode}) before step {step}:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"step {step} was not logged within {timeout} s")


def student_weights(run: Path) -> dict:
    return torch.load(run / "student_timm.pth", map_location="cpu", weights_only=True)


def assert_same_weights(run: Path, reference: dict) -> None:
    weights = student_weights(run)
    assert weights.keys() == reference.keys()
    different = [name for name in reference if not torch.equal(weights[name], reference[name])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The same run, never stopped: trained in this process from the config the main job builds from the same
    arguments (its evaluation, which does not touch the student, is left out)."""
    from ssl_kd.commands import distill as pipeline
    from ssl_kd.config import Config
    from ssl_kd.distillation import distill
    from ssl_kd.job import load_inputs
    run = tmp_path_factory.mktemp("straight") / "run"
    cfg = pipeline.config_from_args(pipeline.parse_args(["--out", str(run), *TINY]), pipeline.FLAGS, Config)
    distill(cfg, load_inputs(cfg).teacher, run)
    assert logged_steps(run) == list(range(EPOCHS * STEPS_PER_EPOCH))
    return student_weights(run)


def test_sigkill_mid_epoch_then_the_same_command_ends_bit_exact_redoing_under_one_interval(tmp_path, uninterrupted):
    run = tmp_path / "run"
    job = start(run)
    wait_until_logged(run, job, EVERY + 1)  # past the first step checkpoint, inside epoch 1
    os.killpg(job.pid, signal.SIGKILL)
    finish(job)
    before = logged_steps(run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 0 and 0 < state["epoch_step"] < STEPS_PER_EPOCH  # a step checkpoint inside the epoch
    assert state["step"] % EVERY == 0

    status, stderr = finish(start(run))
    assert status == 0, stderr[-3000:]
    after = logged_steps(run)[len(before):]
    assert after == list(range(state["step"], EPOCHS * STEPS_PER_EPOCH))  # resumed at the checkpoint's batch
    redone = sorted(set(before) & set(after))
    assert len(redone) <= EVERY, f"steps {redone} were done twice"
    assert_same_weights(run, uninterrupted)


def test_sigterm_checkpoints_within_one_step_exits_75_and_the_rerun_ends_bit_exact(tmp_path, uninterrupted):
    """SIGTERM to the whole process group, loader workers included, as SLURM sends it."""
    run = tmp_path / "run"
    job = start(run)
    done_when_signalled = wait_until_logged(run, job, 1)
    os.killpg(job.pid, signal.SIGTERM)
    status, stderr = finish(job)
    assert status == 75, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("stopped: stopped by SIGTERM at step ") and "rerun the same command" in last_line
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] - done_when_signalled <= 1  # the step in flight, then the checkpoint
    assert f"at step {state['step']};" in last_line and logged_steps(run) == list(range(state["step"]))

    status, stderr = finish(start(run))
    assert status == 0, stderr[-3000:]
    assert_same_weights(run, uninterrupted)


def test_sigterm_to_torchrun_stops_both_processes_at_one_step_and_the_rerun_finishes(tmp_path):
    """torchrun forwards SIGTERM to its workers: both finish the same step, rank 0 writes the checkpoint,
    each exits 75 (torchrun itself then exits non-zero), and the same command resumes with 2 processes."""
    run = tmp_path / "run"
    job = start(run, nproc=2)
    wait_until_logged(run, job, 1, timeout=300)
    os.kill(job.pid, signal.SIGTERM)
    status, stderr = finish(job)
    assert status != 0
    stops = sorted(line for line in stderr.splitlines() if "stopped by SIGTERM at step" in line)
    assert len(stops) == 2 and len({line.split("at step ")[1].split(";")[0] for line in stops}) == 1, stderr[-3000:]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert f"at step {state['step']};" in stops[0] and len(state["generators"]) == 2

    status, stderr = finish(start(run, nproc=2))
    assert status == 0, stderr[-3000:]
    assert logged_steps(run) == list(range(EPOCHS * STEPS_PER_EPOCH))
    report = json.loads((run / "report.json").read_text())
    assert report["training"]["world_size"] == 2
