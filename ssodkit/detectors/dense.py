"""`DenseOutputs`, what the `DenseHead` capability returns: per-level predictions on a known
anchor/point grid.

One-stage heads (RetinaNet, FCOS) and Faster R-CNN's RPN expose their raw outputs in one
layout, `[N, H_l, W_l, A, C]` per FPN level, with the anchors of the padded batch. SED
compares them cell by cell (and level l of an image with level l−1 of the same image at
half size); U2PL-det and `stats grad` assign every cell with the detector's own matcher.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor


BOX_EXP_CLAMP = math.log(1000.0 / 16)  # torchvision's BoxCoder clamp on dw, dh
BoxCoding = Literal["deltas", "ltrb"]  # (dx, dy, dw, dh) anchor deltas or FCOS's (l, t, r, b) distances
BoxLoss = Literal["l1", "smooth_l1", "giou"]  # what the detector trains its box numbers with
SMOOTH_L1_BETA = 1.0 / 9  # torchvision's RPN and RoI head: smooth L1 on box deltas with this β


class DenseLossFn(Protocol):
    """The detector's own training loss of the dense outputs it is attached to, with cells
    left out: `ignore` per level `[N, H, W, A]` (True = the cell adds nothing to any term and
    does not count towards the normaliser), in the layout of `DenseOutputs.cls_logits`.

    A method that trains some cells its own way (U2PL-det's unreliable cells) and the rest
    exactly as the detector does uses it on the outputs of the one forward pass it already
    made. `targets`, `image_weights` and `cls_only` mean what they mean for `Detector.loss`.
    """

    def __call__(
        self,
        targets: list[dict[str, Tensor]],
        *,
        image_weights: Tensor | None = None,
        cls_only: bool = False,
        ignore: list[Tensor] | None = None,
    ) -> dict[str, Tensor]: ...


@dataclass
class DenseOutputs:
    cls_logits: list[Tensor]  # per level [N, H, W, A, K] (K = 1 for the RPN's objectness)
    box_regression: list[Tensor]  # per level [N, H, W, A, 4], anchor-normalised
    centerness: list[Tensor] | None  # per level [N, H, W, A, 1] (FCOS) or None
    anchors: list[Tensor]  # per level [H*W*A, 4] in padded-batch pixels (same for all images)
    strides: list[int]
    image_sizes: list[tuple[int, int]]
    # FCOS: the distances before the head's ReLU. Distilling post-ReLU outputs with L1 is a
    # ratchet (a cell pushed to 0 gets no gradient back), so the whole branch dies; the
    # pre-activation equals the distance wherever the box is real. None = `box_regression`.
    box_regression_unbounded: list[Tensor] | None = None
    # What the 4 box numbers are — (dx, dy, dw, dh) deltas or FCOS's (l, t, r, b) distances,
    # both in anchor-size units — and the loss the detector trains them with. Distilling with
    # the detector's own loss keeps the unsupervised box gradient on the supervised one's scale.
    box_coding: BoxCoding = "deltas"
    box_loss: BoxLoss = "l1"
    # How the detector's own classification loss is normalised: a mean over this many
    # sampled cells per image (the RPN's 256 anchors), or None — over the number of positives
    # (RetinaNet, FCOS). A distillation term over all cells must divide the same way, or its
    # gradient dwarfs the supervised one (20–100× on the RPN with Σ weights, docs/methods/sed.md).
    sampled_per_image: int | None = None
    # The largest share of positives in that sample (the RPN's 0.5): the rest are negatives
    # drawn from thousands of background anchors, each one trained rarely.
    positive_fraction: float | None = None
    # The detector's loss on these very outputs, with cells left out (`DenseLossFn`); None
    # where the head does not offer it (the RPN's sampled loss).
    detector_loss: DenseLossFn | None = None
    # Per level `[N, H, W, 1, C]`: the classification tower's output at each location, which
    # its A anchors share (RetinaNet, FCOS; None for the RPN). What a method compares cells
    # by when it needs representations rather than scores (U2PL-det's contrastive term).
    cls_features: list[Tensor] | None = None
    # The detector's predictions from these very outputs — what `predict` returns for the same
    # images (call it in eval mode, without gradients) — so a teacher that needs both its cells
    # and its boxes runs once (U2PL-det); None where the head does not offer it.
    detections: Callable[[], list[Any]] | None = None

    def distillable_boxes(self) -> list[Tensor]:
        """The box outputs to compare between views: unbounded where the head clamps."""
        return self.box_regression_unbounded if self.box_regression_unbounded is not None else self.box_regression

    def boxes_in_anchor_frame(self, level: int) -> Tensor:
        """`[N, H, W, A, 4]` boxes (x1, y1, x2, y2) in units of the cell's anchor, centred on
        it: what the detector would decode, up to the per-cell shift and axis scaling IoU ignores."""
        box = self.box_regression[level]
        if self.box_coding == "ltrb":
            return torch.cat([-box[..., :2], box[..., 2:]], dim=-1)
        centre, half = box[..., :2], 0.5 * box[..., 2:].clamp(max=BOX_EXP_CLAMP).exp()
        return torch.cat([centre - half, centre + half], dim=-1)

    @property
    def num_levels(self) -> int:
        return len(self.cls_logits)

    def flat(self, field: str) -> Tensor:
        """`[N, Σ H·W·A, C]` over all levels, in the order the heads' losses use."""
        levels = getattr(self, field)
        return torch.cat([t.flatten(1, 3) for t in levels], dim=1)


def unflatten_levels(flat: Tensor, shapes: list[tuple[int, int]], anchors_per_location: int) -> list[Tensor]:
    """`[N, Σ H·W·A, C]` (torchvision's head layout) → per level `[N, H, W, A, C]`."""
    sizes = [h * w * anchors_per_location for h, w in shapes]
    return [
        chunk.reshape(flat.shape[0], h, w, anchors_per_location, flat.shape[-1])
        for chunk, (h, w) in zip(flat.split(sizes, dim=1), shapes)
    ]


def paired_levels(large: DenseOutputs, small: DenseOutputs) -> list[tuple[int, int]]:
    """Level pairs (l of the image, l−1 of the image at half size): same stride in image
    terms, so cell (i, j) of both sees the same object at the same relative anchor size."""
    pairs = []
    for l_large, stride in enumerate(large.strides):
        if stride // 2 in small.strides:
            pairs.append((l_large, small.strides.index(stride // 2)))
    return pairs


def crop_common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both grids' common top-left region (padding to a multiple of 32 can add a row)."""
    h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
    return a[:, :h, :w], b[:, :h, :w]
