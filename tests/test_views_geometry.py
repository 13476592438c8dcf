"""The view matrices place boxes exactly where torchvision places pixels."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from ssodkit.views.geometry import (
    clip_boxes,
    hflip_matrix,
    identity_matrix,
    project_boxes,
    resize_matrix,
    rotate_matrix,
    shear_matrix,
    transform_boxes,
    translate_matrix,
    warp_boxes,
)

H, W = 100, 120
# x1, y1, x2, y2 (pixel corners) of a white block, well off the centre (60, 50) so that a
# wrong sign of rotation or shear moves it by many pixels.
RECT = (70, 24, 96, 40)


def rect_image(rect: tuple[int, int, int, int] = RECT, h: int = H, w: int = W) -> torch.Tensor:
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    x1, y1, x2, y2 = rect
    image[:, y1:y2, x1:x2] = 255
    return image


def bright_box(image: torch.Tensor) -> torch.Tensor:
    """Pixel-corner box around the pixels brighter than mid-grey."""
    ys, xs = torch.nonzero(image[0] > 127, as_tuple=True)
    return torch.tensor(
        [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32
    )


def rect_box(rect: tuple[int, int, int, int] = RECT) -> torch.Tensor:
    return torch.tensor([rect], dtype=torch.float32)


def affine(image: torch.Tensor, **kwargs: object) -> torch.Tensor:
    params = {"angle": 0.0, "translate": [0.0, 0.0], "scale": 1.0, "shear": [0.0, 0.0]}
    params.update(kwargs)
    return F.affine(image, interpolation=InterpolationMode.BILINEAR, **params)  # type: ignore[arg-type]


def test_resize_matrix_matches_torchvision_resize() -> None:
    new_h, new_w = 47, 113  # a different scale per axis, neither an integer
    out = F.resize(rect_image(), [new_h, new_w], antialias=True)
    expected = transform_boxes(rect_box(), resize_matrix(new_w / W, new_h / H))[0]
    torch.testing.assert_close(bright_box(out), expected, atol=1.0, rtol=0)


def test_hflip_matrix_mirrors_box_edges_exactly() -> None:
    out = F.horizontal_flip(rect_image())
    expected = transform_boxes(rect_box(), hflip_matrix(W))[0]
    torch.testing.assert_close(bright_box(out), expected, atol=0, rtol=0)
    torch.testing.assert_close(expected, torch.tensor([W - 96, 24, W - 70, 40.0]))


def test_translate_matrix_matches_torchvision_affine() -> None:
    out = affine(rect_image(), translate=[7.0, -5.0])
    expected = transform_boxes(rect_box(), translate_matrix(7, -5))[0]
    torch.testing.assert_close(bright_box(out), expected, atol=0, rtol=0)


@pytest.mark.parametrize("shear", [(20.0, 0.0), (-25.0, 0.0), (0.0, 15.0), (0.0, -30.0), (10.0, 12.0)])
def test_shear_matrix_matches_torchvision_affine(shear: tuple[float, float]) -> None:
    out = affine(rect_image(), shear=list(shear))
    expected = transform_boxes(rect_box(), shear_matrix(*shear, center=(W * 0.5, H * 0.5)))[0]
    torch.testing.assert_close(bright_box(out), expected, atol=1.5, rtol=0)


def rotated_corners(rect: tuple[int, int, int, int], deg: float) -> torch.Tensor:
    x1, y1, x2, y2 = rect
    corners = torch.tensor([[x1, y1, 1], [x2, y1, 1], [x2, y2, 1], [x1, y2, 1]], dtype=torch.float64)
    return (corners @ rotate_matrix(deg, (W * 0.5, H * 0.5)).T)[:, :2]


@pytest.mark.parametrize("deg", [15.0, -30.0, 37.0])
def test_rotate_matrix_matches_torchvision_affine(deg: float) -> None:
    out = affine(rect_image(), angle=deg)
    # The rotated corners are where the block's extreme pixels are...
    ys, xs = torch.nonzero(out[0] > 127, as_tuple=True)
    centres = torch.stack([xs, ys], dim=-1).to(torch.float64) + 0.5
    for corner in rotated_corners(RECT, deg):
        assert torch.cdist(corner[None], centres).min() < 1.5
    # ...and the box is the one enclosing them (larger than the object, by design).
    expected = transform_boxes(rect_box(), rotate_matrix(deg, (W * 0.5, H * 0.5)))[0]
    torch.testing.assert_close(bright_box(out), expected, atol=1.5, rtol=0)


def test_positive_affine_angle_turns_clockwise_on_screen() -> None:
    """Right of the centre goes below it: torchvision's F.affine angle, not F.rotate's."""
    rect = (80, 48, 84, 52)  # right of the centre (60, 50)
    out = affine(rect_image(rect), angle=90.0)
    box = transform_boxes(rect_box(rect), rotate_matrix(90.0, (W * 0.5, H * 0.5)))[0]
    torch.testing.assert_close(box, torch.tensor([58.0, 70, 62, 74]), atol=1e-4, rtol=0)
    torch.testing.assert_close(bright_box(out), box, atol=1.0, rtol=0)


def test_transform_boxes_enclosing_box_of_rotated_corners() -> None:
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    quarter = rotate_matrix(45.0, (1.0, 1.0))
    half_diag = math.sqrt(2.0)
    expected = torch.tensor([[1 - half_diag, 1 - half_diag, 1 + half_diag, 1 + half_diag]])
    torch.testing.assert_close(transform_boxes(box, quarter), expected)


def test_clip_boxes_clamps_to_image() -> None:
    boxes = torch.tensor([[-5.0, -1.0, 30.0, 70.0]])
    torch.testing.assert_close(clip_boxes(boxes, h=60, w=20), torch.tensor([[0.0, 0.0, 20.0, 60.0]]))


def test_project_boxes_inverts_the_view_and_reports_keep() -> None:
    boxes = torch.tensor([[10.0, 10.0, 30.0, 25.0], [70.0, 5.0, 79.0, 50.0]])
    m_view = translate_matrix(-10, 0) @ resize_matrix(1.5, 0.5)
    in_view, keep = warp_boxes(boxes, m_view, (30, 200))
    assert keep.tolist() == [True, True]
    back, keep_back = project_boxes(in_view, m_view, identity_matrix(), (H, W))
    assert keep_back.all()
    torch.testing.assert_close(back, boxes, atol=1e-4, rtol=0)


def test_project_boxes_drops_boxes_that_leave_or_degenerate() -> None:
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0], [50.0, 10.0, 60.0, 20.0], [5.0, 5.0, 5.001, 9.0]])
    shifted = translate_matrix(-45, 0)
    out, keep = project_boxes(boxes, identity_matrix(), shifted, (H, 30))
    assert keep.tolist() == [False, True, False]  # left the image / inside / thinner than 1e-2
    torch.testing.assert_close(out, torch.tensor([[5.0, 10.0, 15.0, 20.0]]))


def test_project_boxes_handles_no_boxes() -> None:
    out, keep = project_boxes(torch.zeros(0, 4), identity_matrix(), hflip_matrix(W), (H, W))
    assert out.shape == (0, 4) and keep.shape == (0,)
