"""U2PL's per-cell pieces as pure functions: the unreliable share α_t, the entropy of a
sigmoid head's cell, the reliable/unreliable split, and the rank-based negative loss.

Dense tensors are per FPN level `[N, H, W, A, K]` (probabilities, logits) or `[N, H, W, A]`
(masks), the layout of `DenseOutputs.cls_logits`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss


def unreliable_share(alpha_0: float, it: int, total: int) -> float:
    """α_t = α_0 · (1 − t/T), 0 from T on (U2PL: fewer cells are doubtful as training goes)."""
    return max(0.0, alpha_0 * (1.0 - it / total))


def class_entropy(probs: Tensor) -> Tensor:
    """Normalised entropy `[...]` in [0, 1] of per-class sigmoid probabilities `[..., K]`.

    A sigmoid head's scores are not a distribution: add background = 1 − max p (what the
    head says the cell is not any class), renormalise over the K + 1 entries, divide by
    log(K + 1). A sure background cell and a sure one-class cell both score near 0; a
    cell torn between classes, or between one class and background, scores high.
    """
    background = 1.0 - probs.max(dim=-1, keepdim=True).values
    dist = torch.cat([probs, background], dim=-1).clamp(min=0)
    dist = dist / dist.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    entropy = -(dist * dist.clamp(min=1e-12).log()).sum(dim=-1)
    return entropy / math.log(probs.shape[-1] + 1)


def cells_inside_boxes(anchors: list[Tensor], shapes: list[tuple[int, ...]], boxes: list[Tensor]) -> list[Tensor]:
    """Per level `[N, H, W, A]`: whether the cell's anchor centre lies inside one of its
    image's `boxes` (`[M, 4]` xyxy per image, in the grid's pixels). `anchors`: per level
    `[H·W·A, 4]`, `shapes`: per level `(N, H, W, A)`."""
    masks = []
    for level_anchors, shape in zip(anchors, shapes):
        centre = (level_anchors[:, :2] + level_anchors[:, 2:]) / 2
        per_image = []
        for image_boxes in boxes:
            if image_boxes.numel() == 0:
                per_image.append(torch.zeros(centre.shape[0], dtype=torch.bool, device=centre.device))
                continue
            b = image_boxes.to(centre)
            x, y = centre[:, None, 0], centre[:, None, 1]
            inside = (x >= b[:, 0]) & (x <= b[:, 2]) & (y >= b[:, 1]) & (y <= b[:, 3])
            per_image.append(inside.any(dim=1))
        masks.append(torch.stack(per_image).reshape(shape))
    return masks


def split_unreliable(
    probs: list[Tensor], share: float, floor: float, per_level: bool = False,
    excluded: list[Tensor] | None = None,
) -> tuple[list[Tensor], int]:
    """Per level `[N, H, W, A]` masks of the unreliable cells, and the number of candidates.

    Candidates are the cells whose teacher max prob exceeds `floor` (dense grids are mostly
    sure background; a percentile over every cell would call nearly all foreground
    unreliable), less the `excluded` cells (per level `[N, H, W, A]`: those inside a kept
    pseudo box, whose label the box gives). Of the batch's candidates, the ⌊share · n⌋ with the highest entropy are
    unreliable (the (100 − α_t) percentile of U2PL, taken over the whole batch as its code
    does; `per_level`: over each FPN level's candidates apart, the spec's alternative);
    ties are broken by position.
    """
    if per_level:
        splits = [
            split_unreliable([p], share, floor, excluded=None if excluded is None else [e])
            for p, e in zip(probs, excluded or [None] * len(probs))
        ]
        return [masks[0] for masks, _ in splits], sum(n for _, n in splits)
    flat = torch.cat([p.flatten(0, -2) for p in probs])
    candidate = flat.max(dim=-1).values > floor
    if excluded is not None:
        candidate &= ~torch.cat([e.reshape(-1) for e in excluded])
    n_candidates = int(candidate.sum())
    k = math.floor(share * n_candidates + 1e-9)
    unreliable = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
    if k > 0:
        index = torch.where(candidate)[0]
        top = class_entropy(flat[index]).topk(k).indices
        unreliable[index[top]] = True
    sizes = [p[..., 0].numel() for p in probs]
    masks = [m.reshape(p.shape[:-1]) for m, p in zip(unreliable.split(sizes), probs)]
    return masks, n_candidates


def negative_classes(probs: Tensor, rank_low: int) -> Tensor:
    """`[..., K]` True for the classes ranked r_l..K by the teacher (rank 1 = most likely):
    the classes the cell almost certainly is not. The top r_l − 1 stay False (ignored)."""
    keep = min(rank_low - 1, probs.shape[-1])
    negative = torch.ones_like(probs, dtype=torch.bool)
    if keep > 0:
        negative.scatter_(-1, probs.topk(keep, dim=-1).indices, False)
    return negative


def negative_loss(
    logits: list[Tensor], teacher_probs: list[Tensor], unreliable: list[Tensor], rank_low: int,
    alpha: float = 0.25, gamma: float = 2.0,
) -> tuple[Tensor, int]:
    """Σ over unreliable cells of the sigmoid focal loss with target 0 on their negative
    classes only (a per-class-channel ignore mask: the teacher's top r_l − 1 channels get no
    gradient), divided by the number of unreliable cells; and that number.

    `alpha`, `gamma`: the focal loss of the one-stage heads (torchvision's defaults).
    """
    total = logits[0].sum() * 0.0  # keeps the graph (and its dtype) when no cell is unreliable
    count = 0
    for s_logits, t_probs, mask in zip(logits, teacher_probs, unreliable):
        if not bool(mask.any()):
            continue
        cell_logits = s_logits[mask].float()
        channels = negative_classes(t_probs[mask], rank_low).float()
        per_channel = sigmoid_focal_loss(cell_logits, torch.zeros_like(cell_logits), alpha, gamma, reduction="none")
        total = total + (per_channel * channels).sum()
        count += int(mask.sum())
    return total / max(1, count), count
