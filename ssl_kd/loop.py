"""The one training loop, for every objective (distillation methods and SSL pretraining alike).

An objective is an `nn.Module` with
    forward(views: list[Tensor], index: Tensor) -> dict, or (dict, state)
                                           ("loss" plus named parts, all logged; index = the images'
                                           dataset indices; `state` = what after_step needs). A batch
                                           {"views": [...], "teachers": [...]} (the teacher cache)
                                           calls forward(views, index, teachers)
    after_step(state) / after_step()       (e.g. enqueue this step's teacher embeddings)
    trainable: nn.ModuleDict               (what is optimized and checkpointed; a frozen teacher is not)

A step reads in order: forward -> backward (DDP averages the gradients) -> optimizer step ->
`after_step(state)` with the state that this step's forward returned (nothing is kept between calls).

`fit` runs AdamW with linear warm-up then cosine decay (per step), optional bf16/fp16 autocast,
gradient clipping, a tqdm bar per epoch on a terminal (loss, images/s, the ETA of the whole run) plus
one log line per epoch, `metrics.jsonl` (and TensorBoard with `train.tensorboard`; `ssl_kd.metrics_log`),
atomic checkpoints at every epoch end, every N steps or minutes and at a stop signal
(`ssl_kd.run_checkpoints`, `ssl_kd.preemption`), and resumes from `run_dir/checkpoints/last.pt` when
it exists, inside an epoch too. A non-finite loss or gradient stops the run with one line naming the
step, the loss parts and the last good checkpoint, before anything from that step is applied.

Under torchrun (`ssl_kd.parallel`) the objective runs under `DistributedDataParallel` (the trainable
parts; what is not trainable, the frozen teachers, is left out of it), optionally with SyncBatchNorm;
the logged numbers are averaged over processes; only rank 0 writes metrics and checkpoints and draws
the bar. A checkpoint written by W processes resumes with any other number of processes.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .config import TrainConfig
from .errors import UserError
from .parallel import all_reduce_mean, is_distributed, is_main_process, local_rank, rank, world_size
from .parallel import resolve_device as _resolve_device
from .preemption import Preempted, PreemptionGuard
from .metrics_log import MetricsLog
from .run_checkpoints import Checkpointer, Position, restore_rank_generators


@dataclass
class FitResult:
    epochs: int
    steps: int
    history: list[dict] = field(default_factory=list)  # one summary per epoch run in this call
    resumed_from_epoch: int = 0


def resolve_device(name: str) -> torch.device:
    """`train.device` as a device; under torchrun, auto/cuda mean this process's `cuda:LOCAL_RANK`."""
    return _resolve_device(name, local_rank() if is_distributed() else None)


