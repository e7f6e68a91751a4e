"""Bad input is a `UserError`: one line naming the problem and the fix, exit status 2, no traceback.

Library code raises `UserError("what is wrong; how to fix it")`. Entry points wrap their `main`
with `cli_main`, which prints `error: <message>` on stderr and exits 2 for a `UserError`, exits 75
after a checkpoint when the run was asked to stop (`Preempted`: rerun the same command to resume),
and lets anything else (a real crash, exit 1) propagate with its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input or configuration. The message is one line: the problem, then the fix."""


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run stopped at a signal after writing its checkpoint; rerun to resume


class Preempted(Exception):
    """The run stopped at SIGTERM / SIGUSR1 / Ctrl-C after writing its checkpoint (`ssl_kd.preemption`)."""


def fail(message: str) -> NoReturn:
    """Raise a `UserError` (a shorthand that reads well in validation code)."""
    raise UserError(message)


def cli_main(main: Callable[[], object]) -> NoReturn:
    """Run `main()` as a command-line entry point: exit 0, or 2 with one line for a `UserError`."""
    try:
        main()
    except UserError as err:
        message = " ".join(str(err).split())  # always exactly one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Preempted as err:
        print(f"stopped: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
