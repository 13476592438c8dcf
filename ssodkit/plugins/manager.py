"""Plugin manager: loads the `ssodkit` entry points and collects what they register.

Built-ins are entry points of the `ssodkit` distribution, so every test exercises the same
path a third-party plugin takes. `SSODKIT_LOAD_PLUGINS` selects external plugins:
unset loads all, an empty string loads none, otherwise a comma list of distribution or
entry-point names.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from ssodkit.errors import SsodkitError, unknown_name
from ssodkit.plugins import hookspecs

KINDS = ("detectors", "methods", "filters", "views")
BUILTIN_DIST = "ssodkit"
# Used when ssodkit runs from a source tree without installed metadata.
BUILTIN_MODULES = {
    "builtin_detectors": "ssodkit.detectors.registration",
    "builtin_methods": "ssodkit.methods.registration",
    "builtin_filters": "ssodkit.pseudo.registration",
    "builtin_views": "ssodkit.views.registration",
}


@dataclass(frozen=True)
class Provider:
    """Where a registered thing came from."""

    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    provider: Provider


class Registry:
    """All registered detectors, methods, filters and views, by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, obj: Any, provider: Provider) -> None:
        existing = self._entries[kind].get(name)
        if existing is not None and existing.provider != provider:
            raise SsodkitError(
                f"{kind[:-1]} '{name}' registered twice: by {existing.provider.distribution} "
                f"and by {provider.distribution}"
            )
        self._entries[kind][name] = Entry(kind, name, obj, provider)

    def get(self, kind: str, name: str) -> Any:
        entries = self._entries[kind]
        if name not in entries:
            raise unknown_name(kind[:-1], name, entries)
        return entries[name].obj

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][n] for n in self.names(kind)]


def _selected_external(env: str | None) -> set[str] | None:
    if env is None:
        return None  # all
    return {part.strip() for part in env.split(",") if part.strip()}


def _provider(ep: metadata.EntryPoint | None, plugin: str) -> Provider:
    dist = getattr(ep, "dist", None) if ep is not None else None
    if dist is None:
        from ssodkit import __version__

        return Provider(plugin, BUILTIN_DIST, __version__)
    return Provider(plugin, dist.metadata["Name"] or "?", dist.version or "?")


class PluginManager:
    """Loads plugins once and builds the registry; errors name the failing distribution."""

    def __init__(self, load_external: set[str] | None = None) -> None:
        self.pm = pluggy.PluginManager("ssodkit")
        self.pm.add_hookspecs(hookspecs)
        self.providers: dict[str, Provider] = {}
        self._load(load_external)
        self.registry = self._collect()

    def _register_module(self, module: ModuleType, provider: Provider) -> None:
        if self.pm.is_registered(module):
            return
        self.pm.register(module, name=provider.plugin)
        self.providers[provider.plugin] = provider

    def _load(self, load_external: set[str] | None) -> None:
        seen_builtin: set[str] = set()
        for ep in metadata.entry_points(group="ssodkit"):
            provider = _provider(ep, ep.name)
            is_builtin = provider.distribution == BUILTIN_DIST
            if is_builtin:
                if ep.name in seen_builtin or ep.name not in BUILTIN_MODULES:
                    continue
                seen_builtin.add(ep.name)
            elif load_external is not None and not (
                {provider.distribution, ep.name} & load_external
            ):
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
                raise SsodkitError(
                    f"plugin '{ep.name}' from distribution '{provider.distribution}' "
                    f"{provider.version} failed to load: {type(exc).__name__}: {exc}"
                ) from exc
            self._register_module(module, provider)
        for name, module_path in BUILTIN_MODULES.items():
            if name not in seen_builtin:
                self._register_module(
                    importlib.import_module(module_path), _provider(None, name)
                )

    def _collect(self) -> Registry:
        registry = Registry()
        for kind in KINDS:
            caller = getattr(self.pm.hook, f"register_{kind}")
            for impl in caller.get_hookimpls():
                provider = self.providers.get(
                    impl.plugin_name, Provider(impl.plugin_name, "?", "?")
                )

                def register(name: str, obj: Any, _kind: str = kind, _p: Provider = provider) -> None:
                    registry.add(_kind, name, obj, _p)

                try:
                    impl.function(register=register)
                except SsodkitError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise SsodkitError(
                        f"plugin '{provider.plugin}' from distribution "
                        f"'{provider.distribution}' {provider.version} raised while "
                        f"registering {kind}: {type(exc).__name__}: {exc}"
                    ) from exc
        return registry

    def add_commands(self, app: Any) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            provider = self.providers.get(impl.plugin_name, Provider(impl.plugin_name, "?", "?"))
            try:
                impl.function(app=app)
            except Exception as exc:  # noqa: BLE001
                raise SsodkitError(
                    f"plugin '{provider.plugin}' from distribution '{provider.distribution}' "
                    f"raised while adding commands: {type(exc).__name__}: {exc}"
                ) from exc


@lru_cache(maxsize=1)
def get_plugin_manager() -> PluginManager:
    return PluginManager(_selected_external(os.environ.get("SSODKIT_LOAD_PLUGINS")))


def get_registry() -> Registry:
    return get_plugin_manager().registry


def reset_plugin_manager() -> None:
    """Forget loaded plugins (tests that install a plugin call this)."""
    get_plugin_manager.cache_clear()
