"""Per-class pseudo-label thresholds calibrated on labeled images for a target precision.

A teacher's scores mean different things per class: a head class may be right 90 % of the
time at τ = 0.3 and a confusable tail class 60 % at τ = 0.7. Run on images whose labels
are known (the run's labeled split), the teacher's detections give, per class c, the
precision of its pseudo-labels at every τ; `calibrate_thresholds` picks

    τ_c = the lowest τ ≥ 0 at which class c's pseudo boxes (score > τ, the pseudo-labeler's
          one rule `above_threshold`) have precision ≥ the target at IoU 0.5,

with TP/FP from `ssodkit.pseudo.quality`'s COCOeval matching (a detection on a crowd region
is neither). Precision only changes where τ passes a detection's score, so the candidates
are 0 and the class's scores; τ_c = a score s means boxes scoring exactly s are left out.
Precision need not rise with τ: the *lowest* τ meeting the target is taken, as asked.

Fallbacks, each named in the table and in the YAML comments:
- `few_boxes`: the class has fewer than `min_boxes` GT boxes on these images → the global τ;
- `no_detections`: the teacher gave no box of the class → the global τ;
- `unreachable`: precision stays below the target at every τ that keeps a box → the class's
  highest score, the lowest τ whose pseudo boxes (none, on these images) are not below it —
  or the global τ if that is higher: a class the teacher cannot name reliably never gets a
  more permissive τ than the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel

from ssodkit.data.coco import CocoDataset
from ssodkit.errors import ConfigError
from ssodkit.pseudo.filters import above_threshold
from ssodkit.pseudo.quality import (
    FP,
    TP,
    check_iou,
    check_thresholds,
    match_all,
    read_detections,
    read_gt,
)

DEFAULT_PRECISION = 0.8
DEFAULT_MIN_BOXES = 10
Status = Literal["calibrated", "unreachable", "few_boxes", "no_detections"]


class ClassThreshold(BaseModel):
    name: str
    category_id: int
    gt: int  # non-crowd GT boxes of the class on the calibration images
    detections: int  # the teacher's boxes of the class, any score
    threshold: float  # τ_c written to the snippet
    status: Status
    kept: int  # pseudo boxes at τ_c (score > τ_c)
    precision: float | None  # at τ_c; None without pseudo boxes
    recall: float | None  # at τ_c; None without GT


class Calibration(BaseModel):
    target_precision: float
    iou: float
    min_boxes: int
    global_thr: float  # the fallback τ
    num_images: int
    classes: list[ClassThreshold]  # in category id order
    checkpoint: str | None = None
    weights: str | None = None
    source: str | None = None  # the labeled COCO file
    global_thr_from: str | None = None  # where the global τ came from, in words

    @property
    def class_score_thr(self) -> dict[str, float]:
        return {c.name: c.threshold for c in self.classes}


def check_calibration_args(precision: float, min_boxes: int) -> None:
    if not 0.0 < precision <= 1.0:
        raise ConfigError(f"--precision {precision:g}: must be in (0, 1]")
    if min_boxes < 1:
        raise ConfigError(f"--min-boxes {min_boxes}: must be at least 1")


def _class_threshold(
    scores: np.ndarray, outcome: np.ndarray, target: float
) -> tuple[float, Status, int, int, int]:
    """(τ, status, kept, TP, FP) for one class; `scores` descending, `outcome` TP/FP/IGNORED."""
    candidates = np.unique(np.concatenate([[0.0], scores]))  # ascending
    ascending = scores[::-1]
    cum_tp = np.concatenate([[0], np.cumsum(outcome == TP)])
    cum_fp = np.concatenate([[0], np.cumsum(outcome == FP)])
    for tau in candidates:
        kept = len(scores) - int(np.searchsorted(ascending, tau, side="right"))  # score > τ
        tp, fp = int(cum_tp[kept]), int(cum_fp[kept])
        if tp + fp and tp / (tp + fp) >= target:
            return float(tau), "calibrated", kept, tp, fp
    return float(scores[0]), "unreachable", 0, 0, 0


def calibrate_thresholds(
    gt: CocoDataset | Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    precision: float = DEFAULT_PRECISION,
    global_thr: float = 0.5,
    min_boxes: int = DEFAULT_MIN_BOXES,
    iou: float = 0.5,
    image_ids: Iterable[int] | None = None,
) -> Calibration:
    """Per-class τ_c for pseudo-label `precision` of `results` (COCO results entries of a
    teacher on labeled images) against `gt`; see the module docstring for the rule and the
    fallbacks. `image_ids` restricts the GT to the images that were predicted."""
    check_calibration_args(precision, min_boxes)
    check_thresholds("score threshold", [global_thr])
    check_iou(iou)
    catalog, gt_boxes = read_gt(gt, image_ids)
    dets = read_detections(results, catalog)  # descending score
    outcome = match_all(gt_boxes, dets, np.array([iou]))[0]
    real = ~gt_boxes.flag.astype(bool)
    classes = []
    for k, (cat_id, name) in enumerate(zip(catalog.cat_ids, catalog.class_names, strict=True)):
        n_gt = int((real & (gt_boxes.label == k)).sum())
        mine = dets.label == k
        scores, flags = dets.flag[mine], outcome[mine]
        if n_gt < min_boxes or not len(scores):
            tau, status = global_thr, "few_boxes" if n_gt < min_boxes else "no_detections"
            kept_mask = above_threshold(scores, tau)
            kept = int(kept_mask.sum())
            tp, fp = int((flags[kept_mask] == TP).sum()), int((flags[kept_mask] == FP).sum())
        else:
            tau, status, kept, tp, fp = _class_threshold(scores, flags, precision)
            if status == "unreachable":
                tau = max(tau, global_thr)
        classes.append(
            ClassThreshold(
                name=name, category_id=cat_id, gt=n_gt, detections=len(scores), threshold=tau,
                status=status, kept=kept,
                precision=tp / (tp + fp) if tp + fp else None,
                recall=tp / n_gt if n_gt else None,
            )
        )
    return Calibration(
        target_precision=precision, iou=iou, min_boxes=min_boxes, global_thr=global_thr,
        num_images=len(catalog.image_ids), classes=classes,
    )


def status_note(c: ClassThreshold, cal: Calibration) -> str:
    """Why a class got its τ, in a few words (the table's and the YAML comments' wording)."""
    if c.status == "few_boxes":
        return f"global τ: {c.gt} GT boxes < --min-boxes {cal.min_boxes}"
    if c.status == "no_detections":
        return "global τ: no detection of this class"
    if c.status == "unreachable":
        which = "the global τ, above its highest score" if c.threshold == cal.global_thr else "its highest score"
        return f"precision < {cal.target_precision:g} at every τ: {which} keeps none of these boxes"
    return f"lowest τ with precision ≥ {cal.target_precision:g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def calibration_yaml(cal: Calibration) -> str:
    """`method: {class_score_thr: {name: τ_c}}` with comments saying how each τ_c was found;
    τ values are written exactly (a τ_c equal to a detection's score must stay that score)."""
    lines = [
        f"# ssodkit stats pseudo --calibrate: per-class τ for pseudo-label precision ≥ "
        f"{cal.target_precision:g} at IoU {cal.iou:g} (score > τ)",
        f"# on {cal.num_images} labeled images"
        + (f" of {cal.source}" if cal.source else "")
        + (f"; {cal.weights} of {cal.checkpoint}" if cal.checkpoint else ""),
        f"# global τ {cal.global_thr:g}"
        + (f" ({cal.global_thr_from})" if cal.global_thr_from else "")
        + f" for classes with fewer than {cal.min_boxes} GT boxes or no detection",
        "# include it after the recipe: `_base_: [recipe.yaml, this.yaml]`",
        "method:",
        "  class_score_thr:",
    ]
    for c in cal.classes:
        entry = yaml.safe_dump({c.name: c.threshold}, allow_unicode=True, width=1_000_000).strip()
        facts = f"P {_pct(c.precision)}, R {_pct(c.recall)}, {c.kept} of {c.detections} boxes, {c.gt} GT"
        note = " ".join(f"{status_note(c, cal)}; {facts}".splitlines())
        lines.append(f"    {entry}  # {note}")
    return "\n".join(lines) + "\n"


def write_calibration(cal: Calibration, out: str | os.PathLike[str]) -> Path:
    from ssodkit.io import write_text_atomic

    return write_text_atomic(out, calibration_yaml(cal))


def calibrate_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    ann: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    precision: float = DEFAULT_PRECISION,
    min_boxes: int = DEFAULT_MIN_BOXES,
    global_thr: float | None = None,
    iou: float = 0.5,
    weights: str = "teacher",
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = False,
) -> Calibration:
    """Run a checkpoint's teacher (its student if it has none) on labeled images and
    calibrate per-class τ on its detections.

    `checkpoint` is a `.pt` file or a run folder (its `checkpoints/best.pt`, else `last.pt`).
    The labeled images are `ann` (+ `images`, its image root), else the run's own labeled
    data: the split saved under `splits/` when it trained on a `labeled_percent` split,
    else its `data.train_ann` (the synthetic train split in synthetic mode). `global_thr`
    defaults to the run's pseudo-label τ (its method's, else the detector's default).
    Unreadable images are skipped with a warning and their GT left out.
    """
    from ssodkit.data.coco import CHECK_REMEDY, load_coco
    from ssodkit.data.datasets import EvalDataset, Guarded, UnreadableImages
    from ssodkit.engine.data_setup import labeled_source
    from ssodkit.engine.predict import check_same_classes, iter_predictions
    from ssodkit.engine.runtime import load_model_from_checkpoint, resolve_device
    from ssodkit.evaluation.coco_eval import detections_to_results
    from ssodkit.pseudo.labeler import run_score_thr
    from ssodkit.views.pipelines import eval_view

    check_calibration_args(precision, min_boxes)
    path, run_dir = resolve_checkpoint(Path(checkpoint))
    dev = resolve_device(device)
    loaded = load_model_from_checkpoint(path, weights=weights, device=dev)
    cfg = loaded.cfg
    if ann is None:
        ann_path, image_root = labeled_source(cfg, run_dir)
        image_root = Path(images) if images is not None else image_root
    else:
        ann_path, image_root = Path(ann), None if images is None else Path(images)
    coco = load_coco(ann_path, image_root, check_images="exists", remedy=CHECK_REMEDY)
    check_same_classes(loaded.classes, coco.class_names, path, ann_path)
    thr = run_score_thr(cfg, loaded.model, global_thr)
    dataset = Guarded(EvalDataset(coco, eval_view(cfg.views)), UnreadableImages().record)
    results: list[dict[str, Any]] = []
    done: list[int] = []
    for sample, det in iter_predictions(loaded.model, dataset, batch_size=batch_size, device=dev, progress=progress):
        results += detections_to_results(
            sample["image_id"], det.boxes, det.scores, det.labels, loaded.index_to_cat_id
        )
        done.append(int(sample["image_id"]))
    cal = calibrate_thresholds(
        coco, results, precision=precision, global_thr=thr, min_boxes=min_boxes, iou=iou, image_ids=done
    )
    return cal.model_copy(
        update={
            "checkpoint": str(path), "weights": loaded.weights, "source": str(ann_path),
            "global_thr_from": "given" if global_thr is not None else "the run's pseudo-label τ",
        }
    )


def resolve_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run folder or None) of a `.pt` file or a run folder."""
    from ssodkit.errors import SsodkitError

    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name, path
        raise SsodkitError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt in this run folder")
    if not path.is_file():
        raise SsodkitError(f"{path}: checkpoint not found")
    return path, path.parent.parent if path.parent.name == "checkpoints" else None
