"""Settings for the built-in view pipelines.

Defaults are sized for a CPU run on the small synthetic set (images of roughly 256–320 px,
trained at ~190 px); recipes for COCO scale them up (mmdet uses short sides 400–1200 with the long side capped at 1333).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ssodkit.erasing import DROP_COVERED


def _int_range(name: str, value: tuple[int, int], minimum: int) -> tuple[int, int]:
    """Check a ``(min, max)`` pair: both at least ``minimum`` and in order."""
    low, high = value
    if low < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got ({low}, {high})")
    if low > high:
        raise ValueError(f"{name} must be (min, max) with min <= max, got ({low}, {high})")
    return value


class ViewConfig(BaseModel):
    """What the labeled, eval, weak and strong views do; every field has a safe default."""

    model_config = ConfigDict(extra="forbid")

    train_short_side: tuple[int, int] = Field(
        (176, 208), description="short side (px) drawn uniformly for training views"
    )
    max_size: int = Field(512, gt=0, description="cap on the long side (px)")
    eval_short_side: int = Field(192, gt=0, description="short side (px) of the eval view")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="horizontal flip probability")
    color_jitter: float = Field(
        0.2, ge=0.0, le=1.0,
        description="brightness/contrast/saturation jitter strength of the labeled view",
    )
    rotate_max_deg: float = Field(30.0, ge=0.0, le=180.0, description="strong view rotation bound")
    shear_max_deg: float = Field(
        30.0, ge=0.0, lt=90.0, description="strong view shear bound (tan is unbounded at 90)"
    )
    translate_max_frac: float = Field(
        0.1, ge=0.0, le=1.0, description="strong view shift bound, fraction of the side"
    )
    erase_patches: tuple[int, int] = Field((1, 5), description="(min, max) erased patches")
    erase_max_frac: float = Field(
        0.2, gt=0.0, le=1.0, description="largest erased patch side, fraction of the image side"
    )
    erase_drop_covered: float = Field(
        DROP_COVERED, ge=0.0, le=1.0,
        description="drop boxes at least this much erased (union of patches)",
    )
    strong_color: bool = Field(True, description="strong view applies one RandAugment colour op")
    strong_geometric: bool = Field(True, description="strong view applies one geometric op")

    @field_validator("train_short_side")
    @classmethod
    def _short_side_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _int_range("train_short_side", value, minimum=1)

    @field_validator("erase_patches")
    @classmethod
    def _patch_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _int_range("erase_patches", value, minimum=0)
