"""Box-aware random erasing: draw patches, blank them, drop the boxes they hide.

One implementation for the strong view's RandomErasing op (``views.ops``), MixPL's erasing
of mixed images (``mixing``) and the projection of pseudo boxes into an erased view
(``pseudo.labels``). A pseudo box on an object the student cannot see teaches it to
hallucinate, so a box is dropped when the *union* of the erased patches covers at least
:data:`DROP_COVERED` of its area (a union, so overlapping patches count once).

Patches are integer xyxy rectangles, ``float32 [P, 4]`` on the CPU. All randomness comes
from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ssodkit.rng import randint, uniform

DROP_COVERED = 0.7
"""A box this much erased is no longer visible (mmdet's semi-supervised recipes, MixPL)."""

PatchSides = Literal["independent", "shared"]
"""How a patch's sides are drawn: ``independent`` fractions of width and height, rounded,
at least one pixel (the view pipelines); or one ``shared`` ratio for both sides, floored,
so a patch may be empty (MixPL's reference)."""

Fill = float | Sequence[float] | Tensor
"""A pixel value to paint with (erased patches, empty canvas): a scalar or one per channel."""


def draw_patches(
    size: tuple[int, int],
    g: torch.Generator,
    *,
    n_patches: tuple[int, int],
    max_frac: float,
    sides: PatchSides,
) -> Tensor:
    """``P`` patches inside an ``(h, w)`` image, ``P`` uniform in ``n_patches`` (inclusive).

    Each side is at most ``max_frac`` of the image side (see :data:`PatchSides`); the
    top-left corner is uniform over the positions that keep the patch inside the image.
    """
    h, w = size
    rects = []
    for _ in range(randint(g, *n_patches)):
        if sides == "shared":
            r = uniform(g, 0.0, max_frac)
            pw, ph = int(w * r), int(h * r)
        else:
            pw = max(1, round(uniform(g, 0.0, max_frac) * w))
            ph = max(1, round(uniform(g, 0.0, max_frac) * h))
        x1, y1 = randint(g, 0, w - pw), randint(g, 0, h - ph)
        rects.append([x1, y1, x1 + pw, y1 + ph])
    return torch.tensor(rects, dtype=torch.float32).reshape(-1, 4)


def blank(image: Tensor, rects: Tensor, fill: Fill) -> Tensor:
    """A copy of ``[C, H, W]`` ``image`` with the integer xyxy ``rects`` set to ``fill``."""
    out = image.clone()
    value = torch.as_tensor(fill, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
    for x1, y1, x2, y2 in rects.detach().to("cpu", torch.int64).tolist():
        out[:, y1:y2, x1:x2] = value
    return out


def erased_mask(rects: Tensor, size: tuple[int, int]) -> Tensor:
    """Boolean ``[H, W]`` mask of the union of integer xyxy rectangles."""
    mask = torch.zeros(size, dtype=torch.bool)
    for x1, y1, x2, y2 in rects.to(torch.int64).tolist():
        mask[y1:y2, x1:x2] = True
    return mask


def covered_fraction(boxes: Tensor, mask: Tensor) -> Tensor:
    """Exact fraction of each box's area under ``mask`` (a union, so overlaps count once).

    Each pixel contributes the area it shares with the box; that area factorises into an
    x-overlap times a y-overlap, so the whole thing is one ``wy · mask · wx`` product.
    """
    h, w = mask.shape
    b = boxes.to(torch.float64)

    def overlap(lo: Tensor, hi: Tensor, n: int) -> Tensor:
        edges = torch.arange(n, dtype=torch.float64)
        return (torch.minimum(hi[:, None], edges + 1) - torch.maximum(lo[:, None], edges)).clamp(min=0)

    wx, wy = overlap(b[:, 0], b[:, 2], w), overlap(b[:, 1], b[:, 3], h)
    covered = torch.einsum("ny,yx,nx->n", wy, mask.to(torch.float64), wx)
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    return covered / area.clamp(min=1e-12)


def visible(
    boxes: Tensor, rects: Tensor, size: tuple[int, int], drop_covered: float = DROP_COVERED
) -> Tensor:
    """Boolean keep-mask (on the boxes' device): boxes the union of ``rects`` covers less
    than ``drop_covered``. Measured on the CPU: the boxes are a few dozen numbers."""
    cpu = torch.device("cpu")
    covered = covered_fraction(boxes.detach().to(cpu), erased_mask(rects.detach().to(cpu), size))
    return (covered < drop_covered).to(boxes.device)
