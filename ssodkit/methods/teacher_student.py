"""Shared teacher-student plumbing (Mean Teacher for detection, "DetMeanTeacher").

One iteration: supervised loss on the labeled view; the EMA teacher predicts on the weak
view; filters keep confident boxes (and zero the weight of images left empty); the boxes are
projected into the strong view (`M_s · M_w⁻¹`, erased boxes dropped); the student learns
them on the strong view. Subclasses change the unsupervised loss, not this pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ssodkit.detectors.protocol import Detections
from ssodkit.engine.ema import EMA
from ssodkit.methods.base import Method, ModelHandle, ViewBatch, prefixed
from ssodkit.pseudo.filters import AGNOSTIC_NMS_IOU, FilterChain, build_filter_chain
from ssodkit.pseudo.labels import DROP_COVERED, PseudoLabels, as_targets, project_detections

DEFAULT_SCORE_THR = 0.5  # for detectors that do not declare their own


@contextmanager
def unlabeled_batchnorm(module: nn.Module, mode: str) -> Iterator[None]:
    """How the student's BatchNorm layers treat the unlabeled forwards (`unlabeled_bn_stats`).

    `freeze`: batch statistics, running ones untouched (`frozen_bn_statistics`); `running`:
    normalise with the running statistics too, as the teacher does in eval mode — so a
    student that agrees with its teacher also *outputs* the same on the same image (with
    batch statistics the distillation target moves with every batch's composition: on the
    synthetic set half of SED's FCOS distillation loss at step 0 was that difference alone,
    docs/benchmarks.md); `update`: plain training mode.
    """
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = [m.training for m in layers]
    if mode == "running":
        for m in layers:
            m.eval()
    try:
        with frozen_bn_statistics(module, mode == "freeze"):
            yield
    finally:
        for m, training in zip(layers, was_training):
            m.train(training)


@contextmanager
def frozen_bn_statistics(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """BatchNorm normalises with the batch's statistics but keeps its running ones.

    The running statistics are what the teacher copies and what evaluation uses; fed by
    strong views (solarised, inverted, erased) they stop describing real images. Measured on
    the synthetic set: an Unbiased Teacher run's teacher scored 9.2 mAP with the statistics it
    had copied from the student and 18.9 with the same weights and the supervised model's.
    """
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in layers]
    if enabled:
        for m in layers:
            m.momentum = 0.0  # running ← (1 − 0)·running + 0·batch
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


class TeacherStudentParams(BaseModel):
    """Mean Teacher defaults (MixPL's DetMeanTeacher, see docs/methods/mean_teacher.md)."""

    model_config = ConfigDict(extra="forbid")

    unsup_weight: float = Field(2.0, ge=0, description="β: L = L_s + β·L_u")
    score_thr: float | None = Field(
        None, ge=0, le=1, description="τ; None = the detector's default (CE 0.7, focal 0.4, FCOS 0.3)"
    )
    class_score_thr: dict[str, float] | None = Field(None, description="per-class τ by class name")
    filters: list[str] = Field(
        default_factory=lambda: ["score", "empty_image"],
        description="pseudo-label filters in order (ssodkit plugins lists them; e.g. add class_agnostic_nms)",
    )
    agnostic_nms_iou: float = Field(AGNOSTIC_NMS_IOU, gt=0, le=1, description="IoU of the class_agnostic_nms filter")
    drop_covered: float = Field(DROP_COVERED, ge=0, le=1, description="drop pseudo boxes this much erased")
    ema_momentum: float | None = Field(None, gt=0, le=1, description="constant m; None = max(m_min, γ/(γ+t))")
    ema_gamma: float = Field(4.0, gt=0)
    ema_min_momentum: float = Field(2e-4, gt=0, le=1)
    ema_buffers: Literal["copy", "ema", "skip"] = "copy"
    burn_in: int = Field(0, ge=0, description="supervised-only iterations; teacher copies the student")
    unlabeled_bn_stats: Literal["freeze", "running", "update"] = Field(
        "freeze",
        description="student BatchNorm on unlabeled views: batch statistics without updating the running ones "
        "(freeze), the running statistics as in eval mode (running), or plain training mode (update)",
    )


class TeacherStudent(Method):
    """Base of every teacher-student method; as is, it is Mean Teacher."""

    uses_teacher: ClassVar[bool] = True
    unlabeled_views: ClassVar[tuple[str, ...]] = ("weak", "strong")
    Params: ClassVar[type[BaseModel]] = TeacherStudentParams
    unsup_cls_only: ClassVar[bool] = False
    focal: ClassVar[bool] = False

    def __init__(self, params: TeacherStudentParams, cfg: Any, class_names: list[str]) -> None:
        super().__init__(params, cfg, class_names)
        self.ema = EMA(params.ema_momentum, params.ema_gamma, params.ema_min_momentum, params.ema_buffers)
        self.filters: FilterChain | None = None

    # ------------------------------------------------------------------ set-up
    def check_detector(self, detector: nn.Module) -> None:
        p: TeacherStudentParams = self.params
        if p.score_thr is None:
            p.score_thr = float(getattr(detector, "default_pseudo_thr", DEFAULT_SCORE_THR))
        self.filters = build_filter_chain(p.filters, p, self.class_names)

    def update_teacher(self, teacher: nn.Module, student: nn.Module, it: int) -> None:
        if it < self.params.burn_in:
            teacher.load_state_dict(student.state_dict())  # teacher = student when burn-in ends
        else:
            self.ema.update(teacher, student, it - self.params.burn_in)

    # ------------------------------------------------------------------ pseudo-labels
    @torch.no_grad()
    def teacher_predict(self, teacher: nn.Module, weak: ViewBatch) -> list[Detections]:
        teacher.eval()
        return teacher("predict", weak.images)

    def pseudo_labels(self, teacher: nn.Module, weak: ViewBatch) -> PseudoLabels:
        assert self.filters is not None, "check_detector() sets up the filters"
        return self.filters(PseudoLabels.from_detections(self.teacher_predict(teacher, weak)))

    def project_all(self, detections: list[Detections], weak: ViewBatch, strong: ViewBatch) -> list[Detections]:
        """Weak-view boxes → strong view (`M_s · M_w⁻¹`), minus boxes the strong view erased."""
        return [
            project_detections(
                det, weak.matrices[i], strong.matrices[i], tuple(strong.images[i].shape[-2:]),
                strong.extras[i].get("erased") if strong.extras else None, self.params.drop_covered,
            )
            for i, det in enumerate(detections)
        ]

    def project(self, pseudo: PseudoLabels, weak: ViewBatch, strong: ViewBatch) -> PseudoLabels:
        """Weak-view pseudo boxes → strong view; images left empty get weight 0."""
        projected = self.project_all(pseudo.detections, weak, strong)
        counts = torch.tensor([len(d) for d in projected], device=pseudo.weights.device)
        return PseudoLabels(projected, pseudo.weights * (counts > 0).float())

    # ------------------------------------------------------------------ losses
    def supervised_loss(self, student: ModelHandle, labeled: ViewBatch) -> dict[str, Tensor]:
        return prefixed(student.loss(labeled.images, labeled.targets, focal=self.focal), "sup")

    def unsupervised_loss(
        self, student: ModelHandle, teacher: nn.Module, unlabeled: dict[str, ViewBatch], it: int
    ) -> dict[str, Tensor]:
        weak, strong = unlabeled["weak"], unlabeled["strong"]
        pseudo = self.project(self.pseudo_labels(teacher, weak), weak, strong)
        self.record_pseudo_stats(pseudo)
        return self.pseudo_label_loss(student, strong, pseudo)

    def pseudo_label_loss(self, student: ModelHandle, view: ViewBatch, pseudo: PseudoLabels) -> dict[str, Tensor]:
        """β · student loss on `view` against `pseudo`; exactly zero when every image is empty."""
        if float(pseudo.weights.sum()) == 0:
            return {}
        losses = student.loss(
            view.images, [as_targets(d) for d in pseudo.detections],
            image_weights=pseudo.weights, cls_only=self.unsup_cls_only, focal=self.focal,
        )
        return prefixed(losses, "unsup", self.params.unsup_weight)

    def record_pseudo_stats(self, pseudo: PseudoLabels) -> None:
        n = max(1, len(pseudo.detections))
        self.stats["pseudo_per_image"] = sum(pseudo.counts) / n
        self.stats["pseudo_empty_frac"] = float((pseudo.weights == 0).float().mean()) if n else 0.0

    def step(
        self,
        student: ModelHandle,
        teacher: nn.Module | None,
        labeled: ViewBatch,
        unlabeled: dict[str, ViewBatch] | None,
        it: int,
    ) -> dict[str, Tensor]:
        losses = self.supervised_loss(student, labeled)
        if it < self.params.burn_in or unlabeled is None or teacher is None:
            return losses
        with unlabeled_batchnorm(student.module, self.params.unlabeled_bn_stats):
            losses.update(self.unsupervised_loss(student, teacher, unlabeled, it))
        return losses

    def state_dict(self) -> dict[str, Any]:
        return {"score_thr": self.params.score_thr}
