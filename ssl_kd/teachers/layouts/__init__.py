"""Checkpoint layouts, one family a file; importing this package registers them all (see ../formats.py)."""

from . import (  # noqa: F401
    byol,
    dino,
    dinov2,
    lightly_train,
    lightning,
    mae,
    moco,
    mocov3,
    native,
    plain,
    resnet_arch,
    simclr,
    vit_arch,
)
