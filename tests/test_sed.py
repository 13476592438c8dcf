"""SED: level pairing, equivariance gives zero scale loss, re-weighting, detached targets."""

from __future__ import annotations

import copy

import pytest
import torch

from ssodkit.detectors import DetectorConfig, build_detector
from ssodkit.detectors.dense import DenseOutputs, paired_levels
from ssodkit.methods.base import ModelHandle, ViewBatch
from ssodkit.methods.sed import SED, SEDParams
from ssodkit.methods.sed_losses import dense_terms, half_size, scale_terms, soft_cls_terms
from ssodkit.views.geometry import identity_matrix

STRIDES = [8, 16, 32, 64, 128]


def dense_for(image_hw: tuple[int, int], fill, k: int = 3, with_ctr: bool = True) -> DenseOutputs:
    """Dense outputs of a constructed detector: cell value = fill(level, i, j)."""
    h, w = image_hw
    cls, box, ctr, anchors = [], [], [], []
    for level, stride in enumerate(STRIDES):
        gh, gw = -(-h // stride), -(-w // stride)
        grid = torch.tensor([[fill(stride * 1.0, i, j) for j in range(gw)] for i in range(gh)])
        cls.append(grid[None, :, :, None, None].expand(1, gh, gw, 1, k).clone())
        box.append(grid[None, :, :, None, None].expand(1, gh, gw, 1, 4).clone() * 0.1)
        ctr.append(grid[None, :, :, None, None].clone())
        anchors.append(torch.zeros(gh * gw, 4))
    return DenseOutputs(cls, box, ctr if with_ctr else None, anchors, STRIDES, [image_hw])


def test_level_l_of_the_image_pairs_with_level_l_minus_1_at_half_size():
    large, small = dense_for((256, 256), lambda s, i, j: 0.0), dense_for((128, 128), lambda s, i, j: 0.0)
    pairs = paired_levels(large, small)
    assert pairs == [(1, 0), (2, 1), (3, 2), (4, 3)]  # P4-P7 of s ↔ P3-P6 of s↓; P3 of s has none
    # a value placed at (s, P_l) cell (i, j) is compared with (s↓, P_{l-1}) cell (i, j)
    for l_large, l_small in pairs:
        assert large.cls_logits[l_large].shape[1:3] == small.cls_logits[l_small].shape[1:3]
    large.cls_logits[2][0, 3, 5] = 4.0
    small.cls_logits[1][0, 3, 5] = 4.0
    params = SEDParams()
    assert float(dense_terms(small, large, [(b, a) for a, b in pairs], params)["cls"]) == pytest.approx(0.0, abs=1e-6)
    small.cls_logits[1][0, 3, 5] = -4.0  # the paired cell disagrees now
    assert float(dense_terms(small, large, [(b, a) for a, b in pairs], params)["cls"]) > 0.1


def test_scale_equivariant_predictions_give_zero_scale_loss():
    # a detector whose output at a cell depends only on where the cell is in image terms
    fill = lambda stride, i, j: ((i * stride) % 96) / 48.0 - ((j * stride) % 64) / 32.0  # noqa: E731
    large = dense_for((256, 192), fill)
    small = dense_for((128, 96), lambda stride, i, j: fill(stride * 2, i, j))
    pairs = [(b, a) for a, b in paired_levels(large, small)]
    terms = dense_terms(small, large, pairs, SEDParams())
    for name, value in terms.items():
        assert float(value) == pytest.approx(0.0, abs=1e-5), name


def test_a_small_object_at_the_lowest_level_is_a_scale_target_for_the_half_size_lowest_level():
    # an object under P4's range: s sees it at P3 only (cell (4, 6)); at half size it lands on
    # s↓'s P3, whose paired target is s:P4 — background there
    large = dense_for((256, 256), lambda s, i, j: -6.0)
    small = dense_for((128, 128), lambda s, i, j: -6.0)
    large.cls_logits[0][0, 4, 6] = 4.0  # s:P3 (stride 8), full size
    small.cls_logits[0][0, 2, 3] = 4.0  # s↓:P3 = s:P4's grid, cell (4, 6) // 2
    union = scale_terms(large, small, SEDParams())  # default: max(s:P4, s:P3 pooled 2×2)
    assert float(union["cls"]) == pytest.approx(0.0, abs=1e-5)
    paired = scale_terms(large, small, SEDParams(scale_bottom_target="paired"))  # the spec: s:P4 alone
    assert float(paired["cls"]) > 1.0
    # only s↓'s lowest level gets the union: an object at s:P4 is s↓:P3's target (its partner),
    # not also s↓:P4's (s:P4 pooled onto s:P5's grid), where s↓ stays background
    large.cls_logits[1][0, 2, 3] = 4.0
    assert float(small.cls_logits[1][0, 1, 1, 0, 0]) == -6.0
    assert float(scale_terms(large, small, SEDParams())["cls"]) == pytest.approx(0.0, abs=1e-5)


def test_reweighting_is_zero_where_target_equals_prediction_and_grows_with_disagreement():
    logits = torch.tensor([0.0, 2.0, -3.0])
    loss, weight = soft_cls_terms(logits, torch.sigmoid(logits), SEDParams())
    assert torch.allclose(weight, torch.zeros(3)) and torch.allclose(loss, torch.zeros(3), atol=1e-5)
    _, weight = soft_cls_terms(logits, torch.tensor([0.5, 0.0, 1.0]), SEDParams(gamma=2.0))
    expected = (torch.tensor([0.5, 0.0, 1.0]) - torch.sigmoid(logits)).abs() ** 2
    assert torch.allclose(weight, expected)


def test_distillation_targets_carry_no_gradient():
    target = dense_for((128, 128), lambda s, i, j: float(i - j))
    pred = dense_for((128, 128), lambda s, i, j: float(i + j) / 3)
    for t in target.cls_logits + target.box_regression + target.centerness:
        t.requires_grad_(True)
    for t in pred.cls_logits + pred.box_regression + pred.centerness:
        t.requires_grad_(True)
    terms = dense_terms(pred, target, [(lv, lv) for lv in range(5)], SEDParams())
    sum(terms.values()).backward()
    assert all(t.grad is None for t in target.cls_logits + target.box_regression + target.centerness)
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in pred.cls_logits)


