"""Built-in SSOD methods, registered through the plugin hook."""

from __future__ import annotations

from ssodkit.plugins.hookspecs import Register, hookimpl


@hookimpl
def register_methods(register: Register) -> None:
    from ssodkit.methods.supervised import Supervised

    register("supervised", Supervised)
