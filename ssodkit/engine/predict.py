"""Batched inference over a data set, mapped back to original-image coordinates."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ssodkit.detectors.protocol import Detections
from ssodkit.engine.distributed import DistInfo, all_gather_objects
from ssodkit.errors import DataError
from ssodkit.evaluation.coco_eval import EvalResult, detections_to_results, evaluate_coco
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


@dataclass(frozen=True)
class _Failed:
    """Stands in for a sample whose image could not be loaded (picklable for workers)."""

    index: int
    error: Exception


class _Guarded(Dataset):
    """`dataset[i]`, or a `_Failed` marker where loading raises `DataError`."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DataError as exc:
            return _Failed(index, exc)


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

    Without `on_error` a sample that fails to load (`DataError`: missing or corrupt image)
    aborts the iteration. With it, the sample is skipped: `on_error(index, error)` is called
    with its index into `dataset`, and the rest of its batch still goes to the model.
    """
    indices = list(range(len(dataset))) if indices is None else indices
    mine = indices[dist.rank :: dist.world_size]
    subset = Subset(_Guarded(dataset) if on_error is not None else dataset, mine)
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    was_training = model.training
    model.eval()
    bar = Progress(transient=True) if progress and dist.is_main else None
    task = bar.add_task("predict", total=len(mine)) if bar else None
    try:
        if bar:
            bar.start()
        for batch in loader:
            good = []
            for sample in batch:
                if isinstance(sample, _Failed):
                    on_error(sample.index, sample.error)  # type: ignore[misc]  # only _Guarded makes them
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
    results: list[dict[str, Any]] = []
    for sample, det in iter_predictions(model, dataset, **kwargs):
        results.extend(
            detections_to_results(sample["image_id"], det.boxes, det.scores, det.labels, index_to_cat_id)
        )
    dist: DistInfo = kwargs.get("dist", DistInfo())
    return [r for part in all_gather_objects(results, dist) for r in part]


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
    """Predict on every rank, evaluate once on rank 0 (faster-coco-eval cannot merge ranks)."""
    results = predict_results(model, dataset, index_to_cat_id, **kwargs)
    dist: DistInfo = kwargs.get("dist", DistInfo())
    if not dist.is_main:
        return None, results
    return evaluate_coco(gt, results, backend=backend, image_ids=image_ids), results


def evaluate_checkpoint(
    checkpoint: Path,
    ann: Path,
    images: Path | None = None,
    backend: str = "auto",
    out: Path | None = None,
    weights: str = "teacher",
    batch_size: int = 8,
    device: str = "auto",
    skip_invalid: bool = False,
) -> EvalResult:
    """Score a checkpoint on a COCO file; write results JSON (and metrics) next to `out`."""
    from ssodkit.data.coco import load_coco
    from ssodkit.data.datasets import EvalDataset
    from ssodkit.engine.runtime import load_model_from_checkpoint, resolve_device
    from ssodkit.io import write_json_atomic
    from ssodkit.views.pipelines import eval_view

    dev = resolve_device(device)
    loaded = load_model_from_checkpoint(checkpoint, weights=weights, device=dev)
    model, cfg, classes = loaded.model, loaded.cfg, loaded.classes
    coco = load_coco(ann, images, skip_invalid=skip_invalid, check_images="exists")
    check_same_classes(classes, coco.class_names, checkpoint, ann)
    dataset = EvalDataset(coco, eval_view(cfg.views))
    result, results = evaluate_model(
        model, dataset, coco.to_dict(), coco.index_to_cat_id, backend=backend,
        batch_size=batch_size, device=dev, progress=True,
    )
    assert result is not None
    if out is not None:
        results_path = out.with_name(out.stem + ".results.json") if out.suffix == ".json" else out / "results.json"
        write_json_atomic(results_path, results)
        write_json_atomic(out if out.suffix == ".json" else out / "metrics.json", result.model_dump())
    return result


def check_same_classes(model_classes: list[str], data_classes: list[str], checkpoint: Path, ann: Path) -> None:
    from ssodkit.errors import DataError

    if list(model_classes) != list(data_classes):
        raise DataError(
            f"{ann}: categories {data_classes} differ from the ones {checkpoint} was trained on "
            f"{model_classes}"
        )
