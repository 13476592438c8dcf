"""Torch datasets over a `CocoDataset`, yielding the sample dict of docs/design.md.

Training datasets are indexed by `(image_index, seed)`: the sampler owns every random
choice, so the augmentation of any draw can be replayed from the sampler's position
(exact resume, identical DDP ranks). Evaluation datasets take a plain `int`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch.utils.data import Dataset

from ssodkit.data.coco import CocoDataset
from ssodkit.data.images import load_image
from ssodkit.errors import DataError
from ssodkit.rng import seeded_generator

Sample = dict[str, Any]


class ViewResult(Protocol):
    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    matrix: torch.Tensor


class View(Protocol):
    def __call__(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator,
    ) -> ViewResult: ...


class IdentityOutput(NamedTuple):
    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    matrix: torch.Tensor


def identity_view(
    image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> IdentityOutput:
    """The view that changes nothing (matrix = I); for tests and plain evaluation."""
    return IdentityOutput(image, boxes, labels, torch.eye(3, dtype=torch.float64))


class _CocoImages(Dataset):
    """Shared loading: image + targets of one image id, passed through the view."""

    def __init__(
        self, coco: CocoDataset, view: View, image_ids: list[int], with_targets: bool
    ) -> None:
        self.coco = coco
        self.view = view
        self.image_ids = image_ids
        self.with_targets = with_targets

    def __len__(self) -> int:
        return len(self.image_ids)

    def _sample(self, index: int, generator: torch.Generator) -> Sample:
        image_id = self.image_ids[index]
        pixels = load_image(self.coco.image_path(image_id))  # DataError names the file
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        if self.with_targets:
            boxes_np, labels_np = self.coco.training_targets(image_id)
            boxes, labels = torch.from_numpy(boxes_np), torch.from_numpy(labels_np)
        else:
            boxes, labels = (
                torch.zeros((0, 4), dtype=torch.float32),
                torch.zeros(0, dtype=torch.int64),
            )
        out = self.view(image, boxes, labels, generator)
        return {
            "image": out.image,
            "boxes": out.boxes,
            "labels": out.labels,
            "image_id": image_id,
            "matrix": out.matrix,
            "orig_size": (pixels.shape[0], pixels.shape[1]),
            "file_name": self.coco.image(image_id).file_name,
            # rectangles random erasing blanked (in view pixels): pseudo boxes under them go
            "erased": getattr(out, "erased", torch.zeros((0, 4), dtype=torch.float32)),
        }


class LabeledDataset(_CocoImages):
    """Images with their boxes. Images without a non-crowd box teach a supervised detector
    nothing, so they are left out unless `keep_empty`."""

    def __init__(self, coco: CocoDataset, view: View, *, keep_empty: bool = False) -> None:
        ids = coco.image_ids
        if not keep_empty:
            ids = [i for i in ids if any(not a.iscrowd for a in coco.annotations_for(i))]
        super().__init__(coco, view, ids, with_targets=True)

    def __getitem__(self, index: tuple[int, int]) -> Sample:
        image_index, seed = index
        return self._sample(image_index, seeded_generator(seed))


class UnlabeledDataset(_CocoImages):
    """Every image, with empty targets even when the file carries (hidden) annotations:
    an empty image is still a valid unlabeled sample."""

    def __init__(self, coco: CocoDataset, view: View) -> None:
        super().__init__(coco, view, coco.image_ids, with_targets=False)

    def __getitem__(self, index: tuple[int, int]) -> Sample:
        image_index, seed = index
        return self._sample(image_index, seeded_generator(seed))


class EvalDataset(_CocoImages):
    """Every image in file order, with its ground-truth boxes; the view gets a fixed seed."""

    def __init__(self, coco: CocoDataset, view: View) -> None:
        super().__init__(coco, view, coco.image_ids, with_targets=True)

    def __getitem__(self, index: int) -> Sample:
        return self._sample(index, seeded_generator(0))


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """Images differ in size; the detector pads, so a batch is just the list."""
    return list(batch)


# --------------------------------------------------------------------------- unreadable images
@dataclass(frozen=True)
class Unreadable:
    """Stands in for a sample whose image could not be decoded (a truncated or corrupt file
    that passed the header check at start-up).

    An exception raised in a DataLoader worker reaches the user as the worker's traceback
    pasted into the message; a marker travels back like a sample instead, and the main
    process decides what to do with it, the same way for 0 or N workers."""

    index: Any  # the dataset key: an int, or (image index, seed) for the training sets
    error: DataError


def _raise(marker: Unreadable) -> None:
    raise marker.error


class Guarded(Dataset):
    """`dataset[key]`, or an `Unreadable` marker where loading raises `DataError`.

    Whoever consumes the samples calls `report` on each marker, in the main process; the
    default raises the marker's error there, one line naming the file."""

    def __init__(self, dataset: Any, report: Callable[[Unreadable], None] = _raise) -> None:
        self.dataset = dataset
        self.report = report

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.dataset[index]
        except DataError as exc:
            return Unreadable(index, exc)


@dataclass
class UnreadableImages:
    """The images a run could not decode: each is named on stderr the first time and
    counted every time; with `strict`, the first one stops the run instead."""

    strict: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # error message (names the file) → times

    def record(self, marker: Unreadable) -> None:
        message = str(marker.error)
        if self.strict:
            raise DataError(f"{message}; data.strict_images is on (without it, the image is skipped)")
        if message not in self.counts:
            print(f"warning: skipped an image that cannot be decoded: {message}", file=sys.stderr, flush=True)
        self.counts[message] = self.counts.get(message, 0) + 1

    def summary(self) -> str:
        """'N unreadable images skipped (M times)'; empty when every image could be read."""
        if not self.counts:
            return ""
        n, times = len(self.counts), sum(self.counts.values())
        return f"{n} unreadable image{'s' if n != 1 else ''} skipped ({times} time{'s' if times != 1 else ''})"


def ignore_sigint(worker_id: int) -> None:
    """`worker_init_fn` of every DataLoader: Ctrl-C reaches the whole process group, and a
    worker inherits the main process's handler, so each worker would print the
    interrupt message again; the main process alone handles it and stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
