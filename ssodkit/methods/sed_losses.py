"""SED's loss terms (the method: `methods/sed.py`; the spec: docs/methods/sed.md).

The default path is what the method needs; each `SEDParams` switch picks an alternative in
one place here (the table in docs/methods/sed.md says which were measured, which are ablations only):
`weighting` in `soft_cls_terms` / `roi_terms`, `box_cell_weight` in
`box_cell_weights`, `normalize` in `normalized` / `dense_terms` / `roi_terms`, `box_loss` in
`box_disagreement` / `roi_terms`, `sampled_cells` in `dense_terms`, `scale_bottom_target` in
`scale_terms`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from ssodkit.detectors.dense import SMOOTH_L1_BETA, DenseOutputs, crop_common, paired_levels

if TYPE_CHECKING:
    from ssodkit.methods.sed import SEDParams

FOREGROUND_PROB = 0.5  # a teacher cell with max class prob above this counts as foreground


def soft_bce(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Binary cross-entropy against soft targets minus the targets' own entropy (i.e. the
    binary KL divergence): the same gradient as BCE, but 0 where prediction = target, so a
    logged term of 0 means agreement."""
    t = target_probs.detach().float().clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    entropy = -(t * t.log() + (1 - t) * (1 - t).log())
    return bce - entropy


def soft_cls_terms(logits: Tensor, target_probs: Tensor, params: SEDParams) -> tuple[Tensor, Tensor]:
    """Per-element loss and weight of student `logits` against soft `target_probs`.

    The weight carries no gradient: it decides *where* to learn, not *what*.
    """
    target_probs = target_probs.detach()
    loss = soft_bce(logits, target_probs)
    probs = logits.detach().float().sigmoid()
    if params.weighting == "focal":
        weight = (target_probs - probs).abs().pow(params.gamma)
    elif params.weighting == "teacher_fg":
        weight = target_probs.max(dim=-1, keepdim=True).values.expand_as(target_probs)
    else:
        weight = torch.ones_like(loss)
    return loss, weight


def box_cell_weights(fg_prob: Tensor, params: SEDParams) -> Tensor:
    """Where box terms count: where the target sees an object. With plain p the
    ~8000 background cells at the focal prior (p ≈ 0.01) outweigh the few objects early on
    and hold the student to the teacher's untrained regression everywhere: on the synthetic
    set FCOS's supervised GIoU loss stayed at 1.0 for 30 iterations (0.5 without box terms)."""
    if params.box_cell_weight == "fg_gated":
        return fg_prob * (fg_prob > FOREGROUND_PROB)
    return fg_prob


def normalized(loss: Tensor, weight: Tensor, samples: int | None = None) -> Tensor:
    """Σ weight·loss over `samples`, the number of cells the detector's own loss averages
    over (a sampling head), else over Σ weights (a head that divides by its positives)."""
    if samples is not None:
        return (weight * loss).sum() / samples
    return (weight * loss).sum() / weight.sum().clamp(min=1e-6)


def box_disagreement(
    pred: DenseOutputs, target: DenseOutputs, l_pred: int, l_target: int, params: SEDParams
) -> Tensor:
    """Per-cell `[N, H, W, A]` box loss of `pred` level `l_pred` against `target` level `l_target`.

    L1 on the anchor-normalised numbers is the spec's form; the RPN trains its deltas with
    smooth L1 (β = 1/9), whose gradient fades below 0.11 where L1's stays 1. FCOS and
    RetinaNet train their boxes with GIoU, whose gradient per coordinate is 7–30× smaller
    than L1's on FCOS distances (stride units; 0.04–0.14 against 1 for a box 20 % too large,
    4–16 strides across): L1 distillation drowned FCOS's supervised regression (15.0 mAP
    against 27.5 with GIoU on the synthetic set, docs/methods/sed.md). GIoU is taken between
    the boxes both decode in the cell's own anchor frame — IoU ignores the per-cell shift
    and axis scaling — so it is as scale-equivalent as the numbers themselves.
    """
    kind = pred.box_loss if params.box_loss == "detector" else params.box_loss
    if kind == "giou":
        t_box, p_box = crop_common(target.boxes_in_anchor_frame(l_target), pred.boxes_in_anchor_frame(l_pred))
        per_cell = generalized_box_iou_loss(
            p_box.float().reshape(-1, 4), t_box.detach().float().reshape(-1, 4), reduction="none"
        )
        return per_cell.view(p_box.shape[:-1])
    t_box, p_box = crop_common(target.distillable_boxes()[l_target], pred.distillable_boxes()[l_pred])
    return delta_loss(p_box, t_box, kind)


def delta_loss(pred: Tensor, target: Tensor, kind: Literal["l1", "smooth_l1"]) -> Tensor:
    """Per-box L1 or smooth L1 (torchvision's β) over the last dimension; no gradient into `target`."""
    pred, target = pred.float(), target.detach().float()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=SMOOTH_L1_BETA, reduction="none").sum(-1)
    return (pred - target).abs().sum(-1)