def test_half_size_is_exactly_half():
    assert half_size([torch.rand(3, 190, 255)])[0].shape == (3, 95, 127)


def _batch(images):
    n = len(images)
    return ViewBatch(images, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * n,
                     [identity_matrix()] * n, list(range(n)), [{} for _ in range(n)])


@pytest.mark.parametrize("detector", ["fcos", "retinanet", "faster_rcnn"])
def test_sed_step_has_finite_nonzero_terms_and_no_threshold(detector, tiny_config):
    # every cell's box terms count (the default waits for target cells with p > 0.5), and the
    # RPN's terms are on (the paper's weight; the default leaves them out)
    cfg = tiny_config(method__name="sed", method__box_cell_weight="fg", method__rpn_weight=1.0, detector__name=detector)
    method = SED.from_config(cfg, ["a", "b", "c"])
    student = build_detector(DetectorConfig(name=detector, backbone="resnet18", fpn_channels=64, head_convs=1), 3)
    method.check_detector(student)
    images = [torch.rand(3, 128, 160)]
    labeled = ViewBatch(images, [{"boxes": torch.tensor([[10.0, 10, 60, 70]]), "labels": torch.tensor([2])}],
                        [identity_matrix()], [0], [{}])
    losses = method.step(ModelHandle(student), copy.deepcopy(student).eval(), labeled,
                         {"weak": _batch(images), "strong": _batch([images[0] * 0.8])}, it=0)
    unsup = {k: v for k, v in losses.items() if k.startswith("unsup")}
    expected = {"unsup_distill_cls", "unsup_distill_box", "unsup_scale_cls", "unsup_scale_box"}
    if detector == "faster_rcnn":  # the RPN is the dense part; the RoI head gets both losses too
        expected |= {"unsup_distill_roi_cls", "unsup_distill_roi_box", "unsup_scale_roi_cls", "unsup_scale_roi_box"}
    assert expected <= set(unsup)
    for name, value in unsup.items():
        assert torch.isfinite(value) and float(value.detach()) > 0, name
    sum(losses.values()).backward()  # every term reaches the student
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_roi_terms_vanish_when_student_equals_target():
    from ssodkit.methods.sed_losses import roi_terms

    logits, deltas = torch.randn(5, 4), torch.randn(5, 16)
    terms = roi_terms(logits, deltas, logits, deltas, SEDParams())
    assert float(terms["roi_cls"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["roi_box"]) == pytest.approx(0.0, abs=1e-6)


def test_roi_box_term_is_the_roi_heads_smooth_l1_on_the_targets_top_class():
    from ssodkit.methods.sed_losses import roi_terms

    target_logits = torch.tensor([[-9.0, 9.0, -9.0, -9.0]] * 2)  # both RoIs: class 1, p ≈ 1
    deltas = torch.zeros(2, 16)
    shifted = deltas.clone()
    shifted[0, 4:8] = 0.05  # class 1's deltas, first RoI: quadratic part of smooth L1 (β = 1/9)
    shifted[1, 8:12] = 5.0  # class 2's deltas are not compared
    terms = roi_terms(target_logits, shifted, target_logits, deltas, SEDParams())
    assert float(terms["roi_box"]) == pytest.approx(4 * 0.05**2 * 4.5 / 2, rel=1e-3)  # mean over 2 RoIs
    l1 = roi_terms(target_logits, shifted, target_logits, deltas, SEDParams(box_loss="l1"))
    assert float(l1["roi_box"]) == pytest.approx(4 * 0.05 / 2, rel=1e-3)


def test_roi_box_term_skips_rois_the_target_calls_background_as_dense_cells_do():
    from ssodkit.methods.sed_losses import roi_terms

    p_fg = torch.tensor([0.9, 0.3])  # the target's top foreground probability per RoI
    target_logits = torch.stack([torch.stack([(1 - p).log(), p.log(), torch.tensor(-30.0), torch.tensor(-30.0)])
                                 for p in p_fg])
    deltas = torch.zeros(2, 16)
    shifted = deltas.clone()
    shifted[:, 4:8] = 1.0  # class 1's deltas differ by 1 on both RoIs: smooth L1 = 4·(1 − β/2) each
    per_roi = 4 * (1 - 1 / 18)
    gated = roi_terms(target_logits, shifted, target_logits, deltas, SEDParams())
    assert float(gated["roi_box"]) == pytest.approx(0.9 * per_roi / 2, rel=1e-4)  # the p = 0.3 RoI adds nothing
    plain = roi_terms(target_logits, shifted, target_logits, deltas, SEDParams(box_cell_weight="fg"))
    assert float(plain["roi_box"]) == pytest.approx((0.9 + 0.3) * per_roi / 2, rel=1e-4)


def test_fcos_head_forward_matches_torchvision_and_keeps_the_pre_relu_distances():
    torch.manual_seed(0)
    fcos = build_detector(DetectorConfig(name="fcos", backbone="resnet18", fpn_channels=64, head_convs=1), 3).eval()
    _, features = fcos.batch([torch.rand(3, 128, 160)])
    ours, reference = fcos.head_forward(features), fcos.head(features)
    for key in ("cls_logits", "bbox_regression", "bbox_ctrness"):
        assert torch.equal(ours[key], reference[key]), key
    unbounded = ours["bbox_regression_unbounded"]
    assert (unbounded < 0).any() and torch.equal(unbounded.clamp(min=0), ours["bbox_regression"])


def test_fcos_box_distillation_reaches_cells_whose_relu_output_is_zero():
    # L1 on post-ReLU distances never lifts a cell clamped to 0 back up (a ratchet that
    # killed the whole regression branch within 3 steps on the synthetic set); SED compares
    # the pre-activation instead.
    box = torch.full((1, 1, 1, 1, 4), -1.0, requires_grad=True)
    target_box = torch.full((1, 1, 1, 1, 4), 2.0)
    logits = torch.full((1, 1, 1, 1, 3), 3.0)
    pred = DenseOutputs([logits], [box.clamp(min=0)], None, [torch.zeros(1, 4)], [8], [(8, 8)], [box])
    target = DenseOutputs([logits], [target_box], None, [torch.zeros(1, 4)], [8], [(8, 8)], [target_box])
    dense_terms(pred, target, [(0, 0)], SEDParams())["box"].backward()
    assert box.grad is not None and bool((box.grad < 0).all())  # descent raises the distances


def test_box_terms_count_only_where_the_target_sees_an_object_by_default():
    pred = dense_for((64, 64), lambda s, i, j: 0.0)
    target = dense_for((64, 64), lambda s, i, j: -5.0)  # background everywhere (p ≈ 0.007)
    for t in target.box_regression:
        t += 1.0  # boxes disagree
    assert float(dense_terms(pred, target, [(0, 0)], SEDParams())["box"]) == 0.0
    assert float(dense_terms(pred, target, [(0, 0)], SEDParams(box_cell_weight="fg"))["box"]) > 0
    target.cls_logits[0][0, 2, 3] = 4.0  # one confident cell
    # L1 over 4 sides of |0 − 0.5|, weighted by p = σ(4), normalised by max(Σp, floor):
    # 8 cells per image by default, so one confident cell cannot weigh like a batch of them
    p = torch.sigmoid(torch.tensor(4.0)).item()
    assert float(dense_terms(pred, target, [(0, 0)], SEDParams())["box"]) == pytest.approx(2.0 * p / 8, rel=1e-5)
    unfloored = SEDParams(min_box_cells_per_image=0)
    assert float(dense_terms(pred, target, [(0, 0)], unfloored)["box"]) == pytest.approx(2.0 * p, rel=1e-5)


@pytest.mark.parametrize("detector", ["fcos", "retinanet"])
def test_giou_in_the_anchor_frame_equals_giou_of_the_decoded_boxes(detector):
    # FCOS and RetinaNet train boxes with GIoU, so SED distils with it; comparing boxes in
    # each cell's anchor frame must give exactly the GIoU of the boxes the detector decodes
    from torchvision.ops import generalized_box_iou_loss

    torch.manual_seed(0)
    model = build_detector(DetectorConfig(name=detector, backbone="resnet18", fpn_channels=64, head_convs=1), 3).eval()
    with torch.no_grad():
        a, b = model.dense([torch.rand(3, 96, 128)]), model.dense([torch.rand(3, 96, 128)])
    assert a.box_loss == "giou" and a.box_coding == ("ltrb" if detector == "fcos" else "deltas")
    for level in range(a.num_levels):
        for d in (a, b):  # proper boxes (random init predicts near-empty ones, where GIoU's eps dominates)
            shape = d.box_regression[level].shape
            d.box_regression[level] = torch.rand(shape) + 0.5 if detector == "fcos" else torch.randn(shape) * 0.5
        in_frame = generalized_box_iou_loss(
            a.boxes_in_anchor_frame(level).reshape(-1, 4), b.boxes_in_anchor_frame(level).reshape(-1, 4)
        )
        decoded = [model.decode(d.box_regression[level].reshape(-1, 4), a.anchors[level]) for d in (a, b)]
        assert torch.allclose(in_frame, generalized_box_iou_loss(*decoded), atol=1e-4), level


def test_box_terms_use_the_detectors_own_loss_and_vanish_where_boxes_agree():
    pred = dense_for((64, 64), lambda s, i, j: 3.0)  # confident everywhere, boxes (0.3, …)
    target = dense_for((64, 64), lambda s, i, j: 3.0)
    pred.box_coding = target.box_coding = "ltrb"
    pred.box_loss = target.box_loss = "giou"
    assert float(dense_terms(pred, target, [(0, 0)], SEDParams())["box"]) == pytest.approx(0.0, abs=1e-6)
    target.box_regression[0] *= 2.0  # the same cell's box, twice as large: IoU 1/4
    p = torch.sigmoid(torch.tensor(3.0)).item()
    giou = float(dense_terms(pred, target, [(0, 0)], SEDParams(min_box_cells_per_image=0))["box"])
    assert giou == pytest.approx(0.75, rel=1e-4)  # 1 − IoU, no enclosing-box penalty (nested boxes)
    l1 = float(dense_terms(pred, target, [(0, 0)], SEDParams(min_box_cells_per_image=0, box_loss="l1"))["box"])
    assert l1 == pytest.approx(4 * 0.3, rel=1e-4) and p > 0.5
    smooth = SEDParams(min_box_cells_per_image=0, box_loss="smooth_l1")
    # torchvision's β = 1/9: linear above it (|x| − β/2), quadratic (x²/2β) below
    assert float(dense_terms(pred, target, [(0, 0)], smooth)["box"]) == pytest.approx(4 * (0.3 - 1 / 18), rel=1e-4)
    target.box_regression[0] = pred.box_regression[0] + 0.05
    assert float(dense_terms(pred, target, [(0, 0)], smooth)["box"]) == pytest.approx(4 * 0.05**2 * 4.5, rel=1e-3)
    model = build_detector(DetectorConfig(name="faster_rcnn", backbone="resnet18", fpn_channels=64, head_convs=1), 3)
    assert model.eval().dense([torch.rand(3, 64, 64)]).box_loss == "smooth_l1"  # the RPN's own loss


def _student_teacher_and_views(detector: str):
    """A seeded student, its teacher copy, one labeled view, and weak/strong views of one unlabeled image."""
    torch.manual_seed(0)
    student = build_detector(DetectorConfig(name=detector, backbone="resnet18", fpn_channels=64, head_convs=1), 3)
    teacher = copy.deepcopy(student).eval()
    images = [torch.rand(3, 96, 128)]
    labeled = ViewBatch(images, [{"boxes": torch.tensor([[10.0, 10, 60, 70]]), "labels": torch.tensor([2])}],
                        [identity_matrix()], [0], [{}])
    return student, teacher, labeled, {"weak": _batch(images), "strong": _batch([images[0] * 0.8])}


def test_distill_weight_scales_only_the_distillation_terms(tiny_config):
    student, teacher, labeled, unlabeled = _student_teacher_and_views("fcos")
    runs = {}
    for weight in (1.0, 0.25, 0.0):
        cfg = tiny_config(method__name="sed", method__distill_weight=weight, method__box_cell_weight="fg")
        method = SED.from_config(cfg, ["a", "b", "c"])
        method.check_detector(student)
        with torch.no_grad():
            runs[weight] = method.step(ModelHandle(student), teacher, labeled, unlabeled, it=0)
    for key in (k for k in runs[1.0] if k.startswith("unsup")):
        for weight in (0.25, 0.0):
            expected = float(runs[1.0][key]) * (weight if key.startswith("unsup_distill") else 1.0)
            assert float(runs[weight][key]) == pytest.approx(expected, rel=1e-5, abs=1e-7), key
    assert float(runs[1.0]["unsup_distill_cls"]) > 0 and float(runs[0.0]["unsup_scale_cls"]) > 0


def test_sampling_detectors_terms_are_means_over_their_sample_count_like_their_own_losses():
    from ssodkit.methods.sed_losses import roi_terms

    target = dense_for((64, 64), lambda s, i, j: 3.0, k=1, with_ctr=False)
    pred = dense_for((64, 64), lambda s, i, j: 3.0, k=1, with_ctr=False)
    pred.cls_logits[0][0, 0, 0] = -3.0  # one disagreeing cell
    one = {n: float(dense_terms(pred, target, [(0, 0)], SEDParams(normalize=n))["cls"]) for n in ("detector", "weights")}
    pred.cls_logits[0][0, 1, 1] = -3.0  # a second one, the same disagreement
    two = {n: float(dense_terms(pred, target, [(0, 0)], SEDParams(normalize=n))["cls"]) for n in ("detector", "weights")}
    # a head normalised by positives (RetinaNet, FCOS): Σ weights, a weighted mean — unchanged
    assert two["weights"] == pytest.approx(one["weights"], rel=1e-5) and one["detector"] == pytest.approx(one["weights"])
    # the RPN averages its loss over 256 sampled anchors per image: so does its distillation
    pred.sampled_per_image = target.sampled_per_image = 256
    terms = dense_terms(pred, target, [(0, 0)], SEDParams())
    loss, weight = soft_cls_terms(torch.tensor([-3.0]), torch.sigmoid(torch.tensor([3.0])), SEDParams())
    assert float(terms["cls"]) == pytest.approx(2 * float(loss * weight) / 256, rel=1e-5)
    model = build_detector(DetectorConfig(name="faster_rcnn", backbone="resnet18", fpn_channels=64, head_convs=1), 3)
    assert model.eval().dense([torch.rand(3, 64, 64)]).sampled_per_image == 256
    # RoI terms: means over the RoIs, as the RoI head's losses are over its samples
    logits, deltas = torch.randn(4, 4), torch.randn(4, 16)
    other = logits.clone()
    other[0] = -other[0]
    single = roi_terms(other, deltas, logits, deltas, SEDParams())
    padded = roi_terms(torch.cat([other, logits]), deltas.repeat(2, 1), torch.cat([logits, logits]), deltas.repeat(2, 1),
                       SEDParams())  # four more RoIs on which both agree
    assert float(padded["roi_cls"]) == pytest.approx(0.5 * float(single["roi_cls"]), rel=1e-5)
    assert float(single["roi_cls"]) > 0


def test_a_sampling_heads_background_cells_count_at_the_rate_its_sampler_trains_them():
    """The RPN trains 256 anchors per image, up to half positive: every object anchor, ~6 %
    of the background here. Its distillation weights cells the same way in expectation."""
    def rpn_like(fill) -> DenseOutputs:
        out = dense_for((512, 512), fill, k=1, with_ctr=False)  # level 0: 64 × 64 cells
        out.sampled_per_image, out.positive_fraction = 256, 0.5
        return out

    objects = {(5, 5), (20, 30), (40, 12), (60, 60)}
    target = rpn_like(lambda s, i, j: 3.0 if (i, j) in objects else -6.0)
    ratios = {}
    for name, cell, value in (("object", (5, 5), -1.0), ("background", (1, 1), 0.0)):
        pred = rpn_like(lambda s, i, j: 3.0 if (i, j) in objects else -6.0)
        pred.cls_logits[0][0, cell[0], cell[1]] = value  # the one cell where student and target disagree
        every, expected = (float(dense_terms(pred, target, [(0, 0)], SEDParams(sampled_cells=m))["cls"])
                           for m in ("all", "expected"))
        ratios[name] = expected / every
    probs = target.cls_logits[0].sigmoid()
    soft_pos, soft_neg = float(probs.sum()), float((1 - probs).sum())
    p_bg = float(torch.sigmoid(torch.tensor(-6.0)))  # soft label: a p-share positive, a (1 − p)-share negative
    assert ratios["background"] == pytest.approx(p_bg + (1 - p_bg) * (256 - soft_pos) / soft_neg, rel=1e-4)
    assert ratios["background"] < 0.07 and ratios["object"] > 0.95


def test_expected_sample_rates_cap_positives_at_the_samplers_fraction():
    from ssodkit.methods.sed_losses import expected_sample_rates

    many_objects = torch.cat([torch.ones(1, 300), torch.zeros(1, 10_000)], dim=1)
    pos_rate, neg_rate = expected_sample_rates([many_objects], sampled=256, positive_fraction=0.5)
    assert float(pos_rate) == pytest.approx(128 / 300) and float(neg_rate) == pytest.approx(128 / 10_000)
    few_cells = torch.cat([torch.ones(1, 10), torch.zeros(1, 100)], dim=1)  # fewer than the sample: all count
    assert [float(r) for r in expected_sample_rates([few_cells], 256, 0.5)] == pytest.approx([1.0, 1.0])
    model = build_detector(DetectorConfig(name="faster_rcnn", backbone="resnet18", fpn_channels=64, head_convs=1), 3)
    assert model.eval().dense([torch.rand(3, 64, 64)]).positive_fraction == 0.5


def test_rpn_and_roi_weights_scale_only_their_own_terms(tiny_config):
    student, teacher, labeled, unlabeled = _student_teacher_and_views("faster_rcnn")
    runs = {}
    for rpn, roi in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.0)):
        cfg = tiny_config(method__name="sed", detector__name="faster_rcnn", method__rpn_weight=rpn,
                          method__roi_weight=roi, method__box_cell_weight="fg")
        method = SED.from_config(cfg, ["a", "b", "c"])
        method.check_detector(student)
        with torch.no_grad():
            torch.manual_seed(1)
            runs[rpn, roi] = method.step(ModelHandle(student), teacher, labeled, unlabeled, it=0)
    for key in (k for k in runs[1.0, 1.0] if k.startswith("unsup")):
        is_roi = "_roi_" in key
        full = float(runs[1.0, 1.0][key])
        assert float(runs[0.5, 1.0][key]) == pytest.approx(full if is_roi else 0.5 * full, rel=1e-4, abs=1e-7), key
        assert float(runs[1.0, 0.0][key]) == pytest.approx(0.0 if is_roi else full, rel=1e-4, abs=1e-7), key
    assert float(runs[1.0, 1.0]["unsup_distill_roi_cls"]) > 0


def test_faster_rcnn_defaults_train_the_roi_head_terms_and_skip_the_rpns(tiny_config):
    student, teacher, labeled, unlabeled = _student_teacher_and_views("faster_rcnn")
    method = SED.from_config(tiny_config(method__name="sed", detector__name="faster_rcnn"), ["a", "b", "c"])
    method.check_detector(student)
    losses = method.step(ModelHandle(student), teacher, labeled, unlabeled, it=0)
    unsup = {k for k in losses if k.startswith("unsup")}
    assert unsup == {"unsup_distill_roi_cls", "unsup_distill_roi_box", "unsup_scale_roi_cls", "unsup_scale_roi_box"}
    assert "teacher_fg_cells" in method.stats  # the teacher RPN's confident anchors are still counted
