"""Distil a self-supervised teacher into a small student, then report teacher vs student vs baselines.

    ssl-kd distill                       # the embedded default: digits, shipped teacher
    ssl-kd distill --teacher moco_v2_800ep_pretrain.pth.tar --teacher-arch resnet50 \\
        --data imagefolder --data-root /data/imagenet --student resnet18 --epochs 100 --out runs/r18

Output directory: config.yaml, metrics.jsonl, checkpoints/last.pt (the run resumes from it),
student_timm.pth + student_timm.json (a plain timm state dict), report.json, report.md and the figures
(loss_curves.png, knn_over_epochs.png, features_student.png).
Any config key can be set as key.sub=value (see configs/digits-default.yaml); exit status 2 with
one line on bad input.

Several GPUs or nodes: launch the same command with torchrun (train.batch_size is the global batch):
    torchrun --nproc_per_node 8 pipelines/distill_ssl.py --teacher ... --batch-size 256

`pipelines/distill_ssl.py` runs the same command as a script (`python pipelines/distill_ssl.py ...`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ssl_kd.cli import (add_config_arguments, config_from_args, distributed_session, say, setup_logging, split_teachers,
                        write_config)
from ssl_kd.config import Config, to_dict
from ssl_kd.distillation import distill, method_names
from ssl_kd.errors import cli_main
from ssl_kd.evaluation.report import RunReport, write_figures
from ssl_kd.evaluation.results import TrainingSummary
from ssl_kd.job import data_summary, evaluate_all, knn_monitor, load_inputs, machine_description, test_features
from ssl_kd.parallel import is_main_process
from ssl_kd.validation import validate_config, validate_output_dir

FLAGS = {
    "teacher": "teacher.path", "teacher_arch": "teacher.arch", "teacher_format": "teacher.format",
    "trust_checkpoint": "teacher.trust_checkpoint", "data": "data.name", "data_root": "data.root",
    "eval_data": "eval_data.name", "eval_data_root": "eval_data.root",
    "student": "student.arch", "method": "loss.method", "epochs": "train.epochs", "batch_size": "train.batch_size", "out": "out",
    "tensorboard": "train.tensorboard",
}


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", metavar="PATH", action="append",
                        help="teacher checkpoint (.pth/.tar/.safetensors; layout detected, "
                        "see python -m ssl_kd.teachers inspect FILE) or timm:NAME.TAG (downloads); default: the embedded digits teacher. "
                        "Repeat it to distil several teachers at once (the first is the primary; the others go to teacher.extra, "
                        "each with its own projector, queue and teacher.weights entry; paths with commas are not supported)")
    parser.add_argument("--teacher-arch", metavar="NAME", help="timm name of the teacher, for checkpoints that do not say it (e.g. resnet50)")
    parser.add_argument("--teacher-format", metavar="NAME", help="force the checkpoint layout instead of detecting it (auto)")
    parser.add_argument("--trust-checkpoint", action="store_true", default=None,
                        help="allow a full unpickle of a teacher file that pickles foreign classes (can run its code: trusted files only)")
    parser.add_argument("--data", metavar="NAME", help="digits (default, embedded) | cifar10 | cifar100 | stl10 | imagefolder | "
                        "folder (unlabeled images under --data-root, recursively; needs --eval-data)")
    parser.add_argument("--data-root", metavar="DIR", help="dataset folder (torchvision download target, an ImageFolder, "
                        "or a folder of images)")
    parser.add_argument("--eval-data", metavar="NAME", help="a separate labeled evaluation set (same names as --data) for the "
                        "k-NN monitor, k-NN, retrieval and the probe; default: the training data's own splits")
    parser.add_argument("--eval-data-root", metavar="DIR", help="its folder (eval_data.root)")
    parser.add_argument("--student", metavar="NAME", help="timm name of the student backbone (default resnet10t)")
    parser.add_argument("--method", metavar="NAME", help=f"distillation method: {', '.join(method_names())}")
    parser.add_argument("--epochs", type=int, metavar="N")
    parser.add_argument("--batch-size", type=int, metavar="N")
    parser.add_argument("--out", metavar="DIR", help="output directory (default runs/default)")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also write TensorBoard event files in OUT/tensorboard (train.tensorboard; needs the tensorboard package)")
    add_config_arguments(parser)
    return split_teachers(parser.parse_intermixed_args(argv))


def main(argv=None, prog: str | None = None) -> RunReport:
    setup_logging()
    started = time.time()
    cfg = config_from_args(parse_args(argv, prog), FLAGS, Config)
    validate_config(cfg)  # bad values fail here, in seconds, before any work
    validate_output_dir(cfg.out)
    with distributed_session(cfg.train):
        return run_job(cfg, started)


def run_job(cfg: Config, started: float) -> RunReport:
    """Every process trains and takes part in the feature extraction; rank 0 alone prints and writes."""
    out = Path(cfg.out)
    inputs = load_inputs(cfg)  # before the first write: bad data or teacher leaves no run folder behind
    write_config(cfg, out)
    teacher = inputs.teacher
    logits = ", with logits" if teacher.has_logits else ""
    say(f"teacher: {teacher.arch} ({teacher.format} checkpoint {inputs.teacher_path}), {teacher.embed_dim}-d features{logits}")
    for k, (extra, path) in enumerate(zip(inputs.extra_teachers, inputs.extra_paths), start=2):
        say(f"teacher {k}: {extra.arch} ({extra.format} checkpoint {path}), {extra.embed_dim}-d features")

    say(f"distilling into {cfg.student.arch} with {cfg.loss.method} for {cfg.train.epochs} epochs on {cfg.data.name} ({inputs.device})")
    run = distill(cfg, teacher, out, inputs.extra_teachers, monitor=knn_monitor(cfg, inputs))
    write_config(cfg, out)  # again, now with train.world_size and train.batch_per_process

    say("evaluating teacher, student and baselines")
    scores = evaluate_all(cfg, inputs, run.student)
    student_features = test_features(cfg, inputs, run.student)
    training = TrainingSummary(epochs=cfg.train.epochs, steps=run.fit.steps, seconds=run.train_seconds,
                               final=run.fit.history[-1] if run.fit.history else {}, world_size=cfg.train.world_size,
                               batch_size=cfg.train.batch_size, batch_per_process=cfg.train.batch_per_process,
                               teacher_cache=run.teacher_caches)
    report = RunReport.of(scores, method=cfg.loss.method, config=to_dict(cfg), machine=machine_description(inputs.device),
                          data=data_summary(cfg, inputs, run.fit), training=training, reproducibility=run.record,
                          total_seconds=round(time.time() - started, 1))
    if not is_main_process():
        return report
    figures = write_figures(out, {"student": out / "metrics.jsonl"}, teacher_top1=report.teacher.knn_top1,
                            features={"student": student_features})
    json_path, md_path = report.save(out, figures)
    print("\n" + report.table() + "\n")
    for line in report.summary_lines():
        print(f"- {line}")
    print(f"\nwrote {md_path}, {json_path} and {run.export_path} in {report.total_seconds:.0f} s")
    return report


if __name__ == "__main__":
    cli_main(main)