def expected_sample_rates(target_probs: list[Tensor], sampled: int, positive_fraction: float) -> tuple[Tensor, Tensor]:
    """Per-image `[N]` rates at which a sampling detector's own loss would see a soft
    positive and a soft negative cell, with the targets' probabilities as soft labels.

    The RPN trains on 256 anchors per image, up to half of them positive: each positive
    counts, each of ~15 000 background anchors rarely (~1 %). A term over all anchors gives
    background ~100× its share, and the strong view's colour ops raise the RPN's objectness
    on background: with teacher = student on the synthetic set, the push to lower
    objectness from background outweighed the objects' push up 18.1 to 4.1 per image;
    with these rates it is 0.6 to 3.2 (docs/methods/sed.md). Soft positive mass P = Σ p,
    negative mass Σ (1 − p); the sampler keeps min(P, f·S) positives and fills the rest of S
    with negatives."""
    pos = torch.stack([t.flatten(1).sum(1) for t in target_probs]).sum(0)  # [N]
    neg = torch.stack([(1 - t).flatten(1).sum(1) for t in target_probs]).sum(0)
    kept_pos = pos.clamp(max=positive_fraction * sampled)
    kept_neg = torch.minimum(neg, sampled - kept_pos)
    return kept_pos / pos.clamp(min=1e-6), kept_neg / neg.clamp(min=1e-6)


def per_image(rates: Tensor, like: Tensor) -> Tensor:
    """`[N]` rates broadcast over a level's `[N, ...]` cells."""
    return rates.view(-1, *([1] * (like.dim() - 1)))


