"""Pseudo-labels against hidden ground truth: how many, how large, which classes, how right.

A pseudo-label set helps or hurts through four things this module measures separately:
its volume (boxes per image against GT), its size profile (small objects get low teacher
scores, so a global threshold starves them — MixPL, Table 2), its class profile (tail classes
are found last) and its precision/recall as the score threshold moves (SED's analysis).

Definitions, chosen to agree with pycocotools' COCOeval so that the numbers line up with AP:
- *pseudo boxes* are the detections with `score >= score_thr`; *GT boxes* are the non-crowd
  annotations.
- Matching is COCOeval's greedy matching, per image and class, detections in descending
  score order (stable for ties): a detection takes the unmatched non-crowd GT with the
  highest IoU ≥ the threshold (the last one of equal IoU, as COCOeval); failing that, if it
  overlaps a crowd region by ≥ the threshold (intersection over the *detection's* area) it is
  ignored — neither TP nor FP; otherwise it is a FP. Unlike COCOeval, detections are not
  capped at 100 per image: a pseudo-label set is used whole.
- Because greedy matching of a higher-scored detection never depends on lower-scored ones,
  the TP/FP flags of one matching of all detections give the counts at every score
  threshold: `TP(s)` = flagged TPs with score ≥ s.
- Size buckets use `ssodkit.data.coco.size_bucket` (small < 32², medium < 96², large) on the
  area COCOeval uses: box `w·h` for detections, the annotation's `area` for GT (box `w·h`
  when absent). Note that COCOeval's own ranges include both ends, so it counts an object of
  area exactly 32² as small *and* medium; here every object is in exactly one bucket.
- Precision is None without pseudo boxes, recall None without GT, F1 = 2TP / (2TP + FP + FN)
  None when both are absent. The F1-best threshold is the lowest of equally good ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from ssodkit.data.coco import CocoDataset
from ssodkit.errors import ConfigError, DataError

COCO_IOUS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
SCORE_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
SIZE_BUCKETS: tuple[str, ...] = ("small", "medium", "large")
_SIZE_EDGES = np.array([32.0**2, 96.0**2])  # bucket = number of edges ≤ area

TP, FP, IGNORED = 1, 0, -1


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


# --------------------------------------------------------------------------- flat inputs
@dataclass(frozen=True)
class _Catalog:
    """Images and classes by position; class index = rank of the category id."""

    image_ids: list[int]
    file_names: list[str]
    cat_ids: list[int]
    class_names: list[str]

    def image_positions(self, image_ids: Sequence[int]) -> np.ndarray:
        pos = {image_id: i for i, image_id in enumerate(self.image_ids)}
        return np.array([pos[i] for i in image_ids], dtype=np.int64)


@dataclass(frozen=True)
class _Boxes:
    """Boxes of a whole set as arrays; `flag` is `iscrowd` for GT and the score for detections."""

    image: np.ndarray  # int64 [N], position in the catalog
    label: np.ndarray  # int64 [N], class index
    xywh: np.ndarray  # float64 [N, 4]
    area: np.ndarray  # float64 [N], what the size buckets use
    flag: np.ndarray


def _gt_rows(
    gt: CocoDataset | Mapping[str, Any], image_ids: Iterable[int] | None
) -> tuple[_Catalog, list[tuple[Any, ...]]]:
    """The catalog and (image id, category id, bbox, area, iscrowd) of the GT annotations of
    the chosen images; a `CocoDataset` is indexed by image, so a few images cost little."""
    if isinstance(gt, CocoDataset):
        images = _restrict([(img.id, img.file_name) for img in gt.images], image_ids)
        cats = [(c.id, c.name) for c in gt.categories]
        anns = [
            (a.image_id, a.category_id, a.bbox, a.area, a.iscrowd)
            for image_id, _ in images
            for a in gt.annotations_for(image_id)
        ]
    else:
        try:
            images = _restrict(
                [(int(img["id"]), str(img["file_name"])) for img in gt["images"]], image_ids
            )
            cats = [(int(c["id"]), str(c.get("name", c["id"]))) for c in gt["categories"]]
            kept = {i for i, _ in images}
            anns = [
                (a["image_id"], a["category_id"], a["bbox"], a.get("area"), a.get("iscrowd", 0))
                for a in gt.get("annotations", [])
                if a["image_id"] in kept
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"ground-truth dict is not valid COCO (missing or bad {exc})") from None
    cats.sort()
    catalog = _Catalog(
        [i for i, _ in images], [n for _, n in images], [c for c, _ in cats], [n for _, n in cats]
    )
    return catalog, anns


def _restrict(
    images: list[tuple[int, str]], image_ids: Iterable[int] | None
) -> list[tuple[int, str]]:
    """The (id, file name) of the chosen images in file order; all of them for None."""
    if image_ids is None:
        return images
    wanted = {int(i) for i in image_ids}
    missing = wanted - {i for i, _ in images}
    if missing:
        raise DataError(f"image id(s) {_examples(missing)} are not in the ground truth")
    return [img for img in images if img[0] in wanted]


def _examples(values: Iterable[Any], n: int = 3) -> str:
    ordered = sorted(values, key=repr)
    return ", ".join(map(repr, ordered[:n])) + (", …" if len(ordered) > n else "")


def _boxes(
    catalog: _Catalog,
    rows: Sequence[tuple[Any, ...]],
    *,
    flag: np.ndarray,
    areas: np.ndarray | None = None,
) -> _Boxes:
    """Arrays of rows that start with (image id, category id, bbox); `areas` default to w·h."""
    xywh = np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4)
    index = {c: k for k, c in enumerate(catalog.cat_ids)}
    return _Boxes(
        image=catalog.image_positions([r[0] for r in rows]),
        label=np.array([index[r[1]] for r in rows], dtype=np.int64),
        xywh=xywh,
        area=xywh[:, 2] * xywh[:, 3] if areas is None else areas,
        flag=flag,
    )


def _read_gt(
    gt: CocoDataset | Mapping[str, Any], image_ids: Iterable[int] | None
) -> tuple[_Catalog, _Boxes]:
    catalog, rows = _gt_rows(gt, image_ids)
    known = set(catalog.cat_ids)
    unknown = {r[1] for r in rows if r[1] not in known}
    if unknown:
        raise DataError(f"ground-truth category id(s) {_examples(unknown)} are not declared")
    areas = np.array(
        [r[3] if r[3] is not None else r[2][2] * r[2][3] for r in rows], dtype=np.float64
    )
    crowd = np.array([bool(r[4]) for r in rows], dtype=bool)
    return catalog, _boxes(catalog, rows, flag=crowd, areas=areas)


def _read_detections(results: Sequence[Mapping[str, Any]], catalog: _Catalog) -> _Boxes:
    """Detections sorted by descending score (stable, as COCOeval), checked against the GT."""
    try:
        rows = [(r["image_id"], r["category_id"], r["bbox"], float(r["score"])) for r in results]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"a detection lacks or has a bad {exc}; need image_id, category_id, bbox and score"
        ) from None
    bad_images = {r[0] for r in rows} - set(catalog.image_ids)
    if bad_images:
        raise DataError(
            f"detections on image id(s) {_examples(bad_images)} outside the evaluated "
            "ground-truth images"
        )
    bad_cats = {r[1] for r in rows} - set(catalog.cat_ids)
    if bad_cats:
        raise DataError(
            f"detections of category id(s) {_examples(bad_cats)} that are not in the ground truth"
        )
    scores = np.array([r[3] for r in rows], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    return _boxes(catalog, [rows[i] for i in order], flag=scores[order])


# --------------------------------------------------------------------------- matching
def _groups(boxes: _Boxes) -> dict[tuple[int, int], np.ndarray]:
    """Row indices per (image, class), each in ascending row order (lexsort is stable)."""
    if len(boxes.image) == 0:
        return {}
    order = np.lexsort((boxes.label, boxes.image))
    keys = np.stack([boxes.image[order], boxes.label[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, (np.diff(keys, axis=0) != 0).any(axis=1)])
    ends = np.r_[starts[1:], len(order)]
    return {
        (int(keys[s, 0]), int(keys[s, 1])): order[s:e] for s, e in zip(starts, ends, strict=True)
    }


def box_iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCO's IoU `[D, G]` of xywh boxes. Against a crowd region the union is the detection's
    own area, so a detection inside a crowd of people overlaps it fully however small it is."""
    d1, g1 = dets[:, None, :2], gts[None, :, :2]
    d2, g2 = d1 + dets[:, None, 2:], g1 + gts[None, :, 2:]
    wh = np.clip(np.minimum(d2, g2) - np.maximum(d1, g1), 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    det_area = (dets[:, 2] * dets[:, 3])[:, None]
    union = np.where(crowd[None, :], det_area, det_area + (gts[:, 2] * gts[:, 3])[None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(ious: np.ndarray, crowd: np.ndarray, iou_thrs: np.ndarray) -> np.ndarray:
    """COCOeval's greedy matching of one image and class: `int8 [T, D]` of TP/FP/IGNORED.

    `ious` is `[D, G]` with detections already in descending score order; each GT is taken
    at most once per IoU threshold, crowd regions any number of times (and only when no free
    non-crowd GT qualifies).
    """
    n_thr, (n_det, n_gt) = len(iou_thrs), ious.shape
    outcome = np.full((n_thr, n_det), FP, dtype=np.int8)
    taken = np.zeros((n_thr, n_gt), dtype=bool)
    reach = ious[:, None, :] >= iou_thrs[None, :, None]  # [D, T, G]
    on_crowd = (reach & crowd).any(axis=2)  # [D, T]
    rows = np.arange(n_thr)
    for d in range(n_det):
        free = reach[d] & ~taken & ~crowd
        hit = free.any(axis=1)
        # COCOeval replaces its match on an equal IoU, so the last of equal GT wins
        best = n_gt - 1 - np.where(free, ious[d], -1.0)[:, ::-1].argmax(axis=1)
        taken[rows[hit], best[hit]] = True
        outcome[hit, d] = TP
        outcome[~hit & on_crowd[d], d] = IGNORED
    return outcome


def _match_all(gt: _Boxes, dets: _Boxes, iou_thrs: np.ndarray) -> np.ndarray:
    """Outcome `int8 [T, D]` of every detection; those of a class absent from their image
    stay FP without computing anything."""
    outcome = np.full((len(iou_thrs), len(dets.image)), FP, dtype=np.int8)
    gt_groups = _groups(gt)
    for key, rows in _groups(dets).items():
        g = gt_groups.get(key)
        if g is not None:
            crowd = gt.flag[g]
            ious = box_iou(dets.xywh[rows], gt.xywh[g], crowd)
            outcome[:, rows] = match_detections(ious, crowd, iou_thrs)
    return outcome


# --------------------------------------------------------------------------- counting
def _tally(
    dets: _Boxes, outcome: np.ndarray, thresholds: np.ndarray, n_classes: int
) -> dict[int, np.ndarray]:
    """Per outcome, `int64 [K, S]`: detections of class k with score ≥ thresholds[s].

    One histogram over (class, number of thresholds reached) and a reverse cumulative sum,
    instead of one pass over the detections per threshold.
    """
    reached = np.searchsorted(thresholds, dets.flag, side="right")
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


def _size_stats(gt: _Boxes, dets: _Boxes) -> list[SizeBucketStats]:
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


def _per_image(catalog: _Catalog, pseudo: _Boxes, gt: _Boxes) -> list[ImageCount]:
    n_images = len(catalog.image_ids)
    n_pseudo = np.bincount(pseudo.image, minlength=n_images)
    n_gt = np.bincount(gt.image, minlength=n_images)
    return [
        ImageCount(image_id=i, file_name=name, pseudo=int(p), gt=int(g))
        for i, name, p, g in zip(catalog.image_ids, catalog.file_names, n_pseudo, n_gt, strict=True)
    ]


def _class_stats(
    catalog: _Catalog,
    gt: _Boxes,
    pseudo: _Boxes,
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


def _subset(boxes: _Boxes, mask: np.ndarray) -> _Boxes:
    return _Boxes(
        boxes.image[mask], boxes.label[mask], boxes.xywh[mask], boxes.area[mask], boxes.flag[mask]
    )


def _check_thresholds(what: str, values: Sequence[float]) -> None:
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"{what} must be in [0, 1], got {list(values)}")


def _check_iou(iou: float) -> None:
    if not 0.0 < iou <= 1.0:
        raise ConfigError(f"IoU threshold must be in (0, 1], got {iou}")


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

    Counts, sizes, classes and `at_score_thr` use the detections with score ≥ `score_thr`;
    the sweeps use all of them, at every score threshold and at each IoU of
    `iou_thresholds` plus `iou` (the IoU of the per-class and F1-best figures).
    `image_ids` restricts the GT to the images the pseudo-labels were made for, so that
    recall does not count GT of images never labelled; detections elsewhere raise DataError.
    """
    _check_iou(iou)
    _check_thresholds("score threshold", [score_thr])
    _check_thresholds("score thresholds", score_thresholds)
    _check_thresholds("IoU thresholds", iou_thresholds)
    catalog, gt_boxes = _read_gt(gt, image_ids)
    dets = _read_detections(results, catalog)
    ious = np.array(sorted({*iou_thresholds, iou}))
    thresholds = np.array(sorted(set(score_thresholds)))
    outcome = _match_all(gt_boxes, dets, ious)
    main = int(np.flatnonzero(ious == iou)[0])
    n_classes = len(catalog.cat_ids)

    real_gt = _subset(gt_boxes, ~gt_boxes.flag)
    pseudo = _subset(dets, dets.flag >= score_thr)
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


def pseudo_label_quality(
    gt: CocoDataset | Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    score_thr: float,
    *,
    image_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """Four numbers to log per eval interval when the unlabeled set has hidden GT:
    `precision50`, `recall50` (IoU 0.5, zero where undefined so that the log has no gaps or
    NaN), `pseudo_per_image` and `gt_per_image`.

    Cheap: detections below `score_thr` are dropped before matching, only one IoU is matched,
    and with `image_ids` (the images the teacher labelled) only their GT is read.
    """
    _check_thresholds("score threshold", [score_thr])
    catalog, gt_boxes = _read_gt(gt, image_ids)
    dets = _read_detections(results, catalog)
    dets = _subset(dets, dets.flag >= score_thr)
    outcome = _match_all(gt_boxes, dets, np.array([0.5]))[0]
    tp, fp = int((outcome == TP).sum()), int((outcome == FP).sum())
    n_gt = int((~gt_boxes.flag).sum())
    n_images = max(len(catalog.image_ids), 1)
    return {
        "precision50": tp / (tp + fp) if tp + fp else 0.0,
        "recall50": tp / n_gt if n_gt else 0.0,
        "pseudo_per_image": len(dets.flag) / n_images,
        "gt_per_image": n_gt / n_images,
    }
