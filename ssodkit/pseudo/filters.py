"""Pseudo-label filters: small composable steps, registered as plugins by name.

A filter takes `PseudoLabels` and returns narrowed ones; `FilterChain` applies a list in
order. Factories take the method's parameters and the class names, so a third-party filter
can read its own settings from the method config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from ssodkit.errors import ConfigError
from ssodkit.pseudo.labels import PseudoLabels


class PseudoFilter(Protocol):
    def __call__(self, pseudo: PseudoLabels) -> PseudoLabels: ...


def above_threshold(scores: Any, threshold: Any) -> Any:
    """The one pseudo-label rule, for tensors and arrays alike: a box is kept when its score
    is strictly above τ (mmdet's `filter_gt_instances`, Unbiased Teacher, MixPL)."""
    return scores > threshold


class ScoreThreshold:
    """Keep boxes with score > τ; `class_thresholds` overrides τ per class index."""

    def __init__(self, threshold: float, class_thresholds: dict[int, float] | None = None, num_classes: int = 0):
        self.threshold = threshold
        table = torch.full((max(num_classes, 1),), float(threshold))
        for index, value in (class_thresholds or {}).items():
            table[index] = value
        self.table = table

    def __call__(self, pseudo: PseudoLabels) -> PseudoLabels:
        def keep(det):
            thr = self.table.to(det.scores.device)[det.labels] if len(det) else det.scores
            return det[above_threshold(det.scores, thr)]

        return pseudo.map(keep)


AGNOSTIC_NMS_IOU = 0.7  # duplicates of one object overlap well above this


class ClassAgnosticNMS:
    """One pseudo box per object: among boxes overlapping at IoU > `iou`, whatever their
    class, keep the highest-scoring. The detectors' own NMS is per class, so an object the
    teacher cannot name confidently comes out once per plausible class — on the synthetic
    set a 10%-supervised FCOS gives 28 boxes per image at τ = 0.3, 19 of them such
    duplicates (3.5 objects per image) — and the student is taught every class at once."""

    def __init__(self, iou: float = AGNOSTIC_NMS_IOU) -> None:
        self.iou = iou

    def __call__(self, pseudo: PseudoLabels) -> PseudoLabels:
        from torchvision.ops import nms

        return pseudo.map(lambda det: det[nms(det.boxes.float(), det.scores.float(), self.iou)] if len(det) else det)


class FilterChain:
    """Filters applied in order. A stateful filter (an adaptive threshold: it has `observe`)
    learns only from training steps (`observe`), never from evaluation or statistics."""

    def __init__(self, filters: Sequence[PseudoFilter]) -> None:
        self.filters = list(filters)

    def __call__(self, pseudo: PseudoLabels) -> PseudoLabels:
        for f in self.filters:
            pseudo = f(pseudo)
        return pseudo

    @property
    def stateful(self) -> list[Any]:
        return [f for f in self.filters if hasattr(f, "observe")]

    def observe(self, pseudo: PseudoLabels) -> PseudoLabels:
        """The chain on a training step's boxes: each stateful filter first learns from the
        boxes that reach it, then filters them."""
        for f in self.filters:
            observe = getattr(f, "observe", None)
            if observe is not None:
                observe(pseudo)
            pseudo = f(pseudo)
        return pseudo


def resolve_class_thresholds(values: dict[str, float] | None, class_names: list[str]) -> dict[int, float]:
    """Per-class thresholds given by class name (or index as a string) → by class index."""
    out: dict[int, float] = {}
    for key, value in (values or {}).items():
        if key in class_names:
            out[class_names.index(key)] = value
        elif str(key).isdigit() and int(key) < len(class_names):
            out[int(key)] = value
        else:
            raise ConfigError(f"method.class_score_thr: unknown class '{key}'; classes: {', '.join(class_names)}")
    return out


FilterFactory = Callable[[Any, list[str]], PseudoFilter]


def score_filter(params: Any, class_names: list[str]) -> PseudoFilter:
    """τ by `params.threshold_policy`: fixed (`ScoreThreshold`), `gmm` or `mean_std`
    (`ssodkit/pseudo/thresholds.py`, docs/methods/thresholds.md)."""
    fixed = ScoreThreshold(
        params.score_thr,
        resolve_class_thresholds(getattr(params, "class_score_thr", None), class_names),
        len(class_names),
    )
    policy = getattr(params, "threshold_policy", "fixed")
    if policy == "fixed":
        return fixed
    from ssodkit.pseudo.thresholds import GMMThreshold, MeanStdThreshold

    if policy == "gmm":
        return GMMThreshold(fixed.table[: len(class_names)], class_names, params.gmm_buffer, params.gmm_topk_ratio)
    if params.mean_std_floor is None or params.mean_std_cap is None:
        raise ConfigError("threshold_policy mean_std: mean_std_floor / mean_std_cap not resolved for the detector")
    return MeanStdThreshold(params.mean_std_floor, params.mean_std_cap, params.mean_std_topk)


def class_agnostic_nms_filter(params: Any, class_names: list[str]) -> ClassAgnosticNMS:
    return ClassAgnosticNMS(getattr(params, "agnostic_nms_iou", AGNOSTIC_NMS_IOU))


def build_filter_chain(names: Sequence[str], params: Any, class_names: list[str]) -> FilterChain:
    from ssodkit.plugins import build_filter

    filters = []
    for name in names:
        built = build_filter(name, params, class_names)
        if not getattr(built, "standalone", True):
            raise ConfigError(
                f"method.filters: '{name}' works on the teacher's RoI head inside soft_teacher and "
                "cannot be chained on its own; remove it from method.filters"
            )
        filters.append(built)
    return FilterChain(filters)
