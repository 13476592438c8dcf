"""`ssodkit report RUN [RUN ...]`: a run's results.csv and results.png; several runs compared.

The work is `ssodkit.report`'s; this module only parses, prints and writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ssodkit.cli.output import console
from ssodkit.errors import SsodkitError

DEFAULT_OUT = Path("report")


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="Run folders (each with a metrics.jsonl).", show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write overlay.png and report.html here (default with several runs: ./report/; "
            "with one run they are written only when --out is given).",
        ),
    ] = None,
) -> None:
    """Rewrite each run's results.csv and results.png from metrics.jsonl and print its best
    mAPs; with several runs (or --out), also an mAP overlay and a self-contained report.html
    with the runs' config differences."""
    from ssodkit.report import (
        SUMMARY_HEADERS,
        check_run_dir,
        load_run,
        run_names,
        split_warnings,
        summary_cells,
        write_comparison,
        write_run_figure,
    )

    for path in runs:  # every path checked before anything is written
        check_run_dir(path)
    resolved = [p.resolve() for p in runs]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise SsodkitError(f"{runs[i]}: the same run is given twice")
    stdout, stderr = console(), console(stderr=True, highlight=False)
    reports = [load_run(p, name) for p, name in zip(runs, run_names(runs), strict=True)]
    warnings = split_warnings(reports)
    for warning in warnings:
        stderr.print(f"warning: {escape(warning)}")
    for run in reports:
        figure = write_run_figure(run)
        if figure is None:
            stderr.print(
                f"warning: {escape(str(run.path))}: no evaluation in metrics.jsonl yet; "
                "results.csv has no rows and results.png is not written"
            )
        written = ", ".join(str(p) for p in (run.path / "results.csv", figure) if p is not None)
        stdout.print(f"wrote {escape(written)}")
    table = Table(title="runs (mAP × 100)")
    for i, header in enumerate(SUMMARY_HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right")
    for run in reports:
        table.add_row(*(escape(cell) for cell in summary_cells(run)))
    if len(reports) > 1 or out is not None:
        overlay, page = write_comparison(reports, DEFAULT_OUT if out is None else out, warnings)
        stdout.print(f"wrote {escape(str(overlay))}, {escape(str(page))}")
    stdout.print(table)
