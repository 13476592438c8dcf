"""Detector adapters: the generic tier on all three torchvision detectors."""

from __future__ import annotations

import pytest
import torch

from ssodkit.detectors import DetectorConfig, build_detector
from ssodkit.detectors.protocol import Detections
from ssodkit.errors import ConfigError

DETECTORS = ["fcos", "retinanet", "faster_rcnn"]
SMALL = dict(backbone="resnet18", fpn_channels=64, head_convs=1)


def tiny(name: str, num_classes: int = 3, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector(DetectorConfig(name=name, **{**SMALL, **kw}), num_classes)


def square_scene(size: int = 128) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A bright square and a dark disc-ish square on grey, one box each."""
    img = torch.full((3, size, size), 0.5)
    img[:, 20:60, 30:70] = 1.0
    img[:, 70:110, 64:120] = 0.0
    target = {"boxes": torch.tensor([[30.0, 20, 70, 60], [64, 70, 120, 110]]), "labels": torch.tensor([0, 2])}
    return img, target


@pytest.mark.parametrize("name", DETECTORS)
def test_loss_falls_when_training_a_few_steps_on_a_tiny_set(name):
    model = tiny(name)
    img, target = square_scene()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    losses = []
    for _ in range(12):
        out = model("loss", [img, img.flip(-1)], [target, {**target, "boxes": target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([128, 0, 128, 0])}])
        total = sum(out.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("name", DETECTORS)
def test_predictions_are_in_input_pixels_without_internal_resize(name):
    """Odd input sizes come back unscaled: boxes lie within each input's own extent."""
    model = tiny(name).eval()
    model.cfg.score_thresh = 0.0
    if name == "faster_rcnn":
        model.roi_heads.score_thresh = 0.0
    images = [torch.rand(3, 97, 203), torch.rand(3, 150, 61)]
    dets = model.predict(images)
    assert len(dets) == 2
    for det, img in zip(dets, images):
        assert isinstance(det, Detections)
        h, w = img.shape[-2:]
        assert len(det) > 0
        assert float(det.boxes[:, 2].max()) <= w + 1e-3 and float(det.boxes[:, 3].max()) <= h + 1e-3
        assert det.probs is not None and det.probs.shape == (len(det), 3)
        # the score of a detection is its class's probability
        assert torch.allclose(det.probs.gather(1, det.labels[:, None]).squeeze(1), det.scores, atol=1e-5)


@pytest.mark.parametrize("name", DETECTORS)
def test_zero_weight_image_adds_exactly_nothing(name):
    """An image with weight 0 contributes as if it were not in the batch (eval-mode BN)."""
    model = tiny(name).eval()  # fixed BN statistics, so the batch composition cannot leak in
    img, target = square_scene()
    other = torch.rand(3, 128, 128)
    other_t = {"boxes": torch.tensor([[5.0, 5, 50, 50]]), "labels": torch.tensor([1])}
    torch.manual_seed(1)
    alone = model.loss([img], [target])
    torch.manual_seed(1)
    # the zero-weight image comes second so that random sampling of image 0 is unchanged
    weighted = model.loss([img, other], [target, other_t], image_weights=torch.tensor([1.0, 0.0]))
    assert alone.keys() == weighted.keys()
    for k in alone:
        assert torch.allclose(alone[k], weighted[k], rtol=1e-4, atol=1e-6), (k, alone[k], weighted[k])


@pytest.mark.parametrize("name", DETECTORS)
def test_cls_only_drops_regression_terms(name):
    model = tiny(name)
    img, target = square_scene()
    full = model.loss([img], [target])
    cls = model.loss([img], [target], cls_only=True)
    assert set(cls) < set(full)
    assert all("box" not in k and "ctr" not in k for k in cls)


def test_focal_roi_loss_is_smaller_than_cross_entropy():
    from ssodkit.detectors.faster_rcnn import softmax_focal_loss

    logits = torch.tensor([[2.0, 0.1, -1.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    fl = softmax_focal_loss(logits, labels, gamma=1.5)
    p = torch.softmax(logits, -1)[torch.arange(2), labels]
    assert torch.allclose(fl, (1 - p) ** 1.5 * ce)


def test_empty_targets_train_as_background():
    model = tiny("fcos")
    out = model.loss([torch.rand(3, 64, 64)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert torch.isfinite(out["loss_cls"]) and out["loss_box"] == 0


def test_unknown_backbone_is_one_clear_line():
    with pytest.raises(ConfigError, match="unknown timm model 'resnet_does_not_exist'"):
        tiny("fcos", backbone="resnet_does_not_exist")


# --------------------------------------------------------------------------- capabilities


def test_capabilities_are_the_protocols_a_detector_implements():
    from ssodkit.detectors.protocol import DenseHead, TwoStage, capabilities_of

    frcnn, fcos = tiny("faster_rcnn"), tiny("fcos")
    assert capabilities_of(frcnn) == ["dense_outputs", "two_stage"]  # dense outputs: its RPN's
    assert capabilities_of(fcos) == capabilities_of(tiny("retinanet")) == ["dense_outputs"]
    assert isinstance(frcnn, TwoStage) and not isinstance(fcos, TwoStage) and isinstance(fcos, DenseHead)
    # forward dispatches exactly the generic tier plus the implemented protocols' methods
    assert set(fcos.forward_modes) == {"loss", "predict", "dense"}
    assert len(frcnn.forward_modes) == 18
    with pytest.raises(ValueError, match="has no mode 'features'"):
        fcos("features", [torch.rand(3, 64, 64)])


def test_a_method_requiring_two_stage_is_refused_on_fcos_in_one_line():
    from ssodkit.detectors import check_capabilities
    from ssodkit.detectors.protocol import TwoStage
    from ssodkit.errors import CapabilityError
    from ssodkit.methods.base import Method

    class NeedsTwoStage(Method):
        name = "needs_two_stage"
        requires = frozenset({TwoStage})

    with pytest.raises(CapabilityError) as refused:
        check_capabilities("fcos", tiny("fcos"), NeedsTwoStage.name, NeedsTwoStage.requires)
    assert str(refused.value) == (
        "method 'needs_two_stage' needs the two_stage capability, which detector 'fcos' does not provide "
        "(it has: dense_outputs)"
    )
    check_capabilities("faster_rcnn", tiny("faster_rcnn"), NeedsTwoStage.name, NeedsTwoStage.requires)


def test_the_typed_handle_routes_every_call_through_the_modules_one_forward():
    """What DDP needs: each typed call is exactly one `forward(mode, …)` of the module."""
    from ssodkit.methods.base import ModelHandle

    model = tiny("faster_rcnn").eval()
    modes: list[str] = []
    model.register_forward_pre_hook(lambda _, args: modes.append(args[0]))
    img, target = square_scene(96)
    handle = ModelHandle(model)
    rcnn = handle.two_stage
    image_list, features = rcnn.features([img])
    objectness, deltas, anchors, proposals = rcnn.rpn_forward(image_list, features)
    rcnn.rpn_loss(objectness, deltas, anchors, [target], torch.ones(1), cls_only=False)
    rois, labels, regression = rcnn.sample_rois(proposals, [target])
    rcnn.roi_losses(features, rois, image_list.image_sizes, labels, regression, torch.ones(len(labels)))
    logits, _ = rcnn.roi_outputs(features, proposals, image_list.image_sizes)
    dense = handle.dense([img])
    assert modes == ["features", "rpn_forward", "rpn_loss", "sample_rois", "roi_losses", "roi_outputs", "dense"]
    # the same results as calling the detector itself
    assert torch.equal(logits, model.roi_outputs(features, proposals, image_list.image_sizes)[0])
    assert torch.equal(dense.cls_logits[0], model.dense([img]).cls_logits[0])


def test_two_stage_seams_for_a_second_view_match_the_one_pass_calls():
    """`features(size_divisible)`, `rpn_targets` + `rpn_loss_assigned` and the RoI box coder
    are the pieces `rpn_loss` / `refine_boxes` are made of (PseCo's multi-scale view uses them)."""
    model = tiny("faster_rcnn").eval()
    img, target = square_scene(96)
    images = [img, torch.rand(3, 80, 100)]
    image_list, features = model.features(images)
    padded, padded_features = model.features(images, size_divisible=128)
    assert tuple(image_list.tensors.shape[-2:]) == (96, 128) and tuple(padded.tensors.shape[-2:]) == (128, 128)
    assert padded.image_sizes == image_list.image_sizes
    assert torch.equal(padded.tensors[..., :96, :], image_list.tensors)  # same content, more zero padding
    assert [tuple(f.shape[-2:]) for f in padded_features.values()] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match="multiple of 32"):
        model.features(images, size_divisible=48)

    objectness, deltas, anchors, proposals = model.rpn_forward(image_list, features)
    targets = [target, {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    torch.manual_seed(1)
    whole = model.rpn_loss(objectness, deltas, anchors, targets, torch.tensor([1.0, 0.5]), cls_only=False)
    labels, regression = model.rpn_targets(anchors, targets)
    assert [tuple(l.shape) for l in labels] == [(a.shape[0],) for a in anchors]
    assert set(torch.cat(labels).unique().tolist()) <= {-1.0, 0.0, 1.0} and (labels[0] == 1).any()
    assert not (labels[1] == 1).any()
    torch.manual_seed(1)
    parts = model.rpn_loss_assigned(objectness, deltas, labels, regression, torch.tensor([1.0, 0.5]), cls_only=False)
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)

    # the RPN's dense outputs flatten (image, level, h, w, anchor) into rpn_forward's order
    dense = model.rpn_dense(image_list, features)
    flat = torch.cat([c.reshape(len(images), -1) for c in dense.cls_logits], 1).reshape(-1)
    assert torch.equal(flat, objectness.flatten()) and torch.equal(torch.cat(dense.anchors), anchors[0])

    boxes = torch.cat(proposals)[:20]
    gt = boxes + torch.tensor([3.0, -2, 5, 1])
    encoded = model.encode_roi_boxes(gt, boxes)
    assert torch.allclose(model.decode_roi_boxes(encoded, boxes), gt, atol=1e-3)
    label = torch.full((20,), 1)
    _, roi_deltas = model.roi_outputs(features, [boxes], image_list.image_sizes[:1])
    decoded = model.decode_roi_boxes(roi_deltas.reshape(20, -1, 4)[:, 2], boxes)
    refined = model.refine_boxes(features, [boxes], [label], image_list.image_sizes[:1])[0]
    h, w = image_list.image_sizes[0]
    assert torch.allclose(decoded.clamp(min=0).minimum(torch.tensor([w, h, w, h])), refined, atol=1e-4)


def test_fcos_pseudo_threshold_keeps_the_boxes_mixpl_keeps_at_0_3_on_mmdets_score():
    """ssodkit's FCOS score is √(cls · centerness) (torchvision); MixPL's τ 0.3 is on mmdet's
    cls · centerness. The default τ must keep exactly the boxes whose cls · ctr exceeds 0.3."""
    from ssodkit.pseudo.filters import above_threshold

    model = tiny("fcos")
    cls, ctr = torch.rand(1, 500, 3), torch.rand(1, 500, 1)
    scores = model.class_scores({"cls_logits": torch.logit(cls), "bbox_ctrness": torch.logit(ctr)})
    mmdet_score = cls * ctr
    kept = above_threshold(scores, torch.tensor(model.default_pseudo_thr))
    near = (mmdet_score - 0.3).abs() < 1e-5  # float ties either way
    assert torch.equal(kept[~near], (mmdet_score > 0.3)[~near])
    assert int((scores > 0.3).sum()) > int(kept.sum())  # 0.3 on this scale keeps far more


def test_retinanet_loss_norm_image_is_torchvisions_and_batch_is_mmdets():
    """image: mean over images of loss_i / fg_i; batch: Σ loss_i / Σ fg_i (mmdet's avg_factor)."""
    img, target = square_scene()
    other = torch.rand(3, 128, 128)
    other_t = {"boxes": torch.tensor([[5.0, 5, 50, 50], [60, 60, 120, 110], [70, 10, 110, 40]]),
               "labels": torch.tensor([1, 2, 0])}
    results = {}
    for norm in ("image", "batch"):
        model = tiny("retinanet", loss_norm=norm).eval()
        counts: list[int] = []
        original = model.match

        def counting(targets, anchors, per_level, original=original, counts=counts):
            matched = original(targets, anchors, per_level)
            counts.extend(int((m >= 0).sum()) for m in matched)
            return matched

        model.match = counting
        singles = [model.loss([i], [t]) for i, t in ((img, target), (other, other_t))]
        n = counts[:2]
        pair = model.loss([img, other], [target, other_t])
        results[norm] = (singles, n, pair)
    singles, n, pair = results["image"]
    assert n[0] != n[1]  # otherwise the two rules agree
    for k in pair:
        assert torch.allclose(pair[k], (singles[0][k] + singles[1][k]) / 2, rtol=1e-4)
    singles, n, pair = results["batch"]
    for k in pair:
        assert torch.allclose(pair[k], (n[0] * singles[0][k] + n[1] * singles[1][k]) / (n[0] + n[1]), rtol=1e-4)


def test_roi_scores_sigmoid_reads_each_class_against_background_as_a_sigmoid_focal_head_is_trained():
    """`detector.roi_scores`: softmax over K + 1 (torchvision), or sigmoid(z_k − z_0) per class
    with background 1 − the best class; predictions carry the chosen scores."""
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 1.0, 3.0]])
    softmax = tiny("faster_rcnn", num_classes=2)
    assert torch.allclose(softmax.class_probs(logits), torch.softmax(logits, -1))
    sigmoid = tiny("faster_rcnn", num_classes=2, roi_scores="sigmoid")
    classes = torch.sigmoid(logits[:, 1:] - logits[:, :1])
    expected = torch.cat([1 - classes.max(-1, keepdim=True).values, classes], -1)
    assert torch.allclose(sigmoid.class_probs(logits), expected)
    sigmoid.load_state_dict(softmax.state_dict())
    sigmoid.eval(), softmax.eval()
    image = [torch.rand(3, 64, 64)]
    features = softmax.features(image)
    proposals = softmax.proposals(*features)
    raw, _ = softmax.roi_outputs(features[1], proposals, features[0].image_sizes)
    (det,) = sigmoid.predict(image)
    scores = torch.sigmoid(raw[:, 1:] - raw[:, :1]).flatten()
    assert len(det) > 0 and all(torch.isclose(scores, s).any() for s in det.scores)
