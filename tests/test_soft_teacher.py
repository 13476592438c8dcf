"""Soft Teacher: reliability weights, box-jitter uncertainty, empty images, training, refusal."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList

from ssodkit.detectors import DetectorConfig, build_detector
from ssodkit.detectors.protocol import Detections
from ssodkit.errors import CapabilityError
from ssodkit.methods.base import ModelHandle, ViewBatch
from ssodkit.methods.soft_teacher import SoftTeacher
from ssodkit.pseudo.labels import PseudoLabels
from ssodkit.pseudo.soft_teacher import BoxJitter, TeacherView
from ssodkit.views.geometry import hflip_matrix, identity_matrix, resize_matrix

CLASSES = ["a", "b", "c"]


def tiny_frcnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_detector(DetectorConfig(name="faster_rcnn", backbone="resnet18", fpn_channels=64), len(CLASSES))


def view_batch(images: list[torch.Tensor], matrix: torch.Tensor) -> ViewBatch:
    n = len(images)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    return ViewBatch(images, [empty] * n, [matrix] * n, list(range(n)), [{} for _ in range(n)])


def soft_teacher(tiny_config, **params) -> SoftTeacher:
    cfg = tiny_config(method__name="soft_teacher", detector__name="faster_rcnn",
                      **{f"method__{k}": v for k, v in params.items()})
    return SoftTeacher.from_config(cfg, CLASSES)


def fixed_teacher(detections: list[Detections], seed: int = 1) -> torch.nn.Module:
    """A real Faster R-CNN teacher whose detections are given (features and RoI head stay real)."""
    teacher = tiny_frcnn(seed).eval()
    teacher.detect = lambda image_list, features, proposals: [d.to(features["0"].device) for d in detections]
    return teacher


class Recording(ModelHandle):
    """The student handle, remembering every call that reaches the module's forward, and its result."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(module)
        self.calls: list[tuple[str, tuple, object]] = []
        module.register_forward_hook(lambda _, args, out: self.calls.append((args[0], args[1:], out)))


# --------------------------------------------------------------------------- reliability


def test_cls_weights_are_teacher_background_probs_and_loss_divides_by_their_sum(tiny_config):
    """Background RoIs weigh the teacher's background probability of the RoI mapped into the
    weak view (M_w·M_s⁻¹); foreground RoIs weigh 1; L_cls = Σ w·CE / Σ w."""
    method = soft_teacher(tiny_config)
    student = tiny_frcnn(0).eval()
    method.check_detector(student)
    sure = Detections(torch.tensor([[10.0, 12, 50, 60]]), torch.tensor([0.95]), torch.tensor([2]))
    teacher = fixed_teacher([sure])
    weak_img = torch.rand(3, 96, 96)
    # strong view: resize ×2, then flip the 192 px wide image
    m_strong = hflip_matrix(192) @ resize_matrix(2.0, 2.0)
    strong_img = torch.nn.functional.interpolate(weak_img[None], scale_factor=2.0)[0].flip(-1)
    handle = Recording(student)
    losses = method.unsupervised_loss(
        handle, teacher, {"weak": view_batch([weak_img], identity_matrix()),
                          "strong": view_batch([strong_img], m_strong)}, it=0,
    )
    cls_call = [c for c in handle.calls if c[0] == "roi_losses"][0]
    features, rois, sizes, labels, regression, weights = cls_call[1]
    assert (labels > 0).any() and (labels == 0).any()

    # map the strong-view RoIs back into the weak view by hand: x → (192 - x) / 2, y → y / 2
    r = rois[0]
    weak_rois = torch.stack([(192 - r[:, 2]) / 2, r[:, 1] / 2, (192 - r[:, 0]) / 2, r[:, 3] / 2], -1)
    t_list, t_feats = teacher.features([weak_img])
    with torch.no_grad():
        background = F.softmax(teacher.roi_outputs(t_feats, [weak_rois.clamp(0, 96)], t_list.image_sizes)[0], -1)[:, 0]
    expected = torch.where(labels > 0, torch.ones_like(background), background)
    assert torch.allclose(weights, expected, atol=1e-5)

    logits, _ = student.roi_outputs(features, rois, sizes)
    ce = F.cross_entropy(logits, labels, reduction="none")
    by_hand = (weights * ce).sum() / weights.sum()
    assert weights.sum() > 1  # so the official max(Σw, 1) guard is not what we compare
    assert torch.allclose(cls_call[2]["loss_cls"], by_hand, rtol=1e-5)
    assert torch.allclose(losses["unsup_loss_cls"], 4.0 * by_hand, rtol=1e-5)  # β = 4


