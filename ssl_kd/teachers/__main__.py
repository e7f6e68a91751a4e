"""`python -m ssl_kd.teachers inspect FILE`: the command `ssl-kd inspect FILE` (`ssl_kd/commands/inspect.py`)."""

from __future__ import annotations

import sys

from ..commands import inspect
from ..errors import UserError, cli_main

PROG = "python -m ssl_kd.teachers"


def main(argv: list[str] | None = None) -> dict:
    """`inspect FILE [options]`; returns the info dict (for tests). Bad input raises `UserError`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] != ["inspect"]:
        raise UserError(f"the one command of {PROG} is inspect: {PROG} inspect FILE (or ssl-kd inspect FILE)")
    return inspect.main(argv[1:], prog=f"{PROG} inspect")


if __name__ == "__main__":
    inspect.warnings_on_stderr()
    cli_main(main)
