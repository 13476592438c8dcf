"""Detectors: the protocol, and adapters for torchvision Faster R-CNN, RetinaNet, FCOS.

The protocol names are resolved on first use, so that importing a submodule (the built-in
plugin `ssodkit.detectors.registration`, which `ssodkit --help` loads) does not import
torch. `build_detector` is the plugin factory, re-exported here.

Everything in `__all__` is public API for plugins (docs/plugins.md): the protocol and its
types, and the three helpers an outside detector needs to honour it the way the built-ins
do (normalise + pad without resizing, per-image weights, target checks).
"""

from __future__ import annotations

import importlib
from typing import Any

from ssodkit.detectors.config import DetectorConfig
from ssodkit.plugins.factories import build_detector

_LAZY_EXPORTS = {
    "DenseHead": "protocol",
    "DenseLossFn": "dense",
    "DenseOutputs": "dense",
    "Detections": "protocol",
    "Detector": "protocol",
    "Target": "protocol",
    "TwoStage": "protocol",
    "check_capabilities": "protocol",
    "NormalizePadTransform": "transform",
    "resolve_image_weights": "base",
    "validate_targets": "base",
}
"""Public name → submodule it lives in (imported on first use: torch)."""

__all__ = [
    "DenseHead",
    "DenseLossFn",
    "DenseOutputs",
    "Detections",
    "Detector",
    "DetectorConfig",
    "NormalizePadTransform",
    "Target",
    "TwoStage",
    "build_detector",
    "check_capabilities",
    "resolve_image_weights",
    "validate_targets",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_EXPORTS:
        module = importlib.import_module(f"ssodkit.detectors.{_LAZY_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'ssodkit.detectors' has no attribute {name!r}")
