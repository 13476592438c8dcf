"""PseCo's Noisy Pseudo-box Learning as plain tensor functions (no model): prediction-guided
label assignment (PLA), positive-proposal consistency voting (PCV), RoI sampling and the RoI
losses. Kept apart from the method so that tests can check them on hand-made boxes.

Conventions: RoI labels are the RoI head's (0 = background, k + 1 = class k); an assignment
is, per proposal, the index of its pseudo box or −1 (background).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou, sigmoid_focal_loss


def pla_assign(
    refined: Tensor,
    scores: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    iou_thr: float = 0.4,
    topk: int = 12,
    alpha: float = 0.5,
) -> Tensor:
    """Prediction-guided label assignment of one image's proposals to its pseudo boxes.

    `refined` `[R, 4]` are the teacher's refined boxes of the proposals and `scores` `[R, K]`
    its per-class scores; `gt_boxes` `[G, 4]` / `gt_labels` `[G]` the pseudo boxes. Each
    proposal is a candidate of the pseudo box its refined box overlaps most if that IoU u is
    ≥ `iou_thr` (max-IoU, no low-quality matches). Of pseudo box j's candidates C_j the
    top-k_j by q = s^α · u^(1−α) are positives, s the teacher's score of j's class and
    k_j = max(1, ⌊Σ top-min(topk, |C_j|) u⌋); every other proposal is background (no ignore
    band): a proposal's quality is judged by what the teacher predicts from it, not by the
    proposal's own IoU. Returns, per proposal, the index of its pseudo box or −1.
    """
    assigned = torch.full((refined.shape[0],), -1, dtype=torch.int64, device=refined.device)
    if refined.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return assigned
    iou = box_iou(gt_boxes.float(), refined.float())  # [G, R]
    best_iou, best_gt = iou.max(0)
    for j in range(gt_boxes.shape[0]):
        candidates = torch.where((best_gt == j) & (best_iou >= iou_thr))[0]
        if candidates.numel() == 0:
            continue
        u = best_iou[candidates]
        s = scores[candidates, gt_labels[j]].float().clamp(min=0)
        q = s.pow(alpha) * u.pow(1 - alpha)
        k = max(1, math.floor(float(u.topk(min(topk, candidates.numel())).values.sum()) + 1e-6))
        assigned[candidates[q.topk(k).indices]] = j
    return assigned


def sample_assigned(assigned: Tensor, num: int = 512, positive_fraction: float = 0.25) -> Tensor:
    """Indices of `num` proposals, at most `positive_fraction` of them positive (assigned ≥ 0),
    the rest background, each part drawn at random (mmdet's RandomSampler, no targets
    added as proposals); fewer when the image has fewer proposals."""
    pos = torch.where(assigned >= 0)[0]
    neg = torch.where(assigned < 0)[0]
    n_pos = min(pos.numel(), int(num * positive_fraction))
    n_neg = min(neg.numel(), num - n_pos)
    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:n_pos]]
    neg = neg[torch.randperm(neg.numel(), device=neg.device)[:n_neg]]
    return torch.cat([pos, neg])


@torch.no_grad()
def pcv_weights(student_boxes: Tensor, assigned: Tensor, gt_boxes: Tensor) -> Tensor:
    """Positive-proposal consistency voting: every positive of pseudo box j gets σ_j, the
    mean IoU with g_j of the student's decoded boxes (for j's class) of all j's positives;
    background gets 0. A pseudo box the student's positives agree on is trusted more for
    regression than one they scatter around. No gradient."""
    weights = torch.zeros(assigned.shape[0], device=student_boxes.device)
    pos = torch.where(assigned >= 0)[0]
    if pos.numel() == 0:
        return weights
    gt = gt_boxes[assigned[pos]].float()
    iou = box_iou(student_boxes[pos].float(), gt).diagonal()
    sums = torch.zeros(gt_boxes.shape[0], device=iou.device).index_add_(0, assigned[pos], iou)
    counts = torch.zeros(gt_boxes.shape[0], device=iou.device).index_add_(0, assigned[pos], torch.ones_like(iou))
    weights[pos] = (sums / counts.clamp(min=1))[assigned[pos]]
    return weights


def roi_count(weights: Tensor) -> int:
    """N_roi of the RoI losses: the RoIs of images with non-zero weight (a weight-0 image adds
    nothing, as if it were not in the batch), at least 1."""
    return max(1, int((weights > 0).sum()))


def roi_classification_loss(
    logits: Tensor, labels: Tensor, weights: Tensor, mode: str, gamma: float, alpha: float, focal_weight: float
) -> Tensor:
    """Σ per-RoI classification loss / N_roi, each RoI scaled by its image weight.

    `sigmoid_focal`: a K-way sigmoid focal loss (no background class) on the relative logits
    z_k − z_0 of the detector's K + 1 outputs, times `focal_weight`; a K-way sigmoid
    classifier has K free logits, and z_0 absorbs a shared offset, so this is PseCo's
    classifier on the unchanged detector. `softmax`: the detector's own cross-entropy."""
    logits = logits.float()
    n = roi_count(weights)
    if mode == "softmax":
        per_roi = F.cross_entropy(logits, labels, reduction="none")
        return (weights * per_roi).sum() / n
    relative = logits[:, 1:] - logits[:, :1]
    onehot = F.one_hot(labels, logits.shape[1])[:, 1:].to(relative.dtype)
    per_roi = sigmoid_focal_loss(relative, onehot, alpha=alpha, gamma=gamma, reduction="none").sum(1)
    return focal_weight * (weights * per_roi).sum() / n


def roi_regression_loss(
    deltas: Tensor, labels: Tensor, targets: Tensor, reg_weights: Tensor, num_rois: int | None = None
) -> Tensor:
    """Class-specific L1 on positive RoIs weighted as PseCo: (Σw / Σw²) · Σ w²·L1 / N_roi,
    so weights act ∝ σ² and their total is Σσ (all w = 1: the plain L1 mean). `num_rois`:
    N_roi (`roi_count` of the image weights; default all RoIs)."""
    n = num_rois if num_rois is not None else max(1, deltas.shape[0])
    pos = torch.where((labels > 0) & (reg_weights > 0))[0]
    if pos.numel() == 0:
        return deltas.sum() * 0.0
    deltas = deltas.float().reshape(deltas.shape[0], -1, 4)[pos, labels[pos]]
    l1 = (deltas - targets[pos].float()).abs().sum(1)
    w = reg_weights[pos].float()
    return (w.sum() / w.pow(2).sum()) * (w.pow(2) * l1).sum() / n
