"""Show what a teacher checkpoint holds and check that it loads.

    ssl-kd inspect moco_v2_800ep_pretrain.pth.tar
    ssl-kd inspect lightly-out/checkpoints/last.ckpt
    ssl-kd inspect timm:vit_small_patch16_224.dino

Exit status 0 when the file loads strictly (then `ssl-kd distill --teacher FILE` loads it too), 2 with
one line `error: ...` on stderr when it does not. `python -m ssl_kd.teachers inspect FILE` is the
same command.
"""

from __future__ import annotations

import argparse
import logging

from ssl_kd.errors import cli_main
from ssl_kd.teachers.inspect import format_info, inspect_teacher


def main(argv=None, prog: str | None = None) -> dict:
    """Inspect the file; returns the info dict (for tests). Bad input raises `UserError`."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", metavar="FILE", help="teacher checkpoint (.pth, .pth.tar, .safetensors, ...) or timm:NAME.TAG")
    parser.add_argument("--teacher-arch", metavar="NAME", help="timm name, for checkpoints that do not say it")
    parser.add_argument("--teacher-format", metavar="NAME", default="auto", help="force the layout (default: auto)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow a full unpickle of a file that pickles foreign classes (can run its code); "
                             "without it they are read as inert stand-ins, never run")
    args = parser.parse_args(argv)
    info = inspect_teacher(args.file, args.teacher_arch, args.teacher_format, trust=args.trust_checkpoint)
    for line in format_info(info):
        print(line)
    return info


def warnings_on_stderr() -> None:
    """Warnings as `warning: ...` lines (`--trust-checkpoint` says what it allows); set by the entry points."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")


if __name__ == "__main__":
    warnings_on_stderr()
    cli_main(main)
