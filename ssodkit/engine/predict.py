"""Batched inference over a data set, mapped back to original-image coordinates."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ssodkit.data.datasets import Guarded, Unreadable, ignore_sigint
from ssodkit.detectors.protocol import Detections
from ssodkit.engine.distributed import DistInfo, all_gather_objects
from ssodkit.errors import DataError
from ssodkit.evaluation.coco_eval import (
    EvalResult,
    detections_to_results,
    evaluate_coco,
)
from ssodkit.views.geometry import identity_matrix, project_boxes


def to_model_images(images: list[Tensor], device: torch.device) -> list[Tensor]:
    """uint8 [3,H,W] → float [0,1] on the device (the detector normalises)."""
    return [img.to(device, non_blocking=True).float().div_(255.0) for img in images]


def to_original(det: Detections, matrix: Tensor, orig_size: tuple[int, int]) -> Detections:
    """Map detections from a view back to the original image (clip, drop degenerate)."""
    boxes, keep = project_boxes(det.boxes.detach().cpu().double(), matrix.cpu(), identity_matrix(), orig_size)
    kept = det.to("cpu")[keep]
    kept.boxes = boxes.float()
    return kept


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def iter_predictions(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int,
    device: torch.device,
    dist: DistInfo = DistInfo(),
    amp_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    indices: list[int] | None = None,
    progress: bool = False,
    on_error: Callable[[int, Exception], None] | None = None,
) -> Iterator[tuple[dict[str, Any], Detections]]:
    """Yield (sample, detections in original pixels) for this rank's share of the data set.

    A sample that fails to load (`DataError`: missing or corrupt image) aborts the
    iteration, unless it is skipped: with `on_error`, `on_error(index, error)` is called with
    its index into `dataset`; a `Guarded` dataset passes it to its own `report`. The rest
    of its batch still goes to the model.
    """
    indices = list(range(len(dataset))) if indices is None else indices
    mine = indices[dist.rank :: dist.world_size]
    if on_error is not None:
        dataset = Guarded(dataset, lambda marker: on_error(marker.index, marker.error))
    elif not isinstance(dataset, Guarded):
        dataset = Guarded(dataset)  # raise in this process: one line, not a worker's traceback
    loader = DataLoader(
        Subset(dataset, mine), batch_size=batch_size, num_workers=num_workers, collate_fn=list,
        worker_init_fn=ignore_sigint,
    )
    was_training = model.training
    model.eval()
    bar = Progress(console=Console(stderr=True), transient=True) if progress and dist.is_main else None
    task = bar.add_task("predict", total=len(mine)) if bar else None
    try:
        if bar:
            bar.start()
        for batch in loader:
            good = []
            for sample in batch:
                if isinstance(sample, Unreadable):
                    dataset.report(sample)
                else:
                    good.append(sample)
            if good:
                with autocast_context(device, amp_dtype):
                    detections = model("predict", to_model_images([s["image"] for s in good], device))
                for sample, det in zip(good, detections):
                    yield sample, to_original(det, sample["matrix"], tuple(sample["orig_size"]))
            if bar:
                bar.advance(task, len(batch))
    finally:
        if bar:
            bar.stop()
        model.train(was_training)


def predict_results(
    model: nn.Module, dataset: Any, index_to_cat_id: list[int], **kwargs: Any
) -> list[dict[str, Any]]:
    """COCO results entries for the whole data set, gathered on every rank."""
    return _predict(model, dataset, index_to_cat_id, **kwargs)[0]


def _predict(
    model: nn.Module, dataset: Any, index_to_cat_id: list[int],
    keep: Callable[[Detections], Detections] | None = None, **kwargs: Any
) -> tuple[list[dict[str, Any]], list[int]]:
    """COCO results entries and the ids of the images predicted (skipped ones are not),
    gathered on every rank; `keep` narrows each image's detections first (a pseudo-labeler's
    filters)."""
    results: list[dict[str, Any]] = []
    predicted: list[int] = []
    for sample, det in iter_predictions(model, dataset, **kwargs):
        if keep is not None:
            det = keep(det)
        results.extend(
            detections_to_results(sample["image_id"], det.boxes, det.scores, det.labels, index_to_cat_id)
        )
        predicted.append(int(sample["image_id"]))
    dist: DistInfo = kwargs.get("dist", DistInfo())
    parts = all_gather_objects((results, predicted), dist)
    return [r for part, _ in parts for r in part], [i for _, ids in parts for i in ids]


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    gt: dict[str, Any],
    index_to_cat_id: list[int],
    *,
    backend: str = "auto",
    image_ids: list[int] | None = None,
    **kwargs: Any,
) -> tuple[EvalResult | None, list[dict[str, Any]]]:
    """Predict on every rank, evaluate once on rank 0 (faster-coco-eval cannot merge ranks).

    Images skipped as unreadable are left out of the score, not scored as images without
    detections: a damaged file says nothing about the model."""
    results, predicted = _predict(model, dataset, index_to_cat_id, **kwargs)
    dist: DistInfo = kwargs.get("dist", DistInfo())
    if not dist.is_main:
        return None, results
    wanted = len(dataset) if kwargs.get("indices") is None else len(kwargs["indices"])
    if len(predicted) < wanted:
        image_ids = sorted(set(predicted) if image_ids is None else set(predicted) & set(image_ids))
        if not image_ids:
            raise DataError(f"none of the {wanted} images to evaluate could be decoded")
    return evaluate_coco(gt, results, backend=backend, image_ids=image_ids), results


@dataclass(frozen=True)
class CheckpointEvaluation:
    """A checkpoint's score, and which of its weights were scored (see `inference_weights`)."""

    result: EvalResult
    weights: str  # "teacher" or "student"
    note: str = ""  # why, where it was not simply asked for: "the checkpoint has no teacher", "best at iter …"


