"""Plugin system (pluggy). See `hookspecs` for what a plugin can add, `factories` for how
library code turns a registered name into an object."""

from ssodkit.plugins.factories import (
    build_detector,
    build_filter,
    build_view,
    method_class,
    plugin_entries,
)
from ssodkit.plugins.hookspecs import Register, hookimpl
from ssodkit.plugins.manager import get_plugin_manager, get_registry, reset_plugin_manager

__all__ = [
    "Register",
    "build_detector",
    "build_filter",
    "build_view",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "method_class",
    "plugin_entries",
    "reset_plugin_manager",
]
