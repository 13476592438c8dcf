"""Built-in view pipelines, registered through the same hook a plugin would use."""

from __future__ import annotations

from ssodkit.plugins.hookspecs import Register, hookimpl


@hookimpl
def register_views(register: Register) -> None:
    from ssodkit.views.pipelines import (
        eval_view,
        labeled_view,
        photometric_strong_view,
        strong_view,
        ut_strong_view,
        weak_view,
    )

    register("labeled", labeled_view)
    register("eval", eval_view)
    register("weak", weak_view)
    register("strong", strong_view)
    register("photometric_strong", photometric_strong_view)
    register("ut_strong", ut_strong_view)
