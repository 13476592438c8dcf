"""Plugin system (pluggy). See `hookspecs` for what a plugin can add."""

from ssodkit.plugins.hookspecs import hookimpl
from ssodkit.plugins.manager import get_plugin_manager, get_registry, reset_plugin_manager

__all__ = ["hookimpl", "get_plugin_manager", "get_registry", "reset_plugin_manager"]
