"""PseCo (Li et al., ECCV 2022) on ssodkit's two-stage seams; spec: ligang-cs/PseCo v1.3.

Per unlabeled batch: one teacher pass on the weak view gives the proposals P, their per-class
scores and refined boxes (every proposal re-scored, no NMS) and, after the RoI test, the
pseudo boxes D. The student learns on the strong view V1 and on V2 = V1 × 0.5 (Multi-view
Scale-invariant Learning) with the same targets: RPN against D (score > `rpn_pseudo_thr`),
RoIs = the teacher's proposals labelled by PLA and regression-weighted by PCV.

Grids (MSL): V1 is padded to a multiple of 128, so V2 (padded to 64) has level l's grid
equal to V1's level l + 1. With ssodkit's FPN (P2–P5 + max-pooled P6, RPN on all five, RoI
pooling on P2–P5) V2's P2–P5 are trained against V1's P3–P6 anchors; V1's P2 anchors have no
V2 counterpart (V2 has no P1) and V2's P6 none in V1 (no P7): both are left out of V2's RPN
loss. V2's RoI pooling uses its own P2–P5 on the halved RoIs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from ssodkit.detectors import Detections, Target, TwoStage
from ssodkit.methods.base import ModelHandle, ViewBatch, prefixed
from ssodkit.methods.teacher_student import TeacherStudent, TeacherStudentParams
from ssodkit.pseudo.labels import PseudoLabels
from ssodkit_pseco.assign import (
    pcv_weights,
    pla_assign,
    roi_classification_loss,
    roi_count,
    roi_regression_loss,
    sample_assigned,
)

MSL_PAD = 128  # V1's padding: V2 = V1 × 0.5 then has level l on V1's level l + 1 grid


class PsecoParams(TeacherStudentParams):
    unsup_weight: float = Field(2.0, ge=0, description="weight of each view's unsupervised loss (official: 2 per view)")
    score_thr: float | None = Field(0.3, ge=0, le=1, description="pseudo set D: teacher detections above this (official: 0.3)")
    empty_images: Literal["per_image", "batch_all", "batch_any", "none"] = Field(
        "none", description="an image without pseudo boxes trains all its RoIs as background (none, official) or "
        "adds no loss (per_image) / as Mean Teacher's rule (batch_all, batch_any)",
    )
    rpn_pseudo_thr: float = Field(0.5, ge=0, le=1, description="RPN targets: pseudo boxes above this score")
    cls_pseudo_thr: float = Field(0.5, ge=0, le=1, description="PLA's pseudo boxes G: score above this")
    pla_iou_thr: float = Field(0.4, gt=0, le=1, description="PLA candidates: refined box IoU with the pseudo box ≥ this")
    pla_topk: int = Field(12, ge=1, description="dynamic k: ⌊sum of the top-this candidate IoUs⌋")
    pla_alpha: float = Field(0.5, ge=0, le=1, description="quality q = s^α · u^(1−α)")
    rois_per_image: int = Field(512, ge=1, description="RoIs sampled per unlabeled image")
    positive_fraction: float = Field(0.25, gt=0, le=1, description="at most this fraction of them positive")
    pcv: bool = Field(True, description="positive-proposal consistency voting weights the RoI box loss")
    msl: bool = Field(True, description="also train V2 = the strong view × 0.5 with V1's targets")
    roi_cls: Literal["sigmoid_focal", "softmax"] = Field(
        "sigmoid_focal", description="RoI classifier loss, labeled and unlabeled: PseCo's K-way sigmoid focal on "
        "z_k − z_0, or the detector's softmax cross-entropy",
    )
    focal_gamma: float = Field(2.0, ge=0, description="sigmoid focal γ")
    focal_alpha: float = Field(0.25, ge=0, le=1, description="sigmoid focal α")
    focal_weight: float = Field(10.0, gt=0, description="sigmoid focal loss weight (official: 10)")
    test_score_thr: float = Field(0.05, ge=0, le=1, description="teacher's RoI test: score threshold")
    test_nms_iou: float = Field(0.5, gt=0, le=1, description="teacher's RoI test: per-class NMS IoU")
    test_max_dets: int = Field(100, ge=1, description="teacher's RoI test: detections kept per image")

    @model_validator(mode="after")
    def _pla_inside_d(self) -> PsecoParams:
        floor = self.score_thr or 0.0
        if self.cls_pseudo_thr < floor or self.rpn_pseudo_thr < floor:
            raise ValueError(f"rpn_pseudo_thr and cls_pseudo_thr select from D (score > score_thr {floor}): "
                             "they cannot be lower")
        return self


class TeacherOutputs:
    """The teacher's weak-view pass: every proposal with its per-class scores `[R, K]` and the
    refined box of its arg-max class, per image (weak-view pixels)."""

    def __init__(self, proposals: list[Tensor], scores: list[Tensor], refined: list[Tensor]) -> None:
        self.proposals, self.scores, self.refined = proposals, scores, refined


def class_scores(logits: Tensor, mode: str) -> Tensor:
    """Per-class scores `[R, K]` of RoI logits `[R, K + 1]`, as the classifier was trained."""
    logits = logits.float()
    if mode == "softmax":
        return F.softmax(logits, -1)[:, 1:]
    return torch.sigmoid(logits[:, 1:] - logits[:, :1])


def affine_boxes(boxes: Tensor, matrix: Tensor) -> Tensor:
    """Boxes through a 3×3 affine map (the enclosing box of the mapped corners)."""
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    x1, y1, x2, y2 = boxes.double().unbind(-1)
    corners = torch.stack([torch.stack([x, y, torch.ones_like(x)], -1)
                           for x, y in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], 1)  # [R, 4, 3]
    mapped = corners @ matrix.to(corners).T
    lo, hi = mapped[..., :2].min(1).values, mapped[..., :2].max(1).values
    return torch.cat([lo, hi], -1).to(boxes.dtype)


def half_view(images: list[Tensor]) -> list[Tensor]:
    """V2: each image × 0.5 exactly (an odd side gains one replicated pixel first), so V2's
    pixel i covers V1's pixels 2i, 2i + 1 and V1's boxes map by × 0.5."""
    out = []
    for image in images:
        h, w = image.shape[-2:]
        padded = F.pad(image[None], (0, w % 2, 0, h % 2), mode="replicate") if (h % 2 or w % 2) else image[None]
        out.append(F.interpolate(padded, scale_factor=0.5, mode="bilinear", align_corners=False)[0])
    return out


def flat_rpn(dense: Any, levels: slice) -> tuple[Tensor, Tensor, Tensor]:
    """RPN objectness `[N·M]`, deltas `[N·M, 4]` and anchors `[M, 4]` of the chosen levels of
    `rpn_dense` outputs, in `rpn_forward`'s (image, level, y, x, anchor) order."""
    n = dense.cls_logits[0].shape[0]
    cls = torch.cat([c.reshape(n, -1) for c in dense.cls_logits[levels]], 1).reshape(-1)
    box = torch.cat([b.reshape(n, -1, 4) for b in dense.box_regression[levels]], 1).reshape(-1, 4)
    return cls, box, torch.cat(dense.anchors[levels])


