"""The embedded default: a teacher shipped with the package, for scikit-learn's digits.

`ssl_kd/assets/digits_resnet14t_simclr.pth`: timm `resnet14t` (8.0 M parameters, 2048-d features,
a bottleneck ResNet like ResNet-50 in miniature) trained with SimCLR (lightly) on the digits train
split at 32 px for 200 epochs, stored in fp16 (16 MB). Made with
`python pipelines/pretrain_ssl.py --config configs/digits-teacher.yaml` (README, "The embedded
default"). Weighted k-NN top-1 on the digits test split: 98.5 % (k=20, T=0.07).
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_TEACHERS = {"digits": ASSETS / "digits_resnet14t_simclr.pth"}


def default_teacher(data_name: str) -> Path:
    """The shipped teacher for `data_name`; other datasets need the user's own checkpoint."""
    path = DEFAULT_TEACHERS.get(data_name)
    if path is None:
        raise UserError(f"no default teacher for dataset '{data_name}'; pass --teacher FILE (a MoCo, timm or ssl_kd checkpoint)")
    if not path.exists():
        raise UserError(f"the embedded default teacher {path} is missing; reinstall ssl_kd, or remake it with "
                        "python pipelines/pretrain_ssl.py --config configs/digits-teacher.yaml and pass --teacher")
    return path
