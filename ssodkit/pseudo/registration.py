"""Built-in pseudo-label filters, registered through the plugin hook."""

from __future__ import annotations

from ssodkit.plugins.hookspecs import Register, hookimpl


@hookimpl
def register_filters(register: Register) -> None:
    """No filters yet: the teacher-student engine adds them."""
