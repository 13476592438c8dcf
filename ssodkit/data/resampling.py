"""Labeled Resampling: class-aware repeat factors for long-tailed labeled sets (LVIS-style).

MixPL's answer to tail classes that pseudo labels rarely find: repeat the labeled images
that contain them. With ``f(c)`` the fraction of labeled images containing class ``c``,

    r(c) = max(1, sqrt(t / f(c)))        r(I) = max over the classes c in I of r(c)

so classes rarer than the threshold ``t`` are repeated, the rarest most; images without
boxes keep ``r(I) = 1``. Feed the per-image factors to
``InfiniteBatchSampler(repeat_factors=...)``, which repeats each image ``floor(r)`` or
``ceil(r)`` times per epoch (stochastic rounding, as LVIS does).

Only non-crowd boxes count, as everywhere a box is a training target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ssodkit.data.coco import CocoDataset
from ssodkit.errors import ConfigError


def _classes_per_image(coco: CocoDataset) -> dict[int, set[int]]:
    """Image id → the class indices of its non-crowd boxes (empty set when it has none)."""
    present: dict[int, set[int]] = {image_id: set() for image_id in coco.image_ids}
    for ann in coco.annotations:
        if not ann.iscrowd and ann.image_id in present:
            present[ann.image_id].add(coco.cat_id_to_index[ann.category_id])
    return present


def class_image_counts(coco: CocoDataset) -> dict[int, int]:
    """Class index → number of images with at least one non-crowd box of it (0 if none)."""
    counts = dict.fromkeys(range(len(coco.cat_ids)), 0)
    for classes in _classes_per_image(coco).values():
        for c in classes:
            counts[c] += 1
    return counts


def class_image_frequency(coco: CocoDataset) -> dict[int, float]:
    """``f(c)``: class index → fraction of the file's images that contain class ``c``.

    The denominator is every image of the labeled file, with or without boxes (LVIS's
    definition). A class with no box has ``f(c) = 0``.
    """
    n_images = len(coco.images)
    if n_images == 0:
        return dict.fromkeys(range(len(coco.cat_ids)), 0.0)
    return {c: n / n_images for c, n in class_image_counts(coco).items()}


def class_repeat_factor(frequency: float, t: float) -> float:
    """``r(c) = max(1, sqrt(t / f(c)))``; infinite for an absent class (never sampled)."""
    if frequency <= 0:
        return math.inf
    return max(1.0, math.sqrt(t / frequency))


def _check_threshold(t: float) -> None:
    if not (t >= 0 and math.isfinite(t)):
        raise ConfigError(f"repeat-factor threshold t must be a finite number >= 0, got {t}")


def repeat_factors(
    coco: CocoDataset, t: float, image_ids: Sequence[int] | None = None
) -> tuple[list[float], dict[int, float]]:
    """Per-image ``r(I)`` and per-class ``r(c)`` for threshold ``t``.

    The per-image list follows ``image_ids`` (default: the file's order) so that it lines
    up with a data set's indices — pass ``LabeledDataset.image_ids`` when that data set
    drops images without boxes. The per-class dict covers only classes present in the file
    (an absent class has ``f(c) = 0`` and no image to repeat). ``t = 0`` turns resampling
    off (every factor 1).
    """
    _check_threshold(t)
    frequency = class_image_frequency(coco)
    per_class = {c: class_repeat_factor(f, t) for c, f in frequency.items() if f > 0}
    present = _classes_per_image(coco)
    ids = coco.image_ids if image_ids is None else list(image_ids)
    missing = [i for i in ids if i not in present]
    if missing:
        raise ValueError(f"image ids not in the data set: {missing[:5]}")
    per_image = [max((per_class[c] for c in present[i]), default=1.0) for i in ids]
    return per_image, per_class
