"""Run the evaluation path in one process or under torchrun and print what every rank ends up with.

    python tests/dist_eval_worker.py OUT                      # one process
    torchrun --nproc-per-node 2 tests/dist_eval_worker.py OUT  # launched by tests/torchrun_helpers.run_torchrun

Data: digits, the first 97 images of each split (97 is odd, so the two ranks' shards differ in
size); model: the shipped digits teacher. Each rank r uses OUT/rank<r>/ as its cache folder and
`--out` folder, so a file that rank 1 wrote would show up under OUT/rank1/. It prints one line per
check, `RESULT <rank> <name> <json>`: the sha256 of the features (exact bytes), the k-NN monitor's
dict, evaluate_model's, eval/knn.py's and eval/retrieval.py's numbers (their sha256, plus the headline
values), and the error every rank raises when rank 0's step fails.
Prints only; writes nothing itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ssl_kd.config import Config, DataConfig, EvalConfig  # noqa: E402
from ssl_kd.data import resolve_data_config  # noqa: E402
from ssl_kd.loaders import make_loader  # noqa: E402
from ssl_kd.defaults import default_teacher  # noqa: E402
from ssl_kd.errors import UserError  # noqa: E402
from ssl_kd.evaluation.inputs import eval_splits, split_features  # noqa: E402
from ssl_kd.evaluation.models import load_eval_model  # noqa: E402
from ssl_kd.evaluation.on_main import on_main_process  # noqa: E402
from ssl_kd.evaluation.suite import evaluate_model  # noqa: E402
from ssl_kd.feature_cache import cached_features  # noqa: E402
from ssl_kd.job import JobInputs, knn_monitor  # noqa: E402
from ssl_kd.parallel import init_distributed, rank, shutdown_distributed, world_size  # noqa: E402

SUBSET, BATCH = 97, 16


def digest(*tensors: torch.Tensor) -> str:
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
        hasher.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def json_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def report(name: str, value) -> None:
    """One RESULT line in one write(2) call, so that the lines of two ranks sharing stdout never interleave."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"RESULT {rank()} {name} {json.dumps(value, sort_keys=True)}\n".encode())


def eval_script(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem + "_entry", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fail_on_rank_0():
    raise UserError("--ks must be positive")


def main(out: Path) -> None:
    device = init_distributed("cpu")
    mine = out / f"rank{rank()}"  # this rank's cache and --out folder: only rank 0 may create its own
    data = resolve_data_config(DataConfig(name="digits", subset=SUBSET, num_workers=0))
    splits = eval_splits(data)
    model = load_eval_model(default_teacher("digits")).to(device)
    report("world", world_size())

    first = split_features(model, splits, cache_dir=str(mine / "cache"), batch_size=BATCH, num_workers=0, device=device, progress=False)
    again = split_features(model, splits, cache_dir=str(mine / "cache"), batch_size=BATCH, num_workers=0, device=device, progress=False)
    report("features", digest(*first))
    report("features_from_cache", digest(*again))
    report("features_one_image", digest(*cached_features(model, Subset(splits.test, [5]), cache_dir=None, batch_size=BATCH,
                                                         device=device, progress=False)))

    cfg = Config(data=data, eval=EvalConfig(knn_ks=[1, 20], monitor_every=1, batch_size=BATCH, cache_dir=str(mine / "cache")))
    inputs = JobInputs(model, str(default_teacher("digits")), splits.train, splits.test, device)
    report("monitor", knn_monitor(cfg, inputs)(model, 1))

    loaders = [make_loader(split, BATCH, train=False, num_workers=0) for split in (splits.train, splits.test)]
    result = evaluate_model(model, *loaders, cfg.eval, device, "teacher")
    report("evaluate_model", {"sha256": json_digest(result.to_dict()), "knn_top1": result.knn_top1, "map_at_r": result.map_at_r,
                              "linear_top1": result.linear_top1})

    knn = eval_script("eval/knn.py").main([str(default_teacher("digits")), "--data", "digits", "--subset", str(SUBSET), "--ks", "20,1",
                                           "--cache-dir", str(mine / "entry-cache"), "--out", str(mine / "knn.json"),
                                           "--num-workers", "0", "--batch-size", str(BATCH), "--device", "cpu"])
    report("eval_knn", {"sha256": json_digest(knn), "top1": knn["knn"]["top1"]})
    retrieval = eval_script("eval/retrieval.py").main([str(default_teacher("digits")), "--data", "digits", "--subset", str(SUBSET),
                                                       "--cache-dir", str(mine / "entry-cache"), "--num-workers", "0",
                                                       "--batch-size", str(BATCH), "--device", "cpu"])
    report("eval_retrieval", {"sha256": json_digest(retrieval), "map_at_r": retrieval["retrieval"]["map@R"]})
    try:
        on_main_process(fail_on_rank_0)
    except UserError as err:
        report("error_on_rank_0", f"{type(err).__name__}: {err}")
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
