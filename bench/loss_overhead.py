"""Step time of every distillation method as a ratio to plain feature regression, on the same batch.

    python bench/loss_overhead.py [--batch-size 128] [--repeats 7] [--methods all] [--student resnet10t] [--queue-size 4096]

One step is a real training step: the frozen teacher's and the student's forward on the batch's views,
the method's loss (with the momentum queue full, as in a long run), backward, AdamW step, and the
method's after-step work (enqueue, memory banks, momentum student).
Methods are timed in alternation, round after round, and each one's median is divided by the
median of plain regression (MSE between the student's projection and the teacher's embedding) from
the same rounds, so load from other processes on a shared machine hits all alike. Prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ssl_kd.config import Config  # noqa: E402
from ssl_kd.defaults import default_teacher  # noqa: E402
from ssl_kd.distillation import DistillObjective, build_student  # noqa: E402
from ssl_kd.losses import METHODS, build_method  # noqa: E402
from ssl_kd.losses.base import DistillMethod, MethodDims  # noqa: E402
from ssl_kd.queue import MomentumQueue  # noqa: E402
from ssl_kd.teachers import load_teacher  # noqa: E402

BASELINE = "regression"


class FeatureRegression(DistillMethod):
    """The reference: MSE between the student's projection and the teacher's embedding."""

    def forward(self, student, teacher, queue, ctx) -> dict:
        return {"loss": F.mse_loss(student.emb, teacher.emb.detach())}


def build_objectives(names: list[str], cfg: Config, teacher, num_samples: int) -> dict[str, DistillObjective]:
    objectives = {}
    for name in [BASELINE, *names]:
        student = build_student(cfg, teacher)
        if name == BASELINE:
            method = FeatureRegression()
        else:
            cfg.loss.method = name
            method = build_method(cfg.loss, MethodDims(student.feat_dim, teacher.embed_dim, num_samples=num_samples))
        queue = MomentumQueue(cfg.loss.queue_size, teacher.embed_dim) if method.needs_queue else None
        for fifo in (queue, getattr(method, "student_queue", None)):  # full, as in a long run (2q has two)
            if fifo is not None:
                fifo.enqueue(torch.randn(cfg.loss.queue_size, teacher.embed_dim))
        objectives[name] = DistillObjective(teacher, student, method, queue)
    return objectives


def step_seconds(objective: DistillObjective, optimizer, views, index) -> float:
    start = time.perf_counter()
    out = objective(views, index)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()
    objective.after_step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--student", default="resnet10t")
    parser.add_argument("--queue-size", type=int, default=None, help="queue length (default: the config's, 1024)")
    args = parser.parse_args()
    names = sorted(METHODS) if args.methods == "all" else args.methods.split(",")
    cfg = Config()
    cfg.student.arch = args.student
    if args.queue_size:
        cfg.loss.queue_size = args.queue_size
    torch.manual_seed(0)
    teacher = load_teacher(default_teacher("digits"))
    views = [torch.rand(args.batch_size, 3, 32, 32) for _ in range(2)]
    index = torch.arange(args.batch_size)
    objectives = build_objectives(names, cfg, teacher, num_samples=1257)
    optimizers = {name: torch.optim.AdamW([p for p in obj.trainable.parameters() if p.requires_grad], lr=1e-4)
                  for name, obj in objectives.items()}
    times: dict[str, list[float]] = {name: [] for name in objectives}
    for round_ in range(args.repeats + 1):  # round 0 warms up (and materializes lazy modules)
        for name, objective in objectives.items():
            seconds = step_seconds(objective, optimizers[name], views, index)
            if round_:
                times[name].append(seconds)
    base = statistics.median(times[BASELINE])
    print(f"student {args.student}, batch {args.batch_size} x 2 views at 32 px, teacher resnet14t (2048-d), "
          f"queue {cfg.loss.queue_size}, {torch.get_num_threads()} threads, median of {args.repeats} rounds")
    print(f"{'method':<14} {'ms/step':>8} {'ratio':>6}  queue")
    for name in objectives:
        median = statistics.median(times[name])
        uses_queue = "yes" if objectives[name].trainable["method"].needs_queue else ""
        print(f"{name:<14} {1000 * median:8.1f} {median / base:6.2f}  {uses_queue}")


if __name__ == "__main__":
    main()
