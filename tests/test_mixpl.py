"""MixPL method: cache rules, thresholds after mixing, loss weights, exact resume."""

from __future__ import annotations

import copy

import pytest
import torch

from ssodkit.detectors import DetectorConfig, build_detector
from ssodkit.errors import ConfigError
from ssodkit.methods.base import ModelHandle, ViewBatch
from ssodkit.methods.mixpl import MixPL
from ssodkit.mixing import MixItem
from ssodkit.views.geometry import identity_matrix


def _batch(images, boxes=None):
    n = len(images)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * n
    if boxes is not None:
        targets = [{"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.long)}] * n
    return ViewBatch(images, targets, [identity_matrix()] * n, list(range(n)), [{} for _ in range(n)])


def _mixpl(tiny_config, **params):
    cfg = tiny_config(method__name="mixpl", train__unlabeled_batch_size=2,
                      **{f"method__{k}": v for k, v in params.items()})
    method = MixPL.from_config(cfg, ["a", "b"])
    detector = build_detector(DetectorConfig(name="fcos", backbone="resnet18", fpn_channels=64, head_convs=1), 2)
    method.check_detector(detector)
    return method, detector


def test_cache_smaller_than_unlabeled_batch_plus_four_is_refused_at_start_up(tiny_config):
    with pytest.raises(ConfigError, match=r"method.cache_size = 5: must be ≥ unlabeled batch size \+ 4 = 6"):
        _mixpl(tiny_config, cache_size=5)


def test_mixing_starts_when_the_cache_is_full_and_mosaic_is_weighted_half_beta(tiny_config):
    method, student = _mixpl(tiny_config, cache_size=6, score_thr=0.0, erase=False)
    teacher = copy.deepcopy(student).eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 128)]
    labeled = _batch(images[:1], torch.tensor([[10.0, 10, 50, 50]]))
    seen = []
    for it in range(4):
        losses = method.step(ModelHandle(student), teacher, labeled, {"weak": _batch(images), "strong": _batch(images)}, it)
        seen.append((method.stats["cache_full"], any(k.startswith("unsup_mosaic") for k in losses)))
        assert len(method.cache) == min(6, 2 * (it + 1))
    assert seen == [(0.0, False), (0.0, False), (0.0, False), (1.0, True)]


class UnitLossStudent:
    """Stands in for the student: every loss call returns 1, so the weights show."""

    def loss(self, images, targets, **kwargs):
        return {"loss_cls": torch.tensor(1.0)}


def test_mixup_loss_is_weighted_beta_and_mosaic_half_beta(tiny_config):
    method, student = _mixpl(tiny_config, cache_size=6, score_thr=0.0, erase=False, unsup_weight=2.0)
    teacher = copy.deepcopy(student).eval()
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 128)]
    unlabeled = {"weak": _batch(images), "strong": _batch(images)}
    for it in range(3):
        method.unsupervised_loss(UnitLossStudent(), teacher, unlabeled, it)
    losses = method.unsupervised_loss(UnitLossStudent(), teacher, unlabeled, 3)
    assert float(losses["unsup_mixup_loss_cls"]) == pytest.approx(2.0)
    assert float(losses["unsup_mosaic_loss_cls"]) == pytest.approx(0.5 * 2.0)


def test_pseudo_scores_are_kept_through_mixing_and_thresholded_after(tiny_config):
    method, _ = _mixpl(tiny_config, cache_size=6, score_thr=0.5, erase=False)
    low = MixItem(torch.rand(3, 64, 64), torch.tensor([[5.0, 5, 30, 30]]), torch.tensor([0]), torch.tensor([0.4]))
    high = MixItem(torch.rand(3, 64, 64), torch.tensor([[10.0, 10, 40, 40]]), torch.tensor([1]), torch.tensor([0.9]))
    method.update_cache([low, high, low, high, low, high])
    assert all(len(i) == 1 for i in method.cache)  # the cache keeps sub-threshold boxes
    mixed = method.mixup_batch([low, high])
    assert sorted(len(m) for m in mixed) >= [1, 1] and any(float(m.scores.min()) < 0.5 for m in mixed)
    from ssodkit.mixing import filter_scores

    assert all(bool((filter_scores(m, 0.5).scores > 0.5).all()) for m in mixed)


def test_resume_restores_the_cache_and_training_continues_identically(tiny_config):
    from tests.test_trainer import StopAfter, train

    overrides = dict(method__name="mixpl", train__unlabeled_batch_size=2, schedule__iters=5,
                     method__cache_size=6, method__score_thr=0.05)
    straight, _ = train(tiny_config(output__name="mixpl", **overrides))
    interrupted = StopAfter(tiny_config(output__name="mixpl_stop", **overrides))
    try:
        first = interrupted.run()
    finally:
        interrupted.close()
    assert len(interrupted.method.cache) == 6  # full when the run stopped
    resumed, _ = train(tiny_config(output__name="mixpl_stop", **overrides), resume=first.run_dir)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.method.cache, resumed.method.cache):
        assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)


class RecordingStudent:
    """Stands in for the student and keeps the targets each loss call was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, torch.Tensor]] = []

    def loss(self, images, targets, image_weights=None, **kwargs):
        self.calls.append((targets, image_weights))
        return {"loss_cls": torch.tensor(1.0)}


def test_users_filters_and_class_thresholds_apply_to_the_mixed_boxes(tiny_config):
    """MixPL's pseudo-labels come from the one pseudo-labeler: `class_score_thr` and
    `filters` act after mixing, never silently ignored; so does the empty-image rule."""
    method, _ = _mixpl(tiny_config, cache_size=6, score_thr=0.3, class_score_thr={"b": 0.95},
                       filters=["score", "class_agnostic_nms"])
    boxes = torch.tensor([[5.0, 5, 30, 30], [5.0, 5, 30, 31], [40.0, 40, 60, 60]])
    item = MixItem(torch.rand(3, 64, 64), boxes, torch.tensor([0, 0, 1]), torch.tensor([0.8, 0.7, 0.9]))
    only_b = MixItem(torch.rand(3, 64, 64), boxes[2:], torch.tensor([1]), torch.tensor([0.9]))
    student = RecordingStudent()
    method.loss_on_items(student, [item, only_b], 1.0, "plain")
    (targets, weights), = student.calls
    assert targets[0]["labels"].tolist() == [0]  # NMS merged the pair; class b needs 0.95
    assert targets[1]["labels"].numel() == 0 and weights.tolist() == [1.0, 0.0]  # left empty: weight 0
