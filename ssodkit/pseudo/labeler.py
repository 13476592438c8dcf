"""The one owner of pseudo-labels: teacher predict → filters → projection → empty-image rule.

Every method that learns from the teacher's boxes (Mean Teacher, Unbiased Teacher, Soft
Teacher, MixPL) gets them here, and so do the training run's pseudo-label quality log,
`ssodkit pseudolabel`, `stats pseudo` and `stats grad`: one threshold, resolved once at
start-up (`resolve_score_thr`), and one comparison rule (`above_threshold`, score > τ).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ssodkit.detectors.protocol import Detections
from ssodkit.erasing import DROP_COVERED
from ssodkit.pseudo.filters import AGNOSTIC_NMS_IOU, FilterChain, build_filter_chain
from ssodkit.pseudo.labels import PseudoLabels, project_detections

if TYPE_CHECKING:
    from ssodkit.config import RunConfig
    from ssodkit.methods.base import ViewBatch

DEFAULT_SCORE_THR = 0.5  # for detectors that do not declare their own `default_pseudo_thr`
EmptyImages = Literal["per_image", "batch_all", "batch_any", "none"]


class PseudoLabelParams(BaseModel):
    """The pseudo-label settings of a method that thresholds its teacher's boxes."""

    model_config = ConfigDict(extra="forbid")

    score_thr: float | None = Field(
        None, ge=0, le=1, description="τ: keep boxes scoring > τ; None = the detector's default (CE 0.7, focal 0.4, FCOS √0.3)"
    )
    class_score_thr: dict[str, float] | None = Field(None, description="per-class τ by class name")
    filters: list[str] = Field(
        default_factory=lambda: ["score"],
        description="pseudo-label filters in order (ssodkit plugins lists them; e.g. add class_agnostic_nms)",
    )
    agnostic_nms_iou: float = Field(AGNOSTIC_NMS_IOU, gt=0, le=1, description="IoU of the class_agnostic_nms filter")
    drop_covered: float | None = Field(
        DROP_COVERED, ge=0, le=1, description="drop pseudo boxes this much erased; null keeps them all"
    )
    empty_images: EmptyImages = Field(
        "per_image",
        description="what an image left with no pseudo box does: adds no unsupervised loss (per_image); "
        "zeroes the whole batch's unless every image keeps a box (batch_all, MixPL's code); zeroes it only "
        "when no image keeps one (batch_any, mmdet's); trains as all background (none)",
    )

    @field_validator("filters")
    @classmethod
    def _no_empty_image_filter(cls, value: list[str]) -> list[str]:
        if "empty_image" in value:
            raise ValueError(
                "the empty-image rule is not a filter: it is method.empty_images (per_image, batch_all, batch_any or none)"
            )
        return value


def resolve_score_thr(score_thr: float | None, detector: Any) -> float:
    """τ as given, or the detector's default for its score scale (None → detector)."""
    if score_thr is not None:
        return float(score_thr)
    return float(getattr(detector, "default_pseudo_thr", DEFAULT_SCORE_THR))


def run_param(cfg: RunConfig, name: str, default: Any) -> Any:
    """A pseudo-label setting as the run trained with it: set in its config, else its
    method's own default (Soft Teacher's τ is 0.5), else `default` (the detector's)."""
    value = cfg.method.params.get(name)
    if value is None:
        from pydantic import ValidationError

        from ssodkit.errors import SsodkitError
        from ssodkit.plugins import method_class

        try:
            method = method_class(cfg.method.name)
            value = getattr(method.Params.model_validate(cfg.method.params), name, None)
        except (SsodkitError, ValidationError):  # a method no longer installed, or changed: fall back
            value = None
    return default if value is None else value


def run_score_thr(cfg: RunConfig, detector: Any, score_thr: float | None = None) -> float:
    """τ for a trained run's model: `score_thr` if given, else the run's (`run_param`), else
    the detector's default — what its pseudo-labeler kept."""
    return resolve_score_thr(score_thr if score_thr is not None else run_param(cfg, "score_thr", None), detector)


