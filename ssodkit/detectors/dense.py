"""The `DenseOutputs` capability: per-level predictions on a known anchor/point grid.

One-stage heads (RetinaNet, FCOS) and Faster R-CNN's RPN expose their raw outputs in one
layout, `[N, H_l, W_l, A, C]` per FPN level, with the anchors of the padded batch. SED
compares them cell by cell (and level l of an image with level l−1 of the same image at
half size); U2PL-det and `stats grad` assign every cell with the detector's own matcher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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

    def distillable_boxes(self) -> list[Tensor]:
        """The box outputs to compare between views: unbounded where the head clamps."""
        return self.box_regression_unbounded if self.box_regression_unbounded is not None else self.box_regression

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