def evaluate_checkpoint(
    checkpoint: Path,
    ann: Path,
    images: Path | None = None,
    backend: str = "auto",
    out: Path | None = None,
    weights: str = "auto",
    batch_size: int = 8,
    device: str = "auto",
    skip_invalid: bool = False,
) -> CheckpointEvaluation:
    """Score a checkpoint on a COCO file; write results JSON (and metrics) next to `out`.

    `weights`: `auto` (best.pt's better model, else the teacher, else the student),
    `teacher` or `student`. An image that cannot be decoded is named on stderr and left
    out of the score."""
    from ssodkit.data.coco import CHECK_REMEDY, load_coco
    from ssodkit.data.datasets import EvalDataset, UnreadableImages
    from ssodkit.engine.runtime import load_model_from_checkpoint, resolve_device
    from ssodkit.io import write_json_atomic
    from ssodkit.views.pipelines import eval_view

    dev = resolve_device(device)
    loaded = load_model_from_checkpoint(checkpoint, weights=weights, device=dev)
    model, cfg, classes = loaded.model, loaded.cfg, loaded.classes
    coco = load_coco(ann, images, skip_invalid=skip_invalid, check_images="exists", remedy=CHECK_REMEDY)
    check_same_classes(classes, coco.class_names, checkpoint, ann)
    dataset = Guarded(EvalDataset(coco, eval_view(cfg.views)), UnreadableImages().record)
    result, results = evaluate_model(
        model, dataset, coco.to_dict(), coco.index_to_cat_id, backend=backend,
        batch_size=batch_size, device=dev, progress=True,
    )
    assert result is not None
    if out is not None:
        results_path = out.with_name(out.stem + ".results.json") if out.suffix == ".json" else out / "results.json"
        write_json_atomic(results_path, results)
        write_json_atomic(out if out.suffix == ".json" else out / "metrics.json", result.model_dump())
    return CheckpointEvaluation(result, loaded.weights, loaded.note)


def check_same_classes(model_classes: list[str], data_classes: list[str], checkpoint: Path, ann: Path) -> None:
    from ssodkit.errors import DataError

    if list(model_classes) != list(data_classes):
        raise DataError(
            f"{ann}: categories {data_classes} differ from the ones {checkpoint} was trained on "
            f"{model_classes}"
        )