def apply_empty_image_rule(pseudo: PseudoLabels, rule: EmptyImages) -> PseudoLabels:
    """Zero the loss weight of images left without a pseudo box.

    Without a rule, one-stage detectors learn that unlabeled images are all background and
    collapse (MixPL Table 1a: RetinaNet 17.9 → 34.1 AP). The references differ in scope:
    `per_image` zeroes only the empty images; MixPL's fork (`least_num` 1) zeroes the whole
    batch unless every image keeps a box (`batch_all`); mmdet zeroes the batch only when no
    image keeps one (`batch_any`), so an empty image beside a labelled one trains as background.
    The batch is the device's batch."""
    if rule == "none" or not pseudo.counts:
        return pseudo
    has_box = torch.tensor(pseudo.counts, device=pseudo.weights.device) > 0
    if rule == "per_image":
        keep = has_box
    elif rule == "batch_all":
        keep = has_box.all().expand_as(has_box)
    else:  # batch_any
        keep = has_box.any().expand_as(has_box)
    return PseudoLabels(pseudo.detections, pseudo.weights * keep.float())


class PseudoLabeler:
    """Turns a teacher's view of unlabeled images into the student's targets.

    `__call__` runs the whole path; methods that need a step on its own (MixPL thresholds
    after mixing; Soft Teacher keeps its teacher's features) call the steps by name.
    """

    def __init__(self, params: PseudoLabelParams, class_names: list[str], detector: Any = None) -> None:
        self.params = params
        resolved = params.model_copy(update={"score_thr": resolve_score_thr(params.score_thr, detector)})
        self.filters: FilterChain = build_filter_chain(params.filters, resolved, class_names)

    @torch.no_grad()
    def predict(self, teacher: nn.Module, weak: ViewBatch) -> list[Detections]:
        """The teacher's detections on the weak view, in eval mode, without gradients."""
        teacher.eval()
        return teacher("predict", weak.images)

    def filter(self, pseudo: PseudoLabels) -> PseudoLabels:
        """The configured filters in order (score threshold first, by default alone)."""
        return self.filters(pseudo)

    def keep(self, detections: Detections) -> Detections:
        """One image's detections narrowed by the filters (no projection, no weights)."""
        return self.filter(PseudoLabels.from_detections([detections])).detections[0]

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
        """Pseudo-labels moved into the strong view; weights unchanged."""
        return PseudoLabels(self.project_all(pseudo.detections, weak, strong), pseudo.weights.clone())

    def empty_rule(self, pseudo: PseudoLabels) -> PseudoLabels:
        return apply_empty_image_rule(pseudo, self.params.empty_images)

    def select(self, detections: list[Detections]) -> PseudoLabels:
        """Filters and the empty-image rule on boxes already in the student's view (MixPL's
        mixed images, thresholded after mixing as in its paper)."""
        return self.empty_rule(self.filter(PseudoLabels.from_detections(detections)))

    def label(self, detections: list[Detections], weak: ViewBatch, strong: ViewBatch) -> PseudoLabels:
        """Filters → projection into the strong view → empty-image rule."""
        return self.empty_rule(self.project(self.filter(PseudoLabels.from_detections(detections)), weak, strong))

    def __call__(self, teacher: nn.Module, weak: ViewBatch, strong: ViewBatch) -> PseudoLabels:
        return self.label(self.predict(teacher, weak), weak, strong)


def resolve_for_detector(cfg: RunConfig, detector: Any) -> RunConfig:
    """The run config with a method's `score_thr: null` replaced by the detector's default —
    the one place it is resolved, at start-up, so that `config.yaml` records the value used."""
    from ssodkit.config import MethodConfig

    params = cfg.method.params
    if "score_thr" not in params or params["score_thr"] is not None:
        return cfg
    resolved = {**params, "score_thr": resolve_score_thr(None, detector)}
    return cfg.model_copy(update={"method": MethodConfig(name=cfg.method.name, **resolved)})
