"""Class and size profile of a COCO file, and the Labeled Resampling it would get.

Before blaming pseudo-labels for a weak tail class, check how many labeled boxes the class
had to begin with, at which sizes, and whether Labeled Resampling (MixPL) would repeat its
images. Only non-crowd boxes count, as everywhere a box is a training target; sizes use
`ssodkit.data.coco.size_bucket` on the annotation's `area` (box w·h when absent), as COCOeval.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from pydantic import BaseModel

from ssodkit.data.coco import CocoDataset, size_bucket
from ssodkit.stats.pseudo import SIZE_BUCKETS


class ClassDataStats(BaseModel):
    name: str
    category_id: int
    images: int  # images with at least one box of the class
    boxes: int
    small: int
    medium: int
    large: int
    repeat_factor: float | None  # r(c); None for a class without boxes (never sampled)


class BoxesPerImage(BaseModel):
    mean: float | None
    median: float | None
    max: int
    histogram: list[int]  # histogram[n] = images with exactly n boxes


class ResamplingStats(BaseModel):
    """What `repeat_factors(coco, t)` does to an epoch."""

    t: float
    images_repeated: int  # images with r(I) > 1
    mean_factor: float | None  # mean r(I)
    max_factor: float | None
    epoch_images: float  # sum of r(I): expected draws per epoch, against num_images


class DataStats(BaseModel):
    source: str | None
    num_images: int
    num_boxes: int
    num_crowd: int
    images_without_boxes: int
    sizes: dict[str, int]  # small / medium / large
    boxes_per_image: BoxesPerImage
    classes: list[ClassDataStats]  # most boxes first (head to tail)
    resampling: ResamplingStats


def _per_class(coco: CocoDataset) -> tuple[Counter[int], Counter[int], Counter[tuple[int, str]]]:
    """Boxes, images and (class, size bucket) counts, by class index."""
    boxes: Counter[int] = Counter()
    sizes: Counter[tuple[int, str]] = Counter()
    pairs: set[tuple[int, int]] = set()
    for ann in coco.annotations:
        if ann.iscrowd:
            continue
        k = coco.cat_id_to_index[ann.category_id]
        boxes[k] += 1
        area = ann.area if ann.area is not None else ann.bbox[2] * ann.bbox[3]
        sizes[k, size_bucket(area)] += 1
        pairs.add((ann.image_id, k))
    return boxes, Counter(k for _, k in pairs), sizes


def _boxes_per_image(coco: CocoDataset) -> np.ndarray:
    position = {image_id: i for i, image_id in enumerate(coco.image_ids)}
    counts = np.zeros(len(position), dtype=np.int64)
    for ann in coco.annotations:
        if not ann.iscrowd:
            counts[position[ann.image_id]] += 1
    return counts


def _resampling(coco: CocoDataset, t: float) -> tuple[ResamplingStats, dict[int, float]]:
    """Summary of the per-image factors, and r(c) by class index (present classes only:
    an absent class has no image to repeat)."""
    from ssodkit.data.resampling import repeat_factors

    per_image, per_class = repeat_factors(coco, t)
    factors = np.array(per_image, dtype=np.float64)
    summary = ResamplingStats(
        t=t,
        images_repeated=int((factors > 1).sum()),
        mean_factor=float(factors.mean()) if len(factors) else None,
        max_factor=float(factors.max()) if len(factors) else None,
        epoch_images=float(factors.sum()),
    )
    return summary, per_class


def compute_data_stats(coco: CocoDataset, *, resampling_t: float = 0.001) -> DataStats:
    """Class, size and boxes-per-image distribution of `coco`, with the Labeled Resampling
    factors for threshold `resampling_t` (0 turns resampling off: every factor 1)."""
    boxes, images, sizes = _per_class(coco)
    resampling, per_class_factor = _resampling(coco, resampling_t)
    classes = []
    for k in sorted(range(len(coco.cat_ids)), key=lambda k: (-boxes[k], k)):
        stats = ClassDataStats(
            name=coco.class_names[k],
            category_id=coco.cat_ids[k],
            images=images[k],
            boxes=boxes[k],
            small=sizes[k, "small"],
            medium=sizes[k, "medium"],
            large=sizes[k, "large"],
            repeat_factor=per_class_factor.get(k),
        )
        classes.append(stats)
    per_image = _boxes_per_image(coco)
    return DataStats(
        source=None if coco.source is None else str(coco.source),
        num_images=len(coco.images),
        num_boxes=int(per_image.sum()),
        num_crowd=sum(1 for a in coco.annotations if a.iscrowd),
        images_without_boxes=int((per_image == 0).sum()),
        sizes={b: sum(getattr(c, b) for c in classes) for b in SIZE_BUCKETS},
        boxes_per_image=BoxesPerImage(
            mean=float(per_image.mean()) if len(per_image) else None,
            median=float(np.median(per_image)) if len(per_image) else None,
            max=int(per_image.max(initial=0)),
            histogram=np.bincount(per_image).tolist(),
        ),
        classes=classes,
        resampling=resampling,
    )

