"""Labeled Resampling: LVIS-style repeat factors, and what they do to the sampler."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console

from ssodkit.cli.stats_cmd import repeat_factor_table
from ssodkit.data.coco import CocoAnnotation, CocoCategory, CocoDataset, CocoImage
from ssodkit.data.resampling import (
    class_image_counts,
    class_image_frequency,
    repeat_factors,
)
from ssodkit.data.sampler import InfiniteBatchSampler
from ssodkit.errors import ConfigError
from ssodkit.stats.data import compute_data_stats

# Category ids are not contiguous on purpose: labels are indices over the sorted ids.
HEAD, TAIL, MID, ABSENT = 3, 7, 9, 11


def make_coco(classes_per_image: list[list[int]], crowd: dict[int, int] | None = None) -> CocoDataset:
    """Image k (id k+1) holds one box per category id listed; ``crowd`` adds crowd boxes."""
    images = [
        CocoImage(id=k + 1, file_name=f"{k}.png", width=50, height=50)
        for k in range(len(classes_per_image))
    ]
    box = [1, 1, 10, 10]
    anns = []
    for k, cats in enumerate(classes_per_image):
        for c in cats:
            anns.append(CocoAnnotation(id=len(anns) + 1, image_id=k + 1, category_id=c, bbox=box))
    for image_id, c in (crowd or {}).items():
        anns.append(
            CocoAnnotation(id=len(anns) + 1, image_id=image_id, category_id=c, bbox=box, iscrowd=1)
        )
    names = ((HEAD, "head"), (TAIL, "tail"), (MID, "mid"), (ABSENT, "absent"))
    cats = [CocoCategory(id=c, name=n) for c, n in names]
    return CocoDataset(images, anns, cats, None, Path("."))


def fixture() -> CocoDataset:
    """10 images: head in 8 (twice in one), mid in 2, tail in 1, one image empty, and a
    crowd-only 'mid' box on image 10 that must not count."""
    per_image = [
        [HEAD, HEAD], [HEAD], [HEAD], [HEAD], [HEAD], [HEAD, MID], [HEAD, MID], [HEAD, TAIL],
        [], [],
    ]
    return make_coco(per_image, crowd={10: MID})


def test_frequency_counts_images_not_boxes_and_ignores_crowd():
    coco = fixture()
    assert class_image_counts(coco) == {0: 8, 1: 1, 2: 2, 3: 0}  # indices: head, tail, mid, absent
    assert class_image_frequency(coco) == {0: 0.8, 1: 0.1, 2: 0.2, 3: 0.0}


def test_repeat_factors_match_the_formula_by_hand():
    coco = fixture()
    per_image, per_class = repeat_factors(coco, t=0.5)
    # r(c) = max(1, sqrt(t / f(c))): head sqrt(0.5/0.8) < 1 → 1; tail sqrt(5); mid sqrt(2.5)
    assert per_class == pytest.approx({0: 1.0, 1: math.sqrt(5), 2: math.sqrt(2.5)})
    assert 3 not in per_class  # an absent class has nothing to repeat
    # r(I) = max over the classes in I; images without (non-crowd) boxes keep 1.
    expected = [1, 1, 1, 1, 1, math.sqrt(2.5), math.sqrt(2.5), math.sqrt(5), 1, 1]
    assert per_image == pytest.approx(expected)


def test_repeat_factors_follow_the_given_image_order_and_threshold_edges():
    coco = fixture()
    per_image, _ = repeat_factors(coco, t=0.5, image_ids=[8, 1])
    assert per_image == pytest.approx([math.sqrt(5), 1.0])
    assert repeat_factors(coco, t=0.0)[0] == [1.0] * 10
    with pytest.raises(ConfigError, match="threshold"):
        repeat_factors(coco, t=-1)
    with pytest.raises(ValueError, match="not in the data set"):
        repeat_factors(coco, t=0.5, image_ids=[99])


def test_table_lists_every_class_rarest_first():
    console = Console(record=True, width=100)
    console.print(repeat_factor_table(compute_data_stats(fixture(), resampling_t=0.5)))
    text = console.export_text()
    assert "t = 0.5" in text
    rows = [line for line in text.splitlines() if any(n in line for n in ("head", "tail", "mid", "absent"))]
    assert [r.split("│")[1].strip() for r in rows] == ["absent", "tail", "mid", "head"]
    assert "2.24" in text and "1.58" in text and "0.1000" in text


def count_tail_draws(factors: list[float] | None, tail_index: int, n_images: int) -> int:
    sampler = InfiniteBatchSampler(n_images, 2, seed=0, repeat_factors=factors)
    stream = iter(sampler)
    return sum(index == tail_index for _ in range(2000) for index, _ in next(stream))


def test_resampling_raises_how_often_the_tail_class_is_drawn():
    # 20 images: class 'tail' in one of them (f = 0.05), 'head' in the other 19 (f = 0.95).
    coco = make_coco([[TAIL]] + [[HEAD]] * 19)
    factors, per_class = repeat_factors(coco, t=0.8)
    assert per_class[1] == pytest.approx(4.0)  # sqrt(0.8 / 0.05)
    assert factors == [4.0] + [1.0] * 19
    plain = count_tail_draws(None, 0, 20)
    resampled = count_tail_draws(factors, 0, 20)
    samples = 2000 * 2
    assert plain / samples == pytest.approx(1 / 20, abs=0.01)
    assert resampled / samples == pytest.approx(4 / 23, abs=0.02)  # 4 copies among 23 per epoch
    assert resampled > 3 * plain
