"""`ssodkit mix`: MixPL's Pseudo Mixup / Pseudo Mosaic, offline, for a look at the data.

The command parses its flags, calls `ssodkit.engine.mix.mix_to_disk` (which a Python user can
call directly, or its steps) and prints a progress bar and a summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

HELP = """Mix images with their pseudo labels as MixPL does during training, and save them.

Makes --n mixed images from random pairs (--mode mixup: the second image is resized to
fit the first, maybe mirrored, both placed at random offsets, pixels 0.5·a + 0.5·b) or
random quadruples (--mode mosaic: each image's longer side uniform in --mosaic-size,
tiled 2x2 around the canvas centre). The score threshold is applied after mixing, as in
MixPL: boxes with score > --score-thr are kept.

Examples:
  ssodkit mix --images data/unlabeled/ --pseudo pseudo.results.json --mode mixup \\
      --n 16 --out mixed/ --draw
  ssodkit mix --images annotations/unlabeled.json --image-root images/ \\
      --pseudo pseudo.json --mode mosaic --n 8 --mosaic-size 200 320 --out mosaic/

--images is a folder (searched recursively; ids 1..N in sorted path order, as
`ssodkit pseudolabel` numbers them) or a COCO JSON (annotations ignored).
--pseudo is a COCO results list [{image_id, category_id, bbox (x, y, w, h), score}].

Categories (names and the ids allowed in --pseudo) come from --categories (any COCO JSON
with a "categories" list) if given, else from --images when it is a COCO JSON with
categories, else from the category ids found in --pseudo, named class_<id>.

Writes OUT/images/mix_*.png, OUT/mixed.json (a COCO dataset: the mixed images, one
annotation per kept box with the input's category id, area, iscrowd 0 and score; each image
lists its sources under "mix_sources") and, with --draw, OUT/drawn/mix_*.png with the
boxes and labels rendered. Default --mosaic-size: half to all of the median longer side of
the input images.
"""


def register(app: typer.Typer) -> None:
    app.command("mix", help=HELP)(mix)


def mix(
    images: Annotated[
        Path, typer.Option("--images", help="Folder of images, or a COCO JSON (annotations ignored).")
    ],
    pseudo: Annotated[Path, typer.Option("--pseudo", help="Pseudo labels: a COCO results JSON.")],
    mode: Annotated[str, typer.Option("--mode", help="mixup or mosaic.")],
    n: Annotated[int, typer.Option("--n", help="Number of mixed images to make.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (created).")],
    score_thr: Annotated[
        float, typer.Option("--score-thr", help="After mixing, keep boxes with score > this (0..1).")
    ] = 0.5,
    draw: Annotated[bool, typer.Option("--draw", help="Also write OUT/drawn/ with boxes rendered.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the image choice and the mixing.")] = 0,
    mosaic_size: Annotated[
        tuple[int, int] | None,
        typer.Option("--mosaic-size", help="MIN MAX longer side of each mosaic tile, pixels."),
    ] = None,
    categories: Annotated[
        Path | None, typer.Option("--categories", help="COCO JSON whose categories to use.")
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="Image folder of a COCO JSON --images.")
    ] = None,
) -> None:
    from ssodkit.engine.mix import mix_to_disk

    console = Console(stderr=True)
    with Progress(console=console, disable=not console.is_terminal, transient=True) as progress:
        task = progress.add_task(f"{mode}", total=n, visible=False)  # shown once inputs are read
        summary = mix_to_disk(
            images, pseudo, out, mode=mode, n=n, score_thr=score_thr, draw=draw, seed=seed,
            mosaic_size=mosaic_size, categories=categories, image_root=image_root,
            on_start=lambda: progress.update(task, visible=True),
            on_image=lambda: progress.advance(task),
        )
    report = Console(highlight=False, soft_wrap=True)
    report.print(
        f"wrote {summary.n_images} {mode} images with {summary.n_boxes} boxes "
        f"(score > {score_thr:g}; {summary.n_empty} without any) to {escape(str(out))}"
    )
    report.print(f"categories: {escape(summary.category_source)}")
    report.print(f"image root: {escape(str(out / 'images'))}")
