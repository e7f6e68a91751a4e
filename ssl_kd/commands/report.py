"""One report from one or more finished runs: teacher vs students vs baselines, and the figures.

    ssl-kd report runs/default                                    # one run
    ssl-kd report runs/dlkd runs/seed runs/compress --out runs/report --scatter tsne

Each RUN is an output directory of `ssl-kd distill` (report.json, metrics.jsonl,
student_timm.pth, config.yaml). Writes OUT/report.md and OUT/report.json (a table with the k-NN
top-1/top-5, linear top-1, recall@1, MAP@R, parameters and images/s of the teacher, every run's
student and the first run's baselines, plus every run's full numbers), and the PNGs:
loss_curves.png, knn_over_epochs.png (when the runs monitored k-NN, eval.monitor_every) and
features_<run>.png (PCA or t-SNE of each student's test features, coloured by class).

`eval/report.py` runs the same command as a script (`python eval/report.py ...`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssl_kd.config import load_config
from ssl_kd.errors import UserError, cli_main
from ssl_kd.evaluation.entry import DEFAULT_CACHE, cache_dir
from ssl_kd.evaluation.inputs import eval_split
from ssl_kd.evaluation.models import load_eval_model
from ssl_kd.evaluation.on_main import on_main_process
from ssl_kd.evaluation.report import MultiRunReport, RunReport, write_figures
from ssl_kd.feature_cache import cached_features
from ssl_kd.parallel import init_distributed


def read_run(run: Path) -> RunReport:
    path = run / "report.json"
    if not path.is_file():
        raise UserError(f"{run} has no report.json; pass the --out directory of a finished `ssl-kd distill` run")
    try:
        return RunReport.read(path)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not the report.json of an ssl-kd distill run ({type(err).__name__}: {err}); "
                        "run `ssl-kd distill` again into that folder to rewrite it") from None


def student_test_features(run: Path, cache: str | None, device) -> tuple:
    """(features, labels, class names) of the run's student on its test split, with the run's own data config."""
    data = load_config(str(run / "config.yaml")).data
    dataset = eval_split(data, "test")
    model = load_eval_model(run).to(device)
    feats, labels = cached_features(model, dataset, cache_dir=cache, device=device, num_workers=data.num_workers, progress=False)
    return feats, labels, list(dataset.classes)


def main(argv=None, prog: str | None = None) -> MultiRunReport:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories of pipelines/distill_ssl.py")
    parser.add_argument("--labels", help="comma-separated row labels, one per run (default: the directory names)")
    parser.add_argument("--out", default="runs/report", metavar="DIR", help="where report.md, report.json and the PNGs go")
    parser.add_argument("--scatter", default="pca", choices=("pca", "tsne"), help="projection of the feature scatter (default pca)")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE, metavar="DIR", help="feature cache ('none' disables it)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    args = parser.parse_args(argv)
    runs = [Path(run) for run in args.runs]
    labels = args.labels.split(",") if args.labels else [run.resolve().name for run in runs]
    if len(labels) != len(runs) or len(set(labels)) != len(labels):
        raise UserError(f"--labels needs {len(runs)} distinct comma-separated names, one per run, got '{args.labels}'")
    reports = {label: read_run(run) for label, run in zip(labels, runs)}
    cache = cache_dir(args)
    device = init_distributed(args.device)  # under torchrun every rank extracts a shard; rank 0 writes
    features = {label: student_test_features(run, cache, device) for label, run in zip(labels, runs)}
    return on_main_process(lambda: write_combined_report(Path(args.out), reports, runs, features, args.scatter))


def write_combined_report(out: Path, reports: dict[str, RunReport], runs: list[Path], features: dict, scatter: str) -> MultiRunReport:
    """The combined report, its figures and its table: report.json, report.md and the PNGs in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    combined = MultiRunReport(reports)
    teacher_top1 = next(iter(reports.values())).teacher.knn_top1
    figures = write_figures(out, {label: run / "metrics.jsonl" for label, run in zip(reports, runs)}, teacher_top1, features, scatter)
    json_path, md_path = combined.save(out, figures)
    print(combined.table())
    print(f"\nwrote {md_path}, {json_path} and {len(figures)} figures in {out}")
    return combined


if __name__ == "__main__":
    cli_main(main)
