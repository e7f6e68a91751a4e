"""bench/distill_speed.py's contenders in processes of their own (part (b), `run_part_b`, and (c)'s 1 vs N
processes): started once each (bench/distill_speed_worker.py, torchrun on 127.0.0.1 for several processes), cued
in turn round by round through files in a control folder, and every process killed on the way out."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill_speed_timing import ratio_line, spread

from ssl_kd.config import load_config
from ssl_kd.data import build_dataset

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "distill_speed_worker.py"
_KILL_ON_EXIT: list[subprocess.Popen] = []


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_all() -> None:
    for process in _KILL_ON_EXIT:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


def start_contender(control: Path, name: str, nproc: int, threads: int, rounds: int, overrides: list[str],
                    log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    args = [str(WORKER), str(control), name, str(rounds), str(threads), *overrides]
    if nproc == 1:
        command = [sys.executable, *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
                   "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    _KILL_ON_EXIT.append(process)
    return process


def wait_file(path: Path, processes: list[subprocess.Popen], logs: list[Path], timeout: float,
              waited_on: subprocess.Popen | None = None) -> None:
    """Wait for `path`; fail fast when a contender failed, or when the one it should come from exited."""
    deadline = time.time() + timeout
    while not path.exists():
        for process, log in zip(processes, logs):
            if process.poll() is not None and (process.returncode != 0 or process is waited_on) and not path.exists():
                raise RuntimeError(f"a contender exited ({process.returncode}) before {path.name}:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            raise RuntimeError(f"no {path.name} within {timeout:.0f} s")
        time.sleep(0.05)


def run_contenders(contenders: dict[str, tuple[int, int]], overrides: list[str], rounds: int, timeout: float) -> dict[str, list[dict]]:
    """Start every contender (name -> (processes, threads per process)), then cue them in turn, round by round."""
    with tempfile.TemporaryDirectory(prefix="distill_speed_") as folder:
        control = Path(folder)
        names, processes, logs = list(contenders), [], []
        try:
            for name, (nproc, threads) in contenders.items():
                logs.append(control / f"{name}.log")
                processes.append(start_contender(control, name, nproc, threads, rounds, overrides, logs[-1]))
            for name, process in zip(names, processes):
                wait_file(control / f"ready_{name}", processes, logs, timeout, process)
            results: dict[str, list[dict]] = {name: [] for name in names}
            for r in range(rounds):
                for name in (names if r % 2 == 0 else names[::-1]):
                    (control / f"go_{name}_{r}").touch()
                    done = control / f"done_{name}_{r}.json"
                    wait_file(done, processes, logs, timeout, processes[names.index(name)])
                    results[name].append(json.loads(done.read_text()))
            for process in processes:
                process.wait(timeout=60)
            return results
        finally:
            kill_all()


def run_part_b(args) -> dict[str, list[float]] | None:
    print(f"\n(b) 2 gloo processes vs 1 on the CPU: the loop (fit) on the digits default, {args.rounds} alternating rounds")
    probe_cfg = load_config(None, [])
    steps_per_epoch = len(build_dataset(probe_cfg.data, "train", None)) // probe_cfg.train.batch_size  # drop-last
    epochs = max(1, math.ceil((args.steps or steps_per_epoch) / steps_per_epoch))
    overrides = ["train.resume=false", "train.device=cpu", f"train.epochs={epochs}"]
    contenders = {"2proc_gloo_1thread_each": (2, 1), "1proc_2threads": (1, 2), "1proc_1thread": (1, 1)}
    results = run_contenders(contenders, overrides, args.rounds, timeout=args.timeout)
    ips = {name: [r["images"] / r["wall_s"] for r in rounds] for name, rounds in results.items()}
    print(f"  {epochs} epoch(s) = {results['1proc_1thread'][0]['steps']} steps a round, global batch 128 "
          f"(64 per process under 2 processes), data.num_workers=2 in every process, {os.cpu_count()} cores")
    for name, values in ips.items():
        epoch_ips = statistics.median([x for r in results[name] for x in r["epoch_images_per_s"]])
        print(f"  {name:<24} images/s {spread(values)}   (metrics.jsonl epochs: {epoch_ips:.1f})")
    base = ips["1proc_2threads"]
    print(ratio_line("2 gloo procs / 1 proc 2 threads", ips["2proc_gloo_1thread_each"], base))
    print(ratio_line("1 proc 1 thread / 1 proc 2 threads", ips["1proc_1thread"], base))
    best = max(ips, key=lambda n: statistics.median(ips[n]))
    print(f"  what {os.cpu_count()} cores allow for the loop on the digits default: {statistics.median(ips[best]):.1f} images/s, "
          f"with {best} (parallel schemes compared on the same cores, not scaling)")
    return ips
