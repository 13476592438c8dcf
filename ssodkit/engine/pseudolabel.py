"""Pseudo-labels for offline self-training: run a checkpoint over unlabeled images.

`pseudolabel()` predicts with the checkpoint's inference weights (best.pt's better model,
else the teacher, else the student; or the ones asked for) on the
eval view of the checkpoint's config, keeps the detections scoring above `score_thr`, and
maps them back to original-image pixels. `write()` stores them as a COCO *results* list or
as a COCO *dataset* whose annotations are the pseudo boxes (loadable with `load_coco`).

Images that cannot be read (missing, corrupt, header size ≠ JSON size) never abort a run:
they are left out and listed in `PseudolabelResult.skipped` (and in a sidecar file).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssodkit.errors import DataError, SsodkitError, unknown_name
from ssodkit.pseudo.filters import above_threshold

FORMATS = ("results", "coco")
WEIGHTS = ("auto", "teacher", "student")  # as `ssodkit.engine.runtime.inference_weights` resolves them


@dataclass(frozen=True)
class SkippedImage:
    """An input image that got no pseudo-labels because it could not be read."""

    image_id: int | None
    file_name: str | None
    reason: str

    @property
    def name(self) -> str:
        return self.file_name or (f"image {self.image_id}" if self.image_id is not None else "?")


@dataclass
class PseudolabelResult:
    """What `pseudolabel()` produced.

    `entries` are COCO results records (`fmt="results"`) or COCO annotation records with
    ids 1..N, `area`, `iscrowd` 0 and `score` (`fmt="coco"`); boxes are xywh in original
    pixels. `images` are the input image records that were predicted (skipped ones left
    out). `weights` is the weights actually used: "student" when the checkpoint has no
    teacher although "teacher" (or "auto") was asked for (`teacher_missing`), or when a
    best.pt records the student as its better model (`weights_note` says so).
    """

    entries: list[dict[str, Any]]
    skipped: list[SkippedImage]
    n_images: int  # input images, skipped ones included
    fmt: str = "results"
    weights: str = "teacher"
    teacher_missing: bool = False
    weights_note: str = ""  # why `weights`, where it was not simply asked for: "best at iter …"
    score_thr: float = 0.5
    images: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)
    image_root: Path | None = None
    checkpoint: Path | None = None
    source: Path | None = None

    @property
    def n_predicted(self) -> int:
        return len(self.images)

    def to_json(self) -> Any:
        """The object `write()` stores: a results list, or a COCO dataset dict."""
        if self.fmt == "results":
            return self.entries
        return {
            "info": {
                "description": "ssodkit pseudo-labels",
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "source": str(self.source) if self.source else None,
                "image_root": str(self.image_root) if self.image_root else None,
                "weights": self.weights,
                "score_thr": self.score_thr,
            },
            "images": self.images,
            "annotations": self.entries,
            "categories": self.categories,
        }


# --------------------------------------------------------------------------- checks
def check_options(*, score_thr: float, fmt: str, weights: str, batch_size: int) -> None:
    """One-line errors for option values, before anything is loaded."""
    if fmt not in FORMATS:
        raise unknown_name("format", fmt, FORMATS)
    if weights not in WEIGHTS:
        raise unknown_name("weights", weights, WEIGHTS)
    if math.isnan(score_thr) or not 0.0 <= score_thr <= 1.0:
        raise SsodkitError(f"--score-thr {score_thr:g}: must be between 0 and 1")
    if batch_size < 1:
        raise SsodkitError(f"--batch-size {batch_size}: must be at least 1")


def skipped_path(out: str | os.PathLike[str]) -> Path:
    """Where the list of skipped images goes: `pseudo.json` → `pseudo.skipped.json`."""
    out = Path(out)
    return out.with_name(f"{out.stem if out.suffix == '.json' else out.name}.skipped.json")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_out(out: str | os.PathLike[str], *inputs: str | os.PathLike[str] | None) -> None:
    """Refuse an output path that would overwrite an input file or is a folder."""
    out = Path(out)
    if out.is_dir():
        raise SsodkitError(f"--out {out}: is a directory; give a JSON file path")
    for target in (out, skipped_path(out)):
        for src in inputs:
            if src is not None and Path(src).is_file() and _same_file(target, Path(src)):
                raise SsodkitError(f"--out {out}: would overwrite the input file {src}; choose another path")


# --------------------------------------------------------------------------- running
def _input_skips(coco: Any) -> list[SkippedImage]:
    """Images `load_unlabeled(skip_invalid=True)` dropped (category defects do not matter:
    the checkpoint's classes are used)."""
    skips = []
    for d in coco.defects:
        if d.record is not None and d.record.startswith(("category", "categories")):
            continue
        skips.append(SkippedImage(d.image_id, d.file_name, d.message))
    return skips


def pseudolabel(
    checkpoint: str | os.PathLike[str],
    images: str | os.PathLike[str],
    *,
    score_thr: float = 0.5,
    fmt: str = "results",
    weights: str = "auto",
    batch_size: int = 8,
    device: str = "auto",
    image_root: str | os.PathLike[str] | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> PseudolabelResult:
    """Pseudo-label `images` (a folder, searched recursively, or a COCO JSON whose
    annotations are ignored) with the model of `checkpoint`.

    Keeps detections with score > `score_thr` (the pseudo-labeler's rule), boxes in original pixels. Unreadable images
    are skipped and listed, never fatal. Raises `SsodkitError` (one line) for bad options,
    a missing checkpoint or a missing images path.
    """
    import torch

    from ssodkit.data.coco import load_unlabeled
    from ssodkit.data.datasets import EvalDataset
    from ssodkit.engine.predict import iter_predictions
    from ssodkit.engine.runtime import resolve_device
    from ssodkit.evaluation.coco_eval import detections_to_results
    from ssodkit.views.pipelines import eval_view

    check_options(score_thr=score_thr, fmt=fmt, weights=weights, batch_size=batch_size)
    checkpoint, images = Path(checkpoint), Path(images)
    if not checkpoint.is_file():
        raise SsodkitError(f"{checkpoint}: checkpoint not found")
    if not images.exists():
        raise DataError(f"{images}: images path not found (give a folder of images or a COCO JSON)")
    try:
        dev = resolve_device(device)
    except SsodkitError as exc:  # its message names the config key; here it is a flag
        raise SsodkitError(str(exc).replace("train.device", "--device", 1)) from None

    coco = load_unlabeled(images, image_root, skip_invalid=True, check_images="exists")
    skipped = _input_skips(coco)
    n_images = len(coco.images) + len(skipped)
    from ssodkit.engine.runtime import load_model_from_checkpoint

    loaded = load_model_from_checkpoint(checkpoint, weights=weights, device=dev)
    model, cfg, classes, cat_ids, used = (
        loaded.model, loaded.cfg, loaded.classes, loaded.index_to_cat_id, loaded.weights
    )
    dataset = EvalDataset(coco, eval_view(cfg.views))

    def on_error(index: int, exc: Exception) -> None:
        image_id = dataset.image_ids[index]
        name = coco.image(image_id).file_name
        reason = str(exc).removeprefix(f"{coco.image_path(image_id)}: ")
        skipped.append(SkippedImage(image_id, name, reason))

    entries: list[dict[str, Any]] = []
    done: list[int] = []
    # inference_mode, not only no_grad: no version counters or view tracking on any tensor
    # (a few % on CPU against a bare loop). Safe here: the model is this call's own, so no
    # inference tensor it caches can reach a later training step.
    with torch.inference_mode():
        for sample, det in iter_predictions(
            model, dataset, batch_size=batch_size, device=dev, num_workers=num_workers,
            progress=progress, on_error=on_error,
        ):
            keep = above_threshold(det.scores, score_thr)
            entries.extend(
                detections_to_results(sample["image_id"], det.boxes[keep], det.scores[keep], det.labels[keep], cat_ids)
            )
            done.append(sample["image_id"])

    predicted = set(done)
    image_records = [
        {"id": img.id, "file_name": img.file_name, "width": img.width, "height": img.height}
        for img in coco.images
        if img.id in predicted
    ]
    if fmt == "coco":
        entries = [
            {"id": i, **r, "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
            for i, r in enumerate(entries, start=1)
        ]
    return PseudolabelResult(
        entries=entries,
        skipped=skipped,
        n_images=n_images,
        fmt=fmt,
        weights=used,
        teacher_missing=weights != "student" and not loaded.has_teacher,
        weights_note=loaded.note,
        score_thr=score_thr,
        images=image_records,
        categories=[{"id": c, "name": n} for c, n in zip(cat_ids, classes, strict=True)],
        image_root=coco.image_root,
        checkpoint=checkpoint,
        source=images,
    )


def write(result: PseudolabelResult, out: str | os.PathLike[str]) -> Path:
    """Write `result.to_json()` to `out` atomically (folders created) and, if images were
    skipped, their list to `skipped_path(out)`; a stale list from an earlier run is removed.
    Refuses to overwrite the input annotation file or the checkpoint."""
    from ssodkit.io import write_json_atomic

    out = Path(out)
    check_out(out, result.source, result.checkpoint)
    write_json_atomic(out, result.to_json(), indent=None)
    side = skipped_path(out)
    if result.skipped:
        write_json_atomic(
            side,
            {
                "source": str(result.source) if result.source else None,
                "skipped": [
                    {"image_id": s.image_id, "file_name": s.file_name, "reason": s.reason}
                    for s in result.skipped
                ],
            },
        )
    elif side.is_file():
        side.unlink()
    return out
