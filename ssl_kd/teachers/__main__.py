"""`python -m ssl_kd.teachers inspect FILE`: show what a teacher checkpoint holds and check that it loads.

Exit status 0 when the file loads strictly (then distill_ssl.py loads it too), 2 with one line
`error: ...` on stderr when it does not.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import cli_main
from .inspect import format_info, inspect_teacher


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ssl_kd.teachers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser("inspect", help="load a teacher file strictly and describe it")
    inspect.add_argument("file", metavar="FILE", help="teacher checkpoint (.pth, .pth.tar, .safetensors, ...) or timm:NAME.TAG")
    inspect.add_argument("--teacher-arch", metavar="NAME", help="timm name, for checkpoints that do not say it")
    inspect.add_argument("--teacher-format", metavar="NAME", default="auto", help="force the layout (default: auto)")
    inspect.add_argument("--trust-checkpoint", action="store_true",
                         help="allow a full unpickle of a file that pickles foreign classes (can run its code); "
                              "without it they are read as inert stand-ins, never run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the command; returns the info dict (for tests). Bad input raises `UserError`."""
    args = parse_args(argv)
    info = inspect_teacher(args.file, args.teacher_arch, args.teacher_format, trust=args.trust_checkpoint)
    for line in format_info(info):
        print(line)
    return info


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")  # --trust-checkpoint says so
    cli_main(lambda: main(sys.argv[1:]))
