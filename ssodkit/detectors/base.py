"""Shared plumbing of the torchvision adapters: dispatch, normalise+pad, weights helpers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from ssodkit.detectors.backbone import TimmFPN
from ssodkit.detectors.config import DetectorConfig
from ssodkit.detectors.protocol import CAPABILITIES, Detections, Target, protocol_methods
from ssodkit.detectors.transform import NormalizePadTransform


class DetectorBase(nn.Module):
    """Base of every built-in detector.

    `forward(mode, ...)` dispatches to `loss` / `predict` and to the methods of every
    capability protocol the class implements, so that a `DistributedDataParallel` wrapper
    sees every call a method makes (methods reach them through `ModelHandle`).
    """

    name: str = "detector"
    forward_modes: tuple[str, ...] = ("loss", "predict")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """The modes follow from the protocols the class implements, so they cannot drift."""
        super().__init_subclass__(**kwargs)
        cls.forward_modes = DetectorBase.forward_modes + tuple(
            mode for protocol in CAPABILITIES if issubclass(cls, protocol) for mode in protocol_methods(protocol)
        )

    def __init__(self, num_classes: int, cfg: DetectorConfig, backbone: TimmFPN) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cfg = cfg
        self.backbone = backbone
        self.transform = NormalizePadTransform(backbone.image_mean, backbone.image_std)

    def forward(self, mode: str, *args: Any, **kwargs: Any) -> Any:
        if mode not in self.forward_modes:
            raise ValueError(f"{type(self).__name__} has no mode {mode!r}")
        return getattr(self, mode)(*args, **kwargs)

    def batch(self, images: list[Tensor]) -> tuple[ImageList, list[Tensor]]:
        """Normalise and pad images; return the padded batch and its FPN features."""
        image_list, _ = self.transform(images, None)
        features = list(self.backbone(image_list.tensors).values())
        return image_list, features

    # The protocol's two calls; subclasses implement them.
    def loss(
        self,
        images: list[Tensor],
        targets: list[Target],
        *,
        image_weights: Tensor | None = None,
        cls_only: bool = False,
        focal: bool = False,
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def predict(self, images: list[Tensor]) -> list[Detections]:
        raise NotImplementedError


def resolve_image_weights(image_weights: Tensor | None, n: int, device: torch.device) -> Tensor:
    if image_weights is None:
        return torch.ones(n, device=device)
    weights = torch.as_tensor(image_weights, dtype=torch.float32, device=device)
    if weights.shape != (n,):
        raise ValueError(f"image_weights must have shape ({n},), got {tuple(weights.shape)}")
    if (weights < 0).any():
        raise ValueError("image_weights must be non-negative")
    return weights


def per_sample_weights(weights: Tensor, counts: list[int]) -> Tensor:
    """Expand per-image weights to per-sample weights (samples concatenated image by image)."""
    return torch.repeat_interleave(weights, torch.as_tensor(counts, device=weights.device))


def validate_targets(targets: list[Target], num_images: int, num_classes: int) -> None:
    """Catch the mistakes that otherwise surface as index errors deep in a head."""
    if len(targets) != num_images:
        raise ValueError(f"{num_images} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        boxes, labels = t["boxes"], t["labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(f"target {i}: boxes {tuple(boxes.shape)} / labels {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"target {i}: labels outside 0..{num_classes - 1}")
        if boxes.numel() and ((boxes[:, 2:] <= boxes[:, :2]).any()):
            raise ValueError(f"target {i}: degenerate box (x2<=x1 or y2<=y1)")
