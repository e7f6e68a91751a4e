"""Shared command-line plumbing: `--config FILE`, `key.sub=value` overrides, flag-to-key mapping."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .config import load_config, to_yaml


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML preset (see configs/); flags and overrides win over it")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.epochs=5")


def config_from_args(args: argparse.Namespace, flag_keys: dict[str, str], schema: type):
    """Merge defaults < --config < flags (mapped to keys by `flag_keys`) < key=value overrides."""
    flag_overrides = [f"{key}={getattr(args, flag)}" for flag, key in flag_keys.items() if getattr(args, flag, None) is not None]
    return load_config(args.config, flag_overrides + list(args.overrides), schema=schema)


def split_teachers(args: argparse.Namespace) -> argparse.Namespace:
    """`--teacher A --teacher B ...`: A is teacher.path, the rest the override teacher.extra=[B,...]."""
    if args.teacher:
        args.teacher, extra = args.teacher[0], args.teacher[1:]
        if extra:
            args.overrides = [f"teacher.extra=[{','.join(extra)}]", *args.overrides]
    return args


def write_config(cfg, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
