"""Plugin manager: loads the built-in plugins and the `ssodkit` entry points, and collects
what they register.

The built-ins are listed once, in `BUILTIN_PLUGINS`, and registered on the pluggy manager
as plugins of the `ssodkit` distribution, exactly as an entry point's module would be (the
llm pattern), so every test exercises the hooks a third-party plugin uses; they are not
entry points too, so a source tree without installed metadata behaves like an install.
`SSODKIT_LOAD_PLUGINS` selects external plugins: unset loads all, an empty string loads
none, otherwise a comma list of distribution or entry-point names. An external plugin that
fails to import is reported in one line and the others still load.

Loading a plugin only imports its module, which must stay light (no torch at import): the
`ssodkit` app loads every plugin to let it add commands. The registry of detectors,
methods, filters and views is collected on first use, since the registration hooks import
torch and the models, which `ssodkit --help` never needs.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from ssodkit.errors import SsodkitError, unknown_name
from ssodkit.plugins import hookspecs

KINDS = ("detectors", "methods", "filters", "views")
BUILTIN_DIST = "ssodkit"
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("builtin_detectors", "ssodkit.detectors.registration"),
    ("builtin_methods", "ssodkit.methods.registration"),
    ("builtin_filters", "ssodkit.pseudo.registration"),
    ("builtin_views", "ssodkit.views.registration"),
)
"""(plugin name, module) of every built-in plugin: the one list of them."""


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
    """All registered detectors, methods, filters and views, by kind and name; `failures`:
    the one-line reports of external plugins that failed to import (named by `get`)."""

    def __init__(self, failures: tuple[str, ...] = ()) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.failures = failures

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
            error = unknown_name(kind[:-1], name, entries)
            if self.failures:  # the name may be one a broken plugin would have registered
                error = SsodkitError(f"{error} Not loaded: {'; '.join(self.failures)}")
            raise error
        return entries[name].obj

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> list[Entry]:
        return [self._entries[kind][n] for n in self.names(kind)]


def _selected_external(env: str | None) -> set[str] | None:
    if env is None:
        return None  # all
    return {part.strip() for part in env.split(",") if part.strip()}


def _builtin_provider(plugin: str) -> Provider:
    from ssodkit import __version__

    return Provider(plugin, BUILTIN_DIST, __version__)


def _entry_point_provider(ep: metadata.EntryPoint) -> Provider:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return Provider(ep.name, "?", "?")
    return Provider(ep.name, dist.metadata["Name"] or "?", dist.version or "?")


class PluginManager:
    """Loads plugins once and builds the registry on first use; errors name the failing
    plugin and distribution.

    An external plugin that fails to import is left out and reported in `failures` (one
    line each; the CLI prints them as warnings), so that one broken package does not take
    down the others or the built-ins. A built-in that fails to import is a bug: it raises.
    """

    def __init__(self, load_external: set[str] | None = None) -> None:
        self.pm = pluggy.PluginManager("ssodkit")
        self.pm.add_hookspecs(hookspecs)
        self.providers: dict[str, Provider] = {}
        self.failures: list[str] = []
        for plugin, module_path in BUILTIN_PLUGINS:
            self._load(_builtin_provider(plugin), partial(importlib.import_module, module_path))
        for ep in metadata.entry_points(group="ssodkit"):
            provider = _entry_point_provider(ep)
            if provider.distribution == BUILTIN_DIST:
                continue  # an older install's metadata listing the built-ins: loaded above
            if load_external is None or {provider.distribution, ep.name} & load_external:
                try:
                    self._load(provider, ep.load)
                except SsodkitError as exc:
                    self.failures.append(str(exc))
        self._registry: Registry | None = None

    def _load(self, provider: Provider, load: Callable[[], ModuleType]) -> None:
        """Import a plugin's module and register it on the pluggy manager."""
        try:
            module = load()
        except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
            raise SsodkitError(
                f"plugin '{provider.plugin}' from distribution '{provider.distribution}' "
                f"{provider.version} failed to load: {detail}"
            ) from exc
        if not self.pm.is_registered(module):
            self.pm.register(module, name=provider.plugin)
            self.providers[provider.plugin] = provider

    @property
    def registry(self) -> Registry:
        """Everything the plugins register, collected on first use (see the module doc)."""
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> Registry:
        registry = Registry(tuple(self.failures))
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
    """The registry, for `ssodkit.plugins.factories` (library code resolves names there)."""
    return get_plugin_manager().registry


def reset_plugin_manager() -> None:
    """Forget loaded plugins (tests that install a plugin call this)."""
    get_plugin_manager.cache_clear()
