"""Augmentation views that record their geometry (original → view matrices).

Names are resolved on first use, so that importing a submodule (the built-in plugin
`ssodkit.views.registration`, which `ssodkit --help` loads) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "View": "pipelines",
    "ViewConfig": "config",
    "ViewOutput": "pipelines",
    "ViewState": "ops",
    "eval_view": "pipelines",
    "labeled_view": "pipelines",
    "photometric_strong_view": "pipelines",
    "project_boxes": "geometry",
    "strong_view": "pipelines",
    "transform_boxes": "geometry",
    "ut_strong_view": "pipelines",
    "weak_view": "pipelines",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"ssodkit.views.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ssodkit.views' has no attribute {name!r}")
