"""Stopping a run cleanly when the cluster asks: a checkpoint at the next step boundary, then a known exit status.

SIGTERM (what SLURM and most schedulers send before killing a job, and what torchrun forwards to its
workers) and SIGUSR1 (SLURM's `--signal=USR1@120`) ask the run to stop: the loop finishes the step
it is in, writes a checkpoint and raises `Preempted`, which the entry points turn into exit status
`EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"). Rerunning the same command resumes from that
checkpoint. SIGINT (Ctrl-C) does the same the first time; a second Ctrl-C stops at once.

Under torchrun each process may get the signal at a slightly different step, so `requested()` is a
collective: every rank calls it after every step, and all stop at the first step any rank was asked
at (one all-reduce of one number; nothing in one process).
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from .errors import EXIT_PREEMPTED, Preempted
from .parallel import collective_device, is_distributed

__all__ = ["EXIT_PREEMPTED", "Preempted", "PreemptionGuard", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class PreemptionGuard:
    """While active (a `with` block), the stop signals set a flag instead of killing the process."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signal_name is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal_name = signal.Signals(signum).name

    def requested(self) -> bool:
        """Whether any process was asked to stop (collective under torchrun: every rank calls it)."""
        asked = self.signal_name is not None
        if not is_distributed():
            return asked
        flag = torch.tensor([int(asked)], device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