class RoiTargets:
    """The sampled RoIs of V1 and what every view trains them with."""

    def __init__(self, rois: list[Tensor], labels: Tensor, regression: Tensor, image_weights: Tensor,
                 assigned: list[Tensor], gt_boxes: list[Tensor]) -> None:
        self.rois, self.labels, self.regression = rois, labels, regression
        self.image_weights = image_weights  # per RoI
        self.assigned, self.gt_boxes = assigned, gt_boxes  # per image: pseudo box index or −1


class Pseco(TeacherStudent):
    """PseCo: Noisy Pseudo-box Learning (PLA + PCV) and Multi-view Scale-invariant Learning."""

    name = "pseco"
    requires: ClassVar[frozenset[type]] = frozenset({TwoStage})
    Params: ClassVar[type[BaseModel]] = PsecoParams
    # official EMA: momentum min(0.999, t/(t+1)) ⇔ m = max(0.001, 1/(1+t)), no burn-in
    teacher_defaults: ClassVar[dict[str, Any]] = {"gamma": 1.0, "min_momentum": 1e-3, "burn_in": 0}

    @classmethod
    def detector_defaults(cls, params: BaseModel) -> dict[str, Any]:
        """With the sigmoid-focal classifier the detector scores its RoIs as it was trained
        (sigmoid(z_k − z_0)), so evaluation, `pseudolabel` and the probe read the same scores
        as the teacher's pseudo-labels (the official code's sigmoid test scores)."""
        return {"roi_scores": "sigmoid"} if getattr(params, "roi_cls", None) == "sigmoid_focal" else {}

    # ------------------------------------------------------------------ labeled
    def supervised_loss(self, student: ModelHandle, labeled: ViewBatch) -> dict[str, Tensor]:
        """The detector's own loss, or with `sigmoid_focal` the same pipeline with PseCo's
        RoI losses (focal classification, L1 regression) on the standard RoI sampling."""
        p: PsecoParams = self.params
        if p.roi_cls == "softmax":
            return prefixed(student.loss(labeled.images, labeled.targets), "sup")
        model = student.two_stage
        image_list, features = model.features(labeled.images)
        objectness, deltas, anchors, proposals = model.rpn_forward(image_list, features)
        ones = torch.ones(len(labeled), device=objectness.device)
        losses = model.rpn_loss(objectness, deltas, anchors, labeled.targets, ones, cls_only=False)
        rois, labels, regression = model.sample_rois(proposals, labeled.targets)
        logits, roi_deltas = model.roi_outputs(features, rois, image_list.image_sizes)
        w = torch.ones_like(labels, dtype=torch.float32)
        losses["loss_cls"] = roi_classification_loss(
            logits, labels, w, p.roi_cls, p.focal_gamma, p.focal_alpha, p.focal_weight)
        losses["loss_box"] = roi_regression_loss(roi_deltas, labels, regression, w)
        return prefixed(losses, "sup")

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def teacher_pass(self, teacher: nn.Module, weak: ViewBatch) -> tuple[TeacherOutputs, list[Detections]]:
        """Proposals, every proposal re-scored and refined (no NMS), and the RoI test's
        detections (score > `test_score_thr`, per-class NMS, ≤ `test_max_dets`), from one pass."""
        p: PsecoParams = self.params
        teacher.eval()
        model = ModelHandle(teacher).two_stage
        image_list, features = model.features(weak.images)
        proposals = model.proposals(image_list, features)
        logits, deltas = model.roi_outputs(features, proposals, image_list.image_sizes)
        k = self.num_classes
        scores = class_scores(logits, p.roi_cls)
        counts = [b.shape[0] for b in proposals]
        repeated = torch.cat(proposals).repeat_interleave(k, 0)
        boxes = model.decode_roi_boxes(deltas.float().reshape(-1, k + 1, 4)[:, 1:].reshape(-1, 4), repeated)
        boxes = boxes.reshape(-1, k, 4)
        out = TeacherOutputs([], [], [])
        detections = []
        for b, s, prop, size in zip(boxes.split(counts), scores.split(counts), proposals, image_list.image_sizes):
            b = clip_boxes_to_image(b, size)
            out.proposals.append(prop)
            out.scores.append(s)
            out.refined.append(b[torch.arange(b.shape[0], device=b.device), s.argmax(1)] if len(s) else b.reshape(0, 4))
            detections.append(self.roi_test(b, s))
        return out, detections

    def roi_test(self, boxes: Tensor, scores: Tensor) -> Detections:
        """mmdet's RoI test on one image: per (proposal, class) boxes above the score
        threshold, per-class NMS, the best `test_max_dets`; with each box's class scores."""
        p: PsecoParams = self.params
        r, k = scores.shape
        flat_boxes, flat_scores = boxes.reshape(-1, 4), scores.reshape(-1)
        labels = torch.arange(k, device=scores.device).repeat(r)
        index = torch.where(flat_scores > p.test_score_thr)[0]
        index = index[remove_small_boxes(flat_boxes[index], 1e-2)]
        index = index[batched_nms(flat_boxes[index], flat_scores[index], labels[index], p.test_nms_iou)]
        index = index[: p.test_max_dets]
        return Detections(flat_boxes[index], flat_scores[index], labels[index], scores[index // max(k, 1)])

    # ------------------------------------------------------------------ unlabeled
    def unsupervised_loss(
        self, student: ModelHandle, teacher: nn.Module, unlabeled: dict[str, ViewBatch], it: int
    ) -> dict[str, Tensor]:
        p: PsecoParams = self.params
        weak, strong = unlabeled["weak"], unlabeled["strong"]
        outputs, detections = self.teacher_pass(teacher, weak)
        labeler = self.pseudo_labeler
        pseudo = labeler.filter(PseudoLabels.from_detections(detections), observe=True)
        projected = labeler.empty_rule(labeler.project(pseudo, weak, strong))
        self.record_pseudo_stats(projected)
        if float(projected.weights.sum()) == 0:
            return {}
        rpn_targets = [_targets(d[d.scores > p.rpn_pseudo_thr]) for d in projected.detections]
        gt = [d[d.scores > p.cls_pseudo_thr] for d in projected.detections]
        targets = self.pla_targets(student.two_stage, outputs, gt, weak, strong, projected.weights)
        n = len(strong)
        self.stats["pseudo_rpn_per_image"] = sum(len(t["boxes"]) for t in rpn_targets) / n
        self.stats["pseudo_pla_per_image"] = sum(len(g) for g in gt) / n
        self.stats["pla_pos_per_image"] = float((targets.labels > 0).sum()) / n
        losses = self.view_losses(student.two_stage, strong.images, rpn_targets, projected.weights, targets)
        return prefixed(losses, "unsup", p.unsup_weight)

    def pla_targets(
        self, model: TwoStage, outputs: TeacherOutputs, gt: list[Detections], weak: ViewBatch, strong: ViewBatch,
        image_weights: Tensor,
    ) -> RoiTargets:
        """The teacher's proposals moved into V1, assigned by PLA, sampled, and encoded."""
        p: PsecoParams = self.params
        rois, labels, regression, weights, assigned_all, gt_boxes = [], [], [], [], [], []
        for i, g in enumerate(gt):
            matrix = strong.matrices[i] @ torch.linalg.inv(weak.matrices[i])
            size = tuple(strong.images[i].shape[-2:])
            proposals = clip_boxes_to_image(affine_boxes(outputs.proposals[i], matrix), size)
            refined = clip_boxes_to_image(affine_boxes(outputs.refined[i], matrix), size)
            keep = (proposals[:, 2] > proposals[:, 0]) & (proposals[:, 3] > proposals[:, 1])
            proposals, refined, scores = proposals[keep], refined[keep], outputs.scores[i][keep]
            assigned = pla_assign(refined, scores, g.boxes, g.labels, p.pla_iou_thr, p.pla_topk, p.pla_alpha)
            sampled = sample_assigned(assigned, p.rois_per_image, p.positive_fraction)
            proposals, assigned = proposals[sampled], assigned[sampled]
            label = torch.zeros_like(assigned)
            target = torch.zeros_like(proposals)
            pos = assigned >= 0
            label[pos] = g.labels[assigned[pos]] + 1
            if pos.any():
                target[pos] = model.encode_roi_boxes(g.boxes[assigned[pos]], proposals[pos])
            rois.append(proposals)
            labels.append(label)
            regression.append(target)
            weights.append(image_weights[i].expand(proposals.shape[0]))
            assigned_all.append(assigned)
            gt_boxes.append(g.boxes)
        return RoiTargets(rois, torch.cat(labels), torch.cat(regression), torch.cat(weights), assigned_all, gt_boxes)

    def view_losses(
        self, model: TwoStage, images: list[Tensor], rpn_targets: list[Target], image_weights: Tensor,
        roi: RoiTargets,
    ) -> dict[str, Tensor]:
        """RPN + RoI losses on V1 and, with `msl`, the same targets on V2 (its aligned grids);
        V2's terms are logged apart (`*_v2`) and weighted like V1's."""
        p: PsecoParams = self.params
        image_list, features = model.features(images, size_divisible=MSL_PAD if p.msl else None)
        sizes = image_list.image_sizes
        dense = model.rpn_dense(image_list, features)
        objectness, deltas, anchors = flat_rpn(dense, slice(None))
        n = len(images)
        anchor_labels, anchor_targets = model.rpn_targets([anchors] * n, rpn_targets)
        losses = model.rpn_loss_assigned(objectness, deltas, anchor_labels, anchor_targets, image_weights, False)

        logits, roi_deltas = model.roi_outputs(features, roi.rois, sizes)
        reg_weights = roi.image_weights * self.consistency(model, roi, roi_deltas)
        losses["loss_cls"] = roi_classification_loss(
            logits, roi.labels, roi.image_weights, p.roi_cls, p.focal_gamma, p.focal_alpha, p.focal_weight)
        n_roi = roi_count(roi.image_weights)
        losses["loss_box"] = roi_regression_loss(roi_deltas, roi.labels, roi.regression, reg_weights, n_roi)
        if not p.msl:
            return losses

        half_list, half_features = model.features(half_view(images), size_divisible=MSL_PAD // 2)
        half = model.rpn_dense(half_list, half_features)
        # V2's P2–P5 (levels 0–3) sit on V1's P3–P6 grid (levels 1–4): V1's targets there
        first = dense.cls_logits[0][0].numel()  # V1's P2 anchors: no V2 counterpart
        objectness, deltas, _ = flat_rpn(half, slice(0, len(half.cls_logits) - 1))
        labels = [l[first:] for l in anchor_labels]
        targets = [t[first:] for t in anchor_targets]
        if objectness.numel() != n * labels[0].numel():  # a detector whose levels are not stride 2^l apart
            raise RuntimeError(
                f"pseco MSL: the half view's RPN levels have {objectness.numel() // n} anchors per image, the full "
                f"view's aligned levels {labels[0].numel()}; the grids do not line up (set method.msl: false)"
            )
        v2 = model.rpn_loss_assigned(objectness, deltas, labels, targets, image_weights, False)
        logits, roi_deltas = model.roi_outputs(half_features, [r * 0.5 for r in roi.rois], half_list.image_sizes)
        v2["loss_cls"] = roi_classification_loss(
            logits, roi.labels, roi.image_weights, p.roi_cls, p.focal_gamma, p.focal_alpha, p.focal_weight)
        v2["loss_box"] = roi_regression_loss(roi_deltas, roi.labels, roi.regression, reg_weights, n_roi)
        losses.update({f"{k}_v2": v for k, v in v2.items()})
        return losses

    @torch.no_grad()
    def consistency(self, model: TwoStage, roi: RoiTargets, roi_deltas: Tensor) -> Tensor:
        """Per-RoI regression weights: PCV's σ of the RoI's pseudo box (1 on every positive
        without `pcv`); from V1's student outputs, shared by V2."""
        pos = (roi.labels > 0).float()
        if not self.params.pcv:
            return pos
        counts = [r.shape[0] for r in roi.rois]
        k1 = roi_deltas.shape[1] // 4
        rows = torch.arange(roi.labels.numel(), device=roi.labels.device)
        chosen = roi_deltas.detach().float().reshape(-1, k1, 4)[rows, roi.labels]
        decoded = model.decode_roi_boxes(chosen, torch.cat(roi.rois)).split(counts)
        weights = [pcv_weights(b, a, g) for b, a, g in zip(decoded, roi.assigned, roi.gt_boxes)]
        out = torch.cat(weights) if weights else pos
        self.stats["pcv_mean"] = float(out[pos > 0].mean()) if bool((pos > 0).any()) else 0.0
        return out


def _targets(det: Detections) -> Target:
    return {"boxes": det.boxes.detach(), "labels": det.labels.detach()}
