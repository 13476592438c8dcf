"""Pseudo Mixup, Pseudo Mosaic and box-aware random erasing (MixPL, Chen et al. 2023).

Pure functions on :class:`MixItem` (an image with its pseudo boxes, labels and *scores*),
shared by the MixPL method (GPU tensors, inside the training step) and by the offline
``ssodkit mix`` command. All randomness comes from the ``torch.Generator`` passed in, so a
mix is reproducible from a seed and never touches the global RNG; tensors stay on their
device (the generator may live on the CPU or on the images' device).

Scores travel with the boxes because MixPL thresholds *after* mixing: a mixed image's
pseudo boxes are the union of both sources' boxes before the threshold, and
:func:`filter_scores` applies it at the end (then :func:`is_empty` decides the empty-image
rule).

What the reference code does (``projects/MixPL/mixpl/mixpl.py`` of Czm369/MixPL, methods
``mixup``, ``mosaic``, ``resize``, ``flip``, ``erase``), and where this module differs:

* **Mixup.** The canvas is ``max(h) × max(w)`` of the two images, filled with zeros; each
  image is placed at its own random integer offset and *added with weight 0.5*
  (``canvas[region_a] += 0.5·a; canvas[region_b] += 0.5·b``). So where both exist the pixel
  is ``0.5·a + 0.5·b``; where only one exists it is ``0.5·that image`` (half-way to the
  fill, *not* the image alone); elsewhere it is 0. The reference works on normalised
  images, so 0 is the data set's mean colour. :func:`pseudo_mixup` does exactly this:
  ``λ·canvas_a + (1-λ)·canvas_b`` where each canvas is ``fill`` outside its image
  (``fill=0`` and ``λ=0.5`` give the reference; pass the mean pixel as ``fill`` to get the
  same look on un-normalised uint8 images).
  The cached source is resized to fit the *padded batch shape* there (≥ the destination's
  own size); here it fits the destination's size unless ``fit_size`` is given.
* **Mosaic.** The reference draws one ``(h, w)`` box (each side uniform in 400–800) and
  fits all four images into it; the canvas is ``2H × 2W`` with ``H, W`` the largest tile
  height and width rounded up to a multiple of 16, and the tiles meet at the canvas centre
  ``(W, H)``: top-left, top-right, bottom-left, bottom-right in item order. Here each image
  gets its own longer side, uniform in ``size_range`` (as the paper describes); canvas and
  centre are as in the reference.
* **Flip.** The reference *always* mirrors the cached image (``flip()`` is unconditional);
  here the flip is random with ``flip_p`` (``flip_p=1`` reproduces the reference).
* **Resize.** The reference uses ``F.interpolate`` (nearest) with one scale for both axes
  and ``floor`` sizes; here pixels are resized with antialiased bilinear to the rounded
  size and boxes use the exact per-axis scale, so boxes land on the pixels they describe.
* **Erasing.** The reference sums the per-patch intersections with a box (overlapping
  patches count twice); here the *union* of the patches is measured, as the spec says.
* **Threshold.** The reference keeps ``score > thr`` (mmdet's ``filter_gt_instances``), as
  :func:`filter_scores` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor

from ssodkit.erasing import DROP_COVERED, Fill, blank, draw_patches, visible
from ssodkit.rng import coin, randint
from ssodkit.views.geometry import MIN_BOX_SIZE

if TYPE_CHECKING:
    from ssodkit.detectors.protocol import Detections

MOSAIC_SIZE_DIVISOR = 16
"""The reference rounds the mosaic tile box up to a multiple of 16."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Placement:
    """Where one source image went on a canvas: scaled, maybe mirrored, then shifted.

    ``scale = (sx, sy)`` is the exact per-axis factor (new size / old size, which rounding
    makes differ slightly from the requested scale); ``flip`` mirrors the scaled copy;
    ``offset = (x, y)`` is its top-left corner on the canvas; ``size = (h, w)`` its size
    there. Tests and callers use it to map anything else (points, matrices) the same way.
    """

    scale: tuple[float, float]
    flip: bool
    offset: tuple[int, int]
    size: tuple[int, int]

    @property
    def region(self) -> tuple[int, int, int, int]:
        """The placed copy's ``(x1, y1, x2, y2)`` on the canvas."""
        x, y = self.offset
        return x, y, x + self.size[1], y + self.size[0]

    def matrix(self) -> Tensor:
        """``float64 [3, 3]`` map from source pixels to canvas pixels (pixel corners)."""
        sx, sy = self.scale
        a = -sx if self.flip else sx
        tx = self.offset[0] + (self.size[1] if self.flip else 0)
        return torch.tensor(
            [[a, 0.0, tx], [0.0, sy, float(self.offset[1])], [0.0, 0.0, 1.0]],
            dtype=torch.float64,
        )

    def map_boxes(self, boxes: Tensor) -> Tensor:
        """Source xyxy boxes → canvas xyxy boxes (not clipped), on the boxes' device."""
        sx, sy = self.scale
        b = boxes * boxes.new_tensor([sx, sy, sx, sy])
        if self.flip:
            w = float(self.size[1])
            b = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=-1)
        x, y = self.offset
        return b + boxes.new_tensor([x, y, x, y])


