"""Pseudo-labels against hidden ground truth: how many, how large, which classes, how right.

A pseudo-label set helps or hurts through four things this module measures separately:
its volume (boxes per image against GT), its size profile (small objects get low teacher
scores, so a global threshold starves them — MixPL, Table 2), its class profile (tail classes
are found last) and its precision/recall as the score threshold moves (SED's analysis).

Definitions, chosen to agree with pycocotools' COCOeval so that the numbers line up with AP:
- *pseudo boxes* are the detections with `score > score_thr` (the pseudo-labeler's rule); *GT boxes* are the non-crowd
  annotations.
- Matching is COCOeval's greedy matching, per image and class, detections in descending
  score order (stable for ties): a detection takes the unmatched non-crowd GT with the
  highest IoU ≥ the threshold (the last one of equal IoU, as COCOeval); failing that, if it
  overlaps a crowd region by ≥ the threshold (intersection over the *detection's* area) it is
  ignored — neither TP nor FP; otherwise it is a FP. Unlike COCOeval, detections are not
  capped at 100 per image: a pseudo-label set is used whole.
- Because greedy matching of a higher-scored detection never depends on lower-scored ones,
  the TP/FP flags of one matching of all detections give the counts at every score
  threshold: `TP(s)` = flagged TPs with score > s.
- Size buckets use `ssodkit.data.coco.size_bucket` (small < 32², medium < 96², large) on the
  area COCOeval uses: box `w·h` for detections, the annotation's `area` for GT (box `w·h`
  when absent). Note that COCOeval's own ranges include both ends, so it counts an object of
  area exactly 32² as small *and* medium; here every object is in exactly one bucket.
- Precision is None without pseudo boxes, recall None without GT, F1 = 2TP / (2TP + FP + FN)
  None when both are absent. The F1-best threshold is the lowest of equally good ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from ssodkit.data.coco import CocoDataset
from ssodkit.pseudo.filters import above_threshold
from ssodkit.pseudo.quality import (  # noqa: F401 - box_iou, match_detections, pseudo_label_quality: public here too
    FP,
    IGNORED,
    TP,
    BoxSet,
    Catalog,
    box_iou,
    check_iou,
    check_thresholds,
    match_all,
    match_detections,
    pseudo_label_quality,
    read_detections,
    read_gt,
    subset_boxes,
)

COCO_IOUS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
SCORE_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
SIZE_BUCKETS: tuple[str, ...] = ("small", "medium", "large")
_SIZE_EDGES = np.array([32.0**2, 96.0**2])  # bucket = number of edges ≤ area



# --------------------------------------------------------------------------- results model
class OperatingPoint(BaseModel):
    """Pseudo boxes at one score threshold and IoU, against the GT boxes."""

    threshold: float
    tp: int
    fp: int
    fn: int
    ignored: int  # detections on crowd regions
    precision: float | None
    recall: float | None
    f1: float | None


class ThresholdSweep(BaseModel):
    """All classes together, one point per score threshold, at one IoU."""

    iou: float
    points: list[OperatingPoint]


class SizeBucketStats(BaseModel):
    bucket: Literal["small", "medium", "large"]
    pseudo: int
    gt: int
    mean_score: float | None  # of the pseudo boxes in the bucket


class ClassStats(BaseModel):
    name: str
    category_id: int
    pseudo: int
    gt: int
    at_score_thr: OperatingPoint  # at the stats' IoU
    best_f1: OperatingPoint | None  # the swept threshold with the highest F1 at that IoU


class ImageCount(BaseModel):
    image_id: int
    file_name: str
    pseudo: int
    gt: int


class ImageSummary(BaseModel):
    """The per-image table in a few numbers, plus the images that stand out."""

    mean_pseudo: float | None
    median_pseudo: float | None
    mean_gt: float | None
    median_gt: float | None
    no_pseudo: int
    no_gt: int
    missed: int  # images with GT but no pseudo box: they train as background
    hallucinated: int  # images with pseudo boxes but no GT
    over_labelled: list[ImageCount]  # most pseudo boxes beyond the GT count first
    under_labelled: list[ImageCount]  # most GT boxes beyond the pseudo count first


class PseudoStats(BaseModel):
    score_thr: float
    iou: float
    num_images: int
    num_detections: int  # in the results, at any score
    num_pseudo: int
    num_gt: int
    num_crowd: int
    at_score_thr: OperatingPoint
    best_f1: OperatingPoint | None
    images: ImageSummary
    per_image: list[ImageCount]
    sizes: list[SizeBucketStats]
    classes: list[ClassStats]  # most GT boxes first (head to tail)
    sweeps: list[ThresholdSweep]  # one per IoU, ascending


# --------------------------------------------------------------------------- counting
def _tally(
    dets: BoxSet, outcome: np.ndarray, thresholds: np.ndarray, n_classes: int
) -> dict[int, np.ndarray]:
    """Per outcome, `int64 [K, S]`: detections of class k with score > thresholds[s] (the
    pseudo-labeler's rule).

    One histogram over (class, number of thresholds reached) and a reverse cumulative sum,
    instead of one pass over the detections per threshold.
    """
    reached = np.searchsorted(thresholds, dets.flag, side="left")  # thresholds strictly below
    width = len(thresholds) + 1
    counts = {}
    for kind in (TP, FP, IGNORED):
        sel = outcome == kind
        flat = dets.label[sel] * width + reached[sel]
        hist = np.bincount(flat, minlength=n_classes * width).reshape(n_classes, width)
        counts[kind] = hist[:, ::-1].cumsum(axis=1)[:, ::-1][:, 1:]
    return counts


def _point(threshold: float, tp: int, fp: int, ignored: int, n_gt: int) -> OperatingPoint:
    fn = n_gt - tp
    return OperatingPoint(
        threshold=threshold,
        tp=tp,
        fp=fp,
        fn=fn,
        ignored=ignored,
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / n_gt if n_gt else None,
        f1=2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None,
    )


def _points(
    counts: dict[int, np.ndarray], thresholds: np.ndarray, n_gt: int
) -> list[OperatingPoint]:
    """Points of one row of `_tally`'s counts (a class, or the sum over classes)."""
    return [
        _point(float(t), int(counts[TP][j]), int(counts[FP][j]), int(counts[IGNORED][j]), n_gt)
        for j, t in enumerate(thresholds)
    ]


def best_f1(points: Sequence[OperatingPoint]) -> OperatingPoint | None:
    """The point with the highest F1; the lowest threshold among equals; None if no F1."""
    scored = [p for p in points if p.f1 is not None]
    return max(scored, key=lambda p: (p.f1, -p.threshold)) if scored else None


def _row(counts: dict[int, np.ndarray], k: int | None) -> dict[int, np.ndarray]:
    """Class k's counts, or the sum over classes for None."""
    return {kind: c.sum(axis=0) if k is None else c[k] for kind, c in counts.items()}


# --------------------------------------------------------------------------- summaries
def _image_summary(per_image: list[ImageCount], top_k: int) -> ImageSummary:
    pseudo = np.array([c.pseudo for c in per_image], dtype=np.float64)
    gt = np.array([c.gt for c in per_image], dtype=np.float64)
    excess = pseudo - gt

    def top(sign: float) -> list[ImageCount]:
        order = np.argsort(-sign * excess, kind="stable")
        return [per_image[i] for i in order[:top_k] if sign * excess[i] > 0]

    def stat(fn: Any, values: np.ndarray) -> float | None:
        return float(fn(values)) if len(values) else None

    return ImageSummary(
        mean_pseudo=stat(np.mean, pseudo),
        median_pseudo=stat(np.median, pseudo),
        mean_gt=stat(np.mean, gt),
        median_gt=stat(np.median, gt),
        no_pseudo=int((pseudo == 0).sum()),
        no_gt=int((gt == 0).sum()),
        missed=int(((pseudo == 0) & (gt > 0)).sum()),
        hallucinated=int(((pseudo > 0) & (gt == 0)).sum()),
        over_labelled=top(1.0),
        under_labelled=top(-1.0),
    )


def _size_stats(gt: BoxSet, dets: BoxSet) -> list[SizeBucketStats]:
    """Pseudo vs GT per bucket; `dets` are the pseudo boxes, `gt` the non-crowd GT."""
    det_bucket = np.searchsorted(_SIZE_EDGES, dets.area, side="right")
    gt_bucket = np.searchsorted(_SIZE_EDGES, gt.area, side="right")
    out = []
    for b, name in enumerate(SIZE_BUCKETS):
        scores = dets.flag[det_bucket == b]
        stats = SizeBucketStats(
            bucket=name,  # type: ignore[arg-type]
            pseudo=len(scores),
            gt=int((gt_bucket == b).sum()),
            mean_score=float(scores.mean()) if len(scores) else None,
        )
        out.append(stats)
    return out


def _per_image(catalog: Catalog, pseudo: BoxSet, gt: BoxSet) -> list[ImageCount]:
    n_images = len(catalog.image_ids)
    n_pseudo = np.bincount(pseudo.image, minlength=n_images)
    n_gt = np.bincount(gt.image, minlength=n_images)
    return [
        ImageCount(image_id=i, file_name=name, pseudo=int(p), gt=int(g))
        for i, name, p, g in zip(catalog.image_ids, catalog.file_names, n_pseudo, n_gt, strict=True)
    ]


def _class_stats(
    catalog: Catalog,
    gt: BoxSet,
    pseudo: BoxSet,
    score_thr: float,
    at_thr: dict[int, np.ndarray],
    swept: dict[int, np.ndarray],
    thresholds: np.ndarray,
) -> list[ClassStats]:
    """Per class, most GT boxes first: the head-vs-tail view of the pseudo-labels."""
    n_classes = len(catalog.cat_ids)
    gt_per_class = np.bincount(gt.label, minlength=n_classes)
    pseudo_per_class = np.bincount(pseudo.label, minlength=n_classes)
    out = []
    for k in sorted(range(n_classes), key=lambda k: (-gt_per_class[k], k)):
        n_gt = int(gt_per_class[k])
        stats = ClassStats(
            name=catalog.class_names[k],
            category_id=catalog.cat_ids[k],
            pseudo=int(pseudo_per_class[k]),
            gt=n_gt,
            at_score_thr=_points(_row(at_thr, k), np.array([score_thr]), n_gt)[0],
            best_f1=best_f1(_points(_row(swept, k), thresholds, n_gt)),
        )
        out.append(stats)
    return out


# --------------------------------------------------------------------------- public API
def compute_pseudo_stats(
    gt: CocoDataset | Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    score_thr: float = 0.5,
    iou: float = 0.5,
    score_thresholds: Sequence[float] = SCORE_THRESHOLDS,
    iou_thresholds: Sequence[float] = COCO_IOUS,
    image_ids: Iterable[int] | None = None,
    top_k: int = 5,
) -> PseudoStats:
    """Everything `ssodkit stats pseudo` shows, for `results` (COCO results entries) on `gt`.

    Counts, sizes, classes and `at_score_thr` use the detections with score > `score_thr`;
    the sweeps use all of them, at every score threshold and at each IoU of
    `iou_thresholds` plus `iou` (the IoU of the per-class and F1-best figures).
    `image_ids` restricts the GT to the images the pseudo-labels were made for, so that
    recall does not count GT of images never labelled; detections elsewhere raise DataError.
    """
    check_iou(iou)
    check_thresholds("score threshold", [score_thr])
    check_thresholds("score thresholds", score_thresholds)
    check_thresholds("IoU thresholds", iou_thresholds)
    catalog, gt_boxes = read_gt(gt, image_ids)
    dets = read_detections(results, catalog)
    ious = np.array(sorted({*iou_thresholds, iou}))
    thresholds = np.array(sorted(set(score_thresholds)))
    outcome = match_all(gt_boxes, dets, ious)
    main = int(np.flatnonzero(ious == iou)[0])
    n_classes = len(catalog.cat_ids)

    real_gt = subset_boxes(gt_boxes, ~gt_boxes.flag)
    pseudo = subset_boxes(dets, above_threshold(dets.flag, score_thr))
    at_thr = _tally(dets, outcome[main], np.array([score_thr]), n_classes)
    swept = [_tally(dets, outcome[t], thresholds, n_classes) for t in range(len(ious))]
    sweeps = [
        ThresholdSweep(iou=float(t), points=_points(_row(c, None), thresholds, len(real_gt.label)))
        for t, c in zip(ious, swept, strict=True)
    ]
    per_image = _per_image(catalog, pseudo, real_gt)
    return PseudoStats(
        score_thr=score_thr,
        iou=iou,
        num_images=len(catalog.image_ids),
        num_detections=len(dets.flag),
        num_pseudo=len(pseudo.flag),
        num_gt=len(real_gt.label),
        num_crowd=int(gt_boxes.flag.sum()),
        at_score_thr=_points(_row(at_thr, None), np.array([score_thr]), len(real_gt.label))[0],
        best_f1=best_f1(sweeps[main].points),
        images=_image_summary(per_image, top_k),
        per_image=per_image,
        sizes=_size_stats(real_gt, pseudo),
        classes=_class_stats(catalog, real_gt, pseudo, score_thr, at_thr, swept[main], thresholds),
        sweeps=sweeps,
    )


