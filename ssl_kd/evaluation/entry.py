"""What the `eval/` entry points share: one model argument, the data, features of both splits, the output.

    python eval/knn.py runs/default                                   # a distilled student (its run's data)
    python eval/knn.py moco_v2_800ep_pretrain.pth.tar --data imagefolder --data-root /data/imagenet

MODEL is a run directory, a `student_timm.pth`, a teacher checkpoint of any layout `load_teacher`
reads, or `timm:NAME.TAG`; the same command measures a teacher and a student. The data: `--data` /
`--data-root` / `--image-size`, else the run's own `config.yaml` (next to the model), else digits.
Features come from the deterministic eval transform, L2-normalized, and are cached on disk under
`--cache-dir` (keyed by weights + data + transform), so k-NN, retrieval and the probe of one model
extract them once. Under torchrun (`torchrun --nproc-per-node N eval/knn.py ...`) every process
extracts a shard of each split, and the numbers, the printing and `--out` happen once, on rank 0
(`on_main_process`): the same numbers as one process.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config import Config, DataConfig, load_config
from ..data import resolve_data_config
from ..encoder import FrozenEncoder
from ..errors import UserError
from ..feature_cache import CACHE_DTYPES
from ..parallel import init_distributed
from . import inputs as eval_inputs
from .models import load_eval_model
from .search import BACKENDS

DEFAULT_CACHE = "runs/feature-cache"


@dataclass
class EvalInputs:
    model: FrozenEncoder  # a Teacher for a teacher file, a plain FrozenEncoder for a student export
    name: str
    data: DataConfig
    train: torch.utils.data.Dataset  # the k-NN bank / retrieval database / probe training set (eval transform)
    test: torch.utils.data.Dataset  # the queries
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return list(self.test.classes)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="run directory, student_timm.pth, teacher checkpoint (any layout) or timm:NAME.TAG")
    parser.add_argument("--arch", metavar="NAME", help="timm name, for teacher checkpoints that do not say it")
    parser.add_argument("--format", default="auto", metavar="NAME", help="force the checkpoint layout (default: detect)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow a full unpickle of a trusted file")
    parser.add_argument("--data", metavar="NAME",
                        help="digits | cifar10 | cifar100 | stl10 | imagefolder (default: the run's, else digits)")
    parser.add_argument("--data-root", metavar="DIR", help="dataset folder (torchvision download target or an ImageFolder)")
    parser.add_argument("--image-size", type=int, metavar="PX", help="side the model sees (default: the dataset's)")
    parser.add_argument("--subset", type=int, metavar="N", help="only the first N images of each split (quick looks)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N")
    parser.add_argument("--num-workers", type=int, default=2, metavar="N")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, metavar="DIR",
                        help=f"feature cache (default {DEFAULT_CACHE}); 'none' disables it")
    parser.add_argument("--cache-dtype", default="float32", choices=CACHE_DTYPES, help="float16 halves the cache on disk")
    parser.add_argument("--search", default="auto", choices=BACKENDS,
                        help="neighbour search: auto (exact), torch, faiss, or hnsw (approximate, for banks past ~1M rows)")
    parser.add_argument("--out", metavar="FILE.json", help="also write every number to this JSON file")


def run_config_for(model: str) -> Config | None:
    """The config.yaml of the run that `model` belongs to (a run directory or a file inside one), if any."""
    path = Path(model)
    for folder in (path, path.parent):
        if (folder / "config.yaml").is_file() and (folder / "student_timm.pth").exists():
            return load_config(str(folder / "config.yaml"))
    return None


def data_config(args: argparse.Namespace) -> DataConfig:
    run = run_config_for(args.model) if not str(args.model).startswith("timm:") else None
    data = run.data if run is not None and args.data is None else DataConfig(name=args.data or "digits")
    data = replace(data, num_workers=args.num_workers)
    for key, value in (("root", args.data_root), ("image_size", args.image_size), ("subset", args.subset)):
        if value is not None:
            data = replace(data, **{key: value})
    return resolve_data_config(data)


def load_eval_inputs(args: argparse.Namespace) -> EvalInputs:
    """Data first (a bad folder fails fast), then the model, moved to the device. Under torchrun this
    joins the process group (`init_distributed`) and the device is this process's own."""
    data = data_config(args)
    splits = eval_inputs.eval_splits(data)
    device = init_distributed(args.device)
    model = load_eval_model(args.model, arch=args.arch, format=args.format, trust=args.trust_checkpoint).to(device)
    return EvalInputs(model, Path(str(args.model)).name or str(args.model), data, splits.train, splits.test, device)


def cache_dir(args: argparse.Namespace) -> str | None:
    """`--cache-dir`, None for 'none'."""
    return None if str(args.cache_dir).lower() == "none" else args.cache_dir


def split_features(inputs: EvalInputs, args: argparse.Namespace):
    """(train feats, train labels, test feats, test labels), L2-normalized, from the cache when it has them
    (`ssl_kd.evaluation.inputs.split_features` with the command line's settings)."""
    return eval_inputs.split_features(inputs.model, eval_inputs.EvalSplits(inputs.train, inputs.test), cache_dir=cache_dir(args),
                                      batch_size=args.batch_size, num_workers=args.num_workers, device=inputs.device,
                                      dtype=args.cache_dtype)


def parse_ks(text: str, bank_size: int | None = None, default: str | None = None) -> list[int]:
    """"20,1,10" -> [20, 1, 10] (the --ks flags). With `bank_size` (the train split the queries search), a k
    past it is a `UserError` when the user gave the list; in the `default` list it is left out."""
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise UserError(f"--ks must be comma-separated positive integers such as 20,1,10,50, got '{text}'")
    too_many = [k for k in ks if bank_size is not None and k > bank_size]
    if too_many and text != default:
        fitting = ",".join(str(k) for k in ks if k <= bank_size) or str(min(20, bank_size))
        raise UserError(f"--ks {text}: k={','.join(map(str, too_many))} exceed{'s' if len(too_many) == 1 else ''} the "
                        f"{bank_size} images of the train split searched; give --ks {fitting}")
    return [k for k in ks if k not in too_many]


def describe(inputs: EvalInputs) -> dict:
    return {"model": inputs.name, "arch": inputs.model.arch, "format": inputs.model.format, "data": inputs.data.name,
            "image_size": inputs.data.image_size, "train": len(inputs.train), "test": len(inputs.test)}


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")
