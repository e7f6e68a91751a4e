"""Where a run's numbers go: `metrics.jsonl` always, TensorBoard event files with `train.tensorboard`.

`metrics.jsonl` has one JSON line per logged step (`{"step", "epoch", "lr", "loss", ...}`, every
`train.log_every` steps) and one per epoch (the same keys averaged over the epoch, plus "seconds",
"images_per_s" and what the epoch-end hooks add, e.g. "knn_top1"). With `train.tensorboard=true`
(`--tensorboard`) the same numbers are also written as TensorBoard scalars in `run_dir/tensorboard/`
(`torch.utils.tensorboard`, which needs the `tensorboard` package: `pip install 'ssl_kd[tensorboard]'`):
step records as `train/<name>` at their step, epoch records as `epoch/<name>` at the epoch's last step.
Only rank 0 writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .parallel import is_main_process


class MetricsLog:
    def __init__(self, run_dir: Path, tensorboard: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if tensorboard and is_main_process():
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("train.tensorboard needs the tensorboard package; pip install 'ssl_kd[tensorboard]', "
                                "or drop --tensorboard") from None
            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict) -> None:
        """One record (a step's or an epoch's; an epoch record has "seconds")."""
        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            section = "epoch" if "seconds" in record else "train"
            step = record["step"] - 1 if section == "epoch" else record["step"]  # an epoch record's step is the next one
            for name, value in record.items():
                if name not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{section}/{name}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
