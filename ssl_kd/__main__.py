"""`python -m ssl_kd COMMAND ...`: the package's command line.

    python -m ssl_kd export RUN_DIR --format timm|torchscript|onnx [--out FILE] [--image-size N] [--batch N]

Commands:
  export   write a run's student as a timm state dict, a TorchScript file or an ONNX model, then load
           it back with its runtime and compare its features with the PyTorch student's
           (`ssl_kd.export.export_model`)

Bad input (a missing run directory, an unknown format, a missing ONNX package, an unwritable --out,
a malformed command line) is one line `error: ...` on stderr and exit status 2.

A command is one entry of `COMMANDS`: a function that adds its arguments to its subparser, and one
that runs it on the parsed arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NamedTuple

from .errors import UserError, cli_main

PROG = "python -m ssl_kd"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are `UserError`s (one line, exit 2 through `cli_main`) instead of usage + exit 2."""

    def error(self, message: str):
        raise UserError(f"{message}; see {self.prog} --help")


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], object]


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (the --out of pipelines/distill_ssl.py)")
    parser.add_argument("--format", required=True, metavar="FORMAT", help="timm | torchscript | onnx")
    parser.add_argument("--out", metavar="FILE", help="where to write (default RUN_DIR/export/student_timm.pth, "
                        "student_torchscript.pt or student.onnx; a folder gets that name inside it)")
    parser.add_argument("--image-size", type=int, metavar="N", help="side of the checked (and traced) images; default: the run's data.image_size")
    parser.add_argument("--batch", type=int, default=8, metavar="N", help="images in the checked batch (default 8)")
    parser.add_argument("--onnx-exporter", default="dynamo", metavar="NAME",
                        help="dynamo (torch.export, the default) | legacy (TorchScript-based, deprecated by torch)")


def _export(args: argparse.Namespace):
    # imported when used: torch, timm and the evaluation are slow to import
    from .export import export_model

    result = export_model(args.run_dir, args.format, args.out, image_size=args.image_size, batch=args.batch,
                          onnx_exporter=args.onnx_exporter)
    for line in result.lines():
        print(line)
    return result


COMMANDS: dict[str, Command] = {
    "export": Command("export the run's student (timm, torchscript, onnx) and check the file", _export_arguments, _export),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(commands.add_parser(name, help=command.help, description=command.help))
    args = parser.parse_args(argv)
    if args.command is None:
        raise UserError(f"no command given; choose one of: {', '.join(COMMANDS)} (e.g. {PROG} export RUN_DIR --format onnx)")
    return args


def main(argv: list[str] | None = None):
    """Run one command; returns what it returns (for tests). Bad input raises `UserError`."""
    args = parse_args(argv)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    cli_main(lambda: main(sys.argv[1:]))
