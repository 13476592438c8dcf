"""The detector protocol: a generic tier every detector has, plus optional capabilities.

Methods talk to detectors only through this protocol, so a method that needs nothing but
`loss` and `predict` (supervised, Mean Teacher, MixPL) works with any detector. Methods that
need more declare capability names in `requires`; `check_capabilities` refuses a mismatch at
start-up with one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ssodkit.errors import CapabilityError

DENSE_OUTPUTS = "dense_outputs"
TWO_STAGE = "two_stage"
PYRAMID = "pyramid"

Target = dict[str, Tensor]  # {"boxes": float [N,4] xyxy, "labels": int64 [N] in 0..K-1}


@dataclass
class Detections:
    """Predictions for one image, in the input image's pixel coordinates."""

    boxes: Tensor  # float [N, 4] xyxy
    scores: Tensor  # float [N]
    labels: Tensor  # int64 [N], class index 0..K-1
    probs: Tensor | None = None  # float [N, K]: per-box probability of every class

    def to(self, device: torch.device | str) -> Detections:
        return Detections(
            self.boxes.to(device),
            self.scores.to(device),
            self.labels.to(device),
            None if self.probs is None else self.probs.to(device),
        )

    def __getitem__(self, keep: Tensor) -> Detections:
        """Select boxes by index or boolean mask."""
        return Detections(
            self.boxes[keep],
            self.scores[keep],
            self.labels[keep],
            None if self.probs is None else self.probs[keep],
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty(num_classes: int, device: torch.device | str = "cpu") -> Detections:
        return Detections(
            torch.zeros((0, 4), device=device),
            torch.zeros((0,), device=device),
            torch.zeros((0,), dtype=torch.int64, device=device),
            torch.zeros((0, num_classes), device=device),
        )


@runtime_checkable
class Detector(Protocol):
    """Generic tier. Implementations are `nn.Module`s; see `DetectorBase`."""

    num_classes: int
    capabilities: frozenset[str]

    def loss(
        self,
        images: list[Tensor],
        targets: list[Target],
        *,
        image_weights: Tensor | None = None,
        cls_only: bool = False,
        focal: bool = False,
    ) -> dict[str, Tensor]:
        """Training losses on images whose geometry the caller chose (no resize inside).

        `image_weights[i]` multiplies image i's contribution; an image with weight 0 adds
        nothing, exactly as if it were not in the batch. `cls_only` drops box-regression
        (and centerness) terms; `focal` swaps cross-entropy classification for focal loss
        where the head uses cross-entropy.
        """
        ...

    def predict(self, images: list[Tensor]) -> list[Detections]:
        """Detections in each input image's own pixels, with per-box class probabilities."""
        ...


def check_capabilities(
    detector_name: str, provided: Iterable[str], method_name: str, required: Iterable[str]
) -> None:
    """Refuse a method whose required capabilities the detector lacks, in one line."""
    missing = sorted(set(required) - set(provided))
    if missing:
        raise CapabilityError(
            f"method '{method_name}' needs the {', '.join(missing)} capability, which "
            f"detector '{detector_name}' does not provide (it has: "
            f"{', '.join(sorted(provided)) or 'generic tier only'})"
        )