def cosine_schedule(base_lr: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Per-step learning rates: linear warm-up to `base_lr`, then cosine decay to 0."""
    steps = np.arange(total_steps, dtype=np.float64)
    warmup = base_lr * (steps + 1) / max(warmup_steps, 1)
    progress = (steps - warmup_steps) / max(total_steps - warmup_steps, 1)
    cosine = 0.5 * base_lr * (1 + np.cos(math.pi * np.clip(progress, 0, 1)))
    return np.where(steps < warmup_steps, warmup, cosine)


def autocast_context(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), False
    if precision not in ("bf16", "fp16"):
        raise UserError(f"train.precision={precision} is not one of auto, fp32, bf16, fp16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), precision == "fp16"


def build_optimizer(trainable: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and normalization weights (1-d tensors) get no weight decay."""
    params = [p for p in trainable.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the objective has no trainable parameters")
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def fit(objective: nn.Module, loader, cfg: TrainConfig, run_dir: Path, config_dict: dict, device: torch.device,
        on_epoch_end: Callable[[int], dict] | None = None, data_check: Callable[[], dict | None] | None = None,
        record: dict | None = None) -> FitResult:
    """Train `objective` for `cfg.epochs`, resuming from the run's last checkpoint (`ssl_kd.run_checkpoints`:
    mid-epoch too, at the same batch, with every generator restored). `on_epoch_end(epoch)` (1-based,
    called on every process) may return numbers to add to that epoch's summary, e.g. the student's k-NN
    accuracy ("knn_top1" also picks checkpoints/best.pt). `data_check()` (called on every process every
    `cfg.log_every` steps and at the end of each epoch, before `on_epoch_end`) may stop the run with a
    `UserError` (too many unreadable images: `ssl_kd.data.unreadable_check`); what it returns at the end
    of an epoch joins that epoch's summary. `record` (the reproducibility record) goes into every
    checkpoint. SIGTERM, SIGUSR1 or Ctrl-C make the run checkpoint at the next step and raise
    `ssl_kd.preemption.Preempted`."""
    model = prepare_model(objective, cfg, device)
    optimizer = build_optimizer(objective.trainable, cfg)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise UserError("the training data gives no batch; use more images or a smaller train.batch_size")
    schedule = cosine_schedule(cfg.lr, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch)
    autocast, use_scaler = autocast_context(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    run = _Run(StepRunner(model, objective, optimizer, scaler, autocast, cfg, device), loader, schedule, steps_per_epoch,
               cfg, Path(run_dir), Checkpointer(Path(run_dir), cfg), MetricsLog(Path(run_dir), cfg.tensorboard), data_check,
               config_dict, record or {})

    position = Position()
    if rank() > 0:
        torch.manual_seed(cfg.seed + rank())  # each process its own stream; rank 0's is the single-process one
    state = run.checkpoints.load(config_dict, record) if cfg.resume else None
    if state is not None:
        position = _resume(state, run.checkpoints.last, objective, optimizer, scaler, steps_per_epoch, cfg.seed)
        _log(f"resumed from {run.checkpoints.last} (epoch {position.epoch + 1}, step {position.step})")
    result = FitResult(epochs=cfg.epochs, steps=position.step, resumed_from_epoch=position.epoch)

    run.first_step, run.started = position.step, time.time()
    with PreemptionGuard() as guard, contextlib.closing(run.metrics):
        for epoch in range(position.epoch, cfg.epochs):
            skip = position.epoch_step if epoch == position.epoch else 0
            _start_epoch(loader, cfg.seed, epoch, skip)
            summary = _run_epoch(run, guard, epoch, epoch * steps_per_epoch + skip, skip)
            if data_check is not None:
                summary.update(data_check() or {})
            if on_epoch_end is not None:
                summary.update(on_epoch_end(epoch + 1))
            result.steps, result.history = summary["step"], result.history + [summary]
            run.metrics.write(summary)
            _log(_epoch_line(summary, cfg.epochs))
            run.save(Position(epoch + 1, 0, summary["step"]), metric=summary.get("knn_top1"))
    return result


@dataclass
class _Run:
    """What every epoch of one `fit` call shares."""

    step_runner: "StepRunner"
    loader: object
    schedule: np.ndarray
    steps_per_epoch: int
    cfg: TrainConfig
    run_dir: Path
    checkpoints: Checkpointer
    metrics: MetricsLog
    data_check: Callable[[], dict | None] | None
    config: dict
    record: dict
    first_step: int = 0  # the step this fit call started at, and when: for the ETA of the whole run
    started: float = 0.0

    def eta(self, step: int) -> str:
        """Time left for the whole run at this call's pace so far, as h:mm:ss."""
        done = step - self.first_step
        seconds = (len(self.schedule) - step) * (time.time() - self.started) / max(done, 1)
        return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f} days"

    def save(self, position: Position, metric: float | None = None) -> None:
        runner = self.step_runner
        self.checkpoints.save({"trainable": runner.objective.trainable.state_dict(), "optimizer": runner.optimizer.state_dict(),
                               "scaler": runner.scaler.state_dict(), "config": self.config, "record": self.record},
                              position, metric)


def prepare_model(objective: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The objective on `device` (channels_last, compiled backbones, SyncBatchNorm as configured), and
    under torchrun wrapped in DDP; returns what the loop calls forward on. DDP syncs parameters and buffers
    from rank 0 once, at the wrap, and not before every forward (`forward_sync_buffers=False`): queues and
    banks stay identical through their all-gathered updates, and BatchNorm statistics are each process's
    own unless `train.sync_bn`."""
    objective.to(device)
    if use_channels_last(cfg, device):
        objective.to(memory_format=torch.channels_last)
    if cfg.compile:
        for module in compile_targets(objective):
            module.compile()
    if not is_distributed():
        return objective
    if cfg.sync_bn:
        if device.type != "cuda":
            raise UserError("train.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); "
                            "set train.sync_bn=false on the CPU")
        nn.SyncBatchNorm.convert_sync_batchnorm(objective.trainable)
    frozen = _frozen_names(objective)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(objective, frozen)
    return DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None,
                                   forward_sync_buffers=False, static_graph=True)


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """`train.channels_last`, where None means: on CUDA."""
    return cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"


def compile_targets(objective: nn.Module) -> list[nn.Module]:
    """The backbones worth compiling: the objective's `compile_targets()` when it names them, else its trainable parts."""
    targets = getattr(objective, "compile_targets", None)
    return list(targets()) if callable(targets) else list(objective.trainable.values())


def _frozen_names(objective: nn.Module) -> list[str]:
    """Names of the parameters and buffers outside `trainable` (the frozen teachers): DDP leaves them alone."""
    kept = {id(t) for t in [*objective.trainable.parameters(), *objective.trainable.buffers()]}
    named = [*objective.named_parameters(), *objective.named_buffers()]
    return [name for name, tensor in named if id(tensor) not in kept]


def _start_epoch(loader, seed: int, epoch: int, skip: int = 0) -> None:
    """The epoch's order depends only on (seed, epoch): the sampler's `set_epoch`, else the loader's generator.
    `skip`: steps of this epoch already done (a resumed run), which the sampler leaves out."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed + epoch)
    if hasattr(sampler, "skip_batches"):
        sampler.skip_batches(skip, loader.batch_size)
    elif skip:
        raise UserError("this checkpoint stopped inside an epoch, and this loader cannot start mid-epoch; "
                        "use ssl_kd.loaders.make_loader, or train.resume=false")


class StepRunner:
    """One optimizer step: forward under autocast, the finite check, backward, clipping, step, after_step."""

    def __init__(self, model, objective, optimizer, scaler, autocast, cfg: TrainConfig, device: torch.device):
        self.model, self.objective, self.optimizer, self.scaler = model, objective, optimizer, scaler
        self.autocast, self.cfg, self.device = autocast, cfg, device
        self.channels_last = use_channels_last(cfg, device)

    def __call__(self, views, index, lr: float) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        teachers = None
        if isinstance(views, dict):  # {"views": [...], "teachers": [...]}: the teachers' cached outputs come along
            views, teachers = views["views"], [self._rows_to_device(rows) for rows in views["teachers"]]
        views = [self._to_device(v) for v in (views if isinstance(views, (list, tuple)) else [views])]
        index = index.to(self.device, non_blocking=True)
        with self.autocast:
            out = self.model(views, index) if teachers is None else self.model(views, index, teachers)
        losses, state = out if isinstance(out, tuple) else (out, None)
        values = _mean_over_processes(losses)  # also the finite check: a NaN on any rank stops every rank
        if not math.isfinite(values["loss"]):
            return values
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        values["grad_norm"] = float(nn.utils.clip_grad_norm_(self.objective.trainable.parameters(), max_norm))
        if not self.scaler.is_enabled() and not math.isfinite(values["grad_norm"]):
            return values  # no step from a non-finite gradient (fp16's scaler skips such steps itself)
        values["grad_norm"] = values["grad_norm"] if math.isfinite(values["grad_norm"]) else 0.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if isinstance(out, tuple):
            self.objective.after_step(state)
        else:
            self.objective.after_step()
        return values

    def _rows_to_device(self, rows: dict) -> dict:
        return {name: value.to(self.device, non_blocking=True) for name, value in rows.items()}

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last and images.ndim == 4 else images


def _mean_over_processes(losses: dict) -> dict[str, float]:
    """Every logged number as a float, averaged over processes (one all-reduce of a small vector)."""
    stacked = torch.stack([value.detach().float().reshape(()) for value in losses.values()])
    return dict(zip(losses, all_reduce_mean(stacked).tolist()))


def _run_epoch(run: _Run, guard: PreemptionGuard, epoch: int, step: int, skip: int) -> dict:
    """One epoch from its step `skip` on (`step`: the global count there); checkpoints by steps or minutes,
    and stops with a checkpoint when a stop signal came (`Preempted`)."""
    runner, cfg = run.step_runner, run.cfg
    runner.objective.train()
    totals: dict[str, float] = {}
    start, images, count = time.time(), 0, 0
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not (sys.stderr.isatty() and is_main_process()))
    for views, _labels, index in bar:
        values = runner(views, index, float(run.schedule[step]))
        if not all(math.isfinite(value) for value in values.values()):
            raise UserError(_not_finite_message(values, step, epoch, run.checkpoints.last))
        images += index.shape[0] * world_size()
        count += 1
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value
        if cfg.log_every and step % cfg.log_every == 0:
            run.metrics.write({"step": step, "epoch": epoch + 1, "lr": float(run.schedule[step]), **values})
            if run.data_check is not None:
                run.data_check()
        step += 1
        bar.set_postfix(loss=f"{values['loss']:.3f}", img_s=f"{images / max(time.time() - start, 1e-9):.0f}", run_eta=run.eta(step))
        done = skip + count
        if guard.requested():
            run.save(Position(epoch, done, step) if done < run.steps_per_epoch else Position(epoch + 1, 0, step))
            raise Preempted(f"stopped by {guard.signal_name or 'a signal to another process'} at step {step}; "
                            f"checkpoint {run.checkpoints.last} written; rerun the same command to resume")
        if done < run.steps_per_epoch and run.checkpoints.due(step):
            run.save(Position(epoch, done, step))
    if count == 0:
        raise UserError("the epoch gave no batch; use more images or a smaller train.batch_size")
    seconds = time.time() - start
    return {"epoch": epoch + 1, "step": step, "lr": float(run.schedule[step - 1]), "seconds": round(seconds, 2),
            "images_per_s": round(images / max(seconds, 1e-9), 1), **{name: total / count for name, total in totals.items()}}


def _not_finite_message(values: dict, step: int, epoch: int, last: Path) -> str:
    parts = ", ".join(f"{name} {value:.4g}" for name, value in values.items())
    what = "loss" if not math.isfinite(values["loss"]) else "gradient"
    good = last if last.exists() else "none yet"
    return (f"the {what} became non-finite at step {step} (epoch {epoch + 1}: {parts}); nothing was saved from this step, "
            f"and the last good checkpoint is {good}; lower train.lr, or use train.precision=fp32")


def _resume(state: dict, path: Path, objective, optimizer, scaler, steps_per_epoch: int, seed: int) -> Position:
    trainable = state.get("trainable", {})
    upgrade = getattr(objective, "upgrade_state_dict", None)  # checkpoints of an older layout of the objective
    if callable(upgrade):
        trainable = upgrade(trainable)
    try:
        objective.trainable.load_state_dict(trainable)
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise UserError(
            f"cannot resume from {path}: it was written by a different model or method ({' '.join(str(err).split())[:120]}); "
            "use another --out, or train.resume=false to start over"
        ) from None
    scaler.load_state_dict(state["scaler"])
    restore_rank_generators(state, seed)
    epoch, epoch_step, step = int(state["epoch"]), int(state.get("epoch_step", 0)), int(state["step"])
    if epoch_step and step != epoch * steps_per_epoch + epoch_step:
        raise UserError(f"cannot resume from {path} inside epoch {epoch + 1}: it had another number of steps per epoch "
                        "(a changed train.batch_size or dataset); use another --out, or train.resume=false")
    return Position(epoch, epoch_step, step)


def _epoch_line(summary: dict, epochs: int) -> str:
    parts = "  ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in summary.items()
                      if k not in ("epoch", "step", "lr", "seconds", "images_per_s"))
    return (f"epoch {summary['epoch']}/{epochs}  {parts}  lr {summary['lr']:.2e}  {summary['seconds']:.1f}s"
            f"  {summary['images_per_s']:.0f} img/s")


def _log(message: str) -> None:
    if is_main_process():
        print(message, flush=True)
