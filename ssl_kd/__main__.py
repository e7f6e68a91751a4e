"""`ssl-kd COMMAND ...` (also `python -m ssl_kd COMMAND ...`): the package's command line.

    ssl-kd distill                                  # the embedded default: digits, shipped teacher
    ssl-kd distill --teacher moco_v2_800ep_pretrain.pth.tar --data imagefolder --data-root /data/imagenet
    ssl-kd knn runs/default
    ssl-kd COMMAND --help

Each command is `ssl_kd.commands.<COMMAND>.main` (`ssl_kd/commands/`); `pipelines/*.py` and `eval/*.py`
run the same functions as scripts. Bad input is one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from .commands import COMMANDS
from .errors import UserError, cli_main

DESCRIPTION = "Distil a self-supervised vision teacher into a small, fast student, and measure both honestly."


def program_name(argv0: str) -> str:
    """How the user called us, for usage lines: `python -m ssl_kd` or the script's name (`ssl-kd`)."""
    return "python -m ssl_kd" if os.path.basename(argv0) == "__main__.py" else os.path.basename(argv0) or "ssl-kd"


def usage(prog: str) -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: {prog} COMMAND [ARGS ...]", "", DESCRIPTION, "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines + ["", f"{prog} COMMAND --help describes one command."])


def main(argv: list[str] | None = None, prog: str | None = None):
    """Run `COMMAND ARGS...`; returns what the command returns (for tests). Bad input raises `UserError`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or program_name(sys.argv[0])
    if argv[:1] in (["-h"], ["--help"]):
        print(usage(prog))
        return None
    if argv[:1] == ["--version"]:
        try:
            print(f"ssl_kd {version('ssl_kd')}")
        except PackageNotFoundError:  # a checkout used without pip install
            print("ssl_kd (not installed)")
        return None
    if not argv:
        raise UserError(f"no command given; choose one of: {', '.join(COMMANDS)} (e.g. {prog} distill); see {prog} --help")
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise UserError(f"unknown command '{name}'; choose one of: {', '.join(COMMANDS)}; see {prog} --help")
    command = importlib.import_module(f"{__package__}.commands.{name}")  # imported when used: torch and timm are slow to import
    return command.main(rest, prog=f"{prog} {name}")


def run() -> None:
    """The `ssl-kd` console script (pyproject `[project.scripts]`)."""
    from .commands.inspect import warnings_on_stderr

    warnings_on_stderr()
    cli_main(main)


if __name__ == "__main__":
    run()
