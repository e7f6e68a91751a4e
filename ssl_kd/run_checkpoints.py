"""A run's checkpoints: when they are written, which are kept, what they hold, and resuming from them.

Files in `run_dir/checkpoints/`:
    last.pt                   the newest state (what a rerun resumes from); always written
    step_00001234.pt          a copy at step 1234, the last `train.keep_checkpoints` of them kept
    best.pt                   the state with the best monitored k-NN top-1 (`eval.monitor_every`)

A state is written at the end of every epoch, every `train.checkpoint_every_steps` steps and every
`train.checkpoint_every_minutes` minutes (0 = not by that rule), and when the run is asked to stop
(`ssl_kd.preemption`). Every write is atomic (a temporary file, then a rename), so the previous file
stays intact when the disk is full or the process dies mid-write.

A state holds what the run needs to continue as if it had never stopped: the trainable modules
(student, heads, queues, banks), optimizer and gradient scaler, the position (`epoch` in progress,
`epoch_step` steps into it, the global `step`; the sampler's order is a function of the seed and
the epoch, so the position is enough to skip to the same batch), every process's random generators
(torch CPU and CUDA, numpy, Python), the resolved config and the reproducibility record.

Resuming with a config that differs in a key that changes the training is refused with one line
naming the keys (`config_differences`); the keys in `MAY_CHANGE_ON_RESUME` may differ.
"""

from __future__ import annotations

import errno
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import load_checkpoint, save_atomic
from .config import TrainConfig
from .errors import UserError
from .parallel import collective_device, is_distributed, rank, world_size

# Config keys (dotted; a trailing "." covers a whole section) that may differ between a run and its resume:
# how long it runs, how it logs and checkpoints, where it runs, and everything about evaluation.
MAY_CHANGE_ON_RESUME = (
    "train.epochs", "train.resume", "train.log_every", "train.device", "train.dist_backend", "train.compile",
    "train.world_size", "train.batch_per_process", "train.checkpoint_every_steps", "train.checkpoint_every_minutes",
    "train.keep_checkpoints", "train.teacher_cache_dir", "data.num_workers", "data.file_list_dir", "data.root", "teacher.path",
    "out", "eval.", "eval_data",
)


@dataclass(frozen=True)
class Position:
    """Where a run stands: `epoch` (0-based) in progress, `epoch_step` steps done in it, `step` in all."""

    epoch: int = 0
    epoch_step: int = 0
    step: int = 0