@dataclass(frozen=True)
class MixItem:
    """An image with its pseudo labels, before the score threshold.

    ``image`` is ``uint8`` or float ``[3, H, W]``; ``boxes`` ``float32 [N, 4]`` xyxy in its
    pixels; ``labels`` ``int64 [N]`` class indices; ``scores`` ``float32 [N]``.
    ``placements`` says how each source was placed when this item is a mix (one entry per
    source, in argument order; empty for an unmixed item).
    """

    image: Tensor
    boxes: Tensor
    labels: Tensor
    scores: Tensor
    placements: tuple[Placement, ...] = ()

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.image.dim() != 3 or self.image.shape[0] != 3:
            raise ValueError(f"image must be [3, H, W], got {tuple(self.image.shape)}")
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [N, 4], got {tuple(self.boxes.shape)}")
        if self.labels.shape != (n,) or self.scores.shape != (n,):
            raise ValueError(
                f"{n} boxes need {n} labels and scores, got {tuple(self.labels.shape)} "
                f"and {tuple(self.scores.shape)}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: Tensor) -> MixItem:
        """The same image with the boxes (labels, scores) picked by a mask or indices."""
        return replace(
            self, boxes=self.boxes[keep], labels=self.labels[keep], scores=self.scores[keep]
        )

    @staticmethod
    def from_detections(image: Tensor, detections: Detections) -> MixItem:
        """Wrap an image and its (projected, not yet thresholded) detections."""
        return MixItem(
            image,
            detections.boxes.to(torch.float32).reshape(-1, 4),
            detections.labels.to(torch.int64),
            detections.scores.to(torch.float32),
        )


# --------------------------------------------------------------------------- randomness


def _beta(g: torch.Generator, alpha: float) -> float:
    """``Beta(alpha, alpha)`` from two gamma draws (``torch.distributions`` takes no generator)."""
    gammas = torch._standard_gamma(
        torch.full((2,), float(alpha), dtype=torch.float64, device=g.device), generator=g
    )
    return float(gammas[0] / gammas.sum().clamp(min=1e-12))


# --------------------------------------------------------------------------- pixels


def _work_dtype(image: Tensor) -> torch.dtype:
    """Blend in float32 for integer images (rounded back at the end), else as given."""
    return image.dtype if image.is_floating_point() else torch.float32


def _to_dtype(image: Tensor, dtype: torch.dtype) -> Tensor:
    """Back to the input dtype: integer images are rounded (ties to even) and clamped."""
    if dtype.is_floating_point:
        return image.to(dtype)
    info = torch.iinfo(dtype)
    return image.round().clamp(info.min, info.max).to(dtype)


def _canvas(size: tuple[int, int], fill: Fill, like: Tensor, dtype: torch.dtype) -> Tensor:
    """A ``[3, h, w]`` canvas of ``fill`` (scalar or per channel) on ``like``'s device."""
    value = torch.as_tensor(fill, dtype=dtype, device=like.device).reshape(-1, 1, 1)
    return value.expand(3, *size).clone()


def _paste(canvas: Tensor, image: Tensor, placement: Placement) -> Tensor:
    x1, y1, x2, y2 = placement.region
    canvas[:, y1:y2, x1:x2] = image.to(canvas.dtype)
    return canvas


def _scaled_copy(image: Tensor, scale: float, flip: bool) -> tuple[Tensor, tuple[float, float]]:
    """Resize by ``scale`` (keep ratio, rounded size, ≥ 1 px) and maybe mirror.

    Returns the pixels and the exact per-axis scale the rounding produced.
    """
    h, w = int(image.shape[-2]), int(image.shape[-1])
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) != (h, w):
        image = F.resize(image, [new_h, new_w], antialias=True)
    if flip:
        image = image.flip(-1)
    return image, (new_w / w, new_h / h)


# --------------------------------------------------------------------------- boxes


def _clip_to(boxes: Tensor, region: tuple[int, int, int, int]) -> tuple[Tensor, Tensor]:
    """Clamp boxes to a canvas region; ``keep`` drops those thinner than ``MIN_BOX_SIZE``."""
    x1, y1, x2, y2 = (float(v) for v in region)
    xs = boxes[:, 0::2].clamp(x1, x2)
    ys = boxes[:, 1::2].clamp(y1, y2)
    out = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=-1)
    keep = ((out[:, 2] - out[:, 0]) >= MIN_BOX_SIZE) & ((out[:, 3] - out[:, 1]) >= MIN_BOX_SIZE)
    return out, keep


