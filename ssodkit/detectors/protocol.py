"""The detector protocol: a generic tier every detector has, plus optional capabilities.

Methods talk to detectors only through this protocol, so a method that needs nothing but
`loss` and `predict` (supervised, Mean Teacher, MixPL) works with any detector. Each
optional capability is a typed `Protocol` (`DenseHead`, `TwoStage`); a detector has it by
implementing its methods (structural typing: no registration, no capability strings), and
a method lists the protocols it needs in `requires`; `check_capabilities` refuses a
mismatch at start-up with one line.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList

from ssodkit.detectors.dense import DenseOutputs
from ssodkit.errors import CapabilityError

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


ImageSizes = list[tuple[int, int]]  # (h, w) of each image before padding


@runtime_checkable
class DenseHead(Protocol):
    """The `dense_outputs` capability: raw per-level predictions on a known anchor/point grid
    (one-stage heads; Faster R-CNN's RPN). Needed by SED and `stats grad`."""

    def dense(self, images: list[Tensor]) -> DenseOutputs:
        """The head's outputs per FPN level on the padded batch's anchor grid."""
        ...


@runtime_checkable
class TwoStage(Protocol):
    """The `two_stage` capability: the RPN + RoI-head pipeline cut at its seams, so that a
    method reuses one feature pass for several jobs (Soft Teacher: RPN loss, two RoI
    samplings, teacher-scored RoIs; SED: RoI outputs on boxes of its choosing).

    RoI labels from `sample_rois` and columns of `roi_cls_probs` / `roi_outputs` use the RoI
    head's convention: 0 = background, k + 1 = ssodkit class k.
    """

    def features(
        self, images: list[Tensor], size_divisible: int | None = None
    ) -> tuple[ImageList, OrderedDict[str, Tensor]]:
        """Normalised, padded batch and its named FPN levels; `size_divisible` (a multiple of
        the detector's own) pads further, to line up the grids of two scales of one batch."""
        ...

    def rpn_forward(
        self, image_list: ImageList, features: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """Objectness and deltas over all anchors, anchors per image, and the proposals."""
        ...

    def rpn_dense(self, image_list: ImageList, features: dict[str, Tensor]) -> DenseOutputs:
        """The RPN as dense outputs (class-agnostic objectness, K = 1)."""
        ...

    def proposals(self, image_list: ImageList, features: dict[str, Tensor]) -> list[Tensor]:
        """Post-NMS proposals per image (no gradient)."""
        ...

    def rpn_loss(
        self, objectness: Tensor, deltas: Tensor, anchors: list[Tensor], targets: list[Target], weights: Tensor,
        cls_only: bool,
    ) -> dict[str, Tensor]:
        """Class-agnostic RPN loss with per-image weights (`rpn_targets` + `rpn_loss_assigned`)."""
        ...

    def rpn_targets(self, anchors: list[Tensor], targets: list[Target]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: each anchor's label (1 object, 0 background, −1 ignored) and encoded
        regression target (no gradient)."""
        ...

    def rpn_loss_assigned(
        self, objectness: Tensor, deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor],
        weights: Tensor, cls_only: bool,
    ) -> dict[str, Tensor]:
        """`rpn_loss` on anchors assigned by `rpn_targets`; the outputs (concatenated over
        images, in the anchors' order) may come from another feature pass on an aligned grid."""
        ...

    def sample_rois(self, proposals: list[Tensor], targets: list[Target]) -> tuple[list[Tensor], Tensor, Tensor]:
        """RoIs per image, their labels and regression targets (concatenated over images)."""
        ...

    def roi_outputs(self, features: dict[str, Tensor], boxes: list[Tensor], sizes: ImageSizes) -> tuple[Tensor, Tensor]:
        """Class logits `[R, K+1]` and per-class deltas `[R, (K+1)·4]` for the given boxes."""
        ...

    def encode_roi_boxes(self, boxes: Tensor, proposals: Tensor) -> Tensor:
        """The RoI head's regression targets `[R, 4]` of `boxes` relative to `proposals`."""
        ...

    def decode_roi_boxes(self, deltas: Tensor, proposals: Tensor) -> Tensor:
        """The RoI head's boxes `[R, 4]` from one class's deltas `[R, 4]` on `proposals`."""
        ...

    def roi_losses(
        self, features: dict[str, Tensor], rois: list[Tensor], sizes: ImageSizes, labels: Tensor,
        regression_targets: Tensor, roi_weights: Tensor,
    ) -> dict[str, Tensor]:
        """RoI classification and box losses with one weight per RoI."""
        ...

    def roi_cls_probs(self, features: dict[str, Tensor], boxes: list[Tensor], sizes: ImageSizes) -> Tensor:
        """Class scores `[R, K+1]` of the RoI head on the given boxes, column 0 background
        (softmax, or per-class sigmoid with `detector.roi_scores: sigmoid`; no gradient)."""
        ...

    def refine_boxes(
        self, features: dict[str, Tensor], boxes: list[Tensor], labels: list[Tensor], sizes: ImageSizes
    ) -> list[Tensor]:
        """Each box refined by the RoI head for its own class, clipped (no gradient)."""
        ...

    def detect(self, image_list: ImageList, features: dict[str, Tensor], proposals: list[Tensor]) -> list[Detections]:
        """`predict` from an existing feature pass."""
        ...


# What users read in errors and docs, for each capability protocol.
CAPABILITIES: dict[type, str] = {DenseHead: "dense_outputs", TwoStage: "two_stage"}


def protocol_methods(protocol: type) -> tuple[str, ...]:
    """The methods a capability protocol asks for, in definition order."""
    return tuple(name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_"))


def capabilities_of(detector: object) -> list[str]:
    """Names of the capabilities `detector` implements."""
    return sorted(name for protocol, name in CAPABILITIES.items() if isinstance(detector, protocol))


def check_capabilities(detector_name: str, detector: object, method_name: str, required: Iterable[type]) -> None:
    """Refuse a method whose required capabilities the detector lacks, in one line."""
    missing = sorted(CAPABILITIES[p] for p in required if not isinstance(detector, p))
    if missing:
        provided = capabilities_of(detector)
        raise CapabilityError(
            f"method '{method_name}' needs the {', '.join(missing)} capability, which "
            f"detector '{detector_name}' does not provide (it has: "
            f"{', '.join(provided) or 'generic tier only'})"
        )
