"""SED — Scale-Equivalent Distillation (Guo et al., CVPR 2022); spec: docs/methods/sed.md.

No hard threshold: the teacher's soft probabilities on the weak view are the student's
targets on a strong view of the *same geometry* (self-distillation), and the student's
predictions on the strong view at half size must equal its own predictions at full size one
FPN level up (scale consistency). Every per-cell term is re-weighted by |p_target − p|^γ
(no gradient through the weight), so cells where both already agree — mostly easy
background — fade out and disagreements, mostly potential foreground, dominate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from ssodkit.detectors.dense import DenseOutputs
from ssodkit.detectors.protocol import DenseHead, TwoStage
from ssodkit.methods.base import ModelHandle, ViewBatch
from ssodkit.methods.sed_losses import FOREGROUND_PROB, dense_terms, half_size, roi_terms, scale_terms, scaled
from ssodkit.methods.teacher_student import StudentParams, TeacherStudent

Terms = dict[str, Tensor]
# (student, teacher, weak images, strong images) -> (distillation terms, scale-consistency terms)
TermsFn = Callable[[ModelHandle, ModelHandle, list[Tensor], list[Tensor]], tuple[Terms, Terms]]


class SEDParams(StudentParams):
    unsup_weight: float = Field(1.0, ge=0, description="λ_u: L = L_s + λ_u·(λ_d·L_distill + λ_s·L_scale)")
    scale_weight: float = Field(1.0, ge=0, description="λ_s")
    distill_weight: float = Field(
        1.0, ge=0, description="λ_d (1 in the paper); 0 trains scale consistency alone, which needs no teacher"
    )
    gamma: float = Field(2.0, ge=0, description="re-weighting exponent of |p_target − p|")
    weighting: Literal["focal", "teacher_fg", "none"] = Field(
        "focal", description="|p_t − p|^γ, the target's max class probability, or uniform"
    )
    normalize: Literal["detector", "weights"] = Field(
        "detector",
        description="divide each term as the detector divides its own loss (Σ weights where it divides by "
        "positives — RetinaNet, FCOS; its sample count for the RPN and the RoI head), or by Σ weights "
        "(an ablation: it collapsed Faster R-CNN)",
    )
    box_weight: float = Field(1.0, ge=0, description="weight of the box (and centerness) terms")
    box_loss: Literal["detector", "l1", "smooth_l1", "giou"] = Field(
        "detector",
        description="box terms: the detector's own box loss (GIoU for FCOS and RetinaNet, smooth L1 for the RPN "
        "and the RoI head), L1 on the anchor-normalised numbers (the spec's form), smooth L1, or GIoU (dense only)",
    )
    min_box_cells_per_image: float = Field(
        8.0, ge=0, description="floor of the box terms' normaliser, in foreground cells per image"
    )
    box_cell_weight: Literal["fg", "fg_gated"] = Field(
        "fg_gated",
        description="per-cell (and per-RoI) weight of the box terms from the target's max class prob p: "
        "p·[p > 0.5], or p (an ablation)",
    )
    scale_bottom_target: Literal["union", "paired"] = Field(
        "union",
        description="scale consistency at s↓'s lowest level: its target is max(s at l+1, s at l pooled 2×2) "
        "(at half size that level also holds the objects s keeps at its own lowest level), "
        "or s at l+1 alone (the spec)",
    )
    sampled_cells: Literal["expected", "all"] = Field(
        "expected",
        description="a sampling dense head (the RPN: 256 anchors per image, up to half positive): weight each "
        "cell by how often the detector's sampler would train it, with the target's probability as a soft "
        "label, or count every cell alike (a background anchor then weighs ~100× its share in the detector's loss)",
    )
    roi_per_image: int = Field(256, gt=0, description="two-stage: proposals per image for the RoI terms")
    # 0, not the paper's 1. One SGD step on the RPN's distillation term moves the objectness
    # of labeled anchors 10–20× as far as one on the supervised RPN loss, and raises the
    # negatives' 3× as much as the positives' (benchmarks/diagnostics/objectness_probe.py):
    # at 1 it cost Faster R-CNN 5 mAP on the synthetic set, and at 0.1 the student still
    # ended 0.1–1.1 under the RoI-head terms alone in each of four seed × checkpoint pairs
    # (docs/methods/sed.md).
    rpn_weight: float = Field(
        0.0, ge=0, description="two-stage: factor of the RPN's terms (1 = the paper; 0 = RoI-head terms only)"
    )
    roi_weight: float = Field(1.0, ge=0, description="two-stage: factor of the RoI-head terms (0 = RPN terms only)")


class SED(TeacherStudent):
    """Per unlabeled batch: the teacher on the weak view w gives soft targets; the student
    sees the strong view s (same geometry) and s↓, s at half size;
    L_distill = student(s) against teacher(w), cell by cell on the same level;
    L_scale = student(s↓) at level l−1 against student(s) at level l, detached.
    A dense head gets both per cell; a two-stage detector gets both on its RoI head (and,
    with `rpn_weight`, on its RPN as a dense head)."""

    name = "sed"
    requires: ClassVar[frozenset[type]] = frozenset({DenseHead})
    unlabeled_views: ClassVar[tuple[str, ...]] = ("weak", "strong=photometric_strong@weak")
    Params: ClassVar[type[BaseModel]] = SEDParams

    def __init__(self, params: SEDParams, cfg: Any, class_names: list[str]) -> None:
        super().__init__(params, cfg, class_names)
        self.terms: TermsFn | None = None

    def check_detector(self, detector: nn.Module) -> None:
        """Pick the detector's terms once, by the capability it has. SED thresholds nothing:
        its targets are the teacher's soft outputs, so it has no pseudo-labeler."""
        self.terms = self.two_stage_terms if isinstance(detector, TwoStage) else self.dense_head_terms

    def unsupervised_loss(
        self, student: ModelHandle, teacher: nn.Module, unlabeled: dict[str, ViewBatch], it: int
    ) -> dict[str, Tensor]:
        assert self.terms is not None, "check_detector() picks the detector's terms"
        p: SEDParams = self.params
        teacher.eval()
        distill, scale = self.terms(student, ModelHandle(teacher), unlabeled["weak"].images, unlabeled["strong"].images)
        losses = {f"unsup_distill_{k}": p.unsup_weight * p.distill_weight * v for k, v in distill.items()}
        losses.update({f"unsup_scale_{k}": p.unsup_weight * p.scale_weight * v for k, v in scale.items()})
        return losses

    def dense_head_terms(
        self, student: ModelHandle, teacher: ModelHandle, weak: list[Tensor], strong: list[Tensor]
    ) -> tuple[Terms, Terms]:
        """RetinaNet, FCOS: both losses on the head's dense outputs."""
        with torch.no_grad():
            t_dense = teacher.dense(weak)
        distill, scale = self.dense_pair_terms(t_dense, student.dense(strong), student.dense(half_size(strong)))
        self.record_soft_stats(t_dense)
        return distill, scale

    def dense_pair_terms(
        self, t_dense: DenseOutputs, s_dense: DenseOutputs, s_small: DenseOutputs
    ) -> tuple[Terms, Terms]:
        """Distillation on the same grid; scale consistency s↓ level l−1 ← s level l (the
        larger scale is the more reliable target)."""
        same = [(level, level) for level in range(s_dense.num_levels)]
        distill = dense_terms(s_dense, t_dense, same, self.params)
        scale = scale_terms(s_dense, s_small, self.params)
        return distill, scale

    def two_stage_terms(
        self, student: ModelHandle, teacher: ModelHandle, weak: list[Tensor], strong: list[Tensor]
    ) -> tuple[Terms, Terms]:
        """Faster R-CNN: the RPN as a dense head, plus the RoI head on shared boxes —
        the teacher's proposals for distillation, the union of both scales' proposals for
        scale consistency."""
        k = self.params.roi_per_image
        t, s = teacher.two_stage, student.two_stage
        with torch.no_grad():
            t_list, t_feats = t.features(weak)
            t_rpn = t.rpn_dense(t_list, t_feats)
            t_boxes = [b[:k] for b in t.proposals(t_list, t_feats)]
            t_roi = t.roi_outputs(t_feats, t_boxes, t_list.image_sizes)
        s_list, s_feats = s.features(strong)
        m_list, m_feats = s.features(half_size(strong))
        p = self.params
        self.record_soft_stats(t_rpn)
        distill: Terms = {}
        scale: Terms = {}
        if p.rpn_weight > 0:  # off by default: no graph through the RPN's dense outputs for nothing
            distill, scale = (
                scaled(terms, p.rpn_weight)
                for terms in self.dense_pair_terms(t_rpn, s.rpn_dense(s_list, s_feats), s.rpn_dense(m_list, m_feats))
            )
        s_roi = s.roi_outputs(s_feats, t_boxes, s_list.image_sizes)
        distill.update(scaled(roi_terms(*s_roi, *t_roi, p), p.roi_weight))
        with torch.no_grad():
            s_boxes = s.proposals(s_list, s_feats)
            m_boxes = s.proposals(m_list, m_feats)
        union = [torch.cat([a[:k], 2.0 * b[:k]]) for a, b in zip(s_boxes, m_boxes)]
        large = s.roi_outputs(s_feats, union, s_list.image_sizes)
        small = s.roi_outputs(m_feats, [0.5 * u for u in union], m_list.image_sizes)
        scale.update(scaled(roi_terms(*small, *large, p), p.roi_weight))
        return distill, scale

    def record_soft_stats(self, teacher_dense: DenseOutputs) -> None:
        probs = torch.cat([t.detach().flatten(0, -2).sigmoid().max(-1).values for t in teacher_dense.cls_logits])
        self.stats["teacher_fg_cells"] = float((probs > FOREGROUND_PROB).sum()) / max(1, len(teacher_dense.image_sizes))

    def state_dict(self) -> dict[str, Any]:
        return {}
