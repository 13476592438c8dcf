"""PseCo's label assignment and losses on hand-made boxes: PLA's positives are exactly the
top-k by sqrt(s·u) with k from the IoU sum, PCV's weights are the mean IoU of the student's
boxes, the box-loss weighting and the 512 / 25 % sampling."""

from __future__ import annotations

import math

import pytest
import torch


def assign_module():
    from ssodkit_pseco import assign

    return assign


def boxes_with_iou(ious: list[float], gt: list[float]) -> torch.Tensor:
    """Boxes inside square `gt`, sharing its left edge: IoU = their width / gt's width."""
    x1, y1, x2, y2 = gt
    return torch.tensor([[x1, y1, x1 + u * (x2 - x1), y2] for u in ious])


def test_pla_positives_are_the_top_k_by_quality_with_k_from_the_iou_sum(pseco):
    pla_assign = assign_module().pla_assign
    g1, g2 = [0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 260.0, 260.0]
    u1 = [0.95, 0.9, 0.8, 0.7, 0.5, 0.45, 0.3]  # the last one is below 0.4: never a candidate
    s1 = [0.1, 0.9, 0.2, 0.8, 0.9, 0.95, 0.99]  # score of g1's class (1)
    refined = torch.cat([boxes_with_iou(u1, g1), boxes_with_iou([0.5], g2), torch.tensor([[400.0, 0, 450, 50]])])
    scores = torch.zeros(len(refined), 2)
    scores[:7, 1] = torch.tensor(s1)
    scores[:7, 0] = 0.99  # another class's score does not count
    scores[7, 0] = 0.3
    assigned = pla_assign(refined, scores, torch.tensor([g1, g2]), torch.tensor([1, 0]))

    # g1: k = ⌊0.95 + 0.9 + 0.8 + 0.7 + 0.5 + 0.45⌋ = 4; q = sqrt(s·u) ranks 1, 3, 4, 5 first
    q = [math.sqrt(s * u) for s, u in zip(s1[:6], u1[:6])]
    top4 = sorted(range(6), key=lambda i: -q[i])[:4]
    assert sorted(top4) == [1, 3, 4, 5]
    # g2: one candidate, k = max(1, ⌊0.5⌋) = 1; the far box and the low-IoU one are background
    assert assigned.tolist() == [-1, 0, -1, 0, 0, 0, -1, 1, -1]


def test_pla_k_is_capped_by_the_top_12_ious_and_candidates_go_to_their_best_box(pseco):
    pla_assign = assign_module().pla_assign
    gt = [0.0, 0.0, 100.0, 100.0]
    refined = boxes_with_iou([0.95] * 20, gt)
    scores = torch.linspace(0.1, 0.9, 20)[:, None]
    assigned = pla_assign(refined, scores, torch.tensor([gt]), torch.tensor([0]))
    k = math.floor(12 * 0.95)  # top-min(12, 20) IoUs: 11.4 → 11, not ⌊20 · 0.95⌋ = 19
    assert torch.equal(torch.where(assigned == 0)[0], torch.arange(20 - k, 20))  # the highest scores

    # a refined box overlapping two pseudo boxes is a candidate of the one it overlaps most only
    gts = torch.tensor([[0.0, 0, 100, 100], [50.0, 0, 150, 100]])
    box = torch.tensor([[0.0, 0, 90, 100]])  # IoU 0.9 with the first, 40/150 ≈ 0.27 with the second
    assert pla_assign(box, torch.ones(1, 2), gts, torch.tensor([0, 1])).tolist() == [0]
    assert pla_assign(box, torch.ones(1, 2), gts[1:], torch.tensor([1])).tolist() == [-1]  # 0.27 < 0.4
    assert pla_assign(box, torch.ones(1, 2), gts[:0], torch.tensor([], dtype=torch.int64)).tolist() == [-1]


def test_pcv_weight_is_the_mean_iou_of_the_students_boxes_of_the_same_pseudo_box(pseco):
    from torchvision.ops import box_iou

    pcv_weights = assign_module().pcv_weights
    gts = torch.tensor([[0.0, 0, 100, 100], [200.0, 200, 260, 260]])
    student = torch.cat([boxes_with_iou([0.9, 0.6, 0.3], gts[0].tolist()), boxes_with_iou([0.8], gts[1].tolist()),
                         torch.tensor([[5.0, 5, 50, 50]])])
    assigned = torch.tensor([0, 0, 0, 1, -1])
    weights = pcv_weights(student, assigned, gts)
    assert torch.allclose(weights, torch.tensor([0.6, 0.6, 0.6, 0.8, 0.0]), atol=1e-6)
    iou = box_iou(student[:3], gts[:1]).mean()  # the definition, directly
    assert torch.allclose(weights[:3], iou.expand(3))


def test_box_loss_weights_by_sigma_squared_rescaled_to_sum_sigma(pseco):
    roi_regression_loss = assign_module().roi_regression_loss
    deltas = torch.zeros(4, 3 * 4)
    labels = torch.tensor([1, 2, 1, 0])
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 3.0], [9.0, 9, 9, 9]])
    w = torch.tensor([0.5, 1.0, 0.25, 0.0])
    l1 = torch.tensor([1.0, 2.0, 3.0])
    expected = (w[:3].sum() / w[:3].pow(2).sum()) * (w[:3].pow(2) * l1).sum() / 4
    assert torch.allclose(roi_regression_loss(deltas, labels, targets, w), expected)
    # all weights 1: the plain L1 mean over RoIs
    assert torch.allclose(roi_regression_loss(deltas, labels, targets, torch.ones(4)), l1.sum() / 4)


def test_focal_classification_is_k_way_sigmoid_on_relative_logits(pseco):
    from torchvision.ops import sigmoid_focal_loss

    roi_classification_loss = assign_module().roi_classification_loss
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 3, 0, 2, 0])
    onehot = torch.nn.functional.one_hot(labels, 4)[:, 1:].float()
    expected = 10 * sigmoid_focal_loss(logits[:, 1:] - logits[:, :1], onehot, 0.25, 2.0, reduction="sum") / 6
    got = roi_classification_loss(logits, labels, torch.ones(6), "sigmoid_focal", 2.0, 0.25, 10.0)
    assert torch.allclose(got, expected)
    shifted = roi_classification_loss(logits + 3.0, labels, torch.ones(6), "sigmoid_focal", 2.0, 0.25, 10.0)
    assert torch.allclose(got, shifted)  # a shared offset is not a prediction
    ce = roi_classification_loss(logits, labels, torch.ones(6), "softmax", 2.0, 0.25, 10.0)
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits, labels))
    # RoIs of a weight-0 image add nothing and do not count in N_roi
    half = roi_classification_loss(logits, labels, torch.tensor([1.0, 1, 1, 0, 0, 0]), "softmax", 2.0, 0.25, 10.0)
    assert torch.allclose(half, torch.nn.functional.cross_entropy(logits[:3], labels[:3]))


@pytest.mark.parametrize(("n_pos", "n_neg", "expect"), [(300, 1000, (128, 384)), (10, 1000, (10, 502)), (10, 20, (10, 20))])
def test_sampling_takes_512_with_at_most_a_quarter_positive(pseco, n_pos, n_neg, expect):
    sample_assigned = assign_module().sample_assigned
    assigned = torch.cat([torch.zeros(n_pos, dtype=torch.int64), torch.full((n_neg,), -1)])
    assigned = assigned[torch.randperm(len(assigned))]
    picked = sample_assigned(assigned)
    assert picked.unique().numel() == picked.numel()
    assert (int((assigned[picked] >= 0).sum()), int((assigned[picked] < 0).sum())) == expect
