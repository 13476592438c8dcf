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


def _float_range(name: str, value: tuple[float, float], minimum: float) -> tuple[float, float]:
    """Check a ``(min, max)`` pair of floats: both at least ``minimum`` and in order."""
    low, high = value
    if low < minimum or low > high:
        raise ValueError(f"{name} must be (min, max) with {minimum} <= min <= max, got ({low}, {high})")
    return value


class AreaErasing(BaseModel):
    """One torchvision ``RandomErasing(p, scale, ratio, value="random")``."""

    model_config = ConfigDict(extra="forbid")

    p: float = Field(ge=0.0, le=1.0, description="probability of erasing one rectangle")
    scale: tuple[float, float] = Field(description="(min, max) erased area, fraction of the image")
    ratio: tuple[float, float] = Field(description="(min, max) aspect ratio h/w, drawn log-uniform")

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1:
            raise ValueError(f"scale must be fractions of the image (<= 1), got {value}")
        return _float_range("scale", value, minimum=0.0)

    @field_validator("ratio")
    @classmethod
    def _ratio_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0:
            raise ValueError(f"ratio must be positive, got {value}")
        return _float_range("ratio", value, minimum=0.0)


def _official_erasing() -> list[AreaErasing]:
    return [
        AreaErasing(p=0.7, scale=(0.05, 0.2), ratio=(0.3, 3.3)),
        AreaErasing(p=0.5, scale=(0.02, 0.2), ratio=(0.1, 6.0)),
        AreaErasing(p=0.3, scale=(0.02, 0.2), ratio=(0.05, 8.0)),
    ]


class UTStrongConfig(BaseModel):
    """Unbiased Teacher's strong view, photometric only, on the weak view's geometry.

    Defaults are the official ``build_strong_augmentation`` (facebookresearch/unbiased-teacher,
    ``ubteacher/data/detection_utils.py``): ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8,
    RandomGrayscale p 0.2, GaussianBlur σ ∈ [0.1, 2.0] with p 0.5, then three RandomErasing
    with random fill.
    """

    model_config = ConfigDict(extra="forbid")

    color_jitter: tuple[float, float, float, float] = Field(
        (0.4, 0.4, 0.4, 0.1), description="brightness, contrast, saturation, hue strengths"
    )
    color_jitter_p: float = Field(0.8, ge=0.0, le=1.0, description="probability of the colour jitter")
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0, description="probability of greying the image")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="(min, max) σ of the Gaussian blur, px")
    blur_p: float = Field(0.5, ge=0.0, le=1.0, description="probability of the blur")
    erasing: list[AreaErasing] = Field(
        default_factory=_official_erasing, description="RandomErasing ops applied in order"
    )

    @field_validator("color_jitter")
    @classmethod
    def _jitter(cls, value: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if min(value) < 0 or value[3] > 0.5:
            raise ValueError(f"color_jitter strengths must be >= 0 and hue <= 0.5, got {value}")
        return value

    @field_validator("blur_sigma")
    @classmethod
    def _sigma_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        return _float_range("blur_sigma", value, minimum=0.0)


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
    ut_strong: UTStrongConfig = Field(
        default_factory=UTStrongConfig, description="Unbiased Teacher's photometric strong view (ut_strong)"
    )

    @field_validator("train_short_side")
    @classmethod
    def _short_side_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _int_range("train_short_side", value, minimum=1)

    @field_validator("erase_patches")
    @classmethod
    def _patch_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _int_range("erase_patches", value, minimum=0)
