"""Augmentation ops that carry their geometry.

An op is a small callable ``op(state, generator) -> state``. Geometric ops move pixels with
``torchvision.transforms.v2.functional``, compose the matching matrix onto
``state.matrix`` (original → view) and move the boxes with it (transform, clip, drop
degenerate; labels follow). Photometric ops touch pixels only. All randomness comes from
the ``torch.Generator`` passed in, so a view is reproducible from a seed and never
disturbs the global RNG.

Magnitudes of the RandAugment-style lists follow mmdetection's ``semi_coco_detection``
defaults (``level=None``: magnitude uniform in ``[min_mag, max_mag]``):

========================  ===============================================================
op                        magnitude
========================  ===============================================================
ColorTransform            none: mmdet's base class is listed and changes nothing
AutoContrast, Equalize    none
Sharpness, Color,         factor uniform in [0.1, 1.9] (1 = unchanged); Color is
Contrast, Brightness      saturation, as PIL's ``ImageEnhance.Color``
Posterize                 bits kept uniform in {1, …, 4} (mmdet: ``ceil(U[0, 4])``; the
                          rare 0, an all-black image, is left out)
Solarize                  threshold uniform in [0, 256]; pixels ≥ threshold are inverted
Rotate                    uniform in [-30°, 30°]
ShearX / ShearY           uniform in [-30°, 30°]
TranslateX / TranslateY   uniform in [-0.1, 0.1] of the side, rounded to whole pixels
RandomErasing             1–5 patches, each side ≤ 0.2 of the image side; boxes ≥ 70 %
                          covered by the union of patches are dropped
========================  ===============================================================

Unbiased Teacher's strong view (``ut_strong`` in ``views.pipelines``) is built from
:class:`RandomApply`, :class:`ColorJitter`, :class:`RandomGrayscale`, :class:`GaussianBlur`
and :class:`RandomAreaErasing` (torchvision's RandomErasing), with the official values of
``ubteacher/data/detection_utils.py`` (see ``views.config.UTStrongConfig``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal, Protocol

import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode

from ssodkit.erasing import DROP_COVERED, blank, draw_patches, visible
from ssodkit.rng import coin, randint, uniform
from ssodkit.views.geometry import (
    MIN_BOX_SIZE,
    hflip_matrix,
    identity_matrix,
    resize_matrix,
    rotate_matrix,
    shear_matrix,
    translate_matrix,
    warp_boxes,
)


def _no_erased() -> Tensor:
    return torch.zeros((0, 4), dtype=torch.float32)


@dataclass(frozen=True)
class ViewState:
    """An image part-way through a view, with everything needed to undo its geometry.

    ``matrix`` maps original-image pixels to this image's pixels; ``erased`` holds the
    xyxy rectangles (in this image's pixels) that random erasing blanked, so that methods
    can tell erased regions from background.
    """

    image: Tensor  # uint8 [3, H, W]
    boxes: Tensor  # float32 [N, 4] xyxy
    labels: Tensor  # int64 [N]
    matrix: Tensor = field(default_factory=identity_matrix)  # float64 [3, 3]
    erased: Tensor = field(default_factory=_no_erased)  # float32 [P, 4] xyxy

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the current image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def with_image(self, image: Tensor) -> ViewState:
        """Same geometry and boxes, new pixels (what a photometric op returns)."""
        return replace(self, image=image)


class Op(Protocol):
    """One augmentation step."""

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState: ...


# --- geometric ops -----------------------------------------------------------------------


def _warp(state: ViewState, image: Tensor, step: Tensor) -> ViewState:
    """Finish a geometric op: compose ``step`` (current view → new view), move the boxes."""
    if state.erased.numel():
        # Erased rectangles would stop being axis-aligned; erasing belongs after geometry.
        raise ValueError("a geometric op cannot follow RandomErasing in a view")
    size = (int(image.shape[-2]), int(image.shape[-1]))
    boxes, keep = warp_boxes(state.boxes, step, size, MIN_BOX_SIZE)
    return replace(
        state, image=image, boxes=boxes, labels=state.labels[keep], matrix=step @ state.matrix
    )


def _resize_by(state: ViewState, scale: float) -> ViewState:
    h, w = state.size
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    image = F.resize(state.image, [new_h, new_w], antialias=True)
    # The exact per-axis scale, not `scale`: rounding the size changes it slightly.
    return _warp(state, image, resize_matrix(new_w / w, new_h / h))


def _scale_for(size: tuple[int, int], short_side: int, max_size: int) -> float:
    """Scale that brings the short side to ``short_side`` unless the long side passes ``max_size``."""
    return min(short_side / min(size), max_size / max(size))


@dataclass(frozen=True)
class Resize:
    """Deterministic keep-ratio resize for evaluation (short side, long side capped)."""

    short_side: int
    max_size: int

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        return _resize_by(state, _scale_for(state.size, self.short_side, self.max_size))


@dataclass(frozen=True)
class RandomResize:
    """Scale jitter: short side uniform (integer) in ``short_side_range``, long side capped."""

    short_side_range: tuple[int, int]
    max_size: int

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        short_side = randint(g, *self.short_side_range)
        return _resize_by(state, _scale_for(state.size, short_side, self.max_size))


@dataclass(frozen=True)
class RandomHFlip:
    """Horizontal flip with probability ``p``."""

    p: float = 0.5

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        if not coin(g, self.p):
            return state
        return _warp(state, F.horizontal_flip(state.image), hflip_matrix(state.size[1]))


def _center(state: ViewState) -> tuple[float, float]:
    """The centre torchvision's affine turns about: ``(W * 0.5, H * 0.5)`` in pixel corners."""
    h, w = state.size
    return w * 0.5, h * 0.5


@dataclass(frozen=True)
class RandomRotate:
    """Rotate about the centre by an angle uniform in ``[-max_deg, max_deg]``."""

    max_deg: float = 30.0
    fill: int = 0

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        deg = uniform(g, -self.max_deg, self.max_deg)
        image = F.affine(
            state.image, angle=deg, translate=[0.0, 0.0], scale=1.0, shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR, fill=self.fill,
        )
        return _warp(state, image, rotate_matrix(deg, _center(state)))


Axis = Literal["x", "y"]


def _pick_axis(axis: Axis | None, g: torch.Generator) -> Axis:
    if axis is not None:
        return axis
    return "x" if coin(g, 0.5) else "y"


@dataclass(frozen=True)
class RandomShear:
    """Shear about the centre along ``axis`` (random when None) by ``U[-max_deg, max_deg]``."""

    max_deg: float = 30.0
    axis: Axis | None = None
    fill: int = 0

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        axis = _pick_axis(self.axis, g)
        deg = uniform(g, -self.max_deg, self.max_deg)
        shear = [deg, 0.0] if axis == "x" else [0.0, deg]
        image = F.affine(
            state.image, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=shear,
            interpolation=InterpolationMode.BILINEAR, fill=self.fill,
        )
        return _warp(state, image, shear_matrix(shear[0], shear[1], _center(state)))


@dataclass(frozen=True)
class RandomTranslate:
    """Shift along ``axis`` (random when None) by ``U[-max_frac, max_frac]`` of that side.

    The shift is rounded to whole pixels so that pixels move exactly as the matrix says.
    """

    max_frac: float = 0.1
    axis: Axis | None = None
    fill: int = 0

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        axis = _pick_axis(self.axis, g)
        h, w = state.size
        shift = round(uniform(g, -self.max_frac, self.max_frac) * (w if axis == "x" else h))
        tx, ty = (shift, 0) if axis == "x" else (0, shift)
        image = F.affine(
            state.image, angle=0.0, translate=[tx, ty], scale=1.0, shear=[0.0, 0.0],
            interpolation=InterpolationMode.NEAREST, fill=self.fill,
        )
        return _warp(state, image, translate_matrix(tx, ty))


# --- combinators -------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomChoice:
    """Apply one of ``ops``, chosen uniformly (RandAugment with one op)."""

    ops: tuple[Op, ...]

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        return self.ops[randint(g, 0, len(self.ops) - 1)](state, g)


@dataclass(frozen=True)
class RandomOrder:
    """Apply all ``ops`` in a random order (mmdet applies colour and geometry this way)."""

    ops: tuple[Op, ...]

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        for i in torch.randperm(len(self.ops), generator=g).tolist():
            state = self.ops[i](state, g)
        return state


class RandomGeometricOp(RandomChoice):
    """One of Rotate, ShearX, ShearY, TranslateX, TranslateY (mmdet's ``geometric`` list)."""

    def __init__(
        self,
        rotate_max_deg: float = 30.0,
        shear_max_deg: float = 30.0,
        translate_max_frac: float = 0.1,
        fill: int = 0,
    ) -> None:
        super().__init__(
            (
                RandomRotate(rotate_max_deg, fill),
                RandomShear(shear_max_deg, "x", fill),
                RandomShear(shear_max_deg, "y", fill),
                RandomTranslate(translate_max_frac, "x", fill),
                RandomTranslate(translate_max_frac, "y", fill),
            )
        )


# --- photometric ops ---------------------------------------------------------------------


@dataclass(frozen=True)
class ColorJitter:
    """Brightness/contrast/saturation/hue jitter in random order, as torchvision's ColorJitter.

    Factors are uniform in ``[max(0, 1 - s), 1 + s]`` for strength ``s``; hue shifts are
    uniform in ``[-hue, hue]`` (hue ≤ 0.5). A strength of 0 leaves that property alone.
    """

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        steps: list[tuple[float, Callable[[Tensor, float], Tensor], float, float]] = [
            (self.brightness, F.adjust_brightness, max(0.0, 1 - self.brightness), 1 + self.brightness),
            (self.contrast, F.adjust_contrast, max(0.0, 1 - self.contrast), 1 + self.contrast),
            (self.saturation, F.adjust_saturation, max(0.0, 1 - self.saturation), 1 + self.saturation),
            (self.hue, F.adjust_hue, -self.hue, self.hue),
        ]
        image = state.image
        for i in torch.randperm(len(steps), generator=g).tolist():
            strength, adjust, low, high = steps[i]
            if strength > 0:
                image = adjust(image, uniform(g, low, high))
        return state.with_image(image)


@dataclass(frozen=True)
class ColorTransform:
    """Identity, on purpose: mmdet's ``semi_coco_detection`` lists its colour *base class*
    ``ColorTransform``, whose transform does nothing — so one draw in nine of mmdet's colour
    op leaves the colours as they are, and this slot keeps that share."""

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        return state


@dataclass(frozen=True)
class AutoContrast:
    """Stretch each channel to the full [0, 255] range."""

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        return state.with_image(F.autocontrast(state.image))


@dataclass(frozen=True)
class Equalize:
    """Equalise each channel's histogram."""

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        return state.with_image(F.equalize(state.image))


@dataclass(frozen=True)
class _EnhanceOp:
    """A PIL-style enhancement with a factor uniform in ``[min_mag, max_mag]`` (1 = unchanged)."""

    min_mag: float = 0.1
    max_mag: float = 1.9

    _adjust: ClassVar[Callable[[Tensor, float], Tensor]]  # set by each subclass

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        return state.with_image(self._adjust(state.image, uniform(g, self.min_mag, self.max_mag)))


class Sharpness(_EnhanceOp):
    """Blur (factor < 1) or sharpen (factor > 1)."""

    _adjust = staticmethod(F.adjust_sharpness)


class Color(_EnhanceOp):
    """Saturation: 0 would be grey, 1 unchanged (PIL's ``ImageEnhance.Color``)."""

    _adjust = staticmethod(F.adjust_saturation)


class Contrast(_EnhanceOp):
    """Blend with the mean grey level."""

    _adjust = staticmethod(F.adjust_contrast)


class Brightness(_EnhanceOp):
    """Blend with black."""

    _adjust = staticmethod(F.adjust_brightness)


@dataclass(frozen=True)
class Posterize:
    """Keep only the top ``bits`` bits of each channel, ``bits`` uniform in the range."""

    min_bits: int = 1
    max_bits: int = 4

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        return state.with_image(F.posterize(state.image, randint(g, self.min_bits, self.max_bits)))


@dataclass(frozen=True)
class Solarize:
    """Invert pixels at or above a threshold uniform in ``[min_threshold, max_threshold]``."""

    min_threshold: float = 0.0
    max_threshold: float = 256.0

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        threshold = uniform(g, self.min_threshold, self.max_threshold)
        if threshold > 255:  # nothing to invert; torchvision rejects thresholds above 255
            return state
        return state.with_image(F.solarize(state.image, threshold))


def rand_augment_colour_ops() -> tuple[Op, ...]:
    """mmdet's ``semi_coco_detection`` colour list, in its order."""
    return (
        ColorTransform(),
        AutoContrast(),
        Equalize(),
        Sharpness(),
        Posterize(),
        Solarize(),
        Color(),
        Contrast(),
        Brightness(),
    )


class RandomColorOp(RandomChoice):
    """One op from :func:`rand_augment_colour_ops`, chosen uniformly."""

    def __init__(self) -> None:
        super().__init__(rand_augment_colour_ops())


# --- erasing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomErasing:
    """Blank ``n_patches`` random rectangles; drop boxes mostly hidden by them.

    Each patch side is ``U[0, max_frac]`` of the image side (at least one pixel), placed
    uniformly inside the image. A box is dropped when the union of all erased patches
    covers at least ``drop_covered`` of its area: a pseudo box on an object the student
    cannot see teaches it to hallucinate.
    """

    n_patches: tuple[int, int] = (1, 5)
    max_frac: float = 0.2
    fill: int = 0
    drop_covered: float = DROP_COVERED

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        rects = draw_patches(
            state.size, g, n_patches=self.n_patches, max_frac=self.max_frac, sides="independent"
        )
        return erase(state, rects, self.fill, self.drop_covered)


def erase(state: ViewState, rects: Tensor, fill: int, drop_covered: float) -> ViewState:
    """Blank integer xyxy ``rects`` and drop boxes covered ≥ ``drop_covered`` by their union."""
    erased = torch.cat([state.erased, rects.to(torch.float32)])
    keep = visible(state.boxes, erased, state.size, drop_covered)
    return replace(
        state, image=blank(state.image, rects, fill), boxes=state.boxes[keep],
        labels=state.labels[keep], erased=erased,
    )


# --- Unbiased Teacher's strong view (SimCLR-style, torchvision's transforms) -------------


@dataclass(frozen=True)
class RandomApply:
    """Apply ``op`` with probability ``p`` (torchvision's ``RandomApply`` of one transform)."""

    op: Op
    p: float

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        return self.op(state, g) if coin(g, self.p) else state


@dataclass(frozen=True)
class RandomGrayscale:
    """Grey in all three channels with probability ``p`` (torchvision's ``RandomGrayscale``)."""

    p: float = 0.2

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        if not coin(g, self.p):
            return state
        return state.with_image(F.rgb_to_grayscale(state.image, num_output_channels=3))


@dataclass(frozen=True)
class GaussianBlur:
    """Gaussian blur with σ uniform in ``sigma`` (px), the kernel reaching ±3σ.

    The official Unbiased Teacher blurs with PIL's ``ImageFilter.GaussianBlur(radius=σ)``,
    whose radius is the standard deviation (PIL approximates the Gaussian with box blurs);
    here it is torchvision's ``gaussian_blur`` (reflect padding at the borders).
    """

    sigma: tuple[float, float] = (0.1, 2.0)

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        s = uniform(g, *self.sigma)
        radius = min(math.ceil(3 * s), min(state.size) - 1)  # reflect padding needs pad < side
        if radius < 1 or s <= 0:
            return state
        k = 2 * radius + 1
        return state.with_image(F.gaussian_blur(state.image, [k, k], [s, s]))


def random_fill(shape: tuple[int, int, int], g: torch.Generator) -> Tensor:
    """The pixels torchvision's ``RandomErasing(value="random")`` leaves in the official
    Unbiased Teacher pipeline, as uint8.

    There the patch gets N(0, 1) noise on a [0, 1] float image, which ``ToPILImage`` turns
    back into bytes with ``mul(255).byte()``: truncated toward zero and wrapped modulo 256
    (what torch's float → uint8 cast does), so nearly uniform bytes, independent per pixel
    and channel. Written out here because that cast is undefined in C++ for values outside
    [0, 255]."""
    z = torch.empty(shape, dtype=torch.float32).normal_(generator=g)
    return (z * 255).to(torch.int64).remainder(256).to(torch.uint8)


def area_erasing_rect(
    size: tuple[int, int], g: torch.Generator, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int] | None:
    """torchvision's ``RandomErasing`` draw: ``(i, j, h, w)`` of one rectangle whose area is
    ``U(scale)`` of the image and whose aspect ratio h/w is log-uniform in ``ratio``; ten
    tries to fit it strictly inside the image, else None (nothing is erased)."""
    img_h, img_w = size
    area = img_h * img_w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        erase_area = area * uniform(g, *scale)
        aspect = math.exp(uniform(g, log_lo, log_hi))
        h = int(round(math.sqrt(erase_area * aspect)))
        w = int(round(math.sqrt(erase_area / aspect)))
        if h < img_h and w < img_w:
            return randint(g, 0, img_h - h), randint(g, 0, img_w - w), h, w
    return None


@dataclass(frozen=True)
class RandomAreaErasing:
    """torchvision's ``RandomErasing(p, scale, ratio, value="random")`` with every draw from
    the generator: with probability ``p`` one rectangle (:func:`area_erasing_rect`) is filled
    with :func:`random_fill` noise and recorded in ``state.erased``.

    Boxes are kept however much they are erased (the official Unbiased Teacher applies its
    strong augmentation to the pixels only) unless ``drop_covered`` is set: then boxes that
    the union of the view's erased rectangles covers at least that much are dropped.
    """

    p: float
    scale: tuple[float, float]
    ratio: tuple[float, float]
    drop_covered: float | None = None

    def __call__(self, state: ViewState, g: torch.Generator) -> ViewState:
        if not coin(g, self.p):
            return state
        drawn = area_erasing_rect(state.size, g, self.scale, self.ratio)
        if drawn is None or 0 in drawn[2:]:  # no room, or a patch that rounds to nothing
            return state
        i, j, h, w = drawn
        image = F.erase(state.image, i, j, h, w, random_fill((int(state.image.shape[0]), h, w), g))
        erased = torch.cat([state.erased, torch.tensor([[j, i, j + w, i + h]], dtype=torch.float32)])
        out = replace(state, image=image, erased=erased)
        if self.drop_covered is None:
            return out
        keep = visible(state.boxes, erased, state.size, self.drop_covered)
        return replace(out, boxes=state.boxes[keep], labels=state.labels[keep])
