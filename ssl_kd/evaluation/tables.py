"""The one renderer of the reports' Markdown tables and their protocol line (one run's report.md, the
several-run report, compare.md): every table is drawn by `render_table` from cells `number` and
`mean_std` format, and headed by `knn_header`."""

from __future__ import annotations


def number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    """`value / scale` with `digits` decimals; "-" where there is no value."""
    return "-" if value is None else f"{value / scale:.{digits}f}"


def mean_std(summary: dict | None) -> str:
    """"97.0 ± 1.4" of a `{mean, std, n}` summary over seeds; the mean alone for one seed; "-" for none."""
    if summary is None:
        return "-"
    return f"{summary['mean']:.1f} ± {summary['std']:.1f}" if summary["n"] > 1 else f"{summary['mean']:.1f}"


def knn_header(k: int, temperature: float) -> str:
    return f"k-NN top-1 (k={k}, T={temperature})"


def render_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A Markdown table: the first `text_columns` columns left-aligned (labels), the rest right-aligned (numbers)."""
    rule = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, rule, *rows))


def protocol_line(protocol: dict) -> str:
    """"Protocol: <k-NN>; <linear probe>; <retrieval>." from a run's protocol record (`ssl_kd.job.protocol`)."""
    return "Protocol: " + "; ".join(protocol[key] for key in ("knn", "linear", "retrieval") if key in protocol) + "."
