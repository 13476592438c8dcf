"""Supervised baseline: the labeled branch only (the reference every SSOD method must beat)."""

from __future__ import annotations

from torch import Tensor, nn

from ssodkit.methods.base import Method, ModelHandle, ViewBatch, prefixed


class Supervised(Method):
    name = "supervised"

    def step(
        self,
        student: ModelHandle,
        teacher: nn.Module | None,
        labeled: ViewBatch,
        unlabeled: dict[str, ViewBatch] | None,
        it: int,
    ) -> dict[str, Tensor]:
        return prefixed(student.loss(labeled.images, labeled.targets), "sup")
