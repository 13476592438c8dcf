"""U2PL's per-cell pieces on hand-made tensors: the α_t schedule, the entropy split over
candidate cells, and where the negative loss's gradient goes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

K = 5


@pytest.fixture
def cells(u2pl):
    """`ssodkit_u2pl.cells`, imported from this folder's `src/` (the package is not pip-installed in CI)."""
    import ssodkit_u2pl.cells

    return ssodkit_u2pl.cells


def probs_levels(seed: int = 0) -> list[torch.Tensor]:
    """Two levels `[N, H, W, A, K]` of sigmoid probabilities, a third of the cells near 0."""
    g = torch.Generator().manual_seed(seed)
    levels = [torch.rand(2, 6, 5, 2, K, generator=g), torch.rand(2, 3, 3, 2, K, generator=g)]
    for p in levels:
        p[torch.rand(p.shape[:4], generator=g) < 0.33] *= 0.01
    return levels


def test_alpha_decays_linearly_to_zero_at_T(cells):
    total = 400
    shares = [cells.unreliable_share(0.2, t, total) for t in range(0, total + 1, 50)]
    assert shares[0] == pytest.approx(0.2)
    assert cells.unreliable_share(0.2, 100, total) == pytest.approx(0.15)
    assert cells.unreliable_share(0.2, 200, total) == pytest.approx(0.1)
    steps = [a - b for a, b in itertools.pairwise(shares)]
    assert all(s == pytest.approx(0.2 * 50 / total) for s in steps)  # linear
    assert shares[-1] == 0.0 and cells.unreliable_share(0.2, total + 7, total) == 0.0


def test_entropy_is_zero_for_sure_cells_and_one_for_a_uniform_cell(cells):
    sure_class = torch.tensor([1.0, 0, 0, 0, 0])
    sure_background = torch.zeros(K)
    torn = torch.tensor([0.5, 0.5, 0, 0, 0])
    uniform = torch.full((K,), 0.5)  # bg = 1 − max = 0.5: all K + 1 entries equal
    h = cells.class_entropy(torch.stack([sure_class, sure_background, torn, uniform]))
    assert h[0] == pytest.approx(0, abs=1e-6) and h[1] == pytest.approx(0, abs=1e-6)
    assert h[2] == pytest.approx(math.log(3) / math.log(K + 1), rel=1e-5)  # {0.5, 0.5, bg 0.5}
    assert h[3] == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("share", [0.2, 0.05, 0.5])
def test_split_marks_exactly_alpha_of_the_candidates_the_most_uncertain(cells, share):
    probs = probs_levels()
    floor = 0.05
    masks, n_candidates = cells.split_unreliable(probs, share, floor)
    assert [m.shape for m in masks] == [p.shape[:4] for p in probs]
    flat_p = torch.cat([p.flatten(0, -2) for p in probs])
    flat_m = torch.cat([m.flatten() for m in masks])
    candidate = flat_p.max(-1).values > floor
    assert n_candidates == int(candidate.sum()) and 0 < n_candidates < flat_p.shape[0]
    assert int(flat_m.sum()) == math.floor(share * n_candidates)
    assert not (flat_m & ~candidate).any()  # never a non-candidate
    entropy = cells.class_entropy(flat_p)
    reliable_candidates = candidate & ~flat_m
    assert entropy[flat_m].min() >= entropy[reliable_candidates].max()


def test_per_level_split_marks_alpha_of_each_levels_candidates(cells):
    probs = probs_levels(2)
    masks, n_candidates = cells.split_unreliable(probs, 0.25, 0.05, per_level=True)
    total = 0
    for p, m in zip(probs, masks):
        flat_p, flat_m = p.flatten(0, -2), m.flatten()
        candidate = flat_p.max(-1).values > 0.05
        total += int(candidate.sum())
        assert int(flat_m.sum()) == math.floor(0.25 * int(candidate.sum())) > 0
        entropy = cells.class_entropy(flat_p)
        assert entropy[flat_m].min() >= entropy[candidate & ~flat_m].max()
    assert n_candidates == total


def test_at_T_no_cell_is_unreliable(cells):
    masks, n = cells.split_unreliable(probs_levels(), cells.unreliable_share(0.2, 1000, 1000), 0.05)
    assert n > 0 and not any(m.any() for m in masks)


