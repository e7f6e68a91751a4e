"""Weighted k-NN accuracy of a frozen model's features (InstDisc / DINO protocol), with per-class detail.

    ssl-kd knn runs/default                          # the distilled student of a run, on its data
    ssl-kd knn ssl_kd/assets/digits_resnet14t_simclr.pth --data digits
    ssl-kd knn dino_resnet50_pretrain.pth --data imagefolder --data-root /data/imagenet --ks 10,20,100,200

Train split = the bank, test split = the queries; features L2-normalized, FAISS exact inner-product
search (GPU when faiss-gpu and CUDA are there), weights exp(cos / T). Several k come from one search.
Prints top-1/top-5 for every k, the per-class accuracy at the headline k (the first of --ks) and the
worst classes; --out FILE.json adds the confusion matrix.

`eval/knn.py` runs the same command as a script (`python eval/knn.py ...`).
"""

from __future__ import annotations

import argparse

from ssl_kd.errors import cli_main
from ssl_kd.evaluation.classwise import classwise_report
from ssl_kd.evaluation.entry import add_eval_arguments, describe, load_eval_inputs, parse_ks, split_features, write_json
from ssl_kd.evaluation.knn import knn_classify
from ssl_kd.evaluation.on_main import on_main_process

DEFAULT_KS = "20,1,10,50,100,200"


def main(argv=None, prog: str | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_arguments(parser)
    parser.add_argument("--ks", default=DEFAULT_KS, help=f"k values, the headline first (default {DEFAULT_KS}; "
                        "the defaults past the train split's size are left out)")
    parser.add_argument("--temperature", type=float, default=0.07, help="T of the vote weights exp(cos / T) (default 0.07)")
    args = parser.parse_args(argv)
    inputs = load_eval_inputs(args)
    args.ks = ",".join(map(str, parse_ks(args.ks, len(inputs.train), DEFAULT_KS)))  # every k fits the bank, before any feature
    features = split_features(inputs, args)  # every rank under torchrun; the rest once, on rank 0
    return on_main_process(lambda: report(inputs, args, *features))


def report(inputs, args: argparse.Namespace, train_x, train_y, test_x, test_y) -> dict:
    """k-NN of the features: print the table, write --out, return every number."""
    knn = knn_classify(train_x, train_y, test_x, test_y, ks=parse_ks(args.ks), temperature=args.temperature, backend=args.search)
    classwise = classwise_report(knn.predictions, test_y, inputs.classes[: knn.num_classes])

    print(f"{inputs.model.arch} on {inputs.data.name}: {len(inputs.train)} train (bank) / {len(inputs.test)} test (queries), "
          f"T={knn.temperature}")
    print(f"{'k':>5} {'top-1':>7} {'top-5':>7}")
    for k in knn.ks:
        print(f"{k:>5} {knn.per_k[k]['top1']:7.2f} {knn.per_k[k]['top5']:7.2f}")
    print(f"per-class top-1 at k={knn.k}: mean {classwise['mean_per_class']:.2f}; worst "
          + ", ".join(f"{name} {acc:.1f}" for name, acc in classwise["worst"]))
    result = {**describe(inputs), "knn": knn.to_json(), "classwise": classwise}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    cli_main(main)
