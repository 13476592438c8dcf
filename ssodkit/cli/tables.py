"""Rich tables of COCO metrics, shared by `ssodkit train` and `ssodkit evaluate`, and the
percentage format every table of fractions uses.

The library returns `EvalResult` (plain numbers); how they look on a terminal is the CLI's
business, so the tables are built here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from rich.table import Table

if TYPE_CHECKING:  # numpy and pydantic load only when a command runs
    from ssodkit.evaluation.coco_eval import EvalResult


def pct(value: float | None) -> str:
    """A fraction in [0, 1] as a percentage with one decimal; ``-`` where there is none."""
    return "-" if value is None else f"{100.0 * value:.1f}"


def results_table(result: EvalResult, title: str = "COCO bbox") -> Table:
    """One-row table of AP, AP50, AP75, APs, APm, APl in percent."""
    table = Table(title=title)
    columns = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(*(pct(v) for v in result.stats()[: len(columns)]))
    return table


def per_class_table(result: EvalResult, sort: Literal["ap", "name"] = "ap") -> Table:
    """AP per class in percent, best first (classes without GT last) or alphabetical."""
    items = list(result.per_class.items())
    if sort == "name":
        items.sort(key=lambda kv: kv[0])
    else:
        items.sort(key=lambda kv: (kv[1] is None, -(kv[1] or 0.0), kv[0]))
    table = Table(title="AP per class")
    table.add_column("class")
    table.add_column("AP", justify="right")
    for name, ap in items:
        table.add_row(name, pct(ap))
    return table
