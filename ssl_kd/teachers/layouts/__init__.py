"""Checkpoint layouts, one family a file; importing this package registers them all (see ../formats.py)."""

from . import moco, native, plain  # noqa: F401
