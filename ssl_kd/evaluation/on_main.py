"""Run a step once, on rank 0, and hand its result to every rank.

Under torchrun every rank runs the same evaluation code. The features are extracted by all ranks
together, but k-NN, retrieval, the linear probe, the speed measurement and the printing happen once:
`on_main_process(compute)` runs `compute()` on rank 0 and broadcasts what it returns, so every rank
carries on with the same numbers (and the same report). In one process it is just `compute()`.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from ..errors import UserError
from ..parallel import broadcast_object, is_distributed, is_main_process

T = TypeVar("T")


def on_main_process(compute: Callable[[], T]) -> T:
    """`compute()` on rank 0, its (picklable) result on every rank. Every rank must call it.

    When `compute` raises on rank 0, every rank raises (a `UserError` as itself, anything else as a
    `RuntimeError` naming it), so that no rank waits for a result that never comes."""
    if not is_distributed():
        return compute()
    outcome = None
    if is_main_process():
        try:
            outcome = (True, compute())
        except Exception as err:
            broadcast_object((False, _portable(err)))
            raise
    succeeded, value = broadcast_object(outcome)
    if not succeeded:
        raise value
    return value


def _portable(err: Exception) -> Exception:
    """An exception that surely pickles, saying what went wrong on rank 0."""
    if isinstance(err, UserError):
        return UserError(str(err))
    return RuntimeError(f"rank 0 failed: {type(err).__name__}: {err}")
