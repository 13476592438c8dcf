"""Soft Teacher's teacher-aware pseudo-label filters (Xu et al., ICCV 2021).

Unlike the score and empty-image filters, these ask the teacher's RoI head about boxes the
teacher did not output itself, so they take a `TeacherView` (the teacher's one forward on
the weak view) besides the pseudo-labels; a `FilterChain` cannot run them.

- `BoxJitter`: a box is a reliable regression target when the teacher refines jittered
  copies of it back to the same place (low spread of the refined coordinates).
- `BackgroundReliability`: a student RoI sampled as background counts by how sure the
  teacher is that it is background, so that a missed object is not learned as background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from ssodkit.detectors.protocol import Detections, TwoStage
from ssodkit.errors import ConfigError
from ssodkit.pseudo.labels import PseudoLabels
from ssodkit.views.geometry import transform_boxes

# Official defaults (microsoft/SoftTeacher configs/soft_teacher/base.py).
JITTER_TIMES = 10
JITTER_SCALE = 0.06
REG_PSEUDO_THR = 0.02


@dataclass
class TeacherView:
    """The teacher's forward on the weak view, shared by its detections and the filters."""

    model: TwoStage  # the teacher (or its `TwoStageHandle`)
    image_list: ImageList
    features: dict[str, Tensor]
    matrices: list[Tensor]  # float64 [3,3], original → weak view

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return self.image_list.image_sizes


class BoxJitter:
    """Keep boxes whose box-jitter regression uncertainty is below `threshold`.

    Each box gets `times` copies shifted by N(0,1)·scale·(w,h) per coordinate; the teacher
    refines every copy for the box's label; the uncertainty is the mean over the four
    coordinates of std(refined coordinate) / size of the mean refined box (w for x, h for y),
    sizes clamped at 1 px, as in the official `compute_uncertainty_with_aug`. Kept boxes are
    unchanged: the regression target is the detection itself, not the jittered mean.
    """

    standalone = False  # needs the teacher's RoI head: Soft Teacher applies it itself

    def __init__(self, times: int, scale: float, threshold: float) -> None:
        self.times = times
        self.scale = scale
        self.threshold = threshold

    def uncertainty(
        self, teacher: TeacherView, detections: list[Detections], generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """Per image, the uncertainty `[N]` of each detection (in the teacher's view).

        Offsets are drawn on the CPU from `generator`, image by image, as one
        `randn(times, N, 4)`, so that a seed reproduces them on any device.
        """
        jittered, labels = [], []
        for det in detections:
            boxes = det.boxes.float()
            wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0).repeat(1, 2)  # (w, h, w, h)
            noise = torch.randn((self.times, len(det), 4), generator=generator).to(boxes.device)
            jittered.append((boxes + noise * wh * self.scale).reshape(-1, 4))
            labels.append(det.labels.repeat(self.times))
        refined = teacher.model.refine_boxes(teacher.features, jittered, labels, teacher.sizes)
        out = []
        for boxes, det in zip(refined, detections):
            if not len(det):
                out.append(boxes.new_zeros(0))
                continue
            boxes = boxes.reshape(self.times, len(det), 4)
            mean = boxes.mean(0)
            size = (mean[:, 2:] - mean[:, :2]).clamp(min=1.0).repeat(1, 2)
            out.append((boxes.std(0) / size).mean(-1))
        return out

    def __call__(
        self, pseudo: PseudoLabels, teacher: TeacherView | None = None, generator: torch.Generator | None = None
    ) -> PseudoLabels:
        if teacher is None:
            raise ConfigError(
                "filter 'box_jitter' needs the teacher's RoI head; only methods that pass it "
                "(soft_teacher) can use it, not method.filters"
            )
        uncertainty = self.uncertainty(teacher, pseudo.detections, generator)
        return PseudoLabels(
            [det[u < self.threshold] for det, u in zip(pseudo.detections, uncertainty)], pseudo.weights.clone()
        )


class BackgroundReliability:
    """Per-RoI classification weights: 1 for foreground RoIs, the teacher's background
    probability r_j for background ones.

    The student's sampled RoIs are mapped into the teacher's weak view (`M_w · M_s⁻¹`,
    clipped to the weak image) and scored there by the teacher's RoI head, as in the official
    `unsup_rcnn_cls_loss`; the student loss then divides by Σ weights.
    """

    standalone = False  # weights the student's RoIs: Soft Teacher applies it itself

    def __call__(
        self, teacher: TeacherView, rois: list[Tensor], labels: Tensor, matrices: list[Tensor]
    ) -> Tensor:
        """`rois`: per-image student-view RoIs; `labels`: their concatenated sampled labels
        (0 = background); `matrices`: original → student view. Returns weights `[R]`."""
        aligned = []
        for boxes, m_student, m_teacher, size in zip(rois, matrices, teacher.matrices, teacher.sizes):
            relative = m_teacher.to(torch.float64) @ torch.linalg.inv(m_student.to(torch.float64))
            mapped = transform_boxes(boxes.detach(), relative.to(boxes.device))
            aligned.append(box_ops.clip_boxes_to_image(mapped, size))
        background = teacher.model.roi_cls_probs(teacher.features, aligned, teacher.sizes)[:, 0]
        return torch.where(labels > 0, torch.ones_like(background), background)


def box_jitter_filter(params: Any, class_names: list[str]) -> BoxJitter:
    return BoxJitter(
        getattr(params, "jitter_times", JITTER_TIMES),
        getattr(params, "jitter_scale", JITTER_SCALE),
        getattr(params, "reg_pseudo_thr", REG_PSEUDO_THR),
    )


def reliability_filter(params: Any, class_names: list[str]) -> BackgroundReliability:
    return BackgroundReliability()
