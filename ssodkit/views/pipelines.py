"""View pipelines: a list of ops behind the view contract of ``docs/design.md``.

``view(image, boxes, labels, generator) -> ViewOutput(image, boxes, labels, matrix, erased)``
with the matrix starting at identity, so ``M_B @ inv(M_A)`` moves boxes between any two
views of the same image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssodkit.views.config import ViewConfig
from ssodkit.views.ops import (
    ColorJitter,
    GaussianBlur,
    Op,
    RandomApply,
    RandomAreaErasing,
    RandomColorOp,
    RandomErasing,
    RandomGeometricOp,
    RandomGrayscale,
    RandomHFlip,
    RandomOrder,
    RandomResize,
    Resize,
    ViewState,
)

ViewOutput = ViewState
"""A view's result is its final state, so it can seed another view (see ``from_state``)."""


@dataclass(frozen=True)
class View:
    """Ops applied in order; all randomness from the generator passed to each call."""

    ops: tuple[Op, ...]

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor, generator: torch.Generator
    ) -> ViewOutput:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"a view takes a uint8 [3, H, W] image, got {image.dtype} {list(image.shape)}"
            )
        state = ViewState(
            image=image,
            boxes=boxes.to(torch.float32).reshape(-1, 4),
            labels=labels.to(torch.int64).reshape(-1),
        )
        return self.from_state(state, generator)

    def from_state(self, state: ViewState, generator: torch.Generator) -> ViewOutput:
        """Continue from another view's output, keeping its matrix (SED's strong view
        shares the weak view's geometry this way)."""
        for op in self.ops:
            state = op(state, generator)
        return state


def _config(cfg: ViewConfig | None) -> ViewConfig:
    return cfg if cfg is not None else ViewConfig()


def _scale_and_flip(cfg: ViewConfig) -> list[Op]:
    return [RandomResize(cfg.train_short_side, cfg.max_size), RandomHFlip(cfg.flip_prob)]


def _erasing(cfg: ViewConfig) -> RandomErasing:
    return RandomErasing(
        n_patches=cfg.erase_patches,
        max_frac=cfg.erase_max_frac,
        drop_covered=cfg.erase_drop_covered,
    )


def labeled_view(cfg: ViewConfig | None = None) -> View:
    """Supervised branch: scale jitter, flip, colour jitter (no hue: colour may be the class)."""
    cfg = _config(cfg)
    s = cfg.color_jitter
    return View((*_scale_and_flip(cfg), ColorJitter(brightness=s, contrast=s, saturation=s)))


def eval_view(cfg: ViewConfig | None = None) -> View:
    """Deterministic resize for evaluation; the matrix maps predictions back to the original."""
    cfg = _config(cfg)
    return View((Resize(cfg.eval_short_side, cfg.max_size),))


def weak_view(cfg: ViewConfig | None = None) -> View:
    """Teacher input: scale jitter and flip only, so its predictions stay reliable."""
    return View(tuple(_scale_and_flip(_config(cfg))))


def strong_view(cfg: ViewConfig | None = None) -> View:
    """Student input: own scale jitter and flip, one colour and one geometric op in random
    order, then random erasing (mmdet's ``semi_coco_detection`` strong pipeline)."""
    cfg = _config(cfg)
    augment: list[Op] = []
    if cfg.strong_color:
        augment.append(RandomColorOp())
    if cfg.strong_geometric:
        augment.append(
            RandomGeometricOp(cfg.rotate_max_deg, cfg.shear_max_deg, cfg.translate_max_frac)
        )
    ops: list[Op] = _scale_and_flip(cfg)
    if augment:
        ops.append(RandomOrder(tuple(augment)))
    ops.append(_erasing(cfg))
    return View(tuple(ops))


def photometric_strong_view(cfg: ViewConfig | None = None) -> View:
    """Strong pixels on the weak view's geometry: colour op and erasing only.

    Call ``view.from_state(weak_output, generator)`` so that teacher and student see the
    same geometry (SED compares their dense outputs location by location).
    """
    cfg = _config(cfg)
    ops: list[Op] = [RandomColorOp()] if cfg.strong_color else []
    return View((*ops, _erasing(cfg)))


def ut_strong_view(cfg: ViewConfig | None = None) -> View:
    """Unbiased Teacher's strong view: the weak view's image plus photometric ops only.

    Colour jitter (p 0.8), greyscale (p 0.2), Gaussian blur (p 0.5), then three random
    erasings with noise fill (``views.ut_strong``; defaults are the official
    ``build_strong_augmentation``). Call ``view.from_state(weak_output, generator)``: the
    matrix stays the weak view's, so pseudo boxes move by the identity, and boxes are kept
    however much they are erased, as in the official code.
    """
    u = _config(cfg).ut_strong
    brightness, contrast, saturation, hue = u.color_jitter
    ops: list[Op] = [
        RandomApply(ColorJitter(brightness, contrast, saturation, hue), u.color_jitter_p),
        RandomGrayscale(u.grayscale_p),
        RandomApply(GaussianBlur(u.blur_sigma), u.blur_p),
    ]
    ops += [RandomAreaErasing(e.p, e.scale, e.ratio) for e in u.erasing]
    return View(tuple(ops))
