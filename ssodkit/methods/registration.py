"""Built-in SSOD methods, registered through the plugin hook."""

from __future__ import annotations

from ssodkit.plugins.hookspecs import Register, hookimpl


@hookimpl
def register_methods(register: Register) -> None:
    from ssodkit.methods.mean_teacher import MeanTeacher
    from ssodkit.methods.mixpl import MixPL
    from ssodkit.methods.sed import SED
    from ssodkit.methods.soft_teacher import SoftTeacher
    from ssodkit.methods.supervised import Supervised
    from ssodkit.methods.unbiased_teacher import UnbiasedTeacher

    register("supervised", Supervised)
    register("mean_teacher", MeanTeacher)
    register("unbiased_teacher", UnbiasedTeacher)
    register("mixpl", MixPL)
    register("sed", SED)
    register("soft_teacher", SoftTeacher)
