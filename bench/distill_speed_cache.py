"""Part (d) of bench/distill_speed.py: the teacher-feature cache (`train.teacher_cache`) against the bare step.

Per config (`--cache-configs`), on the CIFAR-10 JPEG dev subset's train/ folder (`--data-root`), with
randomly initialised timm teachers (speed does not depend on the weights):
    r50_32    resnet50 -> resnet18 at 32 px, batch 64 x 2 views, 2,048 images (32 steps an epoch), V = 10
    vitb_224  vit_base_patch16_224 -> resnet18 at 224 px (the images upsampled), batch 4 x 2 views,
              16 images (4 steps an epoch), V = 4: a small batch, as the CPU allows
Method dlkd, data.num_workers=2 as configured. Five contenders alternate round after round (order
flipped every round, median reported):
    bare    the uncached floor: teacher forward + student forward/backward + AdamW on one in-memory batch
            (`BareStep`, as in part (a)), one epoch's worth of steps;
    loop    `fit` uncached, one epoch, on the real loader;
    cached  `fit` from the cache, one epoch, on the real loader (the teacher is never called);
    cached_step  the library's step on one cached batch in memory, as many steps: the cached loop's
            ceiling (no loader workers sharing the cores, no checkpoint, no set-up);
    build   building the cache from scratch into a fresh folder: N x V teacher forwards plus the loader.
Printed: cached / bare (GOAL >= 1.3x for r50_32 and >= 2.5x for vitb_224), cached / loop, and the
one-time build in epochs of uncached training (build seconds / loop seconds of one epoch, both over
the same images, so the figure holds for any dataset size).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ssl_kd.config import load_config, to_dict
from ssl_kd.loaders import make_loader
from ssl_kd.distillation import training_views
from ssl_kd.loop import StepRunner, autocast_context, build_optimizer, fit, prepare_model

from distill_speed_setup import BareStep, build_setup, cifar_train_root, describe, fresh_objective, random_teacher_file, sync
from distill_speed_timing import Probe, TimedLoader, alternate, instrumented_loop, ratio_line, spread

CACHE_CONFIGS = {
    # name: (teacher, student, image size, batch, images, V, teacher forward batch, goal of cached / bare)
    "r50_32": ("resnet50", "resnet18", 32, 64, 2048, 10, 640, 1.3),
    "vitb_224": ("vit_base_patch16_224", "resnet18", 224, 4, 16, 4, 16, 2.5),
}


def cache_overrides(name: str, args, teacher_dir: Path) -> tuple[list[str], float]:
    teacher, student, size, batch, images, draws, forward_batch, goal = CACHE_CONFIGS[name]
    root = cifar_train_root(args.data_root, Path(tempfile.gettempdir()) / "ssl_kd_distill_speed")
    return ["train.resume=false", "data.name=imagefolder", f"data.root={root}", f"data.image_size={size}", f"data.subset={images}",
            f"teacher.path={random_teacher_file(teacher, teacher_dir)}", f"teacher.arch={teacher}", f"student.arch={student}",
            f"train.batch_size={batch}", f"loss.queue_size={images // 2}", f"train.teacher_cache={draws}",
            f"eval.batch_size={forward_batch}", "train.epochs=1", "eval.monitor_every=0"], goal


def library_step(objective, train_cfg, device: torch.device) -> StepRunner:
    """`ssl_kd.loop.StepRunner` for `objective`, as `fit` builds it."""
    model = prepare_model(objective, train_cfg, device)
    autocast, use_scaler = autocast_context(train_cfg.precision, device)
    return StepRunner(model, objective, build_optimizer(objective.trainable, train_cfg),
                      torch.amp.GradScaler(device.type, enabled=use_scaler), autocast, train_cfg, device)


class CacheBench:
    """One config's four contenders (see the module docstring)."""

    def __init__(self, cfg, device: torch.device, scratch: Path):
        self.setup = build_setup(cfg, device)
        self.cfg, self.device, self.scratch = cfg, device, scratch
        self.steps = len(self.setup.loader)
        self.images = self.steps * cfg.train.batch_size
        self.bare_step = BareStep(self.setup)
        self.builds = 0
        objective = fresh_objective(self.setup)
        self.cached_data, _ = self._quietly(lambda: training_views(cfg, self.setup.dataset, objective, scratch / "kept", device))
        self.cached_loader = make_loader(self.cached_data, cfg.train.batch_size, train=True, num_workers=cfg.data.num_workers,
                                         seed=cfg.train.seed, tag_epoch=True)
        self.cached_batch, _labels, self.cached_index = next(iter(self.cached_loader))
        self.step_runner = library_step(fresh_objective(self.setup), cfg.train, device)
        self.seconds: dict[str, list[float]] = {"loop": [], "cached": [], "build": []}
        self.probes: dict[str, list[Probe]] = {"loop": [], "cached": []}

    @staticmethod
    def _quietly(fn):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn()

    def warm_up(self) -> None:
        for loader in (self.setup.loader, self.cached_loader):
            for _ in loader:  # starts the persistent workers
                pass
        self.bare_step(1)
        self.step_runner(self.cached_batch, self.cached_index, self.cfg.train.lr)

    def bare(self) -> float:
        return self.bare_step(self.steps)

    def _fit(self, loader, label: str) -> float:
        objective = fresh_objective(self.setup)
        probe = Probe()
        with tempfile.TemporaryDirectory(dir=self.scratch) as run_dir, instrumented_loop(probe, self.device):
            start = time.perf_counter()
            result = self._quietly(lambda: fit(objective, TimedLoader(loader, probe), self.cfg.train, Path(run_dir),
                                               to_dict(self.cfg), self.device))
            sync(self.device)
            probe.wall = time.perf_counter() - start
        assert result.steps == self.steps, (result.steps, self.steps)
        self.probes[label].append(probe)
        self.seconds[label].append(probe.wall)
        return probe.wall

    def loop(self) -> float:
        return self.images / self._fit(self.setup.loader, "loop")

    def cached(self) -> float:
        return self.images / self._fit(self.cached_loader, "cached")

    def cached_step(self) -> float:
        """The library's step (the method, its queue, clipping, AdamW) on one cached batch in memory: the
        cached loop without its loader, checkpoints and set-up, i.e. its ceiling."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(self.steps):
            self.step_runner(self.cached_batch, self.cached_index, self.cfg.train.lr)
        sync(self.device)
        return self.images / (time.perf_counter() - start)

    def breakdown(self, label: str) -> str:
        """Where the median round of `label`'s fit spent its time, in ms per step."""
        probes = sorted(self.probes[label], key=lambda p: p.wall)
        p = probes[len(probes) // 2]
        ms = lambda seconds: 1000 * seconds / self.steps  # noqa: E731
        rest = p.wall - p.wait - p.step - p.save - p.metrics
        return (f"  {label:<6} ms per step {ms(p.wall):.0f}: step {ms(p.step):.0f}, waiting on the loader {ms(p.wait):.0f} "
                f"(first batch of the epoch {ms(p.first_wait):.0f}), checkpoint {ms(p.save):.0f}, the rest (set-up, metrics) {ms(rest):.0f}")

    def build(self) -> float:
        """Rebuild the cache from nothing in a fresh folder; images (x V draws) per second."""
        self.builds += 1
        objective = fresh_objective(self.setup)
        start = time.perf_counter()
        self._quietly(lambda: training_views(self.cfg, self.setup.dataset, objective, self.scratch / f"build{self.builds}", self.device))
        seconds = time.perf_counter() - start
        self.seconds["build"].append(seconds)
        return len(self.setup.dataset) / seconds


def run_part_d(args, teacher_dir: Path, device: torch.device) -> None:
    print(f"\n(d) the teacher-feature cache: cached loop vs the bare (uncached) step, {args.rounds} alternating rounds")
    for name in args.cache_configs:
        overrides, goal = cache_overrides(name, args, teacher_dir)
        with tempfile.TemporaryDirectory(prefix="distill_speed_cache_") as scratch:
            bench = CacheBench(load_config(None, overrides), device, Path(scratch))
            draws = bench.cfg.train.teacher_cache
            print(f"\n[{name}] {describe(bench.setup)}; V = {draws} cached draws per image")
            bench.warm_up()
            results = alternate({"bare": bench.bare, "loop": bench.loop, "cached": bench.cached, "cached_step": bench.cached_step,
                                 "build": bench.build}, args.rounds)
        for label in ("bare", "loop", "cached", "cached_step"):
            print(f"  {label:<11} images/s {spread(results[label])}")
        print(f"  build       images/s {spread(results['build'])}  (x {draws} draws: teacher forwards of every draw, once)")
        print(bench.breakdown("loop"))
        print(bench.breakdown("cached"))
        print(f"  bare   ms per step {1000 * bench.cfg.train.batch_size / statistics.median(results['bare']):.0f}")
        print(ratio_line(f"cached / bare (the goal, >= {goal})", results["cached"], results["bare"], goal))
        print(ratio_line("cached / loop (uncached)", results["cached"], results["loop"]))
        print(ratio_line("cached_step / bare (the ceiling)", results["cached_step"], results["bare"]))
        epochs = statistics.median(bench.seconds["build"]) / statistics.median(bench.seconds["loop"])
        print(f"  one-time cost: building the cache (V = {draws}) takes as long as {epochs:.2f} epochs of uncached training "
              f"(median build {statistics.median(bench.seconds['build']):.1f} s vs one uncached epoch "
              f"{statistics.median(bench.seconds['loop']):.1f} s over the same {len(bench.setup.dataset)} images)")
