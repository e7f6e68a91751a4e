"""Shared command-line plumbing: `--config FILE`, `key.sub=value` overrides, flag-to-key mapping."""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from .config import TrainConfig, load_config, to_yaml
from .parallel import init_distributed, is_main_process, shutdown_distributed


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML preset (see configs/); flags and overrides win over it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the config this command would run with (every key, as YAML; a valid --config file) and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.epochs=5")


def config_from_args(args: argparse.Namespace, flag_keys: dict[str, str], schema: type):
    """Merge defaults < --config < flags (mapped to keys by `flag_keys`) < key=value overrides. With
    `--print-config`, print the merged config (generated from the dataclasses, every key) and exit 0."""
    flag_overrides = [f"{key}={getattr(args, flag)}" for flag, key in flag_keys.items() if getattr(args, flag, None) is not None]
    cfg = load_config(args.config, flag_overrides + list(args.overrides), schema=schema)
    if getattr(args, "print_config", False):
        print(to_yaml(cfg), end="")
        raise SystemExit(0)
    return cfg


def split_teachers(args: argparse.Namespace) -> argparse.Namespace:
    """`--teacher A --teacher B ...`: A is teacher.path, the rest the override teacher.extra=[B,...]."""
    if args.teacher:
        args.teacher, extra = args.teacher[0], args.teacher[1:]
        if extra:
            args.overrides = [f"teacher.extra=[{','.join(extra)}]", *args.overrides]
    return args


def write_config(cfg, out_dir: Path) -> None:
    """config.yaml in the output directory (rank 0 only under torchrun)."""
    if not is_main_process():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))


def setup_logging() -> None:
    """Log lines on stdout; under torchrun the other ranks keep only warnings (rank 0 speaks for the run)."""
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING, format="%(message)s", force=True)


def say(*args, **kwargs) -> None:
    """`print`, on rank 0 only (the pipelines' progress lines and tables)."""
    if is_main_process():
        print(*args, **kwargs, flush=True)


@contextlib.contextmanager
def distributed_session(train: TrainConfig):
    """Join torchrun's process group for the pipeline's lifetime (nothing without torchrun); yields this
    process's device."""
    device = init_distributed(train.device, train.dist_backend)
    setup_logging()
    try:
        yield device
    finally:
        shutdown_distributed()
