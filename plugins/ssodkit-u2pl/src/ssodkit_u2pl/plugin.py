"""The entry point ssodkit loads (group `ssodkit`, name `u2pl`).

Nothing heavy at import: the method module (torch) is imported inside the hook, which the
registry runs only when a name is first looked up.
"""

from __future__ import annotations

from ssodkit.plugins import Register, hookimpl


@hookimpl
def register_methods(register: Register) -> None:
    from ssodkit_u2pl.method import U2PL

    register("u2pl", U2PL)
