"""`ssodkit plugins`: everything registered, by kind, with the package that provided it."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ssodkit.cli.output import console


def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List registered detectors, methods, pseudo-label filters and views."""
    from ssodkit.plugins import plugin_entries

    rows = [
        {"kind": e.kind[:-1], "name": e.name, "package": e.provider.distribution,
         "version": e.provider.version, "plugin": e.provider.plugin}
        for e in plugin_entries()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="ssodkit plugins")
    for column in ("kind", "name", "package", "version", "plugin"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("kind", "name", "package", "version", "plugin")))
    console().print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
