"""Random erasing shared by the views and MixPL: seeded patches are pinned (the draws
that existed before the two copies were merged), blanking and dropping agree."""

from __future__ import annotations

import torch

from ssodkit.erasing import DROP_COVERED, blank, draw_patches, visible


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_view_style_patches_are_the_seeded_ones():
    rects = draw_patches((60, 80), gen(1), n_patches=(1, 5), max_frac=0.2, sides="independent")
    assert rects.int().tolist() == [[34, 41, 38, 52]]
    rects = draw_patches((60, 80), gen(0), n_patches=(1, 5), max_frac=0.2, sides="independent")
    assert rects.int().tolist() == [
        [29, 7, 31, 8], [50, 36, 53, 37], [18, 24, 24, 26], [58, 14, 62, 18], [36, 31, 43, 34],
    ]


def test_mixpl_style_patches_are_the_seeded_ones():
    rects = draw_patches((60, 80), gen(1), n_patches=(1, 19), max_frac=0.3, sides="shared")
    assert rects.int().tolist() == [
        [8, 37, 13, 41], [5, 53, 14, 60], [24, 48, 36, 57], [30, 30, 40, 37], [26, 34, 49, 51],
        [61, 18, 75, 28], [72, 15, 76, 18], [26, 0, 37, 8],
    ]


def test_blank_paints_scalar_or_per_channel_fill_and_leaves_the_input():
    image = torch.full((3, 4, 5), 9, dtype=torch.uint8)
    rects = torch.tensor([[1.0, 1.0, 3.0, 2.0]])
    out = blank(image, rects, 0)
    assert (image == 9).all()
    assert out[:, 1, 1:3].eq(0).all() and out.sum() == 9 * (60 - 6)
    per_channel = blank(image.float(), rects, torch.tensor([1.0, 2.0, 3.0]))
    assert per_channel[:, 1, 1].tolist() == [1.0, 2.0, 3.0]


def test_a_box_is_dropped_once_the_union_of_patches_covers_the_shared_fraction():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.1]])
    # the same patch twice: the union covers 70 % of the first box (a sum would say 140 %)
    rects = torch.tensor([[0.0, 0.0, 10.0, 7.0], [0.0, 0.0, 10.0, 7.0]])
    assert DROP_COVERED == 0.7
    assert visible(boxes, rects, (20, 20)).tolist() == [False, True]
    assert visible(boxes, rects, (20, 20), drop_covered=0.75).tolist() == [True, True]