# --------------------------------------------------------------------------- box jitter


def _jitter_by_hand(boxes: torch.Tensor, times: int, scale: float, seed: int) -> torch.Tensor:
    """Uncertainty when the refinement is the identity: std of the jitter over the mean box size."""
    noise = torch.randn((times, len(boxes), 4), generator=torch.Generator().manual_seed(seed))
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    jittered = boxes + noise * wh * scale
    mean = jittered.mean(0)
    return (jittered.std(0) / (mean[:, 2:] - mean[:, :2]).repeat(1, 2)).mean(-1)


def _view(model, size: int = 128) -> TeacherView:
    image_list, features = model.features([torch.rand(3, size, size)])
    return TeacherView(model, image_list, features, [identity_matrix()])


def test_box_jitter_uncertainty_is_zero_when_the_teacher_undoes_the_jitter():
    boxes = torch.tensor([[20.0, 30, 70, 90], [5, 5, 40, 25]])
    det = Detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]))

    class UndoesJitter:  # refines every jittered copy back to the detection
        def refine_boxes(self, features, jittered, labels, sizes):
            return [boxes.repeat(10, 1)]

    view = TeacherView(UndoesJitter(), ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]), {}, [identity_matrix()])
    jitter = BoxJitter(times=10, scale=0.06, threshold=0.02)
    assert torch.equal(jitter.uncertainty(view, [det])[0], torch.zeros(2))
    kept = jitter(PseudoLabels.from_detections([det]), view)
    assert torch.equal(kept.detections[0].boxes, boxes)  # the detection itself is the target


def test_box_jitter_uncertainty_of_an_identity_refinement_is_the_jitter_spread():
    """Zero box deltas make the teacher's refinement the identity, so the uncertainty is the
    spread of the seeded jitter itself: ≈ scale, kept for a small scale, dropped for 0.06."""
    teacher = tiny_frcnn().eval()
    torch.nn.init.zeros_(teacher.roi_heads.box_predictor.bbox_pred.weight)
    torch.nn.init.zeros_(teacher.roi_heads.box_predictor.bbox_pred.bias)
    view = _view(teacher)
    boxes = torch.tensor([[20.0, 30, 70, 90], [40, 10, 100, 50]])
    pseudo = PseudoLabels.from_detections([Detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 2]))])
    for scale, kept in ((0.06, 0), (0.002, 2)):
        jitter = BoxJitter(times=10, scale=scale, threshold=0.02)
        unc = jitter.uncertainty(view, pseudo.detections, torch.Generator().manual_seed(5))[0]
        assert torch.allclose(unc, _jitter_by_hand(boxes, 10, scale, seed=5), rtol=1e-3, atol=1e-6)
        assert unc.mean() == pytest.approx(scale, rel=0.5)
        out = jitter(pseudo, view, torch.Generator().manual_seed(5))
        assert len(out.detections[0]) == kept


def test_box_jitter_handles_images_without_boxes():
    teacher = tiny_frcnn().eval()
    jitter = BoxJitter(times=10, scale=0.06, threshold=0.02)
    image_list, features = teacher.features([torch.rand(3, 64, 64), torch.rand(3, 64, 64)])
    view = TeacherView(teacher, image_list, features, [identity_matrix()] * 2)
    unc = jitter.uncertainty(view, [Detections.empty(3), Detections.empty(3)])
    assert [u.shape for u in unc] == [torch.Size([0])] * 2


