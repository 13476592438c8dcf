"""`u2pl`: U2PL's "every pixel matters" on dense detection heads (spec: docs/methods/u2pl.md).

Per unlabeled batch the teacher sees the weak view and the student a strong view of the
*same geometry* (colour op and erasing on the weak view's output, as SED and Unbiased
Teacher), so teacher cell (l, i, j, a) and student cell (l, i, j, a) see the same place at
the same scale and the teacher's probabilities need no warping; the pseudo boxes move by
`M_s · M_w⁻¹` = identity.

- Reliable cells: Mean Teacher — the teacher's boxes above τ, the detector's own
  assignment and loss (`DenseOutputs.detector_loss`), weight β.
- Unreliable cells (the top α_t by entropy among candidate cells): left out of that loss;
  instead only their low-ranked classes (r_l..K by the teacher) are trained, towards 0,
  with the head's focal loss, weight λ_n, normalised by their number.
- Optionally (`contrastive`), U2PL's InfoNCE term on the classification tower's features
  (`contrast.py`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from ssodkit.detectors import DenseHead, DenseOutputs, TwoStage
from ssodkit.errors import CapabilityError, ConfigError
from ssodkit.methods.base import ModelHandle, ViewBatch, prefixed
from ssodkit.methods.teacher_student import TeacherStudent, TeacherStudentParams
from ssodkit.pseudo.labels import PseudoLabels
from ssodkit_u2pl.cells import cells_inside_boxes, negative_loss, split_unreliable, unreliable_share
from ssodkit_u2pl.contrast import NegativeMemory, contrastive_loss, location_roles

SUPPORTED = "fcos and retinanet (one-stage heads whose dense outputs carry the detector's own loss)"


class U2PLParams(TeacherStudentParams):
    """Mean Teacher's parameters (τ, β, …) plus U2PL's."""

    alpha_0: float = Field(
        0.2, gt=0, le=1, description="α_0: share of candidate cells that are unreliable at t = 0 (U2PL: 20%)"
    )
    total_iters: int | None = Field(
        None, gt=0, description="T of α_t = α_0·(1 − t/T); null = schedule.iters (α_t reaches 0 at the run's end)"
    )
    candidate_floor: float = Field(
        0.05, ge=0, lt=1,
        description="a cell is a candidate for the entropy split when the teacher's max class prob exceeds this",
    )
    candidates: Literal["outside_boxes", "all"] = Field(
        "outside_boxes", description="which cells the entropy split may call unreliable: those above "
        "candidate_floor outside every kept pseudo box (default: a cell inside a box takes the box's label, as in "
        "Mean Teacher), or all of them (the spec read literally: the boxes' own moderately scored cells become "
        "unreliable and lose their positive target — measured to collapse, docs/methods/u2pl.md)"
    )
    percentile_over: Literal["batch", "level"] = Field(
        "batch", description="the entropy split ranks the candidates of the whole batch (U2PL's code) or of each "
        "FPN level apart"
    )
    rank_low: int = Field(
        3, ge=2,
        description="r_l: the teacher's top r_l − 1 classes of an unreliable cell are ignored, ranks r_l..K are "
        "trained as negatives (U2PL: 3; 1 would force the cell to background)",
    )
    neg_weight: float = Field(1.0, ge=0, description="λ_n: weight of the unreliable cells' negative loss")
    contrastive: bool = Field(
        False, description="add U2PL's contrastive term on the classification tower's features (prototypes as "
        "positives, a per-class memory of unreliable cells as negatives)"
    )
    contrast_weight: float = Field(1.0, ge=0, description="λ_c (U2PL's code: 1; its maintainer suggests 0.1)")
    contrast_temperature: float = Field(0.5, gt=0, description="InfoNCE temperature (U2PL: 0.5)")
    contrast_anchor_thr: float = Field(
        0.3, ge=0, lt=1, description="a reliable cell is an anchor of its teacher class above this probability (U2PL: 0.3)"
    )
    contrast_anchors: int = Field(256, gt=0, description="anchors sampled per class and step (U2PL: 256)")
    contrast_negatives: int = Field(50, gt=0, description="negatives sampled per anchor (U2PL: 50)")
    contrast_memory: int = Field(
        4096, gt=0, description="teacher features kept per class as negatives (U2PL: 30000 for 21 classes)"
    )


class U2PL(TeacherStudent):
    """Mean Teacher on reliable cells; rank-based negatives on unreliable ones."""

    name = "u2pl"
    requires: ClassVar[frozenset[type]] = frozenset({DenseHead})
    unlabeled_views: ClassVar[tuple[str, ...]] = ("weak", "strong=photometric_strong@weak")
    Params: ClassVar[type[BaseModel]] = U2PLParams

    def __init__(self, params: U2PLParams, cfg: Any, class_names: list[str]) -> None:
        super().__init__(params, cfg, class_names)
        if params.rank_low > self.num_classes:
            raise ConfigError(
                f"method.rank_low = {params.rank_low} leaves no negative class with {self.num_classes} classes "
                f"(ranks r_l..K are the negatives); give at most {self.num_classes}"
            )
        self.total_iters = params.total_iters or cfg.schedule.iters
        self.memory = NegativeMemory(self.num_classes, params.contrast_memory) if params.contrastive else None

    def check_detector(self, detector: nn.Module) -> None:
        """Refuse, in one line, a detector whose dense outputs are not class scores trained
        by a loss we can mask per cell: one probe forward on a small blank image."""
        name = self.cfg.detector.name
        if isinstance(detector, TwoStage):
            raise CapabilityError(
                f"method 'u2pl' supports {SUPPORTED}, not detector '{name}': its dense outputs are "
                "the RPN's class-agnostic objectness, which has no class ranks"
            )
        device = next(detector.parameters()).device
        modes = [(m, m.training) for m in detector.modules()]  # restored one by one: some may be frozen in eval
        detector.eval()
        try:
            with torch.no_grad():
                probe = detector.dense([torch.zeros(3, 64, 64, device=device)])
        finally:
            for module, training in modes:
                module.training = training
        if probe.detector_loss is None:
            raise CapabilityError(
                f"method 'u2pl' supports {SUPPORTED}, not detector '{name}': its dense outputs have no "
                "detector_loss"
            )
        if self.memory is not None and probe.cls_features is None:
            raise CapabilityError(
                f"method.contrastive needs the head's features (DenseOutputs.cls_features), which detector "
                f"'{name}' does not give; set method.contrastive=false"
            )
        super().check_detector(detector)

    def unsupervised_loss(
        self, student: ModelHandle, teacher: nn.Module, unlabeled: dict[str, ViewBatch], it: int
    ) -> dict[str, Tensor]:
        p: U2PLParams = self.params
        weak, strong = unlabeled["weak"], unlabeled["strong"]
        teacher.eval()
        with torch.no_grad():  # one teacher pass gives the cells and the boxes
            t_dense = ModelHandle(teacher).dense(weak.images)
            detections = t_dense.detections() if t_dense.detections is not None else None
        if detections is None:
            detections = self.pseudo_labeler.predict(teacher, weak)
        pseudo = self.pseudo_labeler.label(detections, weak, strong)
        self.record_pseudo_stats(pseudo)
        t_probs = [logits.float().sigmoid() for logits in t_dense.cls_logits]
        share = unreliable_share(p.alpha_0, it, self.total_iters)
        excluded = None
        if p.candidates == "outside_boxes":
            shapes = [tuple(t.shape[:4]) for t in t_probs]
            excluded = cells_inside_boxes(t_dense.anchors, shapes, [d.boxes for d in pseudo.detections])
        unreliable, n_candidates = split_unreliable(
            t_probs, share, p.candidate_floor, p.percentile_over == "level", excluded
        )
        s_dense = student.dense(strong.images)
        check_same_grid(t_dense, s_dense)
        losses = self.reliable_loss(s_dense, pseudo, unreliable)
        neg, n_unreliable = negative_loss(s_dense.cls_logits, t_probs, unreliable, p.rank_low)
        losses["unsup_loss_neg"] = p.neg_weight * neg
        images = max(1, len(strong))
        self.stats.update(
            {"u2pl_alpha_t": share, "u2pl_candidates": n_candidates / images, "u2pl_unreliable": n_unreliable / images}
        )
        if self.memory is not None:
            losses["unsup_loss_contrast"] = p.contrast_weight * self.contrast_term(t_dense, s_dense, t_probs, unreliable)
        return losses

    def reliable_loss(self, s_dense: DenseOutputs, pseudo: PseudoLabels, unreliable: list[Tensor]) -> dict[str, Tensor]:
        """Mean Teacher's loss with the unreliable cells left out of every term (assigned
        neither to a box nor to background); nothing when every image's weight is 0."""
        if float(pseudo.weights.sum()) == 0:
            return {}
        assert s_dense.detector_loss is not None, "check_detector() refused heads without detector_loss"
        targets = [{"boxes": d.boxes.detach(), "labels": d.labels.detach()} for d in pseudo.detections]
        losses = s_dense.detector_loss(
            targets, image_weights=pseudo.weights, cls_only=self.unsup_cls_only, ignore=unreliable
        )
        return prefixed(losses, "unsup", self.params.unsup_weight)

    def contrast_term(
        self, t_dense: DenseOutputs, s_dense: DenseOutputs, t_probs: list[Tensor], unreliable: list[Tensor]
    ) -> Tensor:
        """U2PL's contrastive term on the locations of the shared grid (`contrast.py`)."""
        p: U2PLParams = self.params
        assert self.memory is not None and t_dense.cls_features is not None and s_dense.cls_features is not None
        anchor_of, negative_of = location_roles(t_probs, unreliable, p.rank_low, p.contrast_anchor_thr)
        s_feats = torch.cat([f.flatten(0, 3) for f in s_dense.cls_features])
        with torch.no_grad():
            t_feats = torch.cat([f.flatten(0, 3) for f in t_dense.cls_features]).float()
        loss, classes = contrastive_loss(
            s_feats, t_feats, anchor_of, negative_of, self.memory, num_anchors=p.contrast_anchors,
            num_negatives=p.contrast_negatives, temperature=p.contrast_temperature,
        )
        self.stats["u2pl_contrast_classes"] = classes
        return loss

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """The pseudo-labeler's state and, with `contrastive`, the negative memory."""
        state = super().state_dict()
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.memory is not None and "memory" in state:
            self.memory.load_state_dict(state["memory"], "cpu")


def check_same_grid(teacher: DenseOutputs, student: DenseOutputs) -> None:
    """The views share geometry, so the padded grids must match cell for cell."""
    t_shapes = [tuple(t.shape[:4]) for t in teacher.cls_logits]
    s_shapes = [tuple(s.shape[:4]) for s in student.cls_logits]
    if t_shapes != s_shapes:
        raise ValueError(f"u2pl: teacher grid {t_shapes} and student grid {s_shapes} differ (views must share geometry)")
