"""Train a self-supervised teacher with lightly (SimCLR) and write it as an ssl_kd teacher file.

    ssl-kd pretrain --config configs/digits-teacher.yaml
    ssl-kd pretrain --data cifar10 --data-root ~/data --arch resnet18 --epochs 200

The file (`OUT/teacher.pth`: timm backbone weights in fp16, its SimCLR projection head (for
`teacher.embedding=head`), arch, mean/std, input size, the command)
loads with `load_teacher(path)` like any downloaded checkpoint. The embedded default teacher
(ssl_kd/assets/) was made by the first command above.

`pipelines/pretrain_ssl.py` runs the same command as a script (`python pipelines/pretrain_ssl.py ...`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ssl_kd.cli import (
    add_config_arguments,
    config_from_args,
    distributed_session,
    say,
    setup_logging,
    write_config,
)
from ssl_kd.config import PretrainConfig, to_dict
from ssl_kd.data import build_dataset, unreadable_check
from ssl_kd.errors import UserError, cli_main
from ssl_kd.loaders import make_loader
from ssl_kd.loop import fit
from ssl_kd.parallel import is_main_process
from ssl_kd.pretrain import SimCLRObjective
from ssl_kd.backbones import create_backbone
from ssl_kd.teachers import save_teacher
from ssl_kd.validation import validate_config, validate_output_dir
from ssl_kd.views import views_transform

FLAGS = {"data": "data.name", "data_root": "data.root", "arch": "arch", "epochs": "train.epochs", "batch_size": "train.batch_size", "out": "out"}


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="digits | cifar10 | cifar100 | stl10 | imagefolder | folder (unlabeled images, recursively)")
    parser.add_argument("--data-root", help="dataset folder")
    parser.add_argument("--arch", help="timm model name of the teacher backbone")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--out", help="output directory (teacher.pth, metrics.jsonl, checkpoints/)")
    add_config_arguments(parser)
    return parser.parse_intermixed_args(argv)


def main(argv=None, prog: str | None = None) -> Path:
    setup_logging()
    args = parse_args(argv, prog)
    cfg = config_from_args(args, FLAGS, PretrainConfig)
    validate_config(cfg)  # bad values fail here, in seconds, before any work
    validate_output_dir(cfg.out)
    if cfg.method != "simclr":
        raise UserError(f"unknown pretraining method '{cfg.method}'; this pipeline trains simclr")
    with distributed_session(cfg.train) as device:  # torchrun: SimCLR's loss then gathers the global batch
        command = f"{prog or 'ssl-kd pretrain'} " + shlex.join(sys.argv[1:] if argv is None else argv)  # recorded in the file
        return pretrain(cfg, device, command)


def pretrain(cfg: PretrainConfig, device, command: str) -> Path:
    out = Path(cfg.out)
    write_config(cfg, out)
    dataset = build_dataset(cfg.data, "train", views_transform(cfg.data))
    loader = make_loader(dataset, cfg.train.batch_size, train=True, num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                         pin_memory=device.type == "cuda")
    import torch

    torch.manual_seed(cfg.train.seed)
    backbone = create_backbone(cfg.arch)
    objective = SimCLRObjective(backbone, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, proj_dim=cfg.proj_dim, temperature=cfg.temperature)
    fit(objective, loader, cfg.train, out, to_dict(cfg), device, data_check=unreadable_check(dataset, cfg.data.max_bad_fraction))
    if not is_main_process():
        return out / "teacher.pth"
    path = save_teacher(
        out / "teacher.pth", backbone.cpu(), cfg.arch, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        input_size=cfg.data.image_size, meta={"method": "simclr", "dataset": cfg.data.name, "epochs": cfg.train.epochs, "command": command},
        head=objective.projection_head_record(),
    )
    say(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path


if __name__ == "__main__":
    cli_main(main)