def test_negative_classes_skip_the_teachers_top_r_l_minus_1(cells):
    p = torch.tensor([[0.1, 0.7, 0.05, 0.3, 0.2], [0.9, 0.0, 0.01, 0.02, 0.03]])
    neg = cells.negative_classes(p, rank_low=3)
    assert neg.tolist() == [[True, False, True, False, True], [False, True, True, True, False]]
    assert cells.negative_classes(p, rank_low=2).sum(-1).tolist() == [4, 4]


def test_gradient_reaches_only_the_low_ranked_classes_of_unreliable_cells(cells):
    probs = probs_levels(1)
    masks, _ = cells.split_unreliable(probs, 0.3, 0.05)
    g = torch.Generator().manual_seed(5)
    logits = [torch.randn(p.shape, generator=g, requires_grad=True) for p in probs]
    loss, count = cells.negative_loss(logits, probs, masks, rank_low=3)
    assert count == sum(int(m.sum()) for m in masks) > 0
    loss.backward()
    for x, p, m in zip(logits, probs, masks):
        grad = x.grad
        assert grad[~m].abs().max() == 0  # reliable cells: nothing from this term
        neg = cells.negative_classes(p[m], 3)
        assert grad[m][~neg].abs().max() == 0  # the teacher's top r_l − 1 classes: ignored
        assert (grad[m][neg] > 0).all()  # every low-ranked class pushed towards 0


def test_negative_loss_is_the_focal_loss_towards_zero_over_the_unreliable_count(cells):
    from torchvision.ops import sigmoid_focal_loss

    logits = torch.tensor([[[[[2.0, -1.0, 0.5]]], [[[0.0, 1.0, -2.0]]]]])  # [1, 2, 1, 1, 3]
    probs = torch.tensor([[[[[0.6, 0.1, 0.3]]], [[[0.2, 0.3, 0.25]]]]])
    mask = torch.tensor([[[[True]], [[True]]]])
    loss, count = cells.negative_loss([logits], [probs], [mask], rank_low=3)
    # cell 0: ranks 0 > 2 > 1, negative = class 1; cell 1: ranks 1 > 2 > 0, negative = class 0
    expected = sigmoid_focal_loss(torch.tensor([-1.0, 0.0]), torch.zeros(2), reduction="sum") / 2
    assert count == 2 and loss == pytest.approx(float(expected), rel=1e-6)


def test_cells_inside_a_kept_pseudo_box_are_never_unreliable(cells):
    """`candidates: outside_boxes`: a cell whose anchor centre lies in one of its image's
    pseudo boxes takes the box's label; α_t of the remaining candidates are unreliable."""
    probs = probs_levels()
    strides = [4, 8]
    anchors = []
    for p, s in zip(probs, strides):  # [H·W·A, 4] point-like anchors at each cell's centre
        h, w, a = p.shape[1:4]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centre = torch.stack([xs, ys], -1).reshape(-1, 1, 2).float() * s + s / 2
        anchors.append(torch.cat([centre, centre], -1).expand(-1, a, 4).reshape(-1, 4))
    boxes = [torch.tensor([[0.0, 0.0, 12.0, 12.0]]), torch.zeros(0, 4)]  # image 0: one box; image 1: none
    inside = cells.cells_inside_boxes(anchors, [tuple(p.shape[:4]) for p in probs], boxes)
    assert int(inside[0][0, :3, :3].sum()) == 9 * 2 and int(inside[0].sum()) == 18  # centres 2, 6, 10 (stride 4) × 2 anchors; then 4, 12 (stride 8)
    assert int(inside[1][0].sum()) == 2 * 2 * 2 and not inside[0][1].any() and not inside[1][1].any()
    for p in probs:  # make the boxed cells the most uncertain of all: the literal split takes them first
        p[0, :2, :2] = 0.5
    everywhere, _ = cells.split_unreliable(probs, 0.2, 0.05)
    assert any(bool((m & i).any()) for m, i in zip(everywhere, inside))
    masks, n = cells.split_unreliable(probs, 0.2, 0.05, excluded=inside)
    assert not any(bool((m & i).any()) for m, i in zip(masks, inside))
    flat_p = torch.cat([p.flatten(0, -2) for p in probs])
    outside = ~torch.cat([i.flatten() for i in inside])
    assert n == int(((flat_p.max(-1).values > 0.05) & outside).sum())
    assert int(sum(m.sum() for m in masks)) == math.floor(0.2 * n)
