"""`ssodkit pseudolabel`: pseudo-labels of a checkpoint on unlabeled images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ssodkit.cli.output import console

MAX_LISTED_SKIPS = 5

HELP = """Pseudo-label unlabeled images with a trained checkpoint, for offline self-training.

Runs the model a best.pt records as the better of teacher and student at the evaluation
that saved it, else the checkpoint's teacher, else its student (--weights teacher or student
chooses), on the eval view of the checkpoint's config, keeps detections with score >
--score-thr and writes them with boxes in original-image pixels.

Examples:
  ssodkit pseudolabel --checkpoint runs/mt/checkpoints/best.pt \\
      --images data/unlabeled/ --out pseudo/unlabeled.results.json
  ssodkit pseudolabel --checkpoint best.pt --images annotations/unlabeled.json \\
      --image-root images/ --format coco --score-thr 0.7 --out pseudo/train_pl.json

--images is a folder (searched recursively; ids 1..N in sorted path order) or a COCO JSON
(its annotations are ignored, its image ids and file names kept).

--format results: a COCO results list of {image_id, category_id, bbox (x, y, w, h), score}.
--format coco:    a COCO dataset: the input images, the checkpoint's categories (original
                  ids), annotations = pseudo boxes (ids 1..N, area, iscrowd 0, score);
                  train on it with the image root printed at the end.

Images that cannot be read are skipped, reported, and listed in <out stem>.skipped.json.
"""


def register(app: typer.Typer) -> None:
    app.command("pseudolabel", help=HELP)(pseudolabel)


def pseudolabel(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint (.pt) to predict with.")],
    images: Annotated[
        Path, typer.Option("--images", help="Folder of images, or a COCO JSON (annotations ignored).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output JSON (folders are created).")],
    score_thr: Annotated[
        float, typer.Option("--score-thr", help="Keep detections with score > this (0..1), the rule training uses.")
    ] = 0.5,
    fmt: Annotated[str, typer.Option("--format", help="results (COCO results list) or coco (COCO dataset).")] = "results",
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="auto (best.pt's better model, else the teacher), teacher (falls back to student if absent) "
            "or student.",
        ),
    ] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="Image folder of a COCO JSON --images.")
    ] = None,
) -> None:
    from ssodkit.engine import pseudolabel as pl

    pl.check_options(score_thr=score_thr, fmt=fmt, weights=weights, batch_size=batch_size)
    pl.check_out(out, images, checkpoint)  # fail before inference, not after
    result = pl.pseudolabel(
        checkpoint, images, score_thr=score_thr, fmt=fmt, weights=weights,
        batch_size=batch_size, device=device, image_root=image_root, progress=True,
    )
    path = pl.write(result, out)

    stdout = console(highlight=False)
    if result.teacher_missing:
        stdout.print(f"weights: student ({escape(checkpoint.name)} has no teacher)")
    else:
        note = f" ({result.weights_note})" if result.weights_note else ""
        stdout.print(f"weights: {result.weights}{escape(note)}")
    n_boxes = len(result.entries)
    stdout.print(
        f"pseudo-labelled {result.n_predicted}/{result.n_images} images: {n_boxes} boxes "
        f"with score > {score_thr:g} ({n_boxes / max(result.n_predicted, 1):.2f} per image)"
    )
    stdout.print(f"wrote {escape(str(path))} (format {result.fmt})")
    if result.fmt == "coco":
        stdout.print(f"image root: {escape(str(result.image_root))}")
    if result.skipped:
        err = console(stderr=True, highlight=False)
        n = len(result.skipped)
        listed = "; ".join(f"{s.name} ({s.reason})" for s in result.skipped[:MAX_LISTED_SKIPS])
        more = f"; … and {n - MAX_LISTED_SKIPS} more" if n > MAX_LISTED_SKIPS else ""
        err.print(
            f"warning: skipped {n} unreadable image{'s' if n != 1 else ''}: {escape(listed)}{more} "
            f"(list in {escape(str(pl.skipped_path(path)))})"
        )
