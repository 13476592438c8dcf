"""`ssodkit data synth` and `ssodkit data check`: make and validate COCO data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ssodkit.cli.output import console
from ssodkit.data.coco import CocoDataset, count_objects, load_coco
from ssodkit.data.synthetic import SPLITS, generate_synthetic

MAX_PRINTED_DEFECTS = 50


def synth(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to create (must not exist or be empty).")
    ],
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    n_train: Annotated[int, typer.Option(help="Labeled training images.")] = 1000,
    n_val: Annotated[int, typer.Option(help="Validation images.")] = 200,
    n_unlabeled: Annotated[
        int, typer.Option(help="Unlabeled images (their boxes are kept as hidden GT).")
    ] = 1000,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="shapes (7 shapes, a hue per class) or fine (one disc, classes differ only by "
            "its holes; same hue and size distributions).",
        ),
    ] = "shapes",
) -> None:
    """Generate a synthetic data set (COCO JSON + PNG images): shapes, or fine-grained discs."""
    paths = generate_synthetic(
        out, seed=seed, n_train=n_train, n_val=n_val, n_unlabeled=n_unlabeled, kind=kind
    )
    files = {"train": paths.train, "val": paths.val, "unlabeled": paths.unlabeled}
    counts = {
        split: count_objects(load_coco(files[split], check_images="none")) for split in SPLITS
    }
    table = Table(title="objects per class and size")
    table.add_column("")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for index in (0, 1):
        if index:
            table.add_section()
        for name in counts["train"][index]:
            table.add_row(name, *(str(counts[split][index][name]) for split in SPLITS))
    stdout = console()
    stdout.print(f"images: {paths.images}")
    for split in SPLITS:
        stdout.print(f"{split}: {files[split]}")
    stdout.print(table)


def check(
    ann: Annotated[Path, typer.Option("--ann", help="COCO instance JSON to validate.")],
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Image folder (default: guessed beside the JSON)."),
    ] = None,
    decode: Annotated[
        bool,
        typer.Option(
            "--decode",
            help="Decode every image (about 30-60x slower): without it only headers are read, "
            "and a truncated or corrupt file passes.",
        ),
    ] = False,
) -> None:
    """Validate a COCO file and its images; exit 1 if any record is invalid."""
    coco = load_coco(ann, images, skip_invalid=True, check_images="decode" if decode else "exists")
    stdout = console()
    stdout.print(_summary(coco, decoded=decode))
    for defect in coco.defects[:MAX_PRINTED_DEFECTS]:
        stdout.print(f"  {defect}", markup=False, highlight=False)
    if len(coco.defects) > MAX_PRINTED_DEFECTS:
        stdout.print(f"  … and {len(coco.defects) - MAX_PRINTED_DEFECTS} more")
    if coco.defects:
        raise typer.Exit(code=1)


def _summary(coco: CocoDataset, *, decoded: bool) -> Table:
    table = Table(title=str(coco.source), show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("image root", str(coco.image_root))
    table.add_row("images", f"{len(coco.images)} valid, {coco.dropped['images']} dropped")
    table.add_row(
        "annotations", f"{len(coco.annotations)} valid, {coco.dropped['annotations']} dropped"
    )
    table.add_row("classes", str(len(coco.categories)))
    table.add_row(
        "pixels",
        "decoded" if decoded else "[yellow]not decoded[/]: truncated or corrupt files pass; add --decode",
    )
    table.add_row("defects", f"[red]{len(coco.defects)}[/]" if coco.defects else "[green]0[/]")
    return table


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Make and validate COCO data sets.", no_args_is_help=True)
    data_app.command("synth")(synth)
    data_app.command("check")(check)
    app.add_typer(data_app, name="data")
