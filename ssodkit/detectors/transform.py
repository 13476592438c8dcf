"""A torchvision transform that normalises and pads but never resizes.

The data pipeline owns geometry (views record matrices for pseudo-label projection), so a
hidden resize inside the model would silently break every projection. Predictions come
back in the input's pixel coordinates because `postprocess` then maps sizes to themselves.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform


class NormalizePadTransform(GeneralizedRCNNTransform):
    def __init__(self, image_mean: list[float], image_std: list[float], size_divisible: int = 32):
        super().__init__(
            min_size=1, max_size=1 << 30, image_mean=image_mean, image_std=image_std,
            size_divisible=size_divisible,
        )

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target

    def pad(self, images: list[Tensor], size_divisible: int) -> ImageList:
        """What `self(images)` returns, padded to a multiple of `size_divisible` instead."""
        if size_divisible <= 0 or size_divisible % self.size_divisible:
            raise ValueError(f"size_divisible must be a positive multiple of {self.size_divisible}, got {size_divisible}")
        normalised = [self.normalize(image) for image in images]
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in normalised]
        return ImageList(self.batch_images(normalised, size_divisible=size_divisible), sizes)
