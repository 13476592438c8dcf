"""One factory per plugin kind: the only code that resolves a name through the registry.

Library code asks for "the detector called X" or "the view called Y" here rather than
reading the registry, so that how a name becomes an object (which arguments a builder gets,
the error for an unknown name) is written once per kind, as timm's ``create_model`` does
for models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ssodkit.plugins.manager import KINDS, Entry, get_registry

if TYPE_CHECKING:
    from ssodkit.detectors.config import DetectorConfig
    from ssodkit.detectors.protocol import Detector
    from ssodkit.methods.base import Method
    from ssodkit.pseudo.filters import PseudoFilter
    from ssodkit.views.config import ViewConfig
    from ssodkit.views.pipelines import View


def build_detector(cfg: DetectorConfig, num_classes: int) -> Detector:
    """The detector ``cfg.name`` with ``num_classes`` foreground classes."""
    return get_registry().get("detectors", cfg.name)(num_classes, cfg)


def method_class(name: str) -> type[Method]:
    """The method class registered as ``name`` (the trainer builds it from the run config)."""
    return get_registry().get("methods", name)


def build_view(name: str, view_cfg: ViewConfig) -> View:
    """The view pipeline ``name`` with the run's view settings."""
    return get_registry().get("views", name)(view_cfg)


def build_filter(name: str, params: Any, class_names: list[str]) -> PseudoFilter:
    """The pseudo-label filter ``name``, reading its settings from the method's params."""
    return get_registry().get("filters", name)(params, class_names)


def plugin_entries(kind: str | None = None) -> list[Entry]:
    """Everything registered (of one kind, or of all in ``KINDS`` order), sorted by name,
    with the plugin and distribution that provided it."""
    registry = get_registry()
    return [entry for k in ((kind,) if kind else KINDS) for entry in registry.entries(k)]
