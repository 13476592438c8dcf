"""Infinite, seeded, DDP-aware batch streams.

Batch k of a rank is a pure function of (seed, rank, world size, k): resume restarts the
stream at the saved iteration and sees exactly the images (and augmentation seeds) an
uninterrupted run would have seen. Each rank reads its own slice of every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ssodkit.rng import derive_seed

SampleKey = tuple[int, int]  # (image index, augmentation seed)


class InfiniteBatchSampler:
    """Yields lists of `(image_index, seed)`; epochs are reshuffled permutations.

    `repeat_factors` (one per image, ≥ 1) repeat images within an epoch by stochastic
    rounding, as LVIS's repeat-factor sampling does (used by Labeled Resampling).
    """

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        repeat_factors: Sequence[float] | None = None,
    ) -> None:
        if num_images <= 0:
            raise ValueError("cannot sample from an empty data set")
        if repeat_factors is not None and len(repeat_factors) != num_images:
            raise ValueError("one repeat factor per image is required")
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.repeat_factors = None if repeat_factors is None else np.asarray(repeat_factors, float)

    def _epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.repeat_factors is None:
            indices = np.arange(self.num_images)
        else:
            whole = np.floor(self.repeat_factors)
            repeats = whole + (rng.random(self.num_images) < self.repeat_factors - whole)
            indices = np.repeat(np.arange(self.num_images), repeats.astype(int))
        indices = rng.permutation(indices)
        # Pad so that every rank gets the same number of samples per epoch.
        per_rank = math.ceil(len(indices) / self.world_size)
        indices = np.resize(indices, per_rank * self.world_size)
        return indices[self.rank :: self.world_size]

    def _stream(self) -> Iterator[SampleKey]:
        position = self.start_batch * self.batch_size
        epoch = 0
        epoch_indices = self._epoch(0)
        consumed = 0  # samples of this rank's stream before `epoch`
        while consumed + len(epoch_indices) <= position:
            consumed += len(epoch_indices)
            epoch += 1
            epoch_indices = self._epoch(epoch)
        while True:
            for offset in range(position - consumed, len(epoch_indices)):
                sample_seed = derive_seed(self.seed, self.rank, consumed + offset, bits=31)
                yield int(epoch_indices[offset]), sample_seed
            consumed += len(epoch_indices)
            position = consumed
            epoch += 1
            epoch_indices = self._epoch(epoch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        stream = self._stream()
        while True:
            yield [next(stream) for _ in range(self.batch_size)]
