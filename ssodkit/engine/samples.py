"""`samples/iter_<N>.jpg`: a few fixed unlabeled images with the teacher's boxes drawn.

A curve says the pseudo-labels got worse; a picture says how (boxes on the background,
one class for everything, nothing at all). The same images at every evaluation, so that
successive grids differ only by the teacher. Drawn on rank 0, inference only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ssodkit.data.coco import CocoDataset
from ssodkit.data.datasets import EvalDataset, Guarded, Unreadable, View
from ssodkit.detectors.protocol import Detections
from ssodkit.engine.predict import iter_predictions
from ssodkit.engine.probe import spread

SAMPLES_DIR = "samples"


class SampleImages:
    def __init__(self, pool: CocoDataset, n: int, view: View, record: Callable[[Unreadable], None]) -> None:
        self.coco = pool.subset(spread(pool.image_ids, n))
        self.dataset = Guarded(EvalDataset(self.coco, view), record)

    def draw(
        self, model: nn.Module, keep: Callable[[Detections], Detections], classes: list[str], path: Path, *,
        device: torch.device, amp_dtype: torch.dtype | None, title: str = "",
    ) -> Path:
        """Predict on the images, keep as the method keeps pseudo-labels, draw both."""
        from ssodkit.plots import plot_sample_grid  # matplotlib only when drawing

        drawn = []
        for sample, det in iter_predictions(
            model, self.dataset, batch_size=len(self.dataset), device=device, amp_dtype=amp_dtype,
        ):
            det = det.to("cpu")
            drawn.append((int(sample["image_id"]), det, keep(det)))
        return plot_sample_grid(self.coco, drawn, classes, path, title)


def sample_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / SAMPLES_DIR / f"iter_{iteration:07d}.jpg"
