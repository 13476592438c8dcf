"""The labeled probe: a few labeled images pseudo-labeled exactly as unlabeled ones are,
scored against their own boxes.

The `pseudo/…` quality log needs the unlabeled pool's hidden ground truth, which real data
does not have; the probe measures the same precision / recall on images whose boxes are
known. The images stay in the labeled training stream (no label is held back): the probe
is inference only, on a fixed, evenly spread handful of them, each in its own fixed weak
view, so that successive probes differ only by the model. It leaves the global RNGs as it
found them, so a run trains bit-identically with the probe on or off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from ssodkit.data.coco import CocoDataset
from ssodkit.data.datasets import EvalDataset, Guarded, Unreadable, View
from ssodkit.detectors.protocol import Detections
from ssodkit.engine.predict import _predict
from ssodkit.pseudo.quality import pseudo_label_quality
from ssodkit.rng import derive_seed, rng_state, seeded_generator, set_rng_state

PREFIX = "probe/"


def spread(ids: list[int], n: int) -> list[int]:
    """`n` of `ids` evenly spaced from the first (all of them when there are no more)."""
    if n >= len(ids):
        return list(ids)
    return [ids[(i * len(ids)) // n] for i in range(n)]


class ProbeDataset(EvalDataset):
    """Images with their boxes through a random view (the weak one), each image with its
    own seed, fixed for the run: every probe sees the same pixels."""

    def __init__(self, coco: CocoDataset, view: View, seed: int) -> None:
        super().__init__(coco, view)
        self.seed = seed

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._sample(index, seeded_generator(derive_seed(self.seed, self.image_ids[index])))


@contextmanager
def global_rng_untouched() -> Iterator[None]:
    """Put Python's, NumPy's, torch's and CUDA's global RNGs back as they were (a data
    loader draws its base seed from torch's, and Faster R-CNN samples from it in training)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


class LabeledProbe:
    """`score(model, keep)`: precision / recall at IoU 0.5 (class-aware, COCO matching) of
    the boxes `keep` retains from `model`'s detections on the probe images' weak views."""

    def __init__(
        self, coco: CocoDataset, image_ids: list[int], view: View, seed: int,
        report: Callable[[Unreadable], None],
    ) -> None:
        self.coco = coco.subset(image_ids)
        self.dataset = Guarded(ProbeDataset(self.coco, view, seed), report)

    def __len__(self) -> int:
        return len(self.dataset)

    def score(
        self, model: nn.Module, keep: Callable[[Detections], Detections], index_to_cat_id: list[int],
        **predict_kwargs: Any,
    ) -> dict[str, float]:
        """`probe/precision50`, `probe/recall50`, `probe/pseudo_per_image`,
        `probe/gt_per_image`; on every rank the same (predictions are gathered)."""
        with global_rng_untouched():
            results, predicted = _predict(model, self.dataset, index_to_cat_id, keep=keep, **predict_kwargs)
        quality = pseudo_label_quality(self.coco, results, None, image_ids=predicted)
        return {PREFIX + k: v for k, v in quality.items()}
