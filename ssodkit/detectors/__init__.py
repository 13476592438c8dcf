"""Detectors: the protocol, and adapters for torchvision Faster R-CNN, RetinaNet, FCOS.

The protocol names are resolved on first use, so that importing a submodule (the built-in
plugin `ssodkit.detectors.registration`, which `ssodkit --help` loads) does not import
torch. `build_detector` is the plugin factory, re-exported here.
"""

from __future__ import annotations

from typing import Any

from ssodkit.detectors.config import DetectorConfig
from ssodkit.plugins.factories import build_detector

_PROTOCOL_EXPORTS = ("Detections", "Detector", "check_capabilities")

__all__ = ["DetectorConfig", "Detections", "Detector", "build_detector", "check_capabilities"]


def __getattr__(name: str) -> Any:
    if name in _PROTOCOL_EXPORTS:
        from ssodkit.detectors import protocol

        return getattr(protocol, name)
    raise AttributeError(f"module 'ssodkit.detectors' has no attribute {name!r}")
