"""The entry point ssodkit loads (group `ssodkit`, name `ssdlite`).

Nothing heavy at import: torch and torchvision are imported by the builder, which the
registry calls only when a run asks for `--detector ssdlite`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssodkit.plugins import Register, hookimpl

if TYPE_CHECKING:
    from ssodkit.detectors import DetectorConfig
    from ssodkit_ssdlite.detector import SSDLiteDetector


def build_ssdlite(num_classes: int, cfg: DetectorConfig) -> SSDLiteDetector:
    """The registered builder: `builder(num_classes, cfg) -> Detector`."""
    from ssodkit_ssdlite.detector import SSDLiteDetector

    return SSDLiteDetector(num_classes, cfg)


@hookimpl
def register_detectors(register: Register) -> None:
    register("ssdlite", build_ssdlite)
