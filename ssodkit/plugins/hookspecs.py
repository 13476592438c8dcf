"""Hook specifications: what a plugin may contribute.

Every hook receives a `register` callback rather than returning a list (the llm/datasette
pattern), so one plugin can register several things and the manager knows who registered
what. Built-ins use the very same hooks (`BUILTIN_PLUGINS` in `manager`).
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("ssodkit")
hookimpl = pluggy.HookimplMarker("ssodkit")

Register = Callable[[str, Any], None]


@hookspec
def register_detectors(register: Register) -> None:
    """Call `register(name, builder)`; `builder(num_classes, cfg: DetectorConfig) -> Detector`."""


@hookspec
def register_methods(register: Register) -> None:
    """Call `register(name, method_class)`; the class implements `ssodkit.methods.base.Method`."""


@hookspec
def register_filters(register: Register) -> None:
    """Call `register(name, filter_factory)` for pseudo-label filters."""


@hookspec
def register_views(register: Register) -> None:
    """Call `register(name, pipeline_builder)` for augmentation/view pipelines."""


@hookspec
def register_commands(app: Any) -> None:
    """Add Typer sub-commands to the `ssodkit` app before it runs."""
