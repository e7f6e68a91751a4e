"""Distillation speed: the whole training loop against the bare step it is built around, on this machine.

    python bench/distill_speed.py [--steps N] [--rounds 3] [--configs digits,natural64] [--data-root ZIP_OR_DIR] [--subset 640]
        [--threads N] [--skip-multiprocess] [--skip-cuda] [--cuda-steps 20] [--cache-configs r50_32,vitb_224] [--skip-cache]

Everything is measured side by side in one run: contenders alternate round after round (the order
flips every round), and each one's median over `--rounds` is reported, so load from other processes
on a shared machine hits all alike. A warm-up (loader workers started, one step of each) comes first
and is not timed. images/s counts images (not views) per second; each image gives two views.

(a) loop vs bare step, per config (`--configs`):
      digits     the embedded default: shipped resnet14t SimCLR teacher -> resnet10t, batch 128, two crops,
                 method dlkd (queue 1024), scikit-learn digits at 32 px (1,257 images: 9 steps an epoch),
                 data.num_workers=2 as configured;
      natural64  a randomly initialised timm resnet18 teacher (saved to a temp file, loaded by
                 `load_teacher(..., arch="resnet18")`) -> resnet10t, batch 128, two crops, dlkd,
                 data.name=imagefolder on the CIFAR-10 JPEG dev subset's train/ folder (`--data-root`:
                 a zip, unpacked once into a temp folder outside the project, or a folder; natural64 runs only
                 with it), data.subset=`--subset` (640: 5 steps an epoch), data.image_size=64, ImageNet augmentation.
    Three contenders over the same number of steps (`--steps`; default one epoch; the loop runs
    ceil(steps / steps-per-epoch) whole epochs and the others as many steps):
      bare  the floor: teacher forward + student forward (backbone + projector) + an MSE to the teacher's
            embedding + backward + AdamW step, on one batch already in memory (no loader, no method, no
            queue, no clipping, no logging); same autocast and memory format as the loop;
      step  the library's `StepRunner` (the config's method and its queue, the loss all-reduce/finite check,
            grad clipping, lr update, after_step) on the same in-memory batch, no loader;
      loop  `ssl_kd.loop.fit` itself on the config's real loader: whole epochs, metrics.jsonl, the
            checkpoint after every epoch, the per-epoch summary. images/s = images / wall time of `fit`.
    Printed: each one's images/s, loop/bare (GOAL >= 0.95), step/bare (what the method, queue and step
    plumbing cost) and loop/step (what the loader, logging and checkpoints cost). The loop also gets a
    breakdown of its time per step (median round; the loop is timed by patching timestamps around the
    loader's `next`, `StepRunner.__call__`, `Checkpointer.save` and `MetricsLog.write` in this process: microseconds):
    waiting on the loader (and the first batch of each epoch: the prefetch pipeline refilling), the step
    inside the loop vs the same step in memory (the difference is CPU taken by the loader workers running
    the augmentations on the same cores), checkpointing, metrics, the rest; plus the CPU time the loader
    workers burnt per step (from /proc). "BELOW GOAL" marks where the lead should look. A CPU-time line
    (core-ms per step; the loop's includes its loader workers) is less sensitive to other processes'
    load than images/s, but counts OpenMP threads spinning while they wait for a core.
    --threads N sets this process's torch threads for (a) and (c) (default: one per core).

(b) 2 gloo processes vs 1 on the CPU (skipped on CUDA machines and with --skip-multiprocess): the loop on
    the digits default, three contenders started once each (bench/distill_speed_worker.py) and cued in
    turn: torchrun --nproc-per-node 2 on 127.0.0.1 (gloo, one thread per process, 64 images each per
    step: train.batch_size is the global batch), 1 process with 2 threads, 1 process with 1 thread. Each
    process keeps the config's data.num_workers=2 loader workers. This compares parallel schemes on the
    same cores (2 here), not scaling: what the printout says 2 cores allow is the best of the three.

(c) CUDA only (one line saying it is skipped otherwise): bf16 autocast vs fp32 and train.compile=true vs
    eager (the `step` contender above, per config of (a); a compiled variant gets its own copy of the
    teacher), 1 vs N processes of the
    loop on the digits default where N > 1 devices, and a PROJECTION: images/s per device of the
    ImageNet preset's models (configs/imagenet-resnet50-to-resnet18.yaml: random resnet50 teacher ->
    resnet18, 224 px, dlkd with its weights and 65,536-entry queue, bf16 autocast, channels_last) on an
    in-memory batch, at 32 images per device (the preset's global batch 256 over 8 devices) and at 256,
    turned into the wall time of 200 epochs of ImageNet (1,281,167 images) on 8 such devices assuming
    linear scaling and a loader that keeps up: a projection, not a measurement.

(d) the teacher-feature cache (`train.teacher_cache`; details in bench/distill_speed_cache.py): cached loop
    vs bare step (GOAL >= 1.3x r50_32, >= 2.5x vitb_224), vs the uncached loop, and the cache's build cost
    in uncached epochs, per config of `--cache-configs`. --skip-cache skips it.

Reading it: a ratio is only as good as the spread of its rounds (min..max printed); on a busy machine
rerun with more rounds. The machine's load average is printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from ssl_kd import loop as loop_module  # noqa: E402
from ssl_kd.config import load_config, to_dict  # noqa: E402
from ssl_kd.loaders import make_loader  # noqa: E402
from ssl_kd.loop import StepRunner, autocast_context, build_optimizer, cosine_schedule, fit, prepare_model  # noqa: E402
from ssl_kd.teachers import load_teacher  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_speed_cache import run_part_d  # noqa: E402
from distill_speed_processes import kill_all, run_contenders, run_part_b  # noqa: E402
from distill_speed_timing import (Probe, TimedLoader, alternate, instrumented_loop, proc_cpu_seconds,  # noqa: E402
                                  ratio_line, spread)
from distill_speed_setup import (BareStep, Setup, build_setup, config_overrides, describe,  # noqa: E402
                                 fresh_objective, load_average, random_teacher_file, sync)

GOAL = 0.95
IMAGENET_PRESET = REPO / "configs" / "imagenet-resnet50-to-resnet18.yaml"
IMAGENET_TRAIN_IMAGES = 1_281_167
PROJECTION_EPOCHS, PROJECTION_DEVICES = 200, 8


# --------------------------------------------------------------------------------------- contenders

class LoopBench:
    """Part (a) for one config: bare step, library step and `fit`, over the same number of steps."""

    def __init__(self, setup: Setup, steps: int | None):
        self.setup = setup
        cfg, device = setup.cfg, setup.device
        per_epoch = len(setup.loader)
        self.epochs = max(1, math.ceil((steps or per_epoch) / per_epoch))
        self.steps = self.epochs * per_epoch
        cfg.train.epochs = self.epochs
        self.batch = cfg.train.batch_size
        views, _labels, index = next(iter(setup.loader))
        self.views = [v.to(device) for v in views]
        self.index = index.to(device)
        self.objective = fresh_objective(setup)
        self.model = prepare_model(self.objective, cfg.train, device)
        self.optimizer = build_optimizer(self.objective.trainable, cfg.train)
        self.autocast, use_scaler = autocast_context(cfg.train.precision, device)
        self.runner = StepRunner(self.model, self.objective, self.optimizer, torch.amp.GradScaler(device.type, enabled=use_scaler),
                                 self.autocast, cfg.train, device)
        self.schedule = cosine_schedule(cfg.train.lr, self.steps, per_epoch)
        self.bare_step = BareStep(setup)
        self.loop_objective = fresh_objective(setup)
        self.probes: list[Probe] = []
        self.worker_cpu: list[float] = []
        self.main_cpu: list[float] = []
        self.cpu: dict[str, list[float]] = {"bare": [], "step": [], "loop": []}  # CPU seconds per step (loop: + workers)

    def warm_up(self) -> None:
        for _ in self.setup.loader:  # starts the persistent loader workers
            pass
        self.bare(1)
        self.step(1)

    def bare(self, steps: int | None = None) -> float:
        steps = steps or self.steps
        cpu = time.process_time()
        images_per_s = self.bare_step(steps)
        self.cpu["bare"].append((time.process_time() - cpu) / steps)
        return images_per_s

    def step(self, steps: int | None = None) -> float:
        steps = steps or self.steps
        sync(self.setup.device)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(steps):
            self.runner(self.views, self.index, float(self.schedule[i % len(self.schedule)]))
        sync(self.setup.device)
        self.cpu["step"].append((time.process_time() - cpu) / steps)
        return steps * self.batch / (time.perf_counter() - start)

    def loop(self) -> float:
        probe = Probe()
        loader = TimedLoader(self.setup.loader, probe)
        pids = loader.worker_pids()
        cpu_before = sum(proc_cpu_seconds(p) for p in pids)
        main_before = time.process_time()
        cfg = self.setup.cfg
        with tempfile.TemporaryDirectory() as run_dir, instrumented_loop(probe, self.setup.device), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            start = time.perf_counter()
            result = fit(self.loop_objective, loader, cfg.train, Path(run_dir), to_dict(cfg), self.setup.device)
            sync(self.setup.device)
            probe.wall = time.perf_counter() - start
        self.main_cpu.append(time.process_time() - main_before)
        self.worker_cpu.append(sum(proc_cpu_seconds(p) for p in pids) - cpu_before)
        self.cpu["loop"].append((self.main_cpu[-1] + (self.worker_cpu[-1] if math.isfinite(self.worker_cpu[-1]) else 0)) / self.steps)
        assert result.steps == self.steps, (result.steps, self.steps)
        self.probes.append(probe)
        return self.steps * self.batch / probe.wall


def print_breakdown(bench: LoopBench, loop_ips: list[float], step_ips: list[float], bare_ips: list[float]) -> None:
    k = sorted(range(len(loop_ips)), key=lambda i: loop_ips[i])[len(loop_ips) // 2]  # the median round
    probe, steps = bench.probes[k], bench.steps
    ms = lambda seconds: 1000 * seconds / steps  # noqa: E731
    in_loop = ms(probe.step)
    in_memory = 1000 * bench.batch / statistics.median(step_ips)
    bare = 1000 * bench.batch / statistics.median(bare_ips)
    other = probe.wall - probe.wait - probe.step - probe.save - probe.metrics
    total = ms(probe.wall)
    share = lambda x: 100 * x / total  # noqa: E731
    print(f"  where the loop's time goes (median round, {steps} steps, {probe.epochs} epoch(s)), ms per step of {total:.0f}:")
    print(f"    waiting on the loader      {ms(probe.wait):7.1f}  ({share(ms(probe.wait)):4.1f} %; of which first batch of each "
          f"epoch {ms(probe.first_wait):.1f}: {1000 * probe.first_wait / max(probe.epochs, 1):.0f} ms an epoch)")
    print(f"    StepRunner inside the loop {in_loop:7.1f}  ({share(in_loop):4.1f} %; the same step on the in-memory batch: "
          f"{in_memory:.1f}, so {in_loop - in_memory:+.1f} from sharing the cores with the loader workers / noise)")
    print(f"      of which the method, queue and step plumbing over the bare step: {in_memory - bare:+.1f} (bare step {bare:.1f})")
    print(f"    checkpoint after each epoch {ms(probe.save):6.1f}  ({share(ms(probe.save)):4.1f} %; "
          f"{1000 * probe.save / max(probe.epochs, 1):.0f} ms an epoch)")
    print(f"    metrics.jsonl lines        {ms(probe.metrics):7.1f}  ({share(ms(probe.metrics)):4.1f} %)")
    print(f"    the rest (fit set-up: prepare_model, optimizer; tqdm, epoch summary) {ms(other):.1f}  ({share(ms(other)):4.1f} %)")
    workers = bench.worker_cpu[k]
    if math.isfinite(workers):
        print(f"    loader workers' CPU: {1000 * workers / steps:.0f} core-ms per step ({bench.setup.cfg.data.num_workers} workers); "
              f"main process CPU {1000 * bench.main_cpu[k] / steps:.0f} core-ms per step on {torch.get_num_threads()} threads; "
              f"{os.cpu_count()} cores")


def run_part_a(args, teacher_dir: Path, device: torch.device) -> dict[str, LoopBench]:
    print(f"\n(a) the whole loop (fit) vs the bare step, {args.rounds} alternating rounds, device {device}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
    benches = {}
    for name in args.configs:
        cfg = load_config(None, config_overrides(name, args, teacher_dir))
        setup = build_setup(cfg, device)
        bench = LoopBench(setup, args.steps)
        print(f"\n[{name}] {describe(setup)}")
        print(f"  {bench.steps} steps a round ({bench.epochs} epoch(s) of the loop), {bench.steps * bench.batch} images")
        bench.warm_up()
        bench.cpu = {k: [] for k in bench.cpu}
        results = alternate({"bare": bench.bare, "step": bench.step, "loop": bench.loop}, args.rounds)
        for label in ("bare", "step", "loop"):
            print(f"  {label:<5} images/s {spread(results[label])}   CPU {1000 * statistics.median(bench.cpu[label]):.0f} core-ms/step")
        print(ratio_line("loop / bare (the goal)", results["loop"], results["bare"], GOAL))
        print(ratio_line("step / bare (method, queue, plumbing)", results["step"], results["bare"]))
        print(ratio_line("loop / step (loader, logging, ckpt)", results["loop"], results["step"]))
        cpu_ratio = statistics.median(bench.cpu["bare"]) / statistics.median(bench.cpu["loop"])
        print(f"  CPU-time view (less sensitive to other load; loop counts its loader workers): bare/loop core-ms {cpu_ratio:.3f}")
        below = statistics.median(results["loop"]) / statistics.median(results["bare"]) < GOAL
        if below:
            print("  BELOW GOAL:")
        print_breakdown(bench, results["loop"], results["step"], results["bare"])
        bench.results = results
        benches[name] = bench
    return benches


# --------------------------------------------------------------------------------------------- CUDA

def step_images_per_s(setup: Setup, steps: int, rounds: int, variants: dict[str, dict]) -> dict[str, list[float]]:
    """The library step on an in-memory batch under each variant's train overrides, alternating."""
    benches = {}
    for name, train_overrides in variants.items():
        saved = {k: getattr(setup.cfg.train, k) for k in train_overrides}
        for k, v in train_overrides.items():
            setattr(setup.cfg.train, k, v)
        # a compiled variant gets its own teacher copy: nn.Module.compile would otherwise compile the shared one
        own = replace(setup, teacher=copy.deepcopy(setup.teacher)) if setup.cfg.train.compile else setup
        bench = LoopBench(own, steps)
        bench.steps = steps  # in-memory step only: no epochs involved
        bench.step(2)  # warm-up (compiles when train.compile)
        benches[name] = bench
        for k, v in saved.items():
            setattr(setup.cfg.train, k, v)
    return alternate({name: (lambda b=b: b.step()) for name, b in benches.items()}, rounds)


