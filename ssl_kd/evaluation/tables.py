"""The one renderer of the reports' Markdown tables (one run's report.md, the several-run report,
compare.md): every table is drawn by `render_table` from cells `number` and `mean_std` format, and
headed by `knn_header`. The protocol line under each table is `results.Protocol.line()`."""

from __future__ import annotations


def number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    """`value / scale` with `digits` decimals; "-" where there is no value."""
    return "-" if value is None else f"{value / scale:.{digits}f}"


def mean_std(summary) -> str:
    """"97.0 ± 1.4" of a summary over seeds (`results.Summary`: mean, std, n); the mean alone for one seed; "-" for none."""
    if summary is None:
        return "-"
    return f"{summary.mean:.1f} ± {summary.std:.1f}" if summary.n > 1 else f"{summary.mean:.1f}"


def knn_header(k: int, temperature: float) -> str:
    return f"k-NN top-1 (k={k}, T={temperature})"


def render_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A Markdown table: the first `text_columns` columns left-aligned (labels), the rest right-aligned (numbers)."""
    rule = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, rule, *rows))
