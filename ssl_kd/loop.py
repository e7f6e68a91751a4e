"""The one training loop, for every objective (distillation methods and SSL pretraining alike).

An objective is an `nn.Module` with
    forward(views: list[Tensor], index: Tensor) -> dict   ("loss" plus named parts, all logged;
                                           index = the images' dataset indices)
    after_step() -> None                   (e.g. enqueue this step's teacher embeddings)
    trainable: nn.ModuleDict               (what is optimized and checkpointed; a frozen teacher is not)

`fit` runs AdamW with linear warm-up then cosine decay (per step), optional bf16/fp16 autocast,
gradient clipping, a tqdm bar on a terminal plus one log line per epoch, `metrics.jsonl`, an atomic
checkpoint after every epoch, and resumes from `run_dir/checkpoints/last.pt` when it exists. A
non-finite loss stops the run with one line naming the step and the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_atomic
from .config import TrainConfig
from .errors import UserError
from .parallel import is_main_process


@dataclass
class FitResult:
    epochs: int
    steps: int
    history: list[dict] = field(default_factory=list)  # one summary per epoch run in this call
    resumed_from_epoch: int = 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but CUDA is not available here; use train.device=cpu (or auto)")
    return torch.device(name)


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
        on_epoch_end: Callable[[int], dict] | None = None) -> FitResult:
    """Train `objective` for `cfg.epochs` (resuming from the run's last checkpoint). `on_epoch_end(epoch)`
    (1-based) may return numbers to add to that epoch's summary, e.g. the student's k-NN accuracy."""
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / "checkpoints" / "last.pt"
    objective.to(device)
    optimizer = build_optimizer(objective.trainable, cfg)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise UserError("the training data gives no batch; use more images or a smaller train.batch_size")
    schedule = cosine_schedule(cfg.lr, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch)
    autocast, use_scaler = autocast_context(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    start_epoch, step = 0, 0
    if cfg.resume and checkpoint_path.exists():
        start_epoch, step = _resume(checkpoint_path, objective, optimizer, scaler)
        _log(f"resumed from {checkpoint_path} (epoch {start_epoch}, step {step})")
    result = FitResult(epochs=cfg.epochs, steps=step, resumed_from_epoch=start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(loader, "generator") and loader.generator is not None:
            loader.generator.manual_seed(cfg.seed + epoch)  # the epoch's order depends only on (seed, epoch)
        summary = _run_epoch(objective, loader, optimizer, scaler, schedule, autocast, cfg, epoch, step, run_dir, device, checkpoint_path)
        step += steps_per_epoch
        if on_epoch_end is not None:
            summary.update(on_epoch_end(epoch + 1))
        result.steps, result.history = step, result.history + [summary]
        _append_metrics(run_dir, summary)
        _log(_epoch_line(summary, cfg.epochs))
        if is_main_process():
            _save(checkpoint_path, objective, optimizer, scaler, epoch + 1, step, config_dict)
    return result


def _run_epoch(objective, loader, optimizer, scaler, schedule, autocast, cfg, epoch, step, run_dir, device, checkpoint_path) -> dict:
    objective.train()
    totals: dict[str, float] = {}
    start = time.time()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not (sys.stderr.isatty() and is_main_process()))
    for i, (views, _labels, index) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = float(schedule[step])
        views = [v.to(device, non_blocking=True) for v in (views if isinstance(views, (list, tuple)) else [views])]
        with autocast:
            out = objective(views, index.to(device))
        loss = out["loss"]
        if not torch.isfinite(loss):
            last = checkpoint_path if checkpoint_path.exists() else "none yet"
            raise UserError(
                f"the loss became {loss.item()} at step {step} (epoch {epoch + 1}); last good checkpoint: {last}; "
                "lower train.lr, or use train.precision=fp32"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(objective.trainable.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        objective.after_step()
        values = {name: float(value.detach()) for name, value in out.items()}
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + value
        if cfg.log_every and step % cfg.log_every == 0:
            _append_metrics(run_dir, {"step": step, "epoch": epoch + 1, "lr": float(schedule[step]), **values})
        bar.set_postfix(loss=f"{values['loss']:.3f}")
        step += 1
    count = i + 1
    return {"epoch": epoch + 1, "step": step, "lr": float(schedule[step - 1]), "seconds": round(time.time() - start, 2),
            **{name: total / count for name, total in totals.items()}}


def _save(path: Path, objective, optimizer, scaler, epoch: int, step: int, config_dict: dict) -> None:
    save_atomic(
        {
            "trainable": objective.trainable.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "config": config_dict,
            "rng": torch.get_rng_state(),  # the augmentations draw from torch's generator
        },
        path,
    )


def _resume(path: Path, objective, optimizer, scaler) -> tuple[int, int]:
    state = load_checkpoint(path)
    try:
        objective.trainable.load_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise UserError(
            f"cannot resume from {path}: it was written by a different model or method ({' '.join(str(err).split())[:120]}); "
            "use another --out, or train.resume=false to start over"
        ) from None
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]), int(state["step"])


def _append_metrics(run_dir: Path, record: dict) -> None:
    if not is_main_process():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _epoch_line(summary: dict, epochs: int) -> str:
    parts = "  ".join(f"{k} {v:.4f}" for k, v in summary.items() if k not in ("epoch", "step", "lr", "seconds"))
    return f"epoch {summary['epoch']}/{epochs}  {parts}  lr {summary['lr']:.2e}  {summary['seconds']:.1f}s"


def _log(message: str) -> None:
    if is_main_process():
        print(message, flush=True)
