"""bench/distill_speed.py's timing instruments and how it reports them (alternating rounds, medians, ratios): where the loop's time goes, measured inside the bench
process only (timestamps patched around the loader's `next`, `StepRunner.__call__`, `Checkpointer.save`
and `MetricsLog.write`; the library files are not touched), and the loader workers' CPU time from /proc."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ssl_kd import loop as loop_module  # noqa: E402
from ssl_kd.metrics_log import MetricsLog  # noqa: E402
from ssl_kd.run_checkpoints import Checkpointer  # noqa: E402


def proc_cpu_seconds(pid: int) -> float:
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return float("nan")


class Probe:
    """Timestamps around the loop's parts for one `fit` call."""

    def __init__(self):
        self.wait = self.first_wait = self.step = self.save = self.metrics = 0.0
        self.steps = self.epochs = 0


class TimedLoader:
    """The loader as `fit` sees it (len, sampler, generator, iteration), timing each `next`."""

    def __init__(self, loader, probe: Probe):
        self._loader, self._probe = loader, probe

    def __len__(self):
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __iter__(self):
        it, first = iter(self._loader), True
        self._probe.epochs += 1
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            waited = time.perf_counter() - start
            self._probe.wait += waited
            if first:
                self._probe.first_wait, first = self._probe.first_wait + waited, False
            yield batch

    def worker_pids(self) -> list[int]:
        iterator = getattr(self._loader, "_iterator", None)
        return [w.pid for w in getattr(iterator, "_workers", [])]


@contextlib.contextmanager
def instrumented_loop(probe: Probe, device: torch.device):
    """Patch ssl_kd.loop's StepRunner (the module global `fit` looks up), `Checkpointer.save` and
    `MetricsLog.write` to time them."""
    original_runner, original_save, original_metrics = loop_module.StepRunner, Checkpointer.save, MetricsLog.write

    class TimedStepRunner(original_runner):
        def __call__(self, views, index, lr):
            start = time.perf_counter()
            values = super().__call__(views, index, lr)  # returns floats: the step has synchronized
            probe.step += time.perf_counter() - start
            probe.steps += 1
            return values

    def timed(fn, attr):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                setattr(probe, attr, getattr(probe, attr) + time.perf_counter() - start)
        return wrapper

    loop_module.StepRunner = TimedStepRunner
    Checkpointer.save, MetricsLog.write = timed(original_save, "save"), timed(original_metrics, "metrics")
    try:
        yield
    finally:
        loop_module.StepRunner, Checkpointer.save, MetricsLog.write = original_runner, original_save, original_metrics


def alternate(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Each contender once a round, the order reversed every other round; returns images/s per round."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            results[name].append(contenders[name]())
    return results


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):8.1f}  (min {min(values):.1f}, max {max(values):.1f})"


def ratio_line(label: str, num: list[float], den: list[float], goal: float | None = None) -> str:
    per_round = [a / b for a, b in zip(num, den)]
    value = statistics.median(num) / statistics.median(den)
    verdict = "" if goal is None else ("  goal >= %.2f: MET" % goal if value >= goal else "  goal >= %.2f: BELOW GOAL" % goal)
    return f"  {label:<34} {value:6.3f}   per round {', '.join(f'{x:.3f}' for x in per_round)}{verdict}"
