"""How right pseudo-labels are: COCO-style matching of detections against ground truth.

The one implementation of COCOeval's greedy matching that the training run's pseudo-label
quality log and `ssodkit stats pseudo` share; a box counts as a pseudo-label under the
pseudo-labeler's one rule (`above_threshold`: score > τ).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssodkit.data.coco import CocoDataset
from ssodkit.errors import ConfigError, DataError
from ssodkit.pseudo.filters import above_threshold

TP, FP, IGNORED = 1, 0, -1


# --------------------------------------------------------------------------- flat inputs
@dataclass(frozen=True)
class Catalog:
    """Images and classes by position; class index = rank of the category id."""

    image_ids: list[int]
    file_names: list[str]
    cat_ids: list[int]
    class_names: list[str]

    def image_positions(self, image_ids: Sequence[int]) -> np.ndarray:
        pos = {image_id: i for i, image_id in enumerate(self.image_ids)}
        return np.array([pos[i] for i in image_ids], dtype=np.int64)


@dataclass(frozen=True)
class BoxSet:
    """Boxes of a whole set as arrays; `flag` is `iscrowd` for GT and the score for detections."""

    image: np.ndarray  # int64 [N], position in the catalog
    label: np.ndarray  # int64 [N], class index
    xywh: np.ndarray  # float64 [N, 4]
    area: np.ndarray  # float64 [N], what the size buckets use
    flag: np.ndarray


def _gt_rows(
    gt: CocoDataset | Mapping[str, Any], image_ids: Iterable[int] | None
) -> tuple[Catalog, list[tuple[Any, ...]]]:
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
    catalog = Catalog(
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
    catalog: Catalog,
    rows: Sequence[tuple[Any, ...]],
    *,
    flag: np.ndarray,
    areas: np.ndarray | None = None,
) -> BoxSet:
    """Arrays of rows that start with (image id, category id, bbox); `areas` default to w·h."""
    xywh = np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4)
    index = {c: k for k, c in enumerate(catalog.cat_ids)}
    return BoxSet(
        image=catalog.image_positions([r[0] for r in rows]),
        label=np.array([index[r[1]] for r in rows], dtype=np.int64),
        xywh=xywh,
        area=xywh[:, 2] * xywh[:, 3] if areas is None else areas,
        flag=flag,
    )


def read_gt(
    gt: CocoDataset | Mapping[str, Any], image_ids: Iterable[int] | None
) -> tuple[Catalog, BoxSet]:
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


def read_detections(results: Sequence[Mapping[str, Any]], catalog: Catalog) -> BoxSet:
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
def _groups(boxes: BoxSet) -> dict[tuple[int, int], np.ndarray]:
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


def match_all(gt: BoxSet, dets: BoxSet, iou_thrs: np.ndarray) -> np.ndarray:
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



def subset_boxes(boxes: BoxSet, mask: np.ndarray) -> BoxSet:
    return BoxSet(
        boxes.image[mask], boxes.label[mask], boxes.xywh[mask], boxes.area[mask], boxes.flag[mask]
    )


def check_thresholds(what: str, values: Sequence[float]) -> None:
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"{what} must be in [0, 1], got {list(values)}")


def check_iou(iou: float) -> None:
    if not 0.0 < iou <= 1.0:
        raise ConfigError(f"IoU threshold must be in (0, 1], got {iou}")


def pseudo_label_quality(
    gt: CocoDataset | Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    score_thr: float | None,
    *,
    image_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """Four numbers to log per eval interval when the unlabeled set has hidden GT:
    `precision50`, `recall50` (IoU 0.5, zero where undefined so that the log has no gaps or
    NaN), `pseudo_per_image` and `gt_per_image`.

    `score_thr` None takes `results` as the pseudo-labels already (a pseudo-labeler kept
    them). Cheap: detections at or below `score_thr` are dropped before matching, only one IoU is matched,
    and with `image_ids` (the images the teacher labelled) only their GT is read.
    """
    if score_thr is not None:
        check_thresholds("score threshold", [score_thr])
    catalog, gt_boxes = read_gt(gt, image_ids)
    dets = read_detections(results, catalog)
    if score_thr is not None:
        dets = subset_boxes(dets, above_threshold(dets.flag, score_thr))
    outcome = match_all(gt_boxes, dets, np.array([0.5]))[0]
    tp, fp = int((outcome == TP).sum()), int((outcome == FP).sum())
    n_gt = int((~gt_boxes.flag).sum())
    n_images = max(len(catalog.image_ids), 1)
    return {
        "precision50": tp / (tp + fp) if tp + fp else 0.0,
        "recall50": tp / n_gt if n_gt else 0.0,
        "pseudo_per_image": len(dets.flag) / n_images,
        "gt_per_image": n_gt / n_images,
    }
