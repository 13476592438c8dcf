"""`ssodkit evaluate`: COCO box metrics of a results file or of a checkpoint."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ssodkit.cli.output import console
from ssodkit.errors import SsodkitError


class BackendName(str, enum.Enum):
    auto = "auto"
    faster_coco_eval = "faster_coco_eval"
    pycocotools = "pycocotools"


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


def evaluate(
    ann: Annotated[Path, typer.Option("--ann", help="Ground-truth COCO JSON.")],
    predictions: Annotated[
        Path | None, typer.Option("--predictions", help="COCO results JSON to score.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Checkpoint to run on the images and score.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="Image root folder (for --checkpoint).")
    ] = None,
    backend: Annotated[
        BackendName, typer.Option("--backend", help="COCO evaluator; auto prefers faster_coco_eval.")
    ] = BackendName.auto,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the metrics JSON here (and, with --checkpoint, the results)."),
    ] = None,
    per_class: Annotated[bool, typer.Option("--per-class/--no-per-class", help="Show AP per class.")] = True,
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="With --checkpoint: auto (best.pt's better model, else the teacher, else the student), "
            "teacher or student.",
        ),
    ] = "auto",
) -> None:
    """Score detections with the COCO box metrics (AP, AP50, AP75, APs/m/l, AR)."""
    if (predictions is None) == (checkpoint is None):
        raise SsodkitError("give exactly one of --predictions PATH or --checkpoint PATH")
    used = None
    if predictions is not None:
        from ssodkit.evaluation.coco_eval import evaluate_results_file

        result = evaluate_results_file(ann, predictions, backend=backend.value, out=out)
        source = predictions.name
    else:
        from ssodkit.engine.predict import evaluate_checkpoint
        from ssodkit.engine.runtime import WEIGHTS
        from ssodkit.errors import unknown_name

        if weights not in WEIGHTS:
            raise unknown_name("weights", weights, WEIGHTS)
        scored = evaluate_checkpoint(
            checkpoint=checkpoint, ann=ann, images=images, backend=backend.value, out=out, weights=weights
        )
        result, source = scored.result, checkpoint.name
        used = scored.weights + (f" ({scored.note})" if scored.note else "")
    _show(result, f"COCO bbox: {source}", per_class=per_class, weights=used)


def _show(result: Any, title: str, *, per_class: bool, weights: str | None = None) -> None:
    from ssodkit.cli.tables import per_class_table, results_table

    stdout = console()
    stdout.print(results_table(result, title))
    stdout.print(
        f"{result.num_images} images, {result.num_detections} detections, backend {result.backend}"
    )
    if weights is not None:
        stdout.print(f"weights: {weights}", markup=False)
    if per_class and result.per_class:
        stdout.print(per_class_table(result))
