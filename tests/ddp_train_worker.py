"""Distil a few steps on tiny digits under torchrun (or in one plain process), for tests/test_distributed_training.py.

    python -m torch.distributed.run --nproc-per-node 2 ... tests/ddp_train_worker.py OUT RUN_DIR METHODS [key=value ...]

For each method of the comma-separated METHODS, trains with `ssl_kd.loop.fit` in RUN_DIR/METHOD (RUN_DIR
may contain "{rank}" to give each process its own folder) and writes OUT/METHOD_rank<R>.json: the sha256
of every queue and memory bank this process holds when the first step starts (after any resume) and
after every step, so the test can check that all processes hold identical contents step by step and
that a resumed run starts from the contents the checkpoint held. Rank 0 also saves the trainable
state it started from (OUT/METHOD_initial.pt) and, at the end, the queue (OUT/METHOD_queue.pt).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from ssl_kd.cli import distributed_session
from ssl_kd.config import Config, load_config, to_dict
from ssl_kd.data import build_dataset
from ssl_kd.views import views_transform
from ssl_kd.loaders import make_loader
from ssl_kd.defaults import default_teacher
from ssl_kd.distillation import build_objective, build_student, record_processes
from ssl_kd.loop import fit
from ssl_kd.losses.memory import MemoryBank
from ssl_kd.parallel import rank
from ssl_kd.queue import MomentumQueue
from ssl_kd.teachers import load_teacher

# no random augmentation (full-image crops, no flips, colour or rotation): every process sees exactly the
# views one process would, so 2 processes can be compared with 1 number for number
DETERMINISTIC_VIEWS = ["data.min_scale=1.0", "data.hflip=0.0", "data.color_jitter=0.0", "data.grayscale=0.0",
                       "data.blur=0.0", "data.rotation=0.0"]


def per_sample_norms(module: torch.nn.Module) -> None:
    """Every BatchNorm of `module` replaced by GroupNorm(1, C), which normalizes each image on its own.

    BatchNorm's statistics are those of each process's share of the batch unless SyncBatchNorm
    (train.sync_bn) makes them global, and PyTorch's SyncBatchNorm runs on GPUs only. With per-sample
    norms the student's forward is the same whatever the batch is split into, so the statistics the
    losses take over the batch, the gathers, DDP's gradient average and the queues are what the
    comparison of 2 processes with 1 tests."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            setattr(module, name, torch.nn.GroupNorm(1, child.num_features))
        else:
            per_sample_norms(child)


def memory_digests(objective) -> dict[str, str]:
    """sha256 of every queue's and memory bank's contents, by module name."""
    out = {}
    for name, module in objective.trainable.named_modules():
        if isinstance(module, MomentumQueue):
            out[name] = hashlib.sha256(module.ordered().cpu().numpy().tobytes()).hexdigest()
        elif isinstance(module, MemoryBank):
            out[name] = hashlib.sha256(module.memory.cpu().numpy().tobytes()).hexdigest()
    return out


def train_one(cfg: Config, teacher, device, out: Path, run_dir: Path) -> None:
    method = cfg.loss.method
    torch.manual_seed(cfg.train.seed)
    dataset = build_dataset(cfg.data, "train", views_transform(cfg.data))
    loader = make_loader(dataset, cfg.train.batch_size, train=True, num_workers=0, seed=cfg.train.seed)
    record_processes(cfg, loader)
    objective = build_objective(cfg, teacher, build_student(cfg, teacher), len(dataset))
    per_sample_norms(objective.trainable)
    if rank() == 0:
        torch.save(objective.trainable.state_dict(), out / f"{method}_initial.pt")
    record: dict = {"first_step": None, "steps": []}
    forward, after_step = objective.forward, objective.after_step

    def recording_forward(*args, **kwargs):
        if record["first_step"] is None:
            record["first_step"] = memory_digests(objective)
        return forward(*args, **kwargs)

    def recording_after_step(state):
        after_step(state)
        record["steps"].append(memory_digests(objective))

    objective.forward, objective.after_step = recording_forward, recording_after_step
    result = fit(objective, loader, cfg.train, run_dir, to_dict(cfg), device)
    record.update(resumed_from_epoch=result.resumed_from_epoch, world_size=cfg.train.world_size,
                  batch_per_process=cfg.train.batch_per_process)
    (out / f"{method}_rank{rank()}.json").write_text(json.dumps(record))
    if rank() == 0 and "queue" in objective.trainable:
        torch.save(objective.trainable["queue"].ordered(), out / f"{method}_queue.pt")


def main(out: Path, run_dir: str, methods: str, overrides: list[str]) -> None:
    def config(method: str) -> Config:
        cfg = load_config(None, ["train.device=cpu", "data.num_workers=0", "train.log_every=1", "eval.monitor_every=0",
                                 *DETERMINISTIC_VIEWS, *overrides, f"loss.method={method}"])
        return cfg

    names = methods.split(",")
    out.mkdir(parents=True, exist_ok=True)
    first = config(names[0])
    with distributed_session(first.train) as device:
        teacher = load_teacher(str(default_teacher("digits")), image_size=first.data.image_size).to(device)
        for method in names:
            train_one(config(method), teacher, device, out, Path(run_dir.format(rank=rank())) / method)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:])
