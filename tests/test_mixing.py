"""Pseudo Mixup, Pseudo Mosaic and box-aware erasing (ssodkit.mixing).

Images are built so that pixels identify their source: constant colours, or one colour
channel per source, so that "which image is under this box" is a pixel lookup.
"""

from __future__ import annotations

import math

import pytest
import torch

from ssodkit.mixing import (
    MixItem,
    Placement,
    apply_erasing,
    erase_and_filter,
    erase_patches,
    filter_scores,
    is_empty,
    pseudo_mixup,
    pseudo_mosaic,
)

A = (200, 40, 100)
B = (60, 180, 20)  # A + B is even in every channel, so the 0.5/0.5 blend is an integer


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def constant(colour: tuple[int, int, int], h: int, w: int, dtype=torch.uint8) -> torch.Tensor:
    return torch.tensor(colour, dtype=dtype).reshape(3, 1, 1).expand(3, h, w).clone()


def item(image: torch.Tensor, boxes: list[list[float]], labels=None, scores=None) -> MixItem:
    n = len(boxes)
    return MixItem(
        image,
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels if labels is not None else [0] * n, dtype=torch.int64),
        torch.tensor(scores if scores is not None else [0.9] * n, dtype=torch.float32),
    )


def region_mask(p: Placement, size: tuple[int, int]) -> torch.Tensor:
    x1, y1, x2, y2 = p.region
    mask = torch.zeros(size, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


def pixels(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[K, 3]`` colours of the masked pixels."""
    return image.permute(1, 2, 0)[mask].to(torch.int64)


# --------------------------------------------------------------------------- mixup


@pytest.mark.parametrize("seed", range(6))
def test_mixup_blends_exactly_half_half_on_the_overlap_and_halves_elsewhere(seed):
    # b (48x32) is resized by min(24/48, 32/32) = 0.5 to 24x16 and lands inside a (24x32).
    a = item(constant(A, 24, 32), [[2, 2, 10, 10]])
    b = item(constant(B, 48, 32), [[0, 0, 32, 48]])
    out = pseudo_mixup(a, b, gen(seed))
    pa, pb = out.placements
    assert out.image.dtype == torch.uint8 and out.size == (24, 32)
    assert pb.size == (24, 16) and pb.scale == (0.5, 0.5)
    both = region_mask(pa, out.size) & region_mask(pb, out.size)
    only_a = region_mask(pa, out.size) & ~region_mask(pb, out.size)
    blend = torch.tensor([(x + y) // 2 for x, y in zip(A, B)])
    assert both.sum() == 24 * 16 and (pixels(out.image, both) == blend).all()
    # Where only a lies, the reference adds 0.5·a to a zero canvas: a at half intensity.
    assert only_a.sum() == 24 * 16 and (pixels(out.image, only_a) == torch.tensor(A) // 2).all()


def test_mixup_outside_both_images_is_fill_and_one_image_is_half_way_to_fill():
    # a is tall, b (fitted to 20x40 with scale min(20/40, 40/60) = 0.5) is wide: the canvas
    # is 30x30 and has corners that neither covers.
    a = item(constant(A, 30, 20), [])
    b = item(constant(B, 40, 60), [])
    out = pseudo_mixup(a, b, gen(1), fit_size=(20, 40), fill=(10, 20, 30))
    pa, pb = out.placements
    assert pb.size == (20, 30) and out.size == (30, 30)
    in_a, in_b = region_mask(pa, out.size), region_mask(pb, out.size)
    fill = torch.tensor([10, 20, 30])
    a_t, b_t = torch.tensor(A), torch.tensor(B)
    assert (pixels(out.image, in_a & in_b) == (a_t + b_t) // 2).all()
    assert (pixels(out.image, in_a & ~in_b) == (a_t + fill) // 2).all()
    assert (pixels(out.image, ~in_a & in_b) == (b_t + fill) // 2).all()
    neither = ~in_a & ~in_b
    assert neither.any() and (pixels(out.image, neither) == fill).all()


def two_object_items() -> tuple[MixItem, MixItem]:
    """a lives in the red channel, b in the green one; objects are brighter than background."""
    a_img = torch.zeros(3, 24, 32, dtype=torch.uint8)
    a_img[0] = 100
    a_img[0, 6:16, 4:14] = 200
    b_img = torch.zeros(3, 48, 32, dtype=torch.uint8)
    b_img[1] = 60
    b_img[1, 8:40, 10:30] = 180
    a = item(a_img, [[4, 6, 14, 16]], labels=[1], scores=[0.8])
    b = item(b_img, [[10, 8, 30, 40]], labels=[2], scores=[0.2])
    return a, b


@pytest.mark.parametrize("seed", range(8))
def test_mixup_boxes_are_the_union_and_land_on_their_sources_copy(seed):
    a, b = two_object_items()
    out = pseudo_mixup(a, b, gen(seed))
    assert out.labels.tolist() == [1, 2]
    assert out.scores.tolist() == pytest.approx([0.8, 0.2])  # kept: threshold comes later
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = out.boxes.round().to(torch.int64).tolist()
    assert out.boxes.equal(out.boxes.round())  # scale 0.5 of even coordinates: whole pixels
    # Under a's box the red channel is a's object at half intensity...
    assert (out.image[0, ay1:ay2, ax1:ax2] == 100).all()
    # ...under b's box (1 px in from the edge: resampling blurs edges) b's object.
    assert (out.image[1, by1 + 1 : by2 - 1, bx1 + 1 : bx2 - 1] == 90).all()
    assert (bx2 - bx1, by2 - by1) == (10, 16)
    # Just outside the boxes each source shows its background instead.
    assert out.image[0, ay2, ax1] == 50 and out.image[1, by2 + 1, bx1 + 1] == 30


def test_mixup_flips_the_second_image_and_its_boxes_together():
    a, b = two_object_items()
    flips = set()
    for seed in range(20):
        out = pseudo_mixup(a, b, gen(seed))
        pb = out.placements[1]
        flips.add(pb.flip)
        x_off = pb.offset[0]
        # b's object spans x 10..30 of 32 → 5..15 of 16 after scaling, 1..11 when mirrored.
        expected = (1, 11) if pb.flip else (5, 15)
        assert out.boxes[1, 0::2].tolist() == [x_off + expected[0], x_off + expected[1]]
    assert flips == {True, False}
    never = pseudo_mixup(a, b, gen(0), flip_p=0.0).placements[1].flip
    always = pseudo_mixup(a, b, gen(0), flip_p=1.0).placements[1].flip
    assert (never, always) == (False, True)


def test_mixup_beta_ratio_weights_every_pixel_alike_and_keeps_float_exact():
    a = item(constant((0.8, 0.4, 0.2), 16, 16, torch.float32), [[0, 0, 8, 8]])
    b = item(constant((0.0, 0.0, 0.0), 16, 16, torch.float32), [[8, 8, 16, 16]])
    out = pseudo_mixup(a, b, gen(3), ratio=None, alpha=2.0)
    lam = float(out.image[0, 0, 0]) / 0.8
    assert 0 < lam < 1 and lam != pytest.approx(0.5)
    assert torch.allclose(out.image, lam * a.image)
    fixed = pseudo_mixup(a, b, gen(3), ratio=0.25)
    assert torch.allclose(fixed.image, 0.25 * a.image)


def test_mixup_is_reproducible_and_leaves_the_global_rng_alone():
    a, b = two_object_items()
    state = torch.random.get_rng_state()
    first, second = pseudo_mixup(a, b, gen(5)), pseudo_mixup(a, b, gen(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first.image.equal(second.image) and first.boxes.equal(second.boxes)
    assert first.placements == second.placements


def test_mixup_drops_boxes_that_degenerate_and_clips_to_the_copy():
    a = item(constant(A, 20, 20), [[-5, -5, 10, 10]])  # sticks out of a: clipped to a's copy
    b = item(constant(B, 200, 200), [[0, 0, 200, 0.05]])  # 0.005 px high after scaling: dropped
    out = pseudo_mixup(a, b, gen(0))
    assert out.boxes.tolist() == [[0.0, 0.0, 10.0, 10.0]]
    assert out.labels.shape == (1,) and out.scores.shape == (1,)


def test_placement_matrix_agrees_with_map_boxes():
    p = Placement((0.5, 0.25), True, (7, 3), (10, 16))
    boxes = torch.tensor([[2.0, 4.0, 10.0, 20.0]])
    corners = torch.tensor([[2.0, 4.0, 1.0], [10.0, 20.0, 1.0]], dtype=torch.float64)
    mapped = (p.matrix() @ corners.T).T[:, :2]
    x = sorted(mapped[:, 0].tolist())
    y = sorted(mapped[:, 1].tolist())
    assert p.map_boxes(boxes).tolist() == [[x[0], y[0], x[1], y[1]]]
    assert p.map_boxes(boxes).tolist() == [[7 + 16 - 5, 3 + 1, 7 + 16 - 1, 3 + 5]]


# --------------------------------------------------------------------------- mosaic


COLOURS = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]


def large_box_items() -> list[MixItem]:
    sizes = [(100, 80), (60, 120), (90, 90), (120, 50)]
    return [
        item(constant(c, h, w), [[4, 4, w - 4, h - 4], [0, 0, w / 2, h / 2]], labels=[k, k])
        for k, (c, (h, w)) in enumerate(zip(COLOURS, sizes))
    ]


@pytest.mark.parametrize("seed", range(4))
def test_mosaic_tiles_around_the_centre_and_carries_every_box(seed):
    items = large_box_items()
    out = pseudo_mosaic(items, gen(seed), size_range=(40, 70))
    assert len(out.placements) == 4
    sizes = [p.size for p in out.placements]
    half_h = math.ceil(max(h for h, _ in sizes) / 16) * 16
    half_w = math.ceil(max(w for _, w in sizes) / 16) * 16
    assert out.size == (2 * half_h, 2 * half_w)
    (h0, w0), (h1, w1), (h2, w2), (h3, w3) = sizes
    expected_offsets = [
        (half_w - w0, half_h - h0),  # top-left tile ends at the centre
        (half_w, half_h - h1),  # top-right
        (half_w - w2, half_h),  # bottom-left
        (half_w, half_h),  # bottom-right starts at the centre
    ]
    assert [p.offset for p in out.placements] == expected_offsets
    expected_boxes = []
    for src, p in zip(items, out.placements):
        h, w = src.size
        assert max(p.size) in range(40, 71)  # longer side uniform in size_range
        assert p.size == (round(h * max(p.size) / max(h, w)), round(w * max(p.size) / max(h, w)))
        sx, sy = p.scale
        assert (sx, sy) == (p.size[1] / w, p.size[0] / h)
        for x1, y1, x2, y2 in src.boxes.tolist():
            if p.flip:
                x1, x2 = w - x2, w - x1
            ox, oy = p.offset
            expected_boxes.append([x1 * sx + ox, y1 * sy + oy, x2 * sx + ox, y2 * sy + oy])
        # The tile shows its source's colour.
        x_a, y_a, x_b, y_b = p.region
        assert (out.image[:, y_a:y_b, x_a:x_b] == torch.tensor(COLOURS[src.labels[0]]).reshape(3, 1, 1)).all()
    assert torch.allclose(out.boxes, torch.tensor(expected_boxes), atol=1e-4)
    assert out.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    painted = sum(h * w for h, w in sizes)
    assert int((out.image.sum(0) > 0).sum()) == painted  # the rest is the zero fill


def test_mosaic_shrinks_large_boxes():
    items = large_box_items()
    before = torch.cat([(i.boxes[:, 2:] - i.boxes[:, :2]).prod(-1) for i in items]).mean()
    for seed in range(5):
        out = pseudo_mosaic(items, gen(seed), size_range=(40, 70))
        after = (out.boxes[:, 2:] - out.boxes[:, :2]).prod(-1).mean()
        assert after < 0.6 * before


def test_mosaic_clips_boxes_to_their_tile_and_drops_degenerate_ones():
    items = large_box_items()
    items[0] = item(items[0].image, [[-10, -10, 30, 30], [50, 50, 50.001, 60]])
    out = pseudo_mosaic(items, gen(0), size_range=(50, 50), flip_p=0.0)
    p0 = out.placements[0]
    x1, y1, _, _ = p0.region
    assert out.boxes[0, :2].tolist() == [x1, y1]  # clipped to the tile's corner
    assert out.labels.tolist().count(0) == 1  # the zero-width box is gone


def test_mosaic_needs_four_items():
    with pytest.raises(ValueError, match="4 items"):
        pseudo_mosaic(large_box_items()[:3], gen(0))


# --------------------------------------------------------------------------- erasing


def test_erasing_drops_boxes_whose_union_coverage_reaches_seventy_percent():
    image = constant(A, 20, 40)
    boxes = [
        [0, 0, 10, 10],  # patches 1+2: 50% + 50%, union 80% → dropped
        [20, 0, 30, 10],  # patches 3+4: 40% + 40% overlapping, union 60% (sum 80%) → kept
        [0, 10, 10, 20],  # patch 5: exactly 70% → dropped
        [30, 10, 40, 20],  # untouched → kept
    ]
    rects = torch.tensor(
        [[0, 0, 5, 10], [3, 0, 8, 10], [20, 0, 24, 10], [22, 0, 26, 10], [0, 10, 7, 20]],
        dtype=torch.float32,
    )
    out = apply_erasing(item(image, boxes, labels=[0, 1, 2, 3]), rects)
    assert out.labels.tolist() == [1, 3]
    assert out.boxes.tolist() == [boxes[1], boxes[3]]
    assert (out.image[:, 0:10, 0:8] == 0).all() and (out.image[:, 0:10, 8:20] == 200).any()
    assert (image == constant(A, 20, 40)).all()  # input untouched


@pytest.mark.parametrize("seed", range(5))
def test_erase_and_filter_matches_its_patches(seed):
    from ssodkit.erasing import covered_fraction, erased_mask

    h, w = 60, 80
    boxes = [[x, y, x + 12, y + 9] for x in range(0, 68, 12) for y in range(0, 51, 9)]
    src = item(constant(A, h, w), boxes, labels=list(range(len(boxes))))
    rects = erase_patches((h, w), gen(seed), max_ratio=0.3)
    out = erase_and_filter(src, gen(seed), max_ratio=0.3)
    assert 1 <= len(rects) <= 19
    sides = rects[:, 2:] - rects[:, :2]
    assert (sides[:, 0] <= 0.3 * w).all() and (sides[:, 1] <= 0.3 * h).all()
    assert (rects[:, 2] <= w).all() and (rects[:, 3] <= h).all() and (rects >= 0).all()
    covered = covered_fraction(src.boxes, erased_mask(rects, (h, w)))
    assert out.labels.tolist() == torch.nonzero(covered < 0.7).flatten().tolist()
    erased_pixels = erased_mask(rects, (h, w))
    assert (out.image[:, erased_pixels] == 0).all() and (out.image[:, ~erased_pixels] != 0).all()


def test_erase_patches_default_count_and_ratio():
    counts = set()
    for seed in range(60):
        rects = erase_patches((100, 200), gen(seed))
        counts.add(len(rects))
        sides = rects[:, 2:] - rects[:, :2]
        assert (sides[:, 0] <= 20).all() and (sides[:, 1] <= 10).all()
    assert min(counts) >= 1 and max(counts) <= 19 and len(counts) > 5


# --------------------------------------------------------------------------- threshold


def test_threshold_after_mixing_and_empty_rule():
    a, b = two_object_items()  # scores 0.8 and 0.2
    out = pseudo_mixup(a, b, gen(0))
    kept = filter_scores(out, 0.5)
    assert kept.labels.tolist() == [1] and not is_empty(kept)
    assert filter_scores(out, 0.8).labels.tolist() == []  # strictly greater, as mmdet
    assert is_empty(filter_scores(out, 0.9))
    assert kept.image is out.image


def test_mix_item_checks_shapes():
    with pytest.raises(ValueError, match="labels and scores"):
        MixItem(constant(A, 4, 4), torch.zeros(2, 4), torch.zeros(1, dtype=torch.int64), torch.zeros(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_everything_stays_on_the_gpu():
    a, b = two_object_items()
    dev = torch.device("cuda")

    def to(x: MixItem) -> MixItem:
        return MixItem(x.image.to(dev), x.boxes.to(dev), x.labels.to(dev), x.scores.to(dev))

    a_gpu, b_gpu = to(a), to(b)
    for g in (gen(0), torch.Generator(device=dev).manual_seed(0)):
        cpu_ref = pseudo_mixup(a, b, gen(0))
        mixed = pseudo_mixup(a_gpu, b_gpu, g)
        mosaic = pseudo_mosaic([a_gpu, b_gpu, a_gpu, b_gpu], g, size_range=(16, 32))
        erased = erase_and_filter(mosaic, g)
        for x in (mixed, mosaic, erased, filter_scores(erased, 0.5)):
            assert x.image.is_cuda and x.boxes.is_cuda and x.labels.is_cuda and x.scores.is_cuda
        if g.device.type == "cpu":
            assert mixed.image.cpu().equal(cpu_ref.image)
            assert mixed.boxes.cpu().equal(cpu_ref.boxes)
