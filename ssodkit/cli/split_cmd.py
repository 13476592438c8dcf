"""`ssodkit split`: COCO-standard semi-supervised splits (fold@percent)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssodkit.cli.output import console
from ssodkit.data.coco import CHECK_REMEDY, load_coco
from ssodkit.data.splits import check_split_args, split_dataset, split_paths


def split(
    ann: Annotated[Path, typer.Option("--ann", help="COCO instance JSON to split.")],
    percent: Annotated[
        float, typer.Option("--percent", help="Labeled share in percent, e.g. 1, 5, 10.")
    ],
    fold: Annotated[
        int, typer.Option("--fold", help="Fold ≥ 1; seeds the draw as in the literature.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default: beside --ann).")
    ] = None,
) -> None:
    """Write `<stem>.<fold>@<percent>.json` (labeled) and `…-unlabeled.json` (the rest)."""
    check_split_args(percent, fold)
    coco = load_coco(ann, check_images="none", remedy=CHECK_REMEDY)
    stdout = console()
    for part, path in zip(
        split_dataset(coco, percent, fold), split_paths(ann, percent, fold, out), strict=True
    ):
        part.save(path)
        stdout.print(
            f"{path}: {len(part.images)} images, {len(part.annotations)} annotations",
            markup=False,
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    app.command("split")(split)
