"""Pseudo-labels of a batch and their projection from the teacher's view to the student's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssodkit.detectors.protocol import Detections
from ssodkit.erasing import DROP_COVERED, visible  # DROP_COVERED: re-exported
from ssodkit.views.geometry import project_boxes


@dataclass
class PseudoLabels:
    """Teacher detections per unlabeled image plus a per-image loss weight.

    Filters narrow the detections and may zero an image's weight (the empty-image rule);
    the method passes the weights to `Detector.loss(image_weights=…)`.
    """

    detections: list[Detections]
    weights: Tensor  # float [N_images]

    @staticmethod
    def from_detections(detections: list[Detections]) -> PseudoLabels:
        device = detections[0].boxes.device if detections else "cpu"
        return PseudoLabels(list(detections), torch.ones(len(detections), device=device))

    def map(self, fn) -> PseudoLabels:  # noqa: ANN001 - fn: Detections -> Detections
        return PseudoLabels([fn(d) for d in self.detections], self.weights.clone())

    @property
    def counts(self) -> list[int]:
        return [len(d) for d in self.detections]


def project_detections(
    det: Detections,
    m_from: Tensor,
    m_to: Tensor,
    size_to: tuple[int, int],
    erased: Tensor | None = None,
    drop_covered: float | None = DROP_COVERED,
) -> Detections:
    """Move detections into another view (`M_to · M_from⁻¹`, clip, drop degenerate), then
    drop boxes that the target view's random erasing covers by at least `drop_covered`
    (None: keep them all)."""
    device = det.boxes.device
    boxes, keep = project_boxes(det.boxes.detach().cpu(), m_from.cpu(), m_to.cpu(), size_to)
    out = det[keep.to(device)]
    out.boxes = boxes.to(device=device, dtype=torch.float32)
    if drop_covered is not None and erased is not None and erased.numel() and len(out):
        out = out[visible(out.boxes, erased, size_to, drop_covered)]
    return out


def as_targets(det: Detections) -> dict[str, Tensor]:
    return {"boxes": det.boxes.detach(), "labels": det.labels.detach()}
