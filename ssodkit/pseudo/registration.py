"""Built-in pseudo-label filters, registered through the plugin hook."""

from __future__ import annotations

from ssodkit.plugins.hookspecs import Register, hookimpl


@hookimpl
def register_filters(register: Register) -> None:
    from ssodkit.pseudo.filters import class_agnostic_nms_filter, score_filter
    from ssodkit.pseudo.soft_teacher import box_jitter_filter, reliability_filter

    register("score", score_filter)
    register("class_agnostic_nms", class_agnostic_nms_filter)
    register("box_jitter", box_jitter_filter)
    register("reliability", reliability_filter)
