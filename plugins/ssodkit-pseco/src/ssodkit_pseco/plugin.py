"""The entry point ssodkit loads (group `ssodkit`, name `pseco`).

Nothing heavy at import: the method (torch, torchvision) is imported inside the hook, which
the registry calls only when a name is first looked up.
"""

from __future__ import annotations

from ssodkit.plugins import Register, hookimpl


@hookimpl
def register_methods(register: Register) -> None:
    from ssodkit_pseco.method import Pseco

    register("pseco", Pseco)
