"""Bad input is one line naming the problem and the fix, exit status 2, no traceback.

Library code raises `ValueError` / `TypeError` for a bad argument, and `UserError("what is wrong;
how to fix it")`, a `ValueError`, for bad input or configuration a user gave (a file, a folder, a
config key). Callers of the library catch either as a `ValueError`. Entry points wrap their `main`
with `cli_main`, which prints `error: <message>` on stderr and exits 2 for any of them, exits 75
after a checkpoint when the run was asked to stop (`Preempted`: rerun the same command to resume),
and lets anything else (a real crash, exit 1) propagate with its traceback. A `ValueError` or
`TypeError` that is not a `UserError` may also be a bug: its line says so, and `SSL_KD_TRACEBACK=1`
lets it through with its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

EXIT_BAD_INPUT = 2


class UserError(ValueError):
    """Bad input or configuration. The message is one line: the problem, then the fix."""


TRACEBACK_ENV = "SSL_KD_TRACEBACK"  # =1: a ValueError/TypeError from the library keeps its traceback


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run stopped at a signal after writing its checkpoint; rerun to resume


class Preempted(Exception):
    """The run stopped at SIGTERM / SIGUSR1 / Ctrl-C after writing its checkpoint (`ssl_kd.preemption`)."""


def one_line(err: BaseException) -> str:
    """The exception's message on exactly one line."""
    return " ".join(str(err).split())


def fail(message: str) -> NoReturn:
    """Raise a `UserError` (a shorthand that reads well in validation code)."""
    raise UserError(message)


def cli_main(main: Callable[[], object]) -> NoReturn:
    """Run `main()` as a command-line entry point: exit 0, or 2 with one line for a `UserError`."""
    try:
        main()
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except (ValueError, TypeError) as err:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"error: {one_line(err)} ({type(err).__name__}; {TRACEBACK_ENV}=1 shows where)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Preempted as err:
        print(f"stopped: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
