"""Compare distillation methods on one teacher, data and budget: methods x seeds, mean ± std.

    ssl-kd compare                                   # embedded default: dlkd, seed, compress_1q, ssl_scratch x 3 seeds
    ssl-kd compare --methods dlkd,dlkd_align,dlkd_corr,kd,ckd --seeds 5 --epochs 20
    ssl-kd compare --methods dlkd,dlkd@rotations            # DLKD's four-rotation input vs two crops
    ssl-kd compare --methods dlkd,dlkd@supcon               # DLKD's queue contrast vs the reference's SupCon
    ssl-kd compare --methods seed@head,seed@backbone --teacher moco_v2.pth ...  # SEED in both spaces
    ssl-kd compare --methods all --teacher moco_v2.pth --data imagefolder --data-root DIR

Every (method, seed) run is a normal distillation run in OUT/<method>/seed<N>/ (resumable; a run
whose result.json exists is not run again). The teacher and raw pixels are evaluated once, the
random-init student once per seed (its init seed is the run's seed). Writes OUT/compare.json,
compare.md and compare.png (k-NN top-1, mean ± std over seeds); the table also prints.
Under torchrun every process trains each run and takes part in its evaluation; rank 0 writes.

`pipelines/compare.py` runs the same command as a script (`python pipelines/compare.py ...`).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from ssl_kd.cli import (add_config_arguments, config_from_args, distributed_session, say, setup_logging, split_teachers,
                        write_config)
from ssl_kd.config import Config
from ssl_kd.distillation import SSL_SCRATCH, build_student, distill, embedding_space, method_names
from ssl_kd.errors import UserError, cli_main
from ssl_kd.evaluation.compare import Comparison, SeedRun
from ssl_kd.evaluation.results import Protocol
from ssl_kd.evaluation.suite import RawPixels, evaluate_model
from ssl_kd.job import data_summary, eval_loaders, knn_monitor, load_inputs, machine_description
from ssl_kd.parallel import barrier, is_main_process
from ssl_kd.validation import validate_config, validate_output_dir

DEFAULT_METHODS = "dlkd,seed,compress_1q,ssl_scratch"
FLAGS = {"teacher": "teacher.path", "teacher_arch": "teacher.arch", "data": "data.name", "data_root": "data.root",
    "eval_data": "eval_data.name", "eval_data_root": "eval_data.root",
         "student": "student.arch", "epochs": "train.epochs", "batch_size": "train.batch_size", "out": "out"}


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, or 'all' (default {DEFAULT_METHODS}); NAME@rotations runs NAME on data.views=rotations")
    parser.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0..N-1 per method (default 3)")
    parser.add_argument("--teacher", metavar="PATH", action="append",
                        help="teacher checkpoint; repeat it for several teachers (the rest go to teacher.extra; no commas in paths)")
    parser.add_argument("--teacher-arch", metavar="NAME")
    parser.add_argument("--data", metavar="NAME")
    parser.add_argument("--data-root", metavar="DIR")
    parser.add_argument("--eval-data", metavar="NAME", help="a separate labeled evaluation set (default: the training data's splits)")
    parser.add_argument("--eval-data-root", metavar="DIR")
    parser.add_argument("--student", metavar="NAME")
    parser.add_argument("--epochs", type=int, metavar="N")
    parser.add_argument("--batch-size", type=int, metavar="N")
    parser.add_argument("--out", metavar="DIR", help="output directory (default runs/compare)")
    add_config_arguments(parser)
    return split_teachers(parser.parse_intermixed_args(argv))


VARIANT_MARK = "@"  # "dlkd@rotations", "dlkd@supcon@rotations": the method with these settings
VARIANTS = {  # name -> (config key, value)
    "crops": ("data.views", "crops"),
    "rotations": ("data.views", "rotations"),  # DLKD's four-rotation input
    "queue": ("loss.dlkd.contrast", "queue"),  # DLKD's contrast against the momentum queue (the default)
    "supcon": ("loss.dlkd.contrast", "supcon"),  # the reference's label-free SupCon
    "head": ("teacher.embedding", "head"),  # the teacher file's SSL projection head as its embedding
    "backbone": ("teacher.embedding", "backbone"),  # the pooled backbone feature
}


def chosen_methods(text: str) -> list[str]:
    names = method_names() if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name.split(VARIANT_MARK)[0] not in method_names()
               or any(variant not in VARIANTS for variant in name.split(VARIANT_MARK)[1:])]
    if unknown or not names:
        raise UserError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from: {', '.join(method_names())}, "
                        f"or all; a variant after {VARIANT_MARK}: {', '.join(VARIANTS)}")
    return names


def main(argv=None, prog: str | None = None) -> Comparison:
    setup_logging()
    args = parse_args(argv, prog)
    if args.out is None and not any(o.startswith("out=") for o in args.overrides):
        args.out = "runs/compare"
    cfg = config_from_args(args, FLAGS, Config)
    validate_config(cfg)  # bad values fail here, in seconds, before any work
    validate_output_dir(cfg.out)
    methods, seeds = chosen_methods(args.methods), list(range(args.seeds))
    if not seeds:
        raise UserError("--seeds must be at least 1")
    with distributed_session(cfg.train):
        return compare(cfg, methods, seeds)


def compare(cfg: Config, methods: list[str], seeds: list[int]) -> Comparison:
    out = Path(cfg.out)
    inputs = load_inputs(cfg)  # before the first write: bad data or teacher leaves no output folder behind
    write_config(cfg, out)
    train_loader, test_loader = eval_loaders(cfg, inputs)

    def evaluate(model, name):
        return evaluate_model(model, train_loader, test_loader, cfg.eval, inputs.device, name)

    runs: dict[str, list[SeedRun]] = {"teacher": [SeedRun(evaluate(inputs.teacher, "teacher"), teacher_embedding="backbone")]}
    for method in methods:
        runs[method] = [run_one(cfg, inputs, method, seed, out, evaluate) for seed in seeds]
    runs["random-init student"] = [SeedRun(evaluate(build_student(seeded(cfg, "dlkd", seed, out), inputs.teacher), "random student"))
                                   for seed in seeds]
    runs["raw pixels"] = [SeedRun(evaluate(RawPixels(), "raw pixels"))]
    comparison = Comparison.of(runs, methods=methods, seeds=len(seeds), epochs=cfg.train.epochs, student=cfg.student.arch,
                               teacher={"arch": inputs.teacher.arch, "source": inputs.teacher_path}, data=data_summary(cfg, inputs),
                               machine=machine_description(inputs.device), protocol=Protocol.from_config(cfg.eval))
    if is_main_process():
        paths = comparison.save(out)
        print("\n" + comparison.table() + "\n")
        print("wrote " + ", ".join(str(p) for p in paths))
    return comparison


def seeded(cfg: Config, method: str, seed: int, out: Path) -> Config:
    """The base config for one run: the method (`name@variant...` also sets each variant's key, `VARIANTS`),
    the seed for data order, augmentation and student init; with `train.teacher_cache`, the methods share
    `out/teacher_cache`."""
    run = copy.deepcopy(cfg)
    name, *variants = method.split(VARIANT_MARK)
    run.loss.method, run.train.seed, run.student.init_seed = name, seed, seed
    for variant in variants:
        key, value = VARIANTS[variant]
        *sections, field_name = key.split(".")
        target = run
        for section in sections:
            target = getattr(target, section)
        setattr(target, field_name, value)
    run.out = str(out / method / f"seed{seed}")
    if run.train.teacher_cache and not run.train.teacher_cache_dir:
        run.train.teacher_cache_dir = str(out / "teacher_cache")  # one cache per seed and view recipe, shared by the methods
    return run


def run_one(cfg: Config, inputs, method: str, seed: int, out: Path, evaluate) -> SeedRun:
    run_cfg = seeded(cfg, method, seed, out)
    result_path = Path(run_cfg.out) / "result.json"
    if result_path.exists():
        say(f"{method} seed {seed}: done before ({result_path})")
        return SeedRun.from_dict(json.loads(result_path.read_text()))
    say(f"{method} seed {seed}: distilling {cfg.train.epochs} epochs")
    started = time.time()
    run = distill(run_cfg, inputs.teacher, Path(run_cfg.out), inputs.extra_teachers, monitor=knn_monitor(run_cfg, inputs))
    result = SeedRun(evaluate(run.student, method), train_seconds=run.train_seconds, wall_seconds=round(time.time() - started, 1),
                     teacher_embedding="-" if run_cfg.loss.method == SSL_SCRATCH else embedding_space(run_cfg, inputs.teacher))
    if is_main_process():
        result_path.write_text(result.to_json())
    barrier()  # every process sees the same result files when it next checks for them
    say(f"{method} seed {seed}: k-NN top-1 {result.scores.knn_top1:.1f}")
    return result


if __name__ == "__main__":
    cli_main(main)
