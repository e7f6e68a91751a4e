"""One contender of bench/distill_speed.py's part (b) (and (c)'s 1-vs-N processes): the loop on a config, on cue.

    python bench/distill_speed_worker.py CONTROL NAME ROUNDS THREADS [key=value ...]            # 1 process
    python -m torch.distributed.run --nproc-per-node 2 ... bench/distill_speed_worker.py ...    # W processes

Builds the config's teacher, data and loader once (as `ssl_kd.distillation.distill` does), touches
CONTROL/ready_NAME, then for each round r waits for CONTROL/go_NAME_r, runs `ssl_kd.loop.fit` for
train.epochs with a fresh student and method (every process between two barriers), and writes
CONTROL/done_NAME_r.json (rank 0): wall seconds, images, the epochs' images/s from metrics.jsonl.
The parent starts every contender first and cues them one at a time, so they alternate round by
round without paying their start-up again, and an idle contender (sleeping, loader workers idle)
takes nothing from the one that runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from distill_speed_setup import build_setup, fresh_objective  # noqa: E402
from ssl_kd.config import to_dict  # noqa: E402
from ssl_kd.distillation import record_processes  # noqa: E402
from ssl_kd.loop import fit  # noqa: E402
from ssl_kd.parallel import barrier, init_distributed, is_main_process, shutdown_distributed, world_size  # noqa: E402

POLL_S = 0.05
WAIT_LIMIT_S = 1800


def wait_for(path: Path) -> None:
    deadline = time.time() + WAIT_LIMIT_S
    while not path.exists():
        if time.time() > deadline:
            raise SystemExit(f"no {path.name} within {WAIT_LIMIT_S} s; the parent is gone")
        time.sleep(POLL_S)


def main() -> None:
    control, name, rounds, threads, overrides = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
    torch.set_num_threads(threads)
    from ssl_kd.config import load_config

    cfg = load_config(None, overrides)
    device = init_distributed(cfg.train.device, cfg.train.dist_backend)
    try:
        setup = build_setup(cfg, device)
        record_processes(cfg, setup.loader)
        for _ in setup.loader:  # start the loader's persistent workers before the first round
            pass
        barrier()
        if is_main_process():
            (control / f"ready_{name}").touch()
        for r in range(rounds):
            wait_for(control / f"go_{name}_{r}")
            objective = fresh_objective(setup)
            with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                barrier()
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                result = fit(objective, setup.loader, cfg.train, Path(run_dir), to_dict(cfg), device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                barrier()
                wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
            images = result.steps * cfg.train.batch_size
            if is_main_process():
                record = {"wall_s": wall, "cpu_s": cpu, "images": images, "steps": result.steps, "world": world_size(),
                          "threads": torch.get_num_threads(), "batch_per_process": cfg.train.batch_per_process,
                          "epoch_images_per_s": [e["images_per_s"] for e in result.history],
                          "epoch_seconds": sum(e["seconds"] for e in result.history)}
                tmp = control / f"done_{name}_{r}.tmp"
                tmp.write_text(json.dumps(record))
                tmp.rename(control / f"done_{name}_{r}.json")
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
