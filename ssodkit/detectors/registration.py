"""Built-in detectors, registered through the same hook a third-party plugin uses."""

from __future__ import annotations

from ssodkit.plugins.hookspecs import Register, hookimpl


def _faster_rcnn(num_classes, cfg):
    from ssodkit.detectors.faster_rcnn import FasterRCNNDetector

    return FasterRCNNDetector(num_classes, cfg)


def _retinanet(num_classes, cfg):
    from ssodkit.detectors.one_stage import RetinaNetDetector

    return RetinaNetDetector(num_classes, cfg)


def _fcos(num_classes, cfg):
    from ssodkit.detectors.one_stage import FCOSDetector

    return FCOSDetector(num_classes, cfg)


@hookimpl
def register_detectors(register: Register) -> None:
    register("faster_rcnn", _faster_rcnn)
    register("retinanet", _retinanet)
    register("fcos", _fcos)
