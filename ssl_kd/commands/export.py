"""Write a run's student as a timm state dict, a TorchScript file or an ONNX model, then load it back with
its runtime and compare its features with the PyTorch student's (`ssl_kd.export.export_model`).

    ssl-kd export runs/default --format onnx
    ssl-kd export runs/default --format torchscript --out student.pt --image-size 64

Bad input (a missing run directory, an unknown format, a missing ONNX package, an unwritable --out,
a malformed command line) is one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse

from ssl_kd.errors import UserError, cli_main


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are `UserError`s (one line, exit 2 through `cli_main`) instead of usage + exit 2."""

    def error(self, message: str):
        raise UserError(f"{message}; see {self.prog} --help")


def main(argv=None, prog: str | None = None):
    """Export and check; returns the `ExportResult` (for tests). Bad input raises `UserError`."""
    parser = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (the --out of ssl-kd distill)")
    parser.add_argument("--format", required=True, metavar="FORMAT", help="timm | torchscript | onnx")
    parser.add_argument("--out", metavar="FILE", help="where to write (default RUN_DIR/export/student_timm.pth, "
                        "student_torchscript.pt or student.onnx; a folder gets that name inside it)")
    parser.add_argument("--image-size", type=int, metavar="N", help="side of the checked (and traced) images; default: the run's data.image_size")
    parser.add_argument("--batch", type=int, default=8, metavar="N", help="images in the checked batch (default 8)")
    parser.add_argument("--onnx-exporter", default="dynamo", metavar="NAME",
                        help="dynamo (torch.export, the default) | legacy (TorchScript-based, deprecated by torch)")
    args = parser.parse_args(argv)
    from ssl_kd.export import (
        export_model,  # imported when used: torch, timm and the evaluation are slow to import
    )

    result = export_model(args.run_dir, args.format, args.out, image_size=args.image_size, batch=args.batch,
                          onnx_exporter=args.onnx_exporter)
    for line in result.lines():
        print(line)
    return result


if __name__ == "__main__":
    cli_main(main)
