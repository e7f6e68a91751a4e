"""Image retrieval with a frozen model's features: recall@1/5/10 and MAP@R, test queries against train.

    ssl-kd retrieval runs/default
    ssl-kd retrieval moco_v3_vit_small.pth --data stl10 --data-root /data/stl10 --ks 1,5,10

Every test image queries the train split by cosine similarity; same class = relevant. Recall@K is the
metric-learning convention (a relevant item among the K nearest); MAP@R (Musgrave et al., ECCV 2020)
averages precision over the first R ranks, R = the number of train images of the query's class.

`eval/retrieval.py` runs the same command as a script (`python eval/retrieval.py ...`).
"""

from __future__ import annotations

import argparse

from ssl_kd.errors import cli_main
from ssl_kd.evaluation.entry import add_eval_arguments, describe, load_eval_inputs, parse_ks, split_features, write_json
from ssl_kd.evaluation.on_main import on_main_process
from ssl_kd.evaluation.retrieval import retrieval_metrics


def main(argv=None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(parser)
    parser.add_argument("--ks", default="1,5,10", help="recall cut-offs (default 1,5,10)")
    args = parser.parse_args(argv)
    inputs = load_eval_inputs(args)
    parse_ks(args.ks, len(inputs.train))  # a cut-off past the database: one line, before any feature
    features = split_features(inputs, args)  # every rank under torchrun; the rest once, on rank 0
    return on_main_process(lambda: report(inputs, args, *features))


def report(inputs, args: argparse.Namespace, train_x, train_y, test_x, test_y) -> dict:
    """Retrieval metrics of the features: print them, write --out, return them."""
    result = retrieval_metrics(train_x, train_y, test_x, test_y, ks=parse_ks(args.ks), backend=args.search)
    print(f"{inputs.model.arch} on {inputs.data.name}: {result.num_query} queries (test) against {result.num_db} items (train)")
    print("  ".join(f"recall@{k} {value:.2f}" for k, value in result.recall.items()) + f"  MAP@R {result.map_at_r:.2f}")
    payload = {**describe(inputs), "retrieval": result.to_json()}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    cli_main(main)
