"""`DenseOutputs.detector_loss`: the one-stage heads' own loss on outputs already computed,
with cells left out (the seam U2PL-det trains its unreliable cells through)."""

from __future__ import annotations

import pytest
import torch

from ssodkit.detectors import DetectorConfig, build_detector

SMALL = {"backbone": "resnet18", "fpn_channels": 64, "head_convs": 1}


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector(DetectorConfig(name=name, **SMALL), 3).eval()  # eval: no BN batch statistics


def scene() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(1)
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 112)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 90]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[30.0, 30, 90, 80]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def level_cls_outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    """The classifier conv's `[N, A·K, H, W]` outputs, one per level, of the next forward."""
    seen: list[torch.Tensor] = []
    model.head.classification_head.cls_logits.register_forward_hook(lambda module, args, out: seen.append(out))
    return seen


def cls_grad(loss: torch.Tensor, levels: list[torch.Tensor], k: int) -> torch.Tensor:
    """d loss / d logits as `[N, Σ cells, K]`, the layout of the detector's loss."""
    grads = torch.autograd.grad(loss, levels, retain_graph=True)
    return torch.cat([g.view(g.shape[0], -1, k, *g.shape[-2:]).permute(0, 3, 4, 1, 2).flatten(1, 3) for g in grads], 1)


def as_levels(flat: torch.Tensor, dense) -> list[torch.Tensor]:
    """`[N, Σ cells]` → per level `[N, H, W, A]`, the layout of `dense.cls_logits`."""
    shapes = [t.shape[:4] for t in dense.cls_logits]
    sizes = [s[1] * s[2] * s[3] for s in shapes]
    return [chunk.reshape(s) for chunk, s in zip(flat.split(sizes, dim=1), shapes)]


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detector_loss_equals_the_detectors_loss(name):
    model = tiny(name)
    images, targets = scene()
    weights = torch.tensor([1.0, 0.5])
    expected = model.loss(images, targets, image_weights=weights)
    dense = model.dense(images)
    got = dense.detector_loss(targets, image_weights=weights)
    assert set(got) == set(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    no_cell = [torch.zeros(t.shape[:4], dtype=torch.bool) for t in dense.cls_logits]
    masked = dense.detector_loss(targets, image_weights=weights, ignore=no_cell)
    assert all(torch.equal(masked[k], expected[k]) for k in expected)
    assert set(dense.detector_loss(targets, cls_only=True)) == {"loss_cls"}


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_ignored_cells_get_no_gradient_and_the_others_keep_theirs(name):
    """Ignoring background cells leaves every other cell's gradient as it was (the
    positives' normaliser is unchanged); ignoring a positive drops its box terms too."""
    model = tiny(name)
    images, targets = scene()
    seen = level_cls_outputs(model)
    dense = model.dense(images)
    levels = list(seen)
    _, _, anchors, per_level = model.dense_forward(images)
    matched = torch.stack(model.match(targets, anchors, per_level))
    positive = matched >= 0
    assert positive.any()
    torch.manual_seed(2)
    ignore_flat = (torch.rand(positive.shape) < 0.3) & (matched == -1)
    ignore = as_levels(ignore_flat, dense)

    full = dense.detector_loss(targets)
    g_full = cls_grad(full["loss_cls"], levels, 3)
    part = dense.detector_loss(targets, ignore=ignore)
    g_part = cls_grad(part["loss_cls"], levels, 3)
    assert g_part[ignore_flat].abs().max() == 0 and g_full[ignore_flat].abs().max() > 0
    assert torch.allclose(g_part[~ignore_flat], g_full[~ignore_flat], rtol=1e-5, atol=1e-9)
    assert torch.equal(part["loss_box"], full["loss_box"])

    # every positive ignored: no box term is left and nothing trains them
    none_left = dense.detector_loss(targets, ignore=as_levels(positive, dense))
    assert float(none_left["loss_box"].detach()) == 0.0
    g_pos = cls_grad(none_left["loss_cls"], levels, 3)
    assert g_pos[positive].abs().max() == 0


def test_an_ignore_mask_of_the_wrong_grid_is_refused():
    model = tiny("fcos")
    images, targets = scene()
    dense = model.dense(images)
    wrong = [torch.zeros(1, *t.shape[1:4], dtype=torch.bool) for t in dense.cls_logits]
    with pytest.raises(ValueError, match="ignore covers"):
        dense.detector_loss(targets, ignore=wrong)


def test_the_rpn_offers_no_detector_loss():
    model = tiny("faster_rcnn")
    images, _ = scene()
    assert model.dense(images).detector_loss is None


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_class_logits_are_torchvisions_and_the_tower_features_are_kept(name):
    model = tiny(name)
    images, _ = scene()
    _, features = model.batch(images)
    head = model.head.classification_head
    outputs = model.head_forward(features)
    assert torch.equal(outputs["cls_logits"], head(features))
    dense = model.dense(images)
    for level, feats in zip(features, dense.cls_features):
        tower = head.conv(level)  # [N, C, H, W]
        assert feats.shape == (tower.shape[0], *tower.shape[2:], 1, tower.shape[1])
        assert torch.equal(feats[:, :, :, 0], tower.permute(0, 2, 3, 1))


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_dense_outputs_detections_are_predict_on_the_same_outputs(name):
    """One teacher pass gives cells and boxes: `dense(images).detections()` is `predict(images)`."""
    torch.manual_seed(0)
    detector = build_detector(DetectorConfig(name=name, backbone="resnet18", fpn_channels=64, head_convs=1,
                                             score_thresh=0.0), 3).eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 112)]
    with torch.no_grad():
        expected, dense = detector.predict(images), detector.dense(images)
        got = dense.detections()
    assert [len(d) for d in got] == [100, 100]
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.labels, b.labels) and torch.equal(a.probs, b.probs)
