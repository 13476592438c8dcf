"""Augmentation views that record their geometry (original → view matrices)."""

from ssodkit.views.config import ViewConfig
from ssodkit.views.geometry import project_boxes, transform_boxes
from ssodkit.views.ops import ViewState
from ssodkit.views.pipelines import (
    View,
    ViewOutput,
    eval_view,
    labeled_view,
    photometric_strong_view,
    strong_view,
    weak_view,
)

__all__ = [
    "View",
    "ViewConfig",
    "ViewOutput",
    "ViewState",
    "eval_view",
    "labeled_view",
    "photometric_strong_view",
    "project_boxes",
    "strong_view",
    "transform_boxes",
    "weak_view",
]
