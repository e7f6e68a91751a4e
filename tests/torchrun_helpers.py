"""Launch a script under torchrun for a test: gloo on the CPU, rendezvous on 127.0.0.1 at a free port,
bounded in time, every process killed on the way out (a hung collective never outlives the test)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_torchrun(script: str | Path, *args: str, nproc: int = 2, cwd: Path, timeout: float = 300,
                 env: dict | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node nproc script args...` (nproc=1 with plain `python`, no torchrun variables).

    One node, static rendezvous on 127.0.0.1; each process gets one thread so two ranks fit on two cores."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(name, None)
    if nproc == 1:
        command = [sys.executable, str(script), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script), *args]
    process = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    stdout, stderr = wait_or_kill(process, timeout, f"{script} under {nproc} processes")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def wait_or_kill(process: subprocess.Popen, timeout: float, what: str) -> tuple[str, str]:
    """(stdout, stderr) of a process started with `start_new_session=True`; past `timeout` its whole
    process group is killed and the test fails; the group never outlives the call."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        raise AssertionError(f"{what} ran past {timeout} s:\n{stderr[-3000:]}") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