class SyntheticViews(torch.utils.data.Dataset):
    """Stand-in images for shapes only (the projection measures the step, not a loader)."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return [torch.rand(3, self.size, self.size), torch.rand(3, self.size, self.size)], 0, i


def run_part_c(args, benches: dict[str, LoopBench], teacher_dir: Path) -> None:
    if not torch.cuda.is_available():
        print("\n(c) CUDA: skipped, torch.cuda.is_available() is False on this machine "
              "(bf16 vs fp32, compile vs eager, 1 vs N processes and the ImageNet projection need a GPU)")
        return
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    print(f"\n(c) CUDA ({torch.cuda.device_count()} x {name}): the library step on an in-memory batch, "
          f"{args.cuda_steps} steps a round, {args.rounds} alternating rounds")
    variants = {"fp32 eager": {"precision": "fp32"}, "bf16 eager": {"precision": "bf16"},
                "bf16 compile": {"precision": "bf16", "compile": True}}
    for config_name, bench in benches.items():
        res = step_images_per_s(bench.setup, args.cuda_steps, args.rounds, variants)
        print(f"  [{config_name}]")
        for v, values in res.items():
            print(f"    {v:<13} images/s {spread(values)}")
        print("  " + ratio_line("bf16 / fp32 (eager)", res["bf16 eager"], res["fp32 eager"]).strip())
        print("  " + ratio_line("compile / eager (bf16)", res["bf16 compile"], res["bf16 eager"]).strip())
    count = torch.cuda.device_count()
    if count > 1 and not args.skip_multiprocess:
        epochs = 3
        overrides = ["train.resume=false", f"train.epochs={epochs}"]
        results = run_contenders({f"{count}proc_nccl": (count, 4), "1proc": (1, 4)}, overrides, args.rounds, args.timeout)
        ips = {n: [r["images"] / r["wall_s"] for r in rs] for n, rs in results.items()}
        print(f"  the loop (fit) on the digits default, {epochs} epochs a round, global batch 128:")
        for n, values in ips.items():
            print(f"    {n:<13} images/s {spread(values)}")
        print("  " + ratio_line(f"{count} processes / 1", ips[f"{count}proc_nccl"], ips["1proc"]).strip())
    else:
        print(f"  1 vs N processes: {count} device here, nothing to compare")
    # the ImageNet preset's models at 224 px
    teacher_path = random_teacher_file("resnet50", teacher_dir)
    per_device = {}
    for batch in (256 // PROJECTION_DEVICES, 256):
        cfg = load_config(str(IMAGENET_PRESET), [f"teacher.path={teacher_path}", f"train.batch_size={batch}", "data.num_workers=0",
                                                 "train.resume=false"])
        torch.manual_seed(0)
        teacher = load_teacher(teacher_path, arch=cfg.teacher.arch, image_size=224).to(device)
        dataset = SyntheticViews(batch * 2, 224)
        loader = make_loader(dataset, batch, train=True, num_workers=0)
        setup = Setup(cfg, device, teacher, dataset, loader)
        res = step_images_per_s(setup, args.cuda_steps, args.rounds, {"preset": {}})
        per_device[batch] = statistics.median(res["preset"])
        print(f"  ImageNet preset models (resnet50 -> resnet18, 224 px, dlkd, queue {cfg.loss.queue_size}, precision "
              f"{cfg.train.precision}), {batch} images per device per step: images/s per device {spread(res['preset'])}")
        del setup, teacher
        torch.cuda.empty_cache()
    for batch, ips in per_device.items():
        seconds = PROJECTION_EPOCHS * IMAGENET_TRAIN_IMAGES / (PROJECTION_DEVICES * ips)
        note = "the preset's global batch 256 over 8 devices" if batch * PROJECTION_DEVICES == 256 else "global batch 2048"
        print(f"  PROJECTION (not a measurement): {PROJECTION_EPOCHS} epochs x {IMAGENET_TRAIN_IMAGES:,} images on "
              f"{PROJECTION_DEVICES} x {name} at {ips:.0f} images/s each ({batch} per device: {note}), linear scaling, "
              f"loader keeping up: {seconds / 3600:.1f} h")


# --------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="steps a round (default: one epoch of each config)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", help="comma-separated: digits, natural64 (default: digits, and natural64 with --data-root)")
    parser.add_argument("--data-root", help="natural64, (d): JPEGs in train/<class>/ folders, as a zip or a folder")
    parser.add_argument("--subset", type=int, default=640, help="natural64: images of the train folder used (data.subset)")
    parser.add_argument("--skip-multiprocess", action="store_true", help="skip part (b) (and (c)'s 1 vs N processes)")
    parser.add_argument("--skip-cuda", action="store_true", help="skip part (c)")
    parser.add_argument("--threads", type=int, default=None, help="(a), (c): torch threads in this process (default: torch's, one per core)")
    parser.add_argument("--cuda-steps", type=int, default=20, help="(c): steps a round")
    parser.add_argument("--timeout", type=float, default=900, help="(b): seconds a contender may take for one wait")
    parser.add_argument("--cache-configs", default="r50_32,vitb_224", help="(d): comma-separated: r50_32, vitb_224")
    parser.add_argument("--skip-cache", action="store_true", help="skip part (d)")
    args = parser.parse_args()
    default = "digits,natural64" if args.data_root else "digits"
    args.configs = [c for c in (default if args.configs is None else args.configs).split(",") if c]
    if "natural64" in args.configs and not args.data_root:
        parser.exit(2, "error: --configs natural64 needs --data-root ZIP_OR_DIR (JPEGs in train/<class>/ folders)\n")
    args.cache_configs = [c for c in args.cache_configs.split(",") if c]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = loop_module.resolve_device("auto")
    print(f"distill_speed: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"device {device}, load average {load_average()}", flush=True)
    start = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="distill_speed_teachers_") as teacher_dir:
            benches = run_part_a(args, Path(teacher_dir), device) if args.configs else {}
            if args.skip_multiprocess:
                print("\n(b) 2 gloo processes vs 1: skipped (--skip-multiprocess)")
            elif device.type == "cuda":
                print("\n(b) 2 gloo processes vs 1 on the CPU: skipped on a CUDA machine (see (c) for 1 vs N devices)")
            else:
                run_part_b(args)
            if args.skip_cuda:
                print("\n(c) CUDA: skipped (--skip-cuda)")
            else:
                run_part_c(args, benches, Path(teacher_dir))
            if args.skip_cache or not args.data_root:
                why = "--skip-cache" if args.skip_cache else "it reads natural images: give --data-root ZIP_OR_DIR"
                print(f"\n(d) the teacher-feature cache: skipped ({why})")
            else:
                run_part_d(args, Path(teacher_dir), device)
    finally:
        kill_all()
    print(f"\ndone in {time.time() - start:.0f} s, load average {load_average()}")


if __name__ == "__main__":
    main()
