"""Shared teacher-student plumbing (Mean Teacher for detection, "DetMeanTeacher").

One iteration: supervised loss on the labeled view; the `PseudoLabeler` turns the EMA
teacher's boxes on the weak view into strong-view targets (filters, projection `M_s · M_w⁻¹`
with erased boxes dropped, the empty-image rule); the student learns them on the strong
view. The trainer owns the teacher (its EMA and burn-in); subclasses change the
unsupervised loss, not this pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ssodkit.methods.base import Method, ModelHandle, ViewBatch, prefixed
from ssodkit.pseudo.labeler import PseudoLabeler, PseudoLabelParams
from ssodkit.pseudo.labels import PseudoLabels, as_targets


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


class StudentParams(BaseModel):
    """What every teacher-student method sets: the unsupervised weight and how the student's
    BatchNorm treats the unlabeled forwards."""

    model_config = ConfigDict(extra="forbid")

    unsup_weight: float = Field(2.0, ge=0, description="β: L = L_s + β·L_u")
    unlabeled_bn_stats: Literal["freeze", "running", "update"] = Field(
        "freeze",
        description="student BatchNorm on unlabeled views: batch statistics without updating the running ones "
        "(freeze), the running statistics as in eval mode (running), or plain training mode (update)",
    )


class TeacherStudentParams(StudentParams, PseudoLabelParams):
    """Mean Teacher defaults (MixPL's DetMeanTeacher, see docs/methods/mean_teacher.md)."""


class TeacherStudent(Method):
    """Base of every teacher-student method; as is, it is Mean Teacher."""

    uses_teacher: ClassVar[bool] = True
    unlabeled_views: ClassVar[tuple[str, ...]] = ("weak", "strong")
    Params: ClassVar[type[BaseModel]] = TeacherStudentParams
    unsup_cls_only: ClassVar[bool] = False
    focal: ClassVar[bool] = False

    def __init__(self, params: TeacherStudentParams, cfg: Any, class_names: list[str]) -> None:
        super().__init__(params, cfg, class_names)

    def check_detector(self, detector: nn.Module) -> None:
        self.labeler = PseudoLabeler(self.params, self.class_names, detector)

    @property
    def pseudo_labeler(self) -> PseudoLabeler:
        assert self.labeler is not None, "check_detector() builds the pseudo-labeler"
        return self.labeler

    # ------------------------------------------------------------------ losses
    def supervised_loss(self, student: ModelHandle, labeled: ViewBatch) -> dict[str, Tensor]:
        return prefixed(student.loss(labeled.images, labeled.targets, focal=self.focal), "sup")

    def unsupervised_loss(
        self, student: ModelHandle, teacher: nn.Module, unlabeled: dict[str, ViewBatch], it: int
    ) -> dict[str, Tensor]:
        strong = unlabeled["strong"]
        pseudo = self.pseudo_labeler(teacher, unlabeled["weak"], strong)
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
        self.stats["pseudo_empty_frac"] = sum(c == 0 for c in pseudo.counts) / n

    def record_threshold_stats(self) -> None:
        """The τ an adaptive `threshold_policy` chose this step (`thr/…`; none when fixed)."""
        for key in [k for k in self.stats if k.startswith("thr/")]:
            del self.stats[key]
        self.stats.update(self.pseudo_labeler.stats)

    def step(
        self,
        student: ModelHandle,
        teacher: nn.Module | None,
        labeled: ViewBatch,
        unlabeled: dict[str, ViewBatch] | None,
        it: int,
    ) -> dict[str, Tensor]:
        losses = self.supervised_loss(student, labeled)
        if unlabeled is None or teacher is None:  # burn-in
            return losses
        with unlabeled_batchnorm(student.module, self.params.unlabeled_bn_stats):
            losses.update(self.unsupervised_loss(student, teacher, unlabeled, it))
        if self.labeler is not None:
            self.record_threshold_stats()
        return losses

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """The pseudo-labeler's state (an adaptive threshold's score buffers)."""
        return {"labeler": self.labeler.state_dict()} if self.labeler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.labeler is not None and "labeler" in state:
            self.labeler.load_state_dict(state["labeler"])
