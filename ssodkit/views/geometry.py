"""Pure geometry for views: 3x3 matrices and what they do to boxes.

Every matrix is a ``float64 [3, 3]`` homogeneous map in the *pixel-corner* convention: the
image spans ``[0, W] x [0, H]`` and pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]``. That is
the convention in which torchvision's resize (``align_corners=False``), flip and affine
place pixels, so a box transformed by one of these matrices lands on the same pixels as
the image transformed by the matching ``torchvision.transforms.v2.functional`` call.

Affine convention (``F.affine(img, angle, translate, scale, shear)``, centre
``(W * 0.5, H * 0.5)``), read from ``torchvision.transforms.functional.
_get_inverse_affine_matrix`` and checked on pixels in the tests: the forward map is
``p' = T · C · R(angle) · SHy(shear_y) · SHx(shear_x) · C⁻¹ · p`` with, in y-down
coordinates, ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` (a positive angle turns the image
*clockwise* on screen; ``F.rotate`` negates it to be counter-clockwise),
``SHx(s) = [[1, -tan s], [0, 1]]`` and ``SHy(s) = [[1, 0], [-tan s, 1]]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MIN_BOX_SIZE = 1e-2
"""Boxes narrower or lower than this (pixels) after a warp are dropped (mmdet's default)."""


def _matrix(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def identity_matrix() -> Tensor:
    """The matrix of a view that has not moved any pixel yet."""
    return torch.eye(3, dtype=torch.float64)


def resize_matrix(sx: float, sy: float) -> Tensor:
    """Scale about the origin; resizing W→W' is ``sx = W'/W`` (pixel corners scale exactly)."""
    return _matrix([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def hflip_matrix(width: float) -> Tensor:
    """Mirror ``x → width - x``: a box edge at x lands at ``width - x``, as ``F.horizontal_flip``."""
    return _matrix([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def translate_matrix(tx: float, ty: float) -> Tensor:
    """Shift by ``(tx, ty)`` pixels, as ``F.affine(translate=[tx, ty])``."""
    return _matrix([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _about(center: tuple[float, float], linear: Tensor) -> Tensor:
    """Apply a 3x3 linear map about ``center`` instead of the origin: ``C · L · C⁻¹``."""
    cx, cy = center
    return translate_matrix(cx, cy) @ linear @ translate_matrix(-cx, -cy)


def rotate_matrix(deg: float, center: tuple[float, float]) -> Tensor:
    """Rotation as ``F.affine(angle=deg)`` does it: positive ``deg`` is clockwise on screen."""
    a = math.radians(deg)
    cos, sin = math.cos(a), math.sin(a)
    return _about(center, _matrix([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]))


def shear_matrix(shx_deg: float, shy_deg: float, center: tuple[float, float]) -> Tensor:
    """Shear as ``F.affine(shear=[shx_deg, shy_deg])``: ``SHy · SHx`` about ``center``.

    Note the signs: torchvision moves ``x' = x - tan(shx)·y`` and ``y' = y - tan(shy)·x``.
    """
    tx, ty = math.tan(math.radians(shx_deg)), math.tan(math.radians(shy_deg))
    shear_x = _matrix([[1.0, -tx, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    shear_y = _matrix([[1.0, 0.0, 0.0], [-ty, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return _about(center, shear_y @ shear_x)


def transform_boxes(boxes: Tensor, matrix: Tensor) -> Tensor:
    """Map xyxy boxes through ``matrix``: the box enclosing the 4 transformed corners.

    Computed in float64 so that composing many views does not drift; returned as float32.
    Under rotation or shear the enclosing box is larger than the object — by design, as in
    mmdet, since an axis-aligned box is all the detector can use.
    """
    b = boxes.to(torch.float64).reshape(-1, 4)
    x1, y1, x2, y2 = b.unbind(-1)
    xs = torch.stack([x1, x2, x2, x1], dim=-1)
    ys = torch.stack([y1, y1, y2, y2], dim=-1)
    m = matrix.to(torch.float64)
    tx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    ty = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    w = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    tx, ty = tx / w, ty / w
    out = torch.stack(
        [tx.amin(-1), ty.amin(-1), tx.amax(-1), ty.amax(-1)], dim=-1
    )
    return out.to(torch.float32)


def clip_boxes(boxes: Tensor, h: float, w: float) -> Tensor:
    """Clamp xyxy boxes to the image ``[0, w] x [0, h]``."""
    x = boxes[:, 0::2].clamp(0.0, float(w))
    y = boxes[:, 1::2].clamp(0.0, float(h))
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=-1)


def warp_boxes(
    boxes: Tensor, matrix: Tensor, size: tuple[int, int], min_size: float = MIN_BOX_SIZE
) -> tuple[Tensor, Tensor]:
    """Transform, clip to ``size = (h, w)`` and drop degenerate boxes.

    Returns the surviving boxes and the boolean ``keep`` mask over the inputs, so that
    labels and scores can follow with ``labels[keep]``.
    """
    out = clip_boxes(transform_boxes(boxes, matrix), size[0], size[1])
    keep = ((out[:, 2] - out[:, 0]) >= min_size) & ((out[:, 3] - out[:, 1]) >= min_size)
    return out[keep], keep


def project_boxes(
    boxes: Tensor,
    m_from: Tensor,
    m_to: Tensor,
    size_to: tuple[int, int],
    min_size: float = MIN_BOX_SIZE,
) -> tuple[Tensor, Tensor]:
    """Move boxes from view A (matrix ``m_from``) to view B (``m_to``, image ``size_to``).

    Both matrices map the *original* image to their view, so ``M_to · M_from⁻¹`` maps view
    A to view B; this is how teacher predictions on the weak view become targets on the
    strong view. Returns ``(boxes, keep)`` as :func:`warp_boxes`.
    """
    relative = m_to.to(torch.float64) @ torch.linalg.inv(m_from.to(torch.float64))
    return warp_boxes(boxes, relative, size_to, min_size)
