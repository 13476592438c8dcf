"""COCO box evaluation with faster-coco-eval when installed, else pycocotools.

Both backends give the same numbers (a parity test keeps it so); faster-coco-eval is several
times faster but does not fill `evalImgs`, so distributed runs gather predictions on rank 0
and evaluate once instead of merging per-rank evaluators.

Everything works on in-memory dicts: the caller has already read and validated the files,
and the libraries' own loaders would re-read them, print to stdout and crash on empty results.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from ssodkit.errors import DataError, SsodkitError

Backend = Literal["auto", "faster_coco_eval", "pycocotools"]
BACKENDS: tuple[str, ...] = ("auto", "faster_coco_eval", "pycocotools")

# Order of COCOeval.stats for boxes; EvalResult fields carry the same names.
STAT_FIELDS: tuple[str, ...] = (
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large",
)  # fmt: skip


class EvalResult(BaseModel):
    """COCO box metrics in [0, 1]; None where COCO reports -1 (nothing to measure)."""

    model_config = ConfigDict(frozen=True)

    map: float | None
    map50: float | None
    map75: float | None
    map_small: float | None
    map_medium: float | None
    map_large: float | None
    ar1: float | None
    ar10: float | None
    ar100: float | None
    ar_small: float | None
    ar_medium: float | None
    ar_large: float | None
    per_class: dict[str, float | None]
    num_images: int
    num_detections: int
    backend: str

    def stats(self) -> list[float | None]:
        """The 12 numbers in COCOeval.stats order (None for -1)."""
        return [getattr(self, name) for name in STAT_FIELDS]


# ---------------------------------------------------------------------------------------
# backend selection


def faster_coco_eval_available() -> bool:
    return importlib.util.find_spec("faster_coco_eval") is not None


def resolve_backend(backend: str) -> str:
    """Turn "auto" into a concrete backend; a named but missing backend is a user error."""
    if backend not in BACKENDS:
        raise SsodkitError(f"unknown evaluation backend '{backend}'; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "faster_coco_eval" if faster_coco_eval_available() else "pycocotools"
    if backend == "faster_coco_eval" and not faster_coco_eval_available():
        raise SsodkitError(
            "backend 'faster_coco_eval' is not installed; `pip install faster-coco-eval` "
            "or use backend 'pycocotools'"
        )
    return backend


# ---------------------------------------------------------------------------------------
# input preparation


def _prepare_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    """Copy the GT dict into the shape COCOeval needs, without touching the caller's dict.

    Entries are copied one level deep because the evaluators write flags (`ignore`) into
    annotation dicts. Annotation ids are renumbered 1..N: COCOeval uses the GT id as its
    "matched" marker, so an id of 0 would silently count a true positive as a false one.
    Missing `iscrowd` / `area` get COCO's defaults (0 and box area).
    """
    try:
        images = [dict(img) for img in gt["images"]]
        categories = [dict(cat) for cat in gt["categories"]]
        for cat in categories:
            cat["id"] = int(cat["id"])
            cat.setdefault("name", str(cat["id"]))
        annotations = []
        for new_id, ann in enumerate(gt["annotations"], start=1):
            ann = dict(ann)
            ann["id"] = new_id
            ann.setdefault("iscrowd", 0)
            if "area" not in ann:
                ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
            annotations.append(ann)
        for img in images:
            img["id"] = int(img["id"])
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise DataError(f"ground-truth dict is not valid COCO (missing or bad {exc})") from None
    return {"images": images, "annotations": annotations, "categories": categories}


def _check_results(results: Sequence[Mapping[str, Any]], img_ids: set[int], cat_ids: set[int]) -> None:
    """Raise DataError when results do not belong to this GT (COCOeval would assert or drop)."""
    bad_images: set[Any] = set()
    bad_cats: set[Any] = set()
    for i, res in enumerate(results):
        try:
            image_id, cat_id, bbox, _ = res["image_id"], res["category_id"], res["bbox"], res["score"]
        except (KeyError, TypeError):
            raise DataError(
                f"detection #{i} needs image_id, category_id, bbox and score; got {res!r:.120}"
            ) from None
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            raise DataError(f"detection #{i} bbox must be [x, y, w, h]; got {bbox!r:.80}")
        if image_id not in img_ids:
            bad_images.add(image_id)
        if cat_id not in cat_ids:
            bad_cats.add(cat_id)
    if bad_images:
        raise DataError(
            f"{len(bad_images)} image id(s) in the results are not in the ground truth "
            f"(e.g. {_examples(bad_images)}); were the predictions made for another annotation file?"
        )
    if bad_cats:
        raise DataError(
            f"category id(s) {_examples(bad_cats)} in the results are not in the ground truth; "
            f"valid: {_examples(cat_ids, n=10)}"
        )


def _examples(values: set[Any], n: int = 3) -> str:
    ordered = sorted(values, key=repr)
    more = ", …" if len(ordered) > n else ""
    return ", ".join(map(repr, ordered[:n])) + more


# ---------------------------------------------------------------------------------------
# running the evaluators


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress to stdout; keep the CLI's output ours."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def _coco_class(backend: str) -> type:
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO
    else:
        from pycocotools.coco import COCO
    return COCO


def _build_coco(backend: str, dataset: dict[str, Any]) -> Any:
    """A COCO API object from an in-memory dict (pycocotools' constructor only takes a path)."""
    coco = _coco_class(backend)()
    if backend == "faster_coco_eval":
        coco.print_function = _silent
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _results_coco(backend: str, gt_coco: Any, gt: dict[str, Any], results: Sequence[Mapping]) -> Any:
    """Detections as a COCO object; `loadRes` asserts on an empty list, so build that by hand."""
    # What `loadRes` makes of a bbox results list (`id` 1..N in order, `area` w·h, `iscrowd`
    # 0), built here in one pass on copies: loadRes also writes a polygon per detection,
    # which box evaluation never reads and which took most of its time (1.7 s of 500,000).
    annotations = [
        {**r, "area": r["bbox"][2] * r["bbox"][3], "id": i, "iscrowd": 0} for i, r in enumerate(results, start=1)
    ]
    dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": annotations}
    return _build_coco(backend, dataset)


def _run_cocoeval(
    backend: str, gt_coco: Any, dt_coco: Any, img_ids: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Run evaluate/accumulate/summarize; return (12 stats, precision [T,R,K,A,M])."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCOeval_faster

        evaluator = COCOeval_faster(gt_coco, dt_coco, iouType="bbox", print_function=_silent)
    else:
        from pycocotools.cocoeval import COCOeval

        evaluator = COCOeval(gt_coco, dt_coco, iouType="bbox")
    evaluator.params.imgIds = img_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = np.asarray(evaluator.stats, dtype=np.float64)[: len(STAT_FIELDS)]
    return stats, np.asarray(evaluator.eval["precision"], dtype=np.float64)


def per_class_ap(precision: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    """AP@[.5:.95] per class from COCOeval's precision array, as detectron2 computes it.

    Uses area "all" and the largest maxDets; classes with no GT in the evaluated images have
    only -1 entries and get None.
    """
    out: dict[str, float | None] = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[name] = float(p.mean()) if p.size else None
    return out


def _stat(value: float) -> float | None:
    return None if value < 0 else float(value)


def evaluate_coco(
    gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    backend: Backend = "auto",
    image_ids: Sequence[int] | None = None,
) -> EvalResult:
    """COCO bbox metrics of `results` (COCO results entries) against the GT dict `gt`.

    `image_ids` restricts the evaluation (e.g. to a val split of a larger file); detections
    on other GT images are then ignored. Results on images absent from `gt` raise DataError.
    Empty results are valid and score 0 wherever there is GT to find.
    """
    name = resolve_backend(backend)
    gt_dict = _prepare_gt(gt)
    all_img_ids = {img["id"] for img in gt_dict["images"]}
    if image_ids is None:
        eval_ids = sorted(all_img_ids)
    else:
        eval_ids = sorted({int(i) for i in image_ids})
        missing = set(eval_ids) - all_img_ids
        if missing:
            raise DataError(f"image id(s) {_examples(missing)} to evaluate are not in the ground truth")
    categories = sorted(gt_dict["categories"], key=lambda c: c["id"])
    _check_results(results, all_img_ids, {c["id"] for c in categories})

    with _quiet():
        gt_coco = _build_coco(name, gt_dict)
        dt_coco = _results_coco(name, gt_coco, gt_dict, results)
        stats, precision = _run_cocoeval(name, gt_coco, dt_coco, eval_ids)

    eval_set = set(eval_ids)
    metrics = {field: _stat(v) for field, v in zip(STAT_FIELDS, stats, strict=True)}
    return EvalResult(
        **metrics,
        per_class=per_class_ap(precision, [str(c["name"]) for c in categories]),
        num_images=len(eval_ids),
        num_detections=sum(1 for r in results if r["image_id"] in eval_set),
        backend=name,
    )


# ---------------------------------------------------------------------------------------
# model outputs -> COCO results


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def detections_to_results(
    image_id: int,
    boxes_xyxy: Any,
    scores: Any,
    labels: Any,
    index_to_cat_id: Sequence[int] | Mapping[int, int],
) -> list[dict[str, Any]]:
    """COCO results entries for one image's detections (tensors or arrays).

    Boxes are xyxy in original-image pixels; COCO wants [x, y, w, h] and category ids, not
    ssodkit's contiguous class indices. Values are plain Python types, so the list is
    JSON-serialisable as is; float32 inputs are widened, not rounded.
    """
    boxes = _to_numpy(boxes_xyxy).astype(np.float64).reshape(-1, 4)
    score_arr = _to_numpy(scores).astype(np.float64).reshape(-1)
    label_arr = _to_numpy(labels).astype(np.int64).reshape(-1)
    if not len(boxes) == len(score_arr) == len(label_arr):
        raise ValueError(
            f"boxes ({len(boxes)}), scores ({len(score_arr)}) and labels ({len(label_arr)}) differ in length"
        )
    xywh = boxes.copy()
    xywh[:, 2:] -= boxes[:, :2]
    return [
        {
            "image_id": int(image_id),
            "category_id": int(index_to_cat_id[int(label)]),
            "bbox": box,
            "score": score,
        }
        for box, score, label in zip(xywh.tolist(), score_arr.tolist(), label_arr.tolist(), strict=True)
    ]


def evaluate_results_file(
    ann: str | Path, predictions: str | Path, *, backend: str = "auto", out: str | Path | None = None
) -> EvalResult:
    """Score a COCO results file against a ground-truth file (`ssodkit evaluate
    --predictions`); write the metrics JSON atomically when `out` is given. Only boxes are
    scored, so the image files need not be present."""
    from ssodkit.data.coco import CHECK_REMEDY, load_coco, load_results
    from ssodkit.io import write_json_atomic

    dataset = load_coco(Path(ann), check_images="none", remedy=CHECK_REMEDY)
    results = load_results(Path(predictions), dataset)
    result = evaluate_coco(dataset.to_dict(), results, backend=backend)
    if out is not None:
        write_json_atomic(Path(out), result.model_dump(mode="json"))
    return result
