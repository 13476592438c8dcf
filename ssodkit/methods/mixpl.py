"""MixPL — Mixed Pseudo Labels (Chen et al., 2023); spec: docs/methods/mixpl.md.

Mean Teacher plus three things, all after the strong view and the projection of the
teacher's boxes: a FIFO cache of recent strong images with their (not yet thresholded)
pseudo boxes; Pseudo Mixup of each current image with a cached one (its loss replaces the
plain unlabeled loss, weight β); one Pseudo Mosaic of four cached images per iteration
(weight 0.5·β), which turns large pseudo objects into small and medium ones. Random erasing
drops boxes it hides (≥ 70 %); the score threshold is applied after mixing, then the
per-image empty rule (the `PseudoLabeler`'s filters and rule, so a user's `filters` and
`class_score_thr` apply to the mixed boxes too). Detector-agnostic: generic tier only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, Field, field_validator
from torch import Tensor, nn

from ssodkit.detectors.protocol import Detections
from ssodkit.erasing import DROP_COVERED
from ssodkit.errors import ConfigError
from ssodkit.methods.base import ModelHandle, ViewBatch, prefixed
from ssodkit.methods.teacher_student import TeacherStudent, TeacherStudentParams
from ssodkit.mixing import MixItem, erase_and_filter, pseudo_mixup, pseudo_mosaic
from ssodkit.pseudo.labels import as_targets
from ssodkit.rng import seeded_generator

MOSAIC_SOURCES = 4


class MixPLParams(TeacherStudentParams):
    cache_size: int = Field(8, gt=0, description="cached images; must be ≥ unlabeled batch + 4")
    mixup: bool = True
    mosaic: bool = True
    mosaic_weight: float = Field(0.5, ge=0, description="mosaic loss = mosaic_weight · β · L")
    mosaic_size: tuple[int, int] = Field(
        (96, 192), description="longer side of each mosaic tile (400-800 at COCO scale)"
    )
    mixup_ratio: float | None = Field(0.5, gt=0, lt=1, description="pixel weight; None = Beta(α, α)")
    mixup_alpha: float = Field(1.5, gt=0)
    erase: bool = True
    erase_patches: tuple[int, int] = Field((1, 19), description="patch count, uniform in [low, high]")
    erase_max_ratio: float = Field(0.1, gt=0, le=1, description="patch side ≤ ratio × image side")
    erase_thr: float = Field(DROP_COVERED, ge=0, le=1, description="drop boxes at least this much erased")

    @field_validator("mosaic_size", "erase_patches")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1] or value[0] < 0:
            raise ValueError(f"expected (low, high) with 0 ≤ low ≤ high, got {value}")
        return value


class MixPL(TeacherStudent):
    name = "mixpl"
    Params: ClassVar[type[BaseModel]] = MixPLParams
    default_repeat_factor_t: ClassVar[float | None] = 1e-3  # LVIS's t; recipes tune it
    teacher_defaults: ClassVar[dict[str, Any]] = {"interval": 3}  # its MeanTeacherHook's interval

    @classmethod
    def check_config(cls, cfg: Any, params: BaseModel) -> None:
        super().check_config(cfg, params)
        n_u = cfg.train.unlabeled_per_step
        if params.cache_size < n_u + MOSAIC_SOURCES:
            raise ConfigError(
                f"method.cache_size = {params.cache_size}: must be ≥ unlabeled batch size + "
                f"{MOSAIC_SOURCES} = {n_u + MOSAIC_SOURCES} (Mixup takes n_u cached images and "
                f"Mosaic {MOSAIC_SOURCES} others)"
            )

    def __init__(self, params: MixPLParams, cfg: Any, class_names: list[str]) -> None:
        super().__init__(params, cfg, class_names)
        self.cache: list[MixItem] = []
        self.generator = seeded_generator(cfg.train.seed)
        self.image_mean: list[float] = [0.485, 0.456, 0.406]

    def check_detector(self, detector: nn.Module) -> None:
        super().check_detector(detector)
        # a generic-tier detector need not have a `transform`: then the ImageNet mean
        mean = getattr(getattr(detector, "transform", None), "image_mean", None)
        if mean is not None:
            self.image_mean = list(mean)

    # ------------------------------------------------------------------ cache
    @property
    def cache_full(self) -> bool:
        return len(self.cache) == self.params.cache_size

    def update_cache(self, items: list[MixItem]) -> None:
        """FIFO of the most recent strong images with their unthresholded pseudo boxes."""
        self.cache = (self.cache + [_detached(i) for i in items])[-self.params.cache_size :]

    def _cached(self, index: int, device: torch.device) -> MixItem:
        item = _to(self.cache[index], device)
        return self._erase(item) if self.params.erase else item

    # ------------------------------------------------------------------ mixing
    def _erase(self, item: MixItem) -> MixItem:
        p: MixPLParams = self.params
        return erase_and_filter(
            item, self.generator, n_patches=p.erase_patches, max_ratio=p.erase_max_ratio,
            fill=self._fill(item.image), drop_covered=p.erase_thr,
        )

    def _fill(self, image: Tensor) -> Tensor:
        # the reference mixes normalised images with 0 fill; 0 there is the mean colour here
        return torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)

    def mixup_batch(self, current: list[MixItem]) -> list[MixItem]:
        p: MixPLParams = self.params
        partners = torch.randperm(len(current), generator=self.generator).tolist()
        return [
            pseudo_mixup(
                item, self._cached(partners[i], item.image.device), self.generator,
                ratio=p.mixup_ratio, alpha=p.mixup_alpha, fill=self._fill(item.image),
            )
            for i, item in enumerate(current)
        ]

    def mosaic_item(self, n_current: int, device: torch.device) -> MixItem:
        order = torch.randperm(MOSAIC_SOURCES, generator=self.generator).tolist()
        sources = [self._cached(n_current + k, device) for k in order]  # not the Mixup partners
        return pseudo_mosaic(sources, self.generator, size_range=self.params.mosaic_size,
                             fill=self._fill(sources[0].image))

    # ------------------------------------------------------------------ losses
    def loss_on_items(self, student: ModelHandle, items: list[MixItem], weight: float, name: str) -> dict[str, Tensor]:
        """The pseudo-labeler's filters (the score threshold: after mixing, as in MixPL) and
        empty-image rule on the mixed boxes, then the weighted student loss."""
        pseudo = self.pseudo_labeler.select([Detections(i.boxes, i.scores, i.labels) for i in items])
        self.stats[f"{name}_pseudo_per_image"] = sum(pseudo.counts) / len(items)
        if float(pseudo.weights.sum()) == 0:
            return {}
        losses = student.loss(
            [i.image for i in items],
            [as_targets(d) for d in pseudo.detections],
            image_weights=pseudo.weights,
        )
        return prefixed(losses, f"unsup_{name}", weight)

    def unsupervised_loss(
        self, student: ModelHandle, teacher: nn.Module, unlabeled: dict[str, ViewBatch], it: int
    ) -> dict[str, Tensor]:
        p: MixPLParams = self.params
        weak, strong = unlabeled["weak"], unlabeled["strong"]
        # every score is kept: the threshold comes after mixing (an adaptive one learns here)
        labeler = self.pseudo_labeler
        detections = labeler.predict(teacher, weak)
        labeler.observe(detections)
        projected = labeler.project_all(detections, weak, strong)
        fresh = [MixItem.from_detections(img, det) for img, det in zip(strong.images, projected)]
        current = [self._erase(i) for i in fresh] if p.erase else fresh
        ready = self.cache_full
        losses: dict[str, Tensor] = {}
        mixed = self.mixup_batch(current) if (ready and p.mixup) else current
        losses.update(self.loss_on_items(student, mixed, p.unsup_weight, "mixup" if p.mixup else "plain"))
        if ready and p.mosaic:
            mosaic = self.mosaic_item(len(current), current[0].image.device)
            losses.update(self.loss_on_items(student, [mosaic], p.mosaic_weight * p.unsup_weight, "mosaic"))
        self.update_cache(fresh)
        self.stats["cache_full"] = float(ready)
        return losses

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "cache": [_to(i, torch.device("cpu")).__dict__ for i in self.cache],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.cache = [MixItem(**{k: v for k, v in item.items() if k != "placements"}) for item in state.get("cache", [])]
        if "generator" in state:
            self.generator.set_state(state["generator"])


def _detached(item: MixItem) -> MixItem:
    return MixItem(item.image.detach(), item.boxes.detach(), item.labels.detach(), item.scores.detach())


def _to(item: MixItem, device: torch.device) -> MixItem:
    return MixItem(item.image.to(device), item.boxes.to(device), item.labels.to(device), item.scores.to(device))