def capture_generators() -> dict:
    """This process's random generators: torch CPU, every CUDA device, numpy, Python."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(), "python": random.getstate()}


def _numpy_state() -> dict:
    """numpy's global generator state with its key as a tensor (a safe `weights_only` load refuses arrays)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def restore_generators(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        saved = state["numpy"]
        np.random.set_state((saved["name"], saved["key"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                             saved["cached_gaussian"]))
    if "python" in state:
        random.setstate(_as_tuples(state["python"]))


def _as_tuples(value):
    """Python's generator state comes back from a safe load with lists where it had tuples."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def all_generators() -> list[dict]:
    """Every rank's generators, in rank order (a collective under torchrun)."""
    mine = capture_generators()
    if not is_distributed():
        return [mine]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, except those in `MAY_CHANGE_ON_RESUME`."""
    out = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if any(dotted == allowed or (allowed.endswith(".") and dotted.startswith(allowed)) for allowed in MAY_CHANGE_ON_RESUME):
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{dotted}.")
        elif a != b and key in saved:  # keys added since the checkpoint was written take their defaults
            out.append(f"{dotted} ({a!r} -> {b!r})")
    return out


class Checkpointer:
    """When to write, and where (rank 0 writes; every rank must call `save` for the generators' gather)."""

    def __init__(self, run_dir: Path, cfg: TrainConfig):
        self.folder = Path(run_dir) / "checkpoints"
        self.last = self.folder / "last.pt"
        self.best = self.folder / "best.pt"
        self.cfg = cfg
        self.last_write = time.monotonic()
        self.best_metric: float | None = None

    def due(self, step: int) -> bool:
        """Whether the step just finished (global count `step`) calls for a checkpoint by steps or minutes.
        The minutes rule is decided on rank 0 and shared, so every rank agrees."""
        by_steps = self.cfg.checkpoint_every_steps > 0 and step % self.cfg.checkpoint_every_steps == 0
        minutes = self.cfg.checkpoint_every_minutes
        by_time = minutes > 0 and time.monotonic() - self.last_write >= 60 * minutes
        if is_distributed() and minutes > 0:
            flag = torch.tensor([int(by_time)], device=collective_device())
            dist.broadcast(flag, src=0)
            by_time = bool(flag.item())
        return by_steps or by_time

    def save(self, state: dict, position: Position, metric: float | None = None) -> None:
        """Write `state` (plus the position and every rank's generators) as last.pt, as a step copy when
        `train.keep_checkpoints` > 0 (keeping the newest K), and as best.pt when `metric` is the best yet."""
        generators = all_generators()
        improved = metric is not None and (self.best_metric is None or metric > self.best_metric)
        if improved:
            self.best_metric = metric
        self.last_write = time.monotonic()
        if rank() != 0:
            return
        state = {**state, "epoch": position.epoch, "epoch_step": position.epoch_step, "step": position.step,
                 "rng": generators[0]["torch"], "generators": generators, "best_metric_so_far": self.best_metric}
        _write(state, self.last)
        if self.cfg.keep_checkpoints > 0:
            _write(state, self.folder / f"step_{position.step:08d}.pt")
            for old in sorted(self.folder.glob("step_*.pt"))[: -self.cfg.keep_checkpoints]:
                old.unlink(missing_ok=True)
        if improved:
            _write({**state, "best_metric": metric}, self.best)

    def load(self, current_config: dict, current_record: dict | None = None) -> dict | None:
        """The state of last.pt when it exists (and the config and the teacher files agree), else None."""
        if not self.last.exists():
            return None
        state = load_checkpoint(self.last)
        saved_teachers = list((state.get("record") or {}).get("teacher_sha256", {}).values())
        current_teachers = list((current_record or {}).get("teacher_sha256", {}).values())
        if saved_teachers and current_teachers and saved_teachers != current_teachers:
            raise UserError(f"cannot resume from {self.last}: the teacher files differ from those it was trained with "
                            f"(sha256 {', '.join(str(h)[:12] for h in saved_teachers)} then, "
                            f"{', '.join(str(h)[:12] for h in current_teachers)} now); pass the same teacher, use another --out, "
                            "or train.resume=false")
        differences = config_differences(state.get("config") or {}, current_config)
        if differences:
            raise UserError(f"cannot resume from {self.last}: the config differs in {', '.join(differences[:4])}"
                            f"{' ...' if len(differences) > 4 else ''}; rerun with the same values, use another --out, "
                            "or train.resume=false to start over (docs: keys that may change on resume)")
        self.best_metric = state.get("best_metric_so_far")
        return state


def restore_rank_generators(state: dict, seed: int) -> None:
    """This rank's generators from the checkpoint when it was written by as many processes; otherwise
    rank 0's state on rank 0 and a fresh stream per other rank."""
    saved = state.get("generators")
    if saved and len(saved) == world_size():
        restore_generators(saved[rank()])
    elif rank() == 0 and "rng" in state:
        torch.set_rng_state(state["rng"])
    else:
        torch.manual_seed(seed + rank())


def _write(state: dict, path: Path) -> None:
    try:
        save_atomic(state, path)
    except OSError as err:
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)
        why = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        intact = f"the previous {path.name} is intact" if path.exists() else "no earlier checkpoint was written"
        raise UserError(f"cannot write the checkpoint {path} ({why}); {intact}; free space or fix permissions, "
                        "then rerun the same command to resume") from None
