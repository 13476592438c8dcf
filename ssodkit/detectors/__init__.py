"""Detectors: the protocol, and adapters for torchvision Faster R-CNN, RetinaNet, FCOS."""

from __future__ import annotations

from ssodkit.detectors.config import DetectorConfig
from ssodkit.detectors.protocol import Detections, Detector, check_capabilities


def build_detector(cfg: DetectorConfig, num_classes: int):
    """Resolve `cfg.name` through the plugin registry and build the detector."""
    from ssodkit.plugins import get_registry

    builder = get_registry().get("detectors", cfg.name)
    return builder(num_classes, cfg)


__all__ = ["DetectorConfig", "Detections", "Detector", "build_detector", "check_capabilities"]