# --------------------------------------------------------------------------- empty images


def test_image_without_pseudo_box_adds_exactly_zero_unsupervised_loss(tiny_config):
    method = soft_teacher(tiny_config, score_thr=1.0)  # no teacher box survives
    student = tiny_frcnn(0)
    method.check_detector(student)
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    batch = {"weak": view_batch(images, identity_matrix()), "strong": view_batch(images, identity_matrix())}
    assert method.unsupervised_loss(ModelHandle(student), copy.deepcopy(student).eval(), batch, it=0) == {}

    # one image with a box, one without: the empty one receives exactly zero gradient
    method = soft_teacher(tiny_config)
    student = tiny_frcnn(0).eval()  # eval-mode BN, so images cannot reach each other
    method.check_detector(student)
    sure = Detections(torch.tensor([[10.0, 12, 50, 60]]), torch.tensor([0.95]), torch.tensor([1]))
    teacher = fixed_teacher([sure, Detections.empty(3)])
    strong = [img.clone().requires_grad_(True) for img in images]
    batch = {"weak": view_batch(images, identity_matrix()), "strong": view_batch(strong, identity_matrix())}
    losses = method.unsupervised_loss(ModelHandle(student), teacher, batch, it=0)
    assert set(losses) == {"unsup_loss_rpn_cls", "unsup_loss_rpn_box", "unsup_loss_cls", "unsup_loss_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert strong[0].grad is not None and strong[0].grad.abs().sum() > 0
    assert strong[1].grad is None or torch.count_nonzero(strong[1].grad) == 0


# --------------------------------------------------------------------------- training and refusal


def test_soft_teacher_trains_a_few_steps_with_finite_loss_terms(tiny_config):
    from ssodkit.engine.metrics import read_metrics
    from tests.test_trainer import train

    cfg = tiny_config(
        method__name="soft_teacher", detector__name="faster_rcnn", train__unlabeled_batch_size=2,
        schedule__iters=3, teacher__burn_in=0, method__score_thr=0.0, method__rpn_pseudo_thr=0.0,
        method__cls_pseudo_thr=0.0,
    )
    trainer, summary = train(cfg)
    assert summary.status == "finished" and summary.iterations == 3 and summary.skipped_steps == 0
    rows = [r for r in read_metrics(summary.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert len(rows) == 3
    for row in rows:
        for key in ("unsup_loss_rpn_cls", "unsup_loss_rpn_box", "unsup_loss_cls", "unsup_loss_box"):
            assert math.isfinite(row[key]), (key, row)
        assert row["pseudo_cls_per_image"] > 0


def test_soft_teacher_on_a_one_stage_detector_is_refused_at_start_up(tiny_config):
    from ssodkit.engine.trainer import Trainer

    with pytest.raises(CapabilityError, match="method 'soft_teacher' needs the two_stage capability"):
        Trainer(tiny_config(method__name="soft_teacher", detector__name="fcos"))


def test_cli_refuses_soft_teacher_on_fcos_in_one_line(cli, tmp_path):
    result = cli("train", "--method", "soft_teacher", "--detector", "fcos", "--runs-dir", str(tmp_path))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert errors == [errors[0]] and errors[0].startswith("error: method 'soft_teacher' needs the two_stage capability")


def test_teacher_side_filters_cannot_be_chained_as_plain_filters():
    from ssodkit.config import build_config
    from ssodkit.errors import ConfigError
    from ssodkit.methods.mean_teacher import MeanTeacher
    from ssodkit.pseudo.filters import build_filter_chain

    for name in ("reliability", "box_jitter"):
        cfg = build_config(None, {"method.name": "mean_teacher"}, [f"method.filters=[score, {name}]"])
        method = MeanTeacher.from_config(cfg, ["a"])
        method.params.score_thr = 0.5
        with pytest.raises(ConfigError, match=f"method.filters: '{name}'"):
            build_filter_chain(method.params.filters, method.params, ["a"])