def _placed_targets(item: MixItem, placement: Placement) -> tuple[Tensor, Tensor, Tensor]:
    """An item's boxes moved onto its placed copy, clipped to it, degenerate ones dropped."""
    boxes, keep = _clip_to(placement.map_boxes(item.boxes.to(torch.float32)), placement.region)
    return boxes[keep], item.labels[keep], item.scores[keep]


def _merge(image: Tensor, items: Sequence[MixItem], placements: Sequence[Placement]) -> MixItem:
    """The mixed image with the union of all sources' placed boxes (in source order)."""
    parts = [_placed_targets(item, p) for item, p in zip(items, placements, strict=True)]
    boxes, labels, scores = (torch.cat(column) for column in zip(*parts, strict=True))
    return MixItem(image, boxes, labels, scores, tuple(placements))


def _check_compatible(items: Sequence[MixItem]) -> None:
    first = items[0].image
    for item in items[1:]:
        if item.image.dtype != first.dtype or item.image.device != first.device:
            raise ValueError(
                f"images to mix must share dtype and device, got {first.dtype} on "
                f"{first.device} and {item.image.dtype} on {item.image.device}"
            )


# --------------------------------------------------------------------------- mixup


def _random_offset(g: torch.Generator, canvas: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Uniform integer top-left ``(x, y)`` keeping a ``size`` image inside ``canvas``."""
    return randint(g, 0, canvas[1] - size[1]), randint(g, 0, canvas[0] - size[0])


def pseudo_mixup(
    a: MixItem,
    b: MixItem,
    g: torch.Generator,
    *,
    ratio: float | None = 0.5,
    alpha: float = 1.5,
    flip_p: float = 0.5,
    fit_size: tuple[int, int] | None = None,
    fill: Fill = 0.0,
) -> MixItem:
    """Blend ``b`` into ``a`` (MixPL's Pseudo Mixup); the boxes are the union of both sets.

    ``b`` is resized (keep ratio) to fit ``fit_size`` (default: ``a``'s size; the reference
    passes the padded batch shape), mirrored with probability ``flip_p``; both are placed at
    random integer offsets on a ``max(h) × max(w)`` canvas. Pixels are
    ``λ·canvas_a + (1-λ)·canvas_b`` where each canvas holds ``fill`` outside its image:
    ``0.5·a + 0.5·b`` on the overlap and ``0.5·image + 0.5·fill`` where only one lies (the
    reference, with ``fill=0`` on normalised images). ``λ = ratio``, or a ``Beta(alpha,
    alpha)`` draw when ``ratio`` is None. Integer images come back rounded, in their dtype.
    Boxes are moved with their copy, clipped to it; degenerate ones are dropped. The output
    keeps all scores: threshold afterwards with :func:`filter_scores`.
    ``placements`` of the result are ``(placement of a, placement of b)``.
    """
    _check_compatible([a, b])
    lam = float(ratio) if ratio is not None else _beta(g, alpha)
    target = fit_size if fit_size is not None else a.size
    scale = min(target[0] / b.size[0], target[1] / b.size[1])
    flip = coin(g, flip_p)
    b_image, b_scale = _scaled_copy(b.image, scale, flip)
    b_size = (int(b_image.shape[-2]), int(b_image.shape[-1]))
    canvas_size = (max(a.size[0], b_size[0]), max(a.size[1], b_size[1]))
    place_a = Placement((1.0, 1.0), False, _random_offset(g, canvas_size, a.size), a.size)
    place_b = Placement(b_scale, flip, _random_offset(g, canvas_size, b_size), b_size)

    dtype = _work_dtype(a.image)
    canvas_a = _paste(_canvas(canvas_size, fill, a.image, dtype), a.image, place_a)
    canvas_b = _paste(_canvas(canvas_size, fill, a.image, dtype), b_image, place_b)
    image = _to_dtype(canvas_a.mul_(lam).add_(canvas_b, alpha=1.0 - lam), a.image.dtype)
    return _merge(image, [a, b], [place_a, place_b])


# --------------------------------------------------------------------------- mosaic


def _round_up(value: int, divisor: int) -> int:
    return math.ceil(value / divisor) * divisor


def _mosaic_offsets(sizes: Sequence[tuple[int, int]], centre: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of four tiles meeting at ``centre = (x, y)``: TL, TR, BL, BR."""
    cx, cy = centre
    (h0, w0), (h1, _), (_, w2), _ = sizes
    return [(cx - w0, cy - h0), (cx, cy - h1), (cx - w2, cy), (cx, cy)]


def pseudo_mosaic(
    items: Sequence[MixItem],
    g: torch.Generator,
    *,
    size_range: tuple[int, int] = (400, 800),
    flip_p: float = 0.5,
    size_divisor: int = MOSAIC_SIZE_DIVISOR,
    fill: Fill = 0.0,
) -> MixItem:
    """Tile four items 2×2 around the canvas centre (MixPL's Pseudo Mosaic).

    Each item is resized (keep ratio) so that its longer side is an integer uniform in
    ``size_range`` (inclusive), and mirrored with probability ``flip_p``. With ``H, W`` the
    largest tile height and width rounded up to ``size_divisor``, the canvas is
    ``2H × 2W`` (``fill`` where no tile lies) and the tiles meet at its centre ``(W, H)``:
    item 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right (shuffle the items to
    randomise quadrants). All boxes are carried, scaled and shifted, clipped to their tile;
    degenerate ones are dropped. Shrinking whole images is the point: MixPL's pseudo labels
    over-represent large objects, and a mosaic turns them into small and medium ones.
    """
    if len(items) != 4:
        raise ValueError(f"a mosaic needs 4 items, got {len(items)}")
    low, high = size_range
    if not 1 <= low <= high:
        raise ValueError(f"size_range must satisfy 1 <= min <= max, got {size_range}")
    _check_compatible(items)
    copies, scales, flips = [], [], []
    for item in items:
        longer = randint(g, low, high)
        flip = coin(g, flip_p)
        image, scale = _scaled_copy(item.image, longer / max(item.size), flip)
        copies.append(image)
        scales.append(scale)
        flips.append(flip)
    sizes = [(int(c.shape[-2]), int(c.shape[-1])) for c in copies]
    half_h = _round_up(max(s[0] for s in sizes), size_divisor)
    half_w = _round_up(max(s[1] for s in sizes), size_divisor)
    offsets = _mosaic_offsets(sizes, (half_w, half_h))
    placements = [
        Placement(scale, flip, offset, size)
        for scale, flip, offset, size in zip(scales, flips, offsets, sizes, strict=True)
    ]
    canvas = _canvas((2 * half_h, 2 * half_w), fill, items[0].image, items[0].image.dtype)
    for copy, placement in zip(copies, placements, strict=True):
        _paste(canvas, copy, placement)
    return _merge(canvas, items, placements)


# --------------------------------------------------------------------------- erasing


def erase_patches(
    size: tuple[int, int],
    g: torch.Generator,
    *,
    n_patches: tuple[int, int] = (1, 19),
    max_ratio: float = 0.1,
) -> Tensor:
    """Random square-ish patches as MixPL draws them, ``float32 [P, 4]`` integer xyxy (CPU).

    ``P`` is uniform in ``n_patches`` (inclusive; the reference's ``randint(1, 20)``); each
    patch is ``int(r·H) × int(r·W)`` with one ``r ~ U(0, max_ratio)`` for both sides, placed
    uniformly inside the image. A patch can be empty (``r·H < 1``), as in the reference.
    """
    return draw_patches(size, g, n_patches=n_patches, max_frac=max_ratio, sides="shared")


def apply_erasing(
    item: MixItem, rects: Tensor, *, fill: Fill = 0.0, drop_covered: float = DROP_COVERED
) -> MixItem:
    """Blank integer xyxy ``rects``; drop boxes whose area the *union* of rects covers
    ≥ ``drop_covered`` (see :mod:`ssodkit.erasing`)."""
    erased = replace(item, image=blank(item.image, rects, fill))
    if len(item) == 0:
        return erased
    return erased.select(visible(item.boxes, rects, item.size, drop_covered))


def erase_and_filter(
    item: MixItem,
    g: torch.Generator,
    *,
    n_patches: tuple[int, int] = (1, 19),
    max_ratio: float = 0.1,
    fill: Fill = 0.0,
    drop_covered: float = DROP_COVERED,
) -> MixItem:
    """MixPL's random erasing: :func:`erase_patches` then :func:`apply_erasing`."""
    rects = erase_patches(item.size, g, n_patches=n_patches, max_ratio=max_ratio)
    return apply_erasing(item, rects, fill=fill, drop_covered=drop_covered)


# --------------------------------------------------------------------------- threshold


def filter_scores(item: MixItem, thr: float) -> MixItem:
    """Keep boxes with ``score > thr`` — applied after mixing, as MixPL (and mmdet's
    ``filter_gt_instances``) does, so mixing sees every candidate box."""
    from ssodkit.pseudo.filters import above_threshold

    return item.select(above_threshold(item.scores, thr))


def is_empty(item: MixItem) -> bool:
    """No pseudo box left: under the empty-image rule such an image adds no loss."""
    return item.boxes.shape[0] == 0