def dense_terms(
    pred: DenseOutputs,
    target: DenseOutputs,
    level_pairs: list[tuple[int, int]],
    params: SEDParams,
    cls_targets: dict[int, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Soft-target losses of `pred` against `target` over paired levels (pred l ↔ target l').

    `cls_targets` replaces the classification target logits of some target levels (the box
    terms still count where the level's own prediction sees an object)."""
    cls_loss, cls_weight, cls_target, box_loss, box_weight, ctr_loss = [], [], [], [], [], []
    for l_pred, l_target in level_pairs:
        own_logits, p_logits = crop_common(target.cls_logits[l_target], pred.cls_logits[l_pred])
        own_probs = own_logits.detach().float().sigmoid()
        override = (cls_targets or {}).get(l_target)  # on the level's own grid
        t_probs = own_probs if override is None else crop_common(override, own_logits)[0].detach().float().sigmoid()
        loss, weight = soft_cls_terms(p_logits, t_probs, params)
        cls_loss.append(loss)
        cls_weight.append(weight)
        cls_target.append(t_probs)
        # box (and centerness) terms count where the target sees an object at this level
        box_weight.append(box_cell_weights(own_probs.max(dim=-1).values, params))  # [N, H, W, A]
        box_loss.append(box_disagreement(pred, target, l_pred, l_target, params))
        if pred.centerness is not None and target.centerness is not None:
            t_ctr, p_ctr = crop_common(target.centerness[l_target], pred.centerness[l_pred])
            ctr_loss.append(soft_bce(p_ctr, t_ctr.detach().float().sigmoid()).squeeze(-1))
    num_images = pred.cls_logits[0].shape[0]
    # a sampling detector (the RPN) averages its own losses over its samples: so do these terms
    samples = pred.sampled_per_image if params.normalize == "detector" else None
    if samples and pred.positive_fraction is not None and params.sampled_cells == "expected":
        pos_rate, neg_rate = expected_sample_rates(cls_target, samples, pred.positive_fraction)
        cls_weight = [w * (t * per_image(pos_rate, t) + (1 - t) * per_image(neg_rate, t))
                      for w, t in zip(cls_weight, cls_target)]
        box_weight = [w * per_image(pos_rate, w) for w in box_weight]  # its box loss sees positives only
    flat = [torch.cat([t.flatten() for t in ts]) for ts in (cls_loss, cls_weight)]
    out = {"cls": normalized(*flat, samples * num_images if samples else None)}
    # Like a detector's box loss, divided by the number of foreground cells — but never fewer
    # than a few per image: one or two confident cells must not carry the weight the
    # supervised loss spreads over a whole batch's positives (on FCOS they wrecked the
    # regression: supervised GIoU loss 0.27 → 0.72 in 50 iterations). A sampling detector
    # (the RPN) divides its box loss by all its samples, and so does this term.
    floor = float(samples * num_images) if samples else max(1.0, params.min_box_cells_per_image * num_images)
    denom = torch.stack([w.sum() for w in box_weight]).sum().clamp(min=floor)
    out["box"] = params.box_weight * sum((w * b).sum() for w, b in zip(box_weight, box_loss)) / denom
    if ctr_loss:
        out["ctr"] = params.box_weight * sum((w * c).sum() for w, c in zip(box_weight, ctr_loss)) / denom
    return out


def pool_to_next_level(logits: Tensor) -> Tensor:
    """`[N, H, W, A, K]` logits max-pooled 2×2: level l on level l+1's grid."""
    n, h, w, a, k = logits.shape
    pooled = F.max_pool2d(logits.permute(0, 3, 4, 1, 2).reshape(n, a * k, h, w), 2, ceil_mode=True)
    return pooled.view(n, a, k, *pooled.shape[-2:]).permute(0, 3, 4, 1, 2)


def bottom_union_targets(large: DenseOutputs, scale_pairs: list[tuple[int, int]]) -> dict[int, Tensor]:
    """Scale-consistency target for s↓'s lowest level: max(s at l+1, s at l pooled 2×2).

    The pairing s:P_l ↔ s↓:P_{l−1} is exact only where the detector's level assignment
    scales with the image. Its lowest level takes every object too small for the next one
    (FCOS: max distance < 64 px at P3; the RPN: the low-quality matches of objects under its
    smallest anchor), so at half size s↓'s lowest level also holds the objects s keeps at
    its own lowest level, which s at l+1 — the paired target — calls background. On the
    synthetic set 39 of the 40 cells FCOS's s↓:P3 is confident on (1500-iteration
    checkpoint, 24 unlabeled images) have a background partner at s:P4; 26 of them are
    confident at s:P3."""
    bottom = min(l_pred for l_pred, _ in scale_pairs)
    targets = {}
    for l_pred, l_target in scale_pairs:
        if l_pred == bottom and l_target > 0:
            partner, below = crop_common(large.cls_logits[l_target], pool_to_next_level(large.cls_logits[l_target - 1]))
            targets[l_target] = torch.maximum(partner, below)  # max of logits = logit of max probability
    return targets


def scale_terms(large: DenseOutputs, small: DenseOutputs, params: SEDParams) -> dict[str, Tensor]:
    """Scale consistency: `small` (s↓) at level l−1 against `large` (s) at level l."""
    pairs = [(l_small, l_large) for l_large, l_small in paired_levels(large, small)]
    union = params.scale_bottom_target == "union"
    return dense_terms(small, large, pairs, params, bottom_union_targets(large, pairs) if union else None)


def top_class_deltas(target_probs: Tensor, pred_deltas: Tensor, target_deltas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per RoI: the target's top foreground probability, and both heads' deltas `[R, 4]` for
    that class (column 0 of the `[R, K+1]` probabilities is background). `delta_loss` casts
    and detaches."""
    fg_prob, fg_class = target_probs[:, 1:].max(-1)
    rows = torch.arange(len(fg_class), device=fg_class.device)
    cols = fg_class + 1
    return fg_prob, pred_deltas.view(len(rows), -1, 4)[rows, cols], target_deltas.view(len(rows), -1, 4)[rows, cols]


def roi_terms(
    pred_logits: Tensor, pred_deltas: Tensor, target_logits: Tensor, target_deltas: Tensor, params: SEDParams
) -> dict[str, Tensor]:
    """RoI-head soft targets: KL between class distributions, re-weighted by their total
    variation distance^γ, and L1 (smooth L1, the RoI head's own loss, under `box_loss: detector`)
    between the deltas of the target's top foreground class, weighted by the target's
    foreground probability as `box_cell_weight` says (default: only where it exceeds 0.5,
    as for dense cells). With `normalize: detector` both are
    means over the RoIs, as the RoI head's own losses are over its sampled RoIs."""
    t_probs = target_logits.detach().float().softmax(-1)
    log_p = pred_logits.float().log_softmax(-1)
    kl = (t_probs * (t_probs.clamp(min=1e-8).log() - log_p)).sum(-1)
    distance = 0.5 * (t_probs - log_p.detach().exp()).abs().sum(-1)
    weight = distance.pow(params.gamma) if params.weighting == "focal" else t_probs[:, 1:].max(-1).values
    if params.weighting == "none":
        weight = torch.ones_like(kl)
    num_rois = float(max(1, len(kl)))
    cls = (weight * kl).sum() / (num_rois if params.normalize == "detector" else weight.sum().clamp(min=1e-6))
    fg_prob, p_box, t_box = top_class_deltas(t_probs, pred_deltas, target_deltas)
    # the dense terms' cell rule (`box_cell_weight`): by default only RoIs the target calls
    # foreground (p > 0.5). Below that the teacher's proposals are mostly background — IoU
    # 0.15–0.39 with the hidden boxes, which the RoI head's own box loss never trains on — yet
    # with plain p they carried 40 % of the term (benchmarks/diagnostics/roi_box_targets.py).
    box_weight = box_cell_weights(fg_prob, params)
    box_denom = num_rois if params.normalize == "detector" else box_weight.sum().clamp(min=1.0)
    kind = "smooth_l1" if params.box_loss in ("detector", "smooth_l1") else "l1"
    box = (box_weight * delta_loss(p_box, t_box, kind)).sum() / box_denom
    return {"roi_cls": cls, "roi_box": params.box_weight * box}


def scaled(terms: dict[str, Tensor], factor: float) -> dict[str, Tensor]:
    return {k: factor * v for k, v in terms.items()}


def half_size(images: list[Tensor]) -> list[Tensor]:
    """The strong view down-sampled by exactly 2 (antialiased), s↓."""
    return [
        F.interpolate(img[None], size=(img.shape[-2] // 2, img.shape[-1] // 2), mode="bilinear",
                      antialias=True, align_corners=False)[0]
        for img in images
    ]
