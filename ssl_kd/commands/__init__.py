"""The `ssl-kd` subcommands, one module each: `main(argv, prog)` parses its own arguments and runs.

`ssl_kd/__main__.py` dispatches `ssl-kd NAME ...` to `ssl_kd.commands.NAME.main`; the scripts in
`pipelines/` and `eval/` call the same functions. A bad input raises `ssl_kd.errors.UserError`, which
the entry points (`ssl_kd.errors.cli_main`) turn into one `error: ...` line and exit status 2.
"""

COMMANDS = {  # name -> one line of `ssl-kd --help`; the command is ssl_kd.commands.<name>.main
    "distill": "distil a teacher into a student, then report teacher vs student vs baselines (the main job)",
    "compare": "methods x seeds on one teacher, data and budget: mean ± std tables and a chart",
    "pretrain": "train a self-supervised (SimCLR) teacher and write it as a teacher file",
    "knn": "weighted k-NN accuracy of a frozen model's features, per class",
    "retrieval": "recall@K and MAP@R of a frozen model's features",
    "probe": "linear-probe accuracy of a frozen model (cached features, or the augmented protocol)",
    "report": "one report (tables and figures) from one or more finished runs",
    "inspect": "what a teacher checkpoint holds, and whether it loads",
    "export": "export a run's student (timm, torchscript, onnx) and check the file",
}
