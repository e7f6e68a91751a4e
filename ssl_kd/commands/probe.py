"""Linear-probe accuracy of a frozen model: cached-feature logistic regression, or the classic augmented probe.

    ssl-kd probe runs/default                                  # cached features, L-BFGS (fast)
    ssl-kd probe runs/default --protocol augment --epochs 100  # MoCo/SEED recipe, paper-comparable
    ssl-kd probe mocov3_vit_small.pth --data stl10 --data-root /data/stl10

--protocol cached (default): features extracted once (and cached on disk), standardised, multinomial
logistic regression solved with L-BFGS (mini-batch Adam for very large sets); weight decay chosen on
20 % of the train split, then refit on all of it; top-1/top-5 on the test split.
--protocol augment: every epoch the frozen model sees freshly augmented train images (random resized
crop + flip where the dataset allows flips) and one linear layer is trained with SGD (lr 30 x
batch/256, momentum 0.9, steps x0.1 at 60 % and 80 % of the epochs): MoCo's and SEED's protocol,
`--epochs` passes of the model over the train split. The two protocols' numbers are not comparable.

`eval/linear_probe.py` runs the same command as a script (`python eval/linear_probe.py ...`).
"""

from __future__ import annotations

import argparse
import time

from ssl_kd.data import build_dataset
from ssl_kd.errors import UserError, cli_main
from ssl_kd.evaluation.augmented_probe import augmented_linear_probe, probe_train_transform
from ssl_kd.evaluation.entry import add_eval_arguments, describe, load_eval_inputs, split_features, write_json
from ssl_kd.evaluation.linear_probe import linear_probe
from ssl_kd.evaluation.on_main import on_main_process
from ssl_kd.loaders import make_loader
from ssl_kd.parallel import is_distributed


def main(argv=None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(parser)
    parser.add_argument("--protocol", default="cached", choices=("cached", "augment"), help="cached (default) or augment")
    parser.add_argument("--epochs", type=int, default=100, help="augment: passes over the train split (default 100)")
    parser.add_argument("--lr", type=float, default=30.0, help="augment: SGD lr at batch 256 (default 30, MoCo's)")
    args = parser.parse_args(argv)
    inputs = load_eval_inputs(args)
    started = time.perf_counter()
    if args.protocol == "cached":
        features = split_features(inputs, args)  # every rank under torchrun; the probe once, on rank 0
        return on_main_process(lambda: report(inputs, args, linear_probe(*features), started))
    if is_distributed():
        raise UserError("--protocol augment trains in one process; run it without torchrun")
    train = build_dataset(inputs.data, "train", probe_train_transform(inputs.data))
    test_loader = make_loader(inputs.test, args.batch_size, train=False, num_workers=args.num_workers)
    probe = augmented_linear_probe(inputs.model, train, test_loader, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                   device=inputs.device, num_workers=args.num_workers)
    return report(inputs, args, probe, started)


def report(inputs, args: argparse.Namespace, probe: dict, started: float) -> dict:
    """Print the probe's accuracy, write --out, return every number."""
    seconds = time.perf_counter() - started
    print(f"{inputs.model.arch} on {inputs.data.name}, {probe['protocol']}: top-1 {probe['top1']:.2f}  top-5 {probe['top5']:.2f}  "
          f"({seconds:.1f} s)")
    result = {**describe(inputs), "linear": probe, "seconds": round(seconds, 2)}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    cli_main(main)
