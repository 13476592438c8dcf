"""The one owner of pseudo-labels: teacher predict → filters → projection → empty-image rule.

Every method that learns from the teacher's boxes (Mean Teacher, Unbiased Teacher, Soft
Teacher, MixPL) gets them here, and so do the training run's pseudo-label quality log,
`ssodkit pseudolabel`, `stats pseudo` and `stats grad`: one threshold, resolved once at
start-up (`resolve_score_thr`), and one comparison rule (`above_threshold`, score > τ).
Where τ comes from is `threshold_policy`: fixed (the default), Consistent Teacher's per-class
GMM or ARSL's per-image mean + std (`ssodkit/pseudo/thresholds.py`); an adaptive policy learns
only from training steps (`filter(observe=True)`) and its state is the method's, saved in
the checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from ssodkit.detectors.protocol import Detections
from ssodkit.erasing import DROP_COVERED
from ssodkit.errors import ConfigError
from ssodkit.pseudo.filters import AGNOSTIC_NMS_IOU, FilterChain, build_filter_chain
from ssodkit.pseudo.labels import PseudoLabels, project_detections
from ssodkit.pseudo.thresholds import (
    GMM_BUFFER,
    GMM_MIN_SCORES,
    GMM_TOPK_RATIO,
    MEAN_STD_CAP_RATIO,
    MEAN_STD_FLOOR_RATIO,
    MEAN_STD_TOPK,
)

if TYPE_CHECKING:
    from ssodkit.config import RunConfig
    from ssodkit.methods.base import ViewBatch

DEFAULT_SCORE_THR = 0.5  # for detectors that do not declare their own `default_pseudo_thr`
EmptyImages = Literal["per_image", "batch_all", "batch_any", "none"]
ThresholdPolicy = Literal["fixed", "gmm", "mean_std"]


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

    threshold_policy: ThresholdPolicy = Field(
        "fixed",
        description="where the score filter's τ comes from: score_thr / class_score_thr (fixed); per class from a "
        "Gaussian mixture of recent teacher scores (gmm, Consistent Teacher); per image mean + std of the "
        "candidate scores (mean_std, ARSL). docs/methods/thresholds.md",
    )
    gmm_buffer: int = Field(
        GMM_BUFFER, ge=GMM_MIN_SCORES, description="gmm: teacher scores kept per class (Consistent Teacher's num_scores)"
    )
    gmm_topk_ratio: float | None = Field(
        GMM_TOPK_RATIO, gt=0,
        description="gmm: per image first keep the int(ratio·Σscores + 0.5) + 1 best boxes (Consistent Teacher's "
        "dynamic_ratio); null = no cut",
    )
    mean_std_floor: float | None = Field(
        None, ge=0, le=1,
        description="mean_std: candidates score ≥ this; null = ARSL's 0.1 on the detector's scale "
        "(τ_default·√(1/3), FCOS √0.1)",
    )
    mean_std_cap: float | None = Field(
        None, ge=0, le=1,
        description="mean_std: τ ≤ this; null = ARSL's 0.4 on the detector's scale (τ_default·√(4/3), FCOS √0.4)",
    )
    mean_std_topk: int = Field(
        MEAN_STD_TOPK, ge=0,
        description="mean_std: when no box is above τ, keep this many best candidates (ARSL: 10 dense points)",
    )

    @field_validator("filters")
    @classmethod
    def _no_empty_image_filter(cls, value: list[str]) -> list[str]:
        if "empty_image" in value:
            raise ValueError(
                "the empty-image rule is not a filter: it is method.empty_images (per_image, batch_all, batch_any or none)"
            )
        return value

    @model_validator(mode="after")
    def _policy_fits(self) -> PseudoLabelParams:
        policy = self.threshold_policy
        if policy != "fixed" and "score" not in self.filters:
            raise ValueError(f"threshold_policy {policy} sets the τ of the 'score' filter, which filters does not list")
        if policy == "mean_std" and self.class_score_thr:
            raise ValueError("class_score_thr sets fixed per-class τ; threshold_policy mean_std picks τ per image")
        floor, cap = self.mean_std_floor, self.mean_std_cap
        if floor is not None and cap is not None and floor > cap:
            raise ValueError(f"mean_std_floor {floor} is above mean_std_cap {cap}")
        return self


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


def resolve_params(params: PseudoLabelParams, detector: Any) -> PseudoLabelParams:
    """`params` with every detector-dependent value resolved: τ (`resolve_score_thr`) and,
    for `mean_std`, the floor and cap (ARSL's 0.1 and 0.4 on the detector's score scale)."""
    update: dict[str, Any] = {}
    if params.score_thr is None:
        update["score_thr"] = resolve_score_thr(None, detector)
    if params.threshold_policy == "mean_std":
        default = resolve_score_thr(None, detector)
        if params.mean_std_floor is None:
            update["mean_std_floor"] = min(1.0, default * MEAN_STD_FLOOR_RATIO)
        if params.mean_std_cap is None:
            update["mean_std_cap"] = min(1.0, default * MEAN_STD_CAP_RATIO)
    if not update:
        return params
    resolved = params.model_copy(update=update)
    floor, cap = resolved.mean_std_floor, resolved.mean_std_cap
    if floor is not None and cap is not None and floor > cap:
        raise ConfigError(
            f"method.mean_std_floor {floor:.4g} is above method.mean_std_cap {cap:.4g} (resolved for the detector)"
        )
    return resolved


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
        self.filters: FilterChain = build_filter_chain(params.filters, resolve_params(params, detector), class_names)

    @torch.no_grad()
    def predict(self, teacher: nn.Module, weak: ViewBatch) -> list[Detections]:
        """The teacher's detections on the weak view, in eval mode, without gradients."""
        teacher.eval()
        return teacher("predict", weak.images)

    def filter(self, pseudo: PseudoLabels, *, observe: bool = False) -> PseudoLabels:
        """The configured filters in order (score threshold first, by default alone).
        `observe`: a training step's teacher boxes — an adaptive threshold learns from them
        first (`threshold_policy` gmm)."""
        return self.filters.observe(pseudo) if observe else self.filters(pseudo)

    def observe(self, detections: list[Detections]) -> None:
        """Let adaptive thresholds learn from a training step's teacher boxes without
        filtering them (MixPL thresholds later, after mixing)."""
        if self.filters.stateful:
            self.filters.observe(PseudoLabels.from_detections(detections))

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
        """Filters (observing: a training step) → projection into the strong view → empty-image rule."""
        pseudo = self.filter(PseudoLabels.from_detections(detections), observe=True)
        return self.empty_rule(self.project(pseudo, weak, strong))

    def __call__(self, teacher: nn.Module, weak: ViewBatch, strong: ViewBatch) -> PseudoLabels:
        return self.label(self.predict(teacher, weak), weak, strong)

    # ------------------------------------------------------------------ adaptive thresholds
    @property
    def stats(self) -> dict[str, float]:
        """What the adaptive thresholds chose (`thr/<class>`, `thr/image`); empty when fixed."""
        out: dict[str, float] = {}
        for f in self.filters.stateful:
            out.update(getattr(f, "stats", {}))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The stateful filters' state (gmm's score buffers), by position in the chain."""
        return {str(i): f.state_dict() for i, f in enumerate(self.filters.filters) if hasattr(f, "state_dict")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, f in enumerate(self.filters.filters):
            if str(i) in state and hasattr(f, "load_state_dict"):
                f.load_state_dict(state[str(i)])


def resolve_for_detector(cfg: RunConfig, detector: Any) -> RunConfig:
    """The run config with a method's `score_thr: null` (and, for `threshold_policy:
    mean_std`, `mean_std_floor` / `mean_std_cap: null`) replaced by the detector's defaults —
    the one place they are resolved, at start-up, so that `config.yaml` records the values used."""
    from ssodkit.config import MethodConfig

    params = cfg.method.params
    update: dict[str, Any] = {}
    if "score_thr" in params and params["score_thr"] is None:
        update["score_thr"] = resolve_score_thr(None, detector)
    if params.get("threshold_policy") == "mean_std":
        resolved = resolve_params(PseudoLabelParams.model_validate(_pseudo_keys(params)), detector)
        update.update(mean_std_floor=resolved.mean_std_floor, mean_std_cap=resolved.mean_std_cap)
    if not update:
        return cfg
    return cfg.model_copy(update={"method": MethodConfig(name=cfg.method.name, **{**params, **update})})


def _pseudo_keys(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k in PseudoLabelParams.model_fields}
