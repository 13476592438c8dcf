"""Views: boxes follow the pixels, projections agree, erasing and randomness behave."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ssodkit.erasing import covered_fraction
from ssodkit.views.config import ViewConfig
from ssodkit.views.geometry import identity_matrix, project_boxes, transform_boxes
from ssodkit.views.ops import (
    ColorJitter,
    ColorTransform,
    GaussianBlur,
    Op,
    RandomApply,
    RandomAreaErasing,
    RandomColorOp,
    RandomErasing,
    RandomGrayscale,
    RandomHFlip,
    RandomResize,
    RandomRotate,
    RandomShear,
    RandomTranslate,
    Resize,
    ViewState,
    area_erasing_rect,
    erase,
    rand_augment_colour_ops,
    random_fill,
)
from ssodkit.views.pipelines import (
    View,
    eval_view,
    labeled_view,
    photometric_strong_view,
    strong_view,
    ut_strong_view,
    weak_view,
)
from ssodkit.views.registration import register_views

H, W = 96, 128


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def state_with_rect(rect: tuple[int, int, int, int]) -> ViewState:
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    x1, y1, x2, y2 = rect
    image[:, y1:y2, x1:x2] = 255
    return ViewState(image, torch.tensor([rect], dtype=torch.float32), torch.tensor([3]))


def bright_box(image: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(image[0] > 127, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


GEOMETRIC_OPS: list[Op] = [
    RandomResize((60, 140), max_size=200),
    Resize(72, max_size=200),
    RandomHFlip(p=1.0),
    RandomRotate(30.0),
    RandomShear(30.0, axis="x"),
    RandomShear(30.0, axis="y"),
    RandomTranslate(0.1, axis="x"),
    RandomTranslate(0.1, axis="y"),
]


@pytest.mark.parametrize("op", GEOMETRIC_OPS, ids=lambda op: type(op).__name__)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_op_boxes_follow_pixels(op: Op, seed: int) -> None:
    state = state_with_rect((52, 36, 80, 56))
    out = op(state, gen(seed))
    assert out.labels.tolist() == [3]
    torch.testing.assert_close(out.boxes[0], bright_box(out.image), atol=1.5, rtol=0)
    torch.testing.assert_close(out.boxes, transform_boxes(state.boxes, out.matrix))


def test_random_resize_keeps_ratio_within_range_and_cap() -> None:
    for seed in range(20):
        out = RandomResize((60, 90), max_size=110)(state_with_rect((0, 0, 10, 10)), gen(seed))
        h, w = out.size
        assert 60 <= h <= 90 or w == 110
        assert w <= 110
        assert abs(w / h - W / H) < 0.03
        torch.testing.assert_close(
            out.matrix.diagonal()[:2], torch.tensor([w / W, h / H], dtype=torch.float64)
        )


def test_geometric_op_drops_boxes_that_leave_the_image() -> None:
    state = ViewState(
        torch.zeros(3, H, W, dtype=torch.uint8),
        torch.tensor([[0.0, 0.0, 5.0, 5.0], [50.0, 40.0, 80.0, 60.0]]),
        torch.tensor([7, 8]),
    )
    dropped = 0
    for seed in range(10):
        out = RandomTranslate(0.3, axis="x")(state, gen(seed))
        first_box_visible = out.matrix[0, 2].item() > -5  # its right edge stays right of 0
        assert out.labels.tolist() == ([7, 8] if first_box_visible else [8])
        dropped += not first_box_visible
    assert dropped > 0


# --- projection: weak → strong equals original → strong --------------------------------

BOX = st.tuples(
    st.floats(0, W - 8), st.floats(0, H - 8), st.floats(4, 60), st.floats(4, 50)
).map(lambda b: [b[0], b[1], min(b[0] + b[2], W), min(b[1] + b[3], H)])


@pytest.mark.parametrize("rotate_max_deg", [0.0, 30.0])
@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), raw=st.lists(BOX, min_size=1, max_size=6))
def test_projected_weak_boxes_equal_strong_boxes(
    rotate_max_deg: float, seed: int, raw: list[list[float]]
) -> None:
    cfg = ViewConfig(
        train_short_side=(64, 112), max_size=160, rotate_max_deg=rotate_max_deg, strong_color=False
    )
    boxes = torch.tensor(raw, dtype=torch.float32)
    labels = torch.arange(len(raw))  # a label per box identifies survivors
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    for x1, y1, x2, y2 in boxes.int().tolist():
        image[:, y1:y2, x1:x2] = 200
    weak = weak_view(cfg)(image, boxes, labels, gen(seed))
    strong = strong_view(cfg)(image, boxes, labels, gen(seed + 1))
    assert weak.labels.tolist() == labels.tolist()  # resize + flip lose no box

    projected, keep = project_boxes(weak.boxes, weak.matrix, strong.matrix, strong.size)
    projected_by_label = dict(zip(weak.labels[keep].tolist(), projected))
    direct = transform_boxes(boxes, strong.matrix)
    h, w = strong.size
    inside = (direct[:, :2] >= -1e-3).all(1) & (direct[:, 2] <= w + 1e-3) & (direct[:, 3] <= h + 1e-3)
    for label, box in zip(strong.labels.tolist(), strong.boxes):
        if inside[label]:  # never clipped, so no view had to cut it
            torch.testing.assert_close(box, direct[label], atol=1.0, rtol=0)
            torch.testing.assert_close(projected_by_label[label], box, atol=1.0, rtol=0)


# --- photometric ops -------------------------------------------------------------------

PHOTOMETRIC_OPS: list[Op] = [
    *rand_augment_colour_ops(),
    RandomColorOp(),
    ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
    RandomApply(ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1), p=0.8),
    RandomGrayscale(p=1.0),
    GaussianBlur((0.1, 2.0)),
    RandomAreaErasing(p=1.0, scale=(0.05, 0.2), ratio=(0.3, 3.3)),  # pixels only: boxes stay
]


def random_state(seed: int = 0) -> ViewState:
    image = torch.randint(40, 160, (3, 24, 32), dtype=torch.uint8, generator=gen(seed))
    boxes = torch.tensor([[1.0, 2.0, 10.0, 12.0], [5.5, 6.5, 30.0, 20.0]])
    matrix = torch.tensor([[1.5, 0.0, -3.0], [0.0, 1.5, 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return ViewState(image, boxes, torch.tensor([1, 2]), matrix)


@pytest.mark.parametrize("op", PHOTOMETRIC_OPS, ids=lambda op: type(op).__name__)
def test_photometric_op_keeps_geometry_and_returns_uint8(op: Op) -> None:
    state = random_state()
    for seed in range(5):
        out = op(state, gen(seed))
        assert out.image.dtype == torch.uint8 and out.image.shape == state.image.shape
        assert torch.equal(out.matrix, state.matrix)
        assert torch.equal(out.boxes, state.boxes) and torch.equal(out.labels, state.labels)


@pytest.mark.parametrize("op", rand_augment_colour_ops(), ids=lambda op: type(op).__name__)
def test_rand_augment_colour_op_changes_pixels_unless_it_is_the_identity_slot(op: Op) -> None:
    state = random_state()
    changed = any(not torch.equal(op(state, gen(s)).image, state.image) for s in range(5))
    assert changed == (not isinstance(op, ColorTransform))


def test_random_colour_op_draws_every_op_of_the_list() -> None:
    ops = RandomColorOp().ops
    assert [type(op).__name__ for op in ops] == [
        "ColorTransform", "AutoContrast", "Equalize", "Sharpness", "Posterize",
        "Solarize", "Color", "Contrast", "Brightness",
    ]  # fmt: skip
    drawn = {int(torch.randint(0, len(ops), (), generator=gen(s))) for s in range(200)}
    assert drawn == set(range(len(ops)))  # the same draw RandomChoice makes


# --- erasing ---------------------------------------------------------------------------


def test_erasing_drops_boxes_by_union_coverage() -> None:
    state = ViewState(
        torch.full((3, 40, 40), 99, dtype=torch.uint8),
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [0.0, 20.0, 10.0, 30.0]]),
        torch.tensor([0, 1, 2]),
    )
    rects = torch.tensor(
        [
            [0.0, 0.0, 10.0, 5.0],  # box 0: 50 % ...
            [0.0, 0.0, 5.0, 10.0],  # ... and 50 %: union 75 % → dropped
            [20.0, 0.0, 30.0, 6.0],  # box 1: 60 % ...
            [20.0, 0.0, 30.0, 3.0],  # ... inside the first: union 60 % (sum 90 %) → kept
        ]
    )
    out = erase(state, rects, fill=0, drop_covered=0.7)
    assert out.labels.tolist() == [1, 2]
    assert torch.equal(out.boxes, state.boxes[1:])
    assert torch.equal(out.erased, rects)
    assert (out.image[:, 0:10, 0:5] == 0).all() and (out.image[:, 20:40, 20:40] == 99).all()
    assert torch.equal(out.matrix, state.matrix)


def test_covered_fraction_counts_partial_pixels() -> None:
    mask = torch.zeros(10, 20, dtype=torch.bool)
    mask[:, :5] = True
    boxes = torch.tensor([[0.5, 0.0, 10.5, 10.0], [2.0, 2.0, 4.0, 4.0], [6.0, 0.0, 9.0, 3.0]])
    torch.testing.assert_close(
        covered_fraction(boxes, mask), torch.tensor([0.45, 1.0, 0.0], dtype=torch.float64)
    )


def test_random_erasing_records_patches_within_bounds() -> None:
    state = random_state()
    for seed in range(10):
        out = RandomErasing(n_patches=(1, 5), max_frac=0.2)(state, gen(seed))
        assert 1 <= len(out.erased) <= 5
        widths, heights = out.erased[:, 2] - out.erased[:, 0], out.erased[:, 3] - out.erased[:, 1]
        assert (widths >= 1).all() and (widths <= 0.2 * 32 + 0.5).all()
        assert (heights >= 1).all() and (heights <= 0.2 * 24 + 0.5).all()
        assert (out.erased[:, 2] <= 32).all() and (out.erased[:, 3] <= 24).all()
        for x1, y1, x2, y2 in out.erased.int().tolist():
            assert (out.image[:, y1:y2, x1:x2] == 0).all()


def test_geometric_op_after_erasing_is_refused() -> None:
    erased = erase(random_state(), torch.tensor([[0.0, 0.0, 2.0, 2.0]]), 0, 0.7)
    with pytest.raises(ValueError, match="RandomErasing"):
        RandomHFlip(p=1.0)(erased, gen(0))


# --- pipelines -------------------------------------------------------------------------

BUILDERS = [labeled_view, eval_view, weak_view, strong_view, photometric_strong_view, ut_strong_view]


def sample() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=gen(7))
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [60.0, 30.0, 120.0, 90.0]])
    return image, boxes, torch.tensor([0, 1])


def outputs_equal(a: ViewState, b: ViewState) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in [(a.image, b.image), (a.boxes, b.boxes), (a.labels, b.labels),
                     (a.matrix, b.matrix), (a.erased, b.erased)]
    )  # fmt: skip


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_view_is_reproducible_from_seed_and_leaves_global_rng_alone(builder) -> None:
    view = builder(ViewConfig())
    rng_before = torch.get_rng_state()
    first = view(*sample(), gen(123))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert outputs_equal(first, view(*sample(), gen(123)))
    if builder is not eval_view:
        assert not outputs_equal(first, view(*sample(), gen(124)))


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_view_accepts_an_image_without_boxes(builder) -> None:
    image = sample()[0]
    for seed in range(5):
        out = builder()(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), gen(seed))
        assert out.boxes.shape == (0, 4) and out.labels.shape == (0,)


def test_eval_view_is_a_deterministic_resize() -> None:
    out = eval_view(ViewConfig(eval_short_side=48, max_size=1000))(*sample(), gen(0))
    assert out.size == (48, 64)
    torch.testing.assert_close(out.boxes, sample()[1] * 0.5)
    assert len(out.erased) == 0


def test_views_start_at_identity_and_keep_the_contract_types() -> None:
    out = View(())(*sample(), gen(0))
    assert torch.equal(out.matrix, identity_matrix())
    out = strong_view()(*sample(), gen(0))
    assert out.image.dtype == torch.uint8 and out.boxes.dtype == torch.float32
    assert out.labels.dtype == torch.int64 and out.matrix.dtype == torch.float64
    assert out.erased.dtype == torch.float32 and out.erased.shape[1] == 4


def test_view_rejects_float_images() -> None:
    image, boxes, labels = sample()
    with pytest.raises(ValueError, match="uint8"):
        weak_view()(image.float(), boxes, labels, gen(0))


def test_photometric_strong_view_keeps_the_weak_geometry() -> None:
    weak = weak_view()(*sample(), gen(3))
    strong = photometric_strong_view().from_state(weak, gen(4))
    assert torch.equal(strong.matrix, weak.matrix) and strong.size == weak.size
    assert len(strong.erased) >= 1
    kept = torch.isin(weak.labels, strong.labels)
    assert torch.equal(strong.boxes, weak.boxes[kept])


# --- Unbiased Teacher's strong view ----------------------------------------------------

OFF = {"color_jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}


def ut_cfg(**ut_strong) -> ViewConfig:
    return ViewConfig(ut_strong=ut_strong)


def test_ut_strong_view_defaults_are_the_official_build_strong_augmentation() -> None:
    """facebookresearch/unbiased-teacher, ubteacher/data/detection_utils.py."""
    ops = ut_strong_view().ops
    assert [type(op).__name__ for op in ops] == [
        "RandomApply", "RandomGrayscale", "RandomApply",
        "RandomAreaErasing", "RandomAreaErasing", "RandomAreaErasing",
    ]  # fmt: skip
    assert ops[0] == RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), 0.8)
    assert ops[1] == RandomGrayscale(0.2)
    assert ops[2] == RandomApply(GaussianBlur((0.1, 2.0)), 0.5)
    assert ops[3:] == (
        RandomAreaErasing(0.7, (0.05, 0.2), (0.3, 3.3)),
        RandomAreaErasing(0.5, (0.02, 0.2), (0.1, 6.0)),
        RandomAreaErasing(0.3, (0.02, 0.2), (0.05, 8.0)),
    )
    assert all(op.drop_covered is None for op in ops[3:])  # the official code drops no box


def test_ut_strong_view_has_the_weak_geometry_and_boxes_and_only_new_pixels() -> None:
    changed = erased = 0
    for seed in range(12):
        weak = weak_view()(*sample(), gen(seed))
        strong = ut_strong_view().from_state(weak, gen(100 + seed))
        assert strong.size == weak.size and torch.equal(strong.matrix, weak.matrix)
        assert torch.equal(strong.boxes, weak.boxes) and torch.equal(strong.labels, weak.labels)
        changed += not torch.equal(strong.image, weak.image)
        erased += len(strong.erased) > 0
    assert changed == 12 and 0 < erased < 12  # erasing happens with p 0.7 / 0.5 / 0.3


def test_ut_strong_view_with_its_ops_off_is_the_weak_view_pixel_for_pixel() -> None:
    no_erasing = [{"p": 0.0, "scale": (0.02, 0.2), "ratio": (0.1, 6.0)}]
    for seed in range(5):
        weak = weak_view()(*sample(), gen(seed))
        same = ut_strong_view(ut_cfg(**OFF, erasing=no_erasing)).from_state(weak, gen(50 + seed))
        assert outputs_equal(same, weak)
        # each op alone changes pixels and nothing else
        for on in ({"color_jitter_p": 1.0}, {"grayscale_p": 1.0}, {"blur_p": 1.0}):
            out = ut_strong_view(ut_cfg(**{**OFF, **on}, erasing=[])).from_state(weak, gen(50 + seed))
            assert not torch.equal(out.image, weak.image), on
            assert torch.equal(out.boxes, weak.boxes) and torch.equal(out.matrix, weak.matrix)


def test_weak_pseudo_boxes_reach_the_ut_strong_view_unchanged() -> None:
    """The projection M_s · M_w⁻¹ is the identity: no box moves, none is dropped."""
    from ssodkit.detectors.protocol import Detections
    from ssodkit.pseudo.labels import project_detections

    for seed in range(5):
        weak = weak_view()(*sample(), gen(seed))
        strong = ut_strong_view(ut_cfg(erasing=[{"p": 1.0, "scale": (0.2, 0.2), "ratio": (1.0, 1.0)}] * 3)).from_state(
            weak, gen(seed)
        )
        assert len(strong.erased) == 3
        det = Detections(weak.boxes, torch.ones(len(weak.boxes)), weak.labels)
        out = project_detections(det, weak.matrix, strong.matrix, strong.size, strong.erased, None)
        torch.testing.assert_close(out.boxes, weak.boxes, atol=1e-4, rtol=0)
        assert torch.equal(out.labels, weak.labels)


def test_area_erasing_fills_with_noise_keeps_boxes_and_follows_torchvision_shapes() -> None:
    image = torch.full((3, 60, 80), 90, dtype=torch.uint8)
    state = ViewState(image, torch.tensor([[0.0, 0.0, 80.0, 60.0]]), torch.tensor([4]))
    op = RandomAreaErasing(p=1.0, scale=(0.05, 0.2), ratio=(0.3, 3.3))
    for seed in range(20):
        out = op(state, gen(seed))
        assert len(out.erased) == 1
        x1, y1, x2, y2 = out.erased[0].int().tolist()
        h, w = y2 - y1, x2 - x1
        assert 0.05 * 4800 * 0.5 <= h * w <= 0.2 * 4800 * 1.5 and 0 < h < 60 and 0 < w < 80
        assert 0.3 / 1.5 <= h / w <= 3.3 * 1.5
        patch = out.image[:, y1:y2, x1:x2]
        assert patch.unique().numel() > 50  # noise, not one fill value
        outside = out.image.clone()
        outside[:, y1:y2, x1:x2] = 90
        assert (outside == 90).all()  # nothing else touched
        assert torch.equal(out.boxes, state.boxes)  # kept though erased (official)
    assert RandomAreaErasing(p=0.0, scale=(0.05, 0.2), ratio=(0.3, 3.3))(state, gen(0)) is state
    dropping = RandomAreaErasing(p=1.0, scale=(0.2, 0.2), ratio=(1.0, 1.0), drop_covered=0.5)
    small = ViewState(image, torch.tensor([[0.0, 0.0, 80.0, 60.0], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([0, 1]))
    out = dropping(small, gen(0))
    covered = covered_fraction(small.boxes, out.image[0] != 90)
    assert out.labels.tolist() == [lab for lab, c in zip([0, 1], covered.tolist()) if c < 0.5]


def test_area_erasing_draws_as_torchvision_and_gives_up_after_ten_tries() -> None:
    for seed in range(50):
        i, j, h, w = area_erasing_rect((60, 80), gen(seed), (0.02, 0.2), (0.1, 6.0))
        assert 0 <= i <= 60 - h and 0 <= j <= 80 - w and h < 60 and w < 80
    assert area_erasing_rect((10, 10), gen(0), (0.99, 1.0), (1.0, 1.0)) is None  # never fits


def test_random_fill_is_the_official_noise_after_to_pil_image() -> None:
    """N(0, 1) on a [0, 1] image, then ToPILImage's `mul(255).byte()`, which on x86 truncates
    toward zero and wraps modulo 256 (written here through int32, whose cast is defined)."""
    noise = torch.empty(3, 40, 50).normal_(generator=gen(5))
    assert torch.equal(random_fill((3, 40, 50), gen(5)), noise.mul(255).to(torch.int32).to(torch.uint8))
    counts = torch.bincount(random_fill((3, 100, 100), gen(6)).flatten().long(), minlength=256)
    assert counts.min() > 0 and counts.max() < 3 * counts.float().mean()  # nearly uniform bytes


def test_gaussian_blur_fits_small_images() -> None:
    tiny = ViewState(torch.randint(0, 256, (3, 3, 4), dtype=torch.uint8, generator=gen(0)), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    for seed in range(5):
        assert GaussianBlur((1.5, 2.0))(tiny, gen(seed)).image.shape == (3, 3, 4)


def test_strong_view_without_augment_ops_is_scale_flip_erase() -> None:
    view = strong_view(ViewConfig(strong_color=False, strong_geometric=False))
    assert [type(op).__name__ for op in view.ops] == ["RandomResize", "RandomHFlip", "RandomErasing"]


def test_builtin_views_register_through_the_hook() -> None:
    registered: dict[str, object] = {}
    register_views(register=registered.__setitem__)
    assert registered == {
        "labeled": labeled_view, "eval": eval_view, "weak": weak_view,
        "strong": strong_view, "photometric_strong": photometric_strong_view, "ut_strong": ut_strong_view,
    }  # fmt: skip


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train_short_side": (300, 200)}, "min <= max"),
        ({"train_short_side": (0, 200)}, "train_short_side must be >= 1"),
        ({"erase_patches": (3, 1)}, "erase_patches must be (min, max)"),
        ({"flip_prob": 1.5}, "less than or equal to 1"),
        ({"max_size": 0}, "greater than 0"),
        ({"shear_max_deg": 90}, "less than 90"),
        ({"colour_jitter": 0.1}, "Extra inputs are not permitted"),
        ({"ut_strong": {"blur_sigma": (2.0, 0.1)}}, "blur_sigma must be (min, max)"),
        ({"ut_strong": {"color_jitter": (0.4, 0.4, 0.4, 0.6)}}, "hue <= 0.5"),
        ({"ut_strong": {"erasing": [{"p": 0.5, "scale": (0.02, 1.5), "ratio": (0.1, 6)}]}}, "<= 1"),
        ({"ut_strong": {"erasing": [{"p": 0.5, "scale": (0.02, 0.2), "ratio": (0.0, 6)}]}}, "ratio must be positive"),
        ({"ut_strong": {"grayscale": 0.2}}, "Extra inputs are not permitted"),
    ],
)
def test_view_config_rejects_bad_values_with_a_clear_message(override: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ViewConfig(**override)
