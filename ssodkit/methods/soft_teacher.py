"""Soft Teacher (Xu et al., ICCV 2021), for two-stage detectors (Faster R-CNN).

The Mean Teacher pipeline with three target sets cut from the teacher's weak-view
detections (score > 0.5, per-image empty rule, projected into the strong view):
- RPN: class-agnostic boxes with score > `rpn_pseudo_thr`;
- RoI classification: boxes with score > `cls_pseudo_thr`, the student's own proposals
  sampled as usual, background RoIs weighted by the teacher's background probability
  (`BackgroundReliability`) and the loss divided by Σ weights;
- RoI regression: boxes whose box-jitter uncertainty is < `reg_pseudo_thr` (`BoxJitter`),
  with its own RoI sampling, keeping only the box loss.
All three share one student forward of backbone + RPN on the strong view. The teacher runs
once on the weak view; its features also serve the two filters. Follows microsoft/SoftTeacher
`ssod/models/soft_teacher.py` (mmdetection 3.x `SoftTeacher` is the same port).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from ssodkit.detectors.base import per_sample_weights
from ssodkit.detectors.protocol import Target, TwoStage
from ssodkit.methods.base import ModelHandle, ViewBatch, prefixed
from ssodkit.methods.teacher_student import TeacherStudent, TeacherStudentParams
from ssodkit.plugins import build_filter
from ssodkit.pseudo.labels import PseudoLabels, as_targets
from ssodkit.pseudo.soft_teacher import (
    JITTER_SCALE,
    JITTER_TIMES,
    REG_PSEUDO_THR,
    BackgroundReliability,
    BoxJitter,
    TeacherView,
)
from ssodkit.rng import derive_seed, seeded_generator


class SoftTeacherParams(TeacherStudentParams):
    unsup_weight: float = Field(4.0, ge=0, description="β (official: 4)")
    score_thr: float | None = Field(0.5, ge=0, le=1, description="initial filter on teacher scores (official: 0.5)")
    rpn_pseudo_thr: float = Field(0.9, ge=0, le=1, description="RPN targets: class-agnostic boxes above this score")
    cls_pseudo_thr: float = Field(0.9, ge=0, le=1, description="RoI classification targets: boxes above this score")
    reg_pseudo_thr: float = Field(REG_PSEUDO_THR, ge=0, description="RoI regression targets: box-jitter uncertainty below this")
    jitter_times: int = Field(JITTER_TIMES, ge=2, description="jittered copies per box (a std needs two)")
    jitter_scale: float = Field(JITTER_SCALE, ge=0, description="jitter std as a fraction of box width/height")


class SoftTeacher(TeacherStudent):
    name = "soft_teacher"
    requires: ClassVar[frozenset[type]] = frozenset({TwoStage})
    Params: ClassVar[type[BaseModel]] = SoftTeacherParams
    teacher_defaults: ClassVar[dict[str, Any]] = {"momentum": 1e-3}  # official: keep-rate 0.999

    def __init__(self, params: SoftTeacherParams, cfg: Any, class_names: list[str]) -> None:
        super().__init__(params, cfg, class_names)
        self.box_jitter: BoxJitter | None = None
        self.reliability: BackgroundReliability | None = None

    def check_detector(self, detector: nn.Module) -> None:
        super().check_detector(detector)
        self.box_jitter = build_filter("box_jitter", self.params, self.class_names)
        self.reliability = build_filter("reliability", self.params, self.class_names)

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def teacher_view(self, teacher: nn.Module, weak: ViewBatch) -> tuple[TeacherView, PseudoLabels]:
        """One teacher pass on the weak view: its features (kept for the filters) and its
        detections after the pseudo-labeler's filters (the initial score threshold); the
        empty-image rule comes after projection."""
        teacher.eval()
        model = ModelHandle(teacher).two_stage
        image_list, features = model.features(weak.images)
        detections = model.detect(image_list, features, model.proposals(image_list, features))
        view = TeacherView(model, image_list, features, weak.matrices)
        return view, self.pseudo_labeler.filter(PseudoLabels.from_detections(detections), observe=True)

    def jitter_generator(self, weak: ViewBatch, it: int) -> torch.Generator:
        """Seeded by run seed, iteration and image ids: reproducible, exact on resume, and
        different on every rank without knowing the rank."""
        return seeded_generator(derive_seed(self.cfg.train.seed, it, *map(int, weak.image_ids)))

    # ------------------------------------------------------------------ losses
    def unsupervised_loss(
        self, student: ModelHandle, teacher: nn.Module, unlabeled: dict[str, ViewBatch], it: int
    ) -> dict[str, Tensor]:
        assert self.box_jitter is not None and self.reliability is not None
        p: SoftTeacherParams = self.params
        weak, strong = unlabeled["weak"], unlabeled["strong"]
        view, pseudo = self.teacher_view(teacher, weak)
        labeler = self.pseudo_labeler
        projected = labeler.empty_rule(labeler.project(pseudo, weak, strong))
        self.record_pseudo_stats(projected)

        def targets(subset: PseudoLabels) -> list[Target]:
            # projection is per box, so projecting a subset = taking the subset of the projection
            return [as_targets(d) for d in labeler.project_all(subset.detections, weak, strong)]

        rpn = targets(pseudo.map(lambda d: d[d.scores > p.rpn_pseudo_thr]))
        cls = targets(pseudo.map(lambda d: d[d.scores > p.cls_pseudo_thr]))
        reg = targets(self.box_jitter(pseudo, view, self.jitter_generator(weak, it)))
        n = len(strong)
        for key, subset in (("rpn", rpn), ("cls", cls), ("reg", reg)):
            self.stats[f"pseudo_{key}_per_image"] = sum(len(t["boxes"]) for t in subset) / n
        if float(projected.weights.sum()) == 0:
            return {}
        losses = self.soft_teacher_loss(student, strong, projected.weights, rpn, cls, reg, view)
        return prefixed(losses, "unsup", p.unsup_weight)

    def soft_teacher_loss(
        self,
        student: ModelHandle,
        strong: ViewBatch,
        weights: Tensor,
        rpn_targets: list[Target],
        cls_targets: list[Target],
        reg_targets: list[Target],
        teacher: TeacherView,
    ) -> dict[str, Tensor]:
        """RPN, reliability-weighted RoI classification and RoI box losses on the strong view
        (unweighted by β); `weights` are the per-image weights of the empty-image rule."""
        assert self.reliability is not None
        model = student.two_stage
        image_list, features = model.features(strong.images)
        sizes = image_list.image_sizes
        objectness, deltas, anchors, proposals = model.rpn_forward(image_list, features)
        losses = model.rpn_loss(objectness, deltas, anchors, rpn_targets, weights, cls_only=False)

        rois, labels, regression = model.sample_rois(proposals, cls_targets)
        roi_weights = per_sample_weights(weights, [r.shape[0] for r in rois])
        roi_weights = roi_weights * self.reliability(teacher, rois, labels, strong.matrices)
        losses["loss_cls"] = model.roi_losses(features, rois, sizes, labels, regression, roi_weights)["loss_cls"]

        rois, labels, regression = model.sample_rois(proposals, reg_targets)
        roi_weights = per_sample_weights(weights, [r.shape[0] for r in rois])
        losses["loss_box"] = model.roi_losses(features, rois, sizes, labels, regression, roi_weights)["loss_box"]
        return losses
